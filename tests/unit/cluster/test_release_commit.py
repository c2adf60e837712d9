"""``Sessions.op_release_commit`` (a SQL cancel during COMMIT) for a commit at each step on its way to its scope's
wait; the rest of ``Sessions`` is not built: only the fields this operation and ``ScopeWaits`` use."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from muheam.cluster.scopes import ScopeWaits
from muheam.cluster.sessions import Sessions
from muheam.net.clientport import Deferred


def _sessions(waits: ScopeWaits) -> Any:
    s: Any = object.__new__(Sessions)
    s.committing, s.answering, s.commits, s.txns = {}, {}, [], {}
    s.release_scope = waits.release
    return s


@pytest.mark.parametrize("step", ["queued", "committing", "answering"])
def test_a_release_on_the_way_to_the_wait_ends_it_when_it_starts(step: str) -> None:
    """Queued for the next pump (a cancel handled in the turn of the COMMIT: a review found it dropped),
    preparing, or in its outcome round: the wait that starts afterwards ends at once."""
    waits = ScopeWaits(default="ALL (replicas)")
    waits.known(["r1"])  # a replica that is down: ALL waits for it, without a timeout
    s = _sessions(waits)
    reply = Deferred()
    tx = SimpleNamespace(txn=SimpleNamespace(xid=7), released=False)
    if step == "queued":
        s.commits = [(tx, reply)]
    else:
        getattr(s, step)[7] = tx
    assert Sessions.op_release_commit(s, {"xid": 7}) == {"released": False}
    waits.wait(7, 50, None, reply.resolve, reply.fail, tx.released)  # what _durable's answer() does
    assert not waits.waits and reply.take() == (True, {"xid": 7, "scope": "cancelled"})


def test_a_release_for_no_commit_under_way_is_not_kept() -> None:
    """Sent before the transaction's COMMIT (or for no transaction at all), it leaves nothing behind."""
    waits = ScopeWaits(default="ALL (replicas)")
    s = _sessions(waits)
    running = SimpleNamespace(txn=SimpleNamespace(xid=9), released=False)
    s.txns = {9: running}
    assert Sessions.op_release_commit(s, {"xid": 9}) == {"released": False}
    assert Sessions.op_release_commit(s, {"xid": 10}) == {"released": False}
    assert not running.released
