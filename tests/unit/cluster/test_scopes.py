"""Commit scopes: the rule syntax, ANY/ALL at each level, and what a client is told on timeout (ABORT: an error
that says the transaction is committed; DEGRADE: success marked degraded, then no waiting until caught up)."""

from __future__ import annotations

from typing import Any

import pytest

from muheam.cluster.scopes import CommitScope, ScopeError, ScopeWaits


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Answers:
    def __init__(self) -> None:
        self.got: list[tuple[str, Any]] = []

    def ok(self, result: dict[str, Any]) -> None:
        self.got.append(("ok", result))

    def fail(self, code: str, message: str) -> None:
        self.got.append((code, message))


@pytest.mark.parametrize("text, want", [
    ("ANY 1 (replicas) ON applied ABORT ON 2s", (1, "applied", "abort", 2.0)),
    ("all (replicas) on flushed degrade on 500ms", (None, "flushed", "degrade", 0.5)),
    ("ANY 2 (replicas)", (2, "flushed", None, None)),
    ("  ANY 1 ( replicas )  ON received  ", (1, "received", None, None)),
])
def test_scope_rules_parse(text: str, want: tuple[Any, ...]) -> None:
    s = CommitScope.parse(text)
    assert (s.any_n, s.level, s.action, s.timeout) == want


@pytest.mark.parametrize("text", ["", "ANY (replicas)", "ANY 0 (replicas)", "MAJORITY (replicas)",
                                  "ANY 1 (nodes)", "ANY 1 (replicas) ON visible", "ANY 1 (replicas) ABORT ON 2",
                                  None, 3])
def test_bad_scopes_are_refused_with_the_form(text: Any) -> None:
    with pytest.raises(ScopeError, match="ANY n"):
        CommitScope.parse(text)


def test_no_scope_answers_at_once_and_any_waits_for_the_level() -> None:
    clock, a = Clock(), Answers()
    w = ScopeWaits(clock=clock)
    w.wait(1, 50, None, a.ok, a.fail)
    assert a.got == [("ok", {"xid": 1})]
    w.wait(2, 60, "ANY 1 (replicas) ON applied ABORT ON 2s", a.ok, a.fail)
    w.confirm("r1", 60, 60, 59)  # received and flushed, not applied yet
    assert len(a.got) == 1 and len(w.waits) == 1
    w.confirm("r1", 60, 60, 60)
    assert a.got[-1] == ("ok", {"xid": 2, "scope": "confirmed"}) and not w.waits
    w.wait(3, 55, "ANY 1 (replicas) ON applied", a.ok, a.fail)  # already confirmed: at once
    assert a.got[-1] == ("ok", {"xid": 3, "scope": "confirmed"})


def test_all_needs_every_known_replica_and_at_least_one() -> None:
    clock, a = Clock(), Answers()
    w = ScopeWaits(clock=clock)
    w.wait(1, 10, "ALL (replicas) ABORT ON 1s", a.ok, a.fail)
    clock.t += 1.5
    w.tick()
    assert a.got[0][0] == "ReplicaNotConfirmed", "ALL of no replica is not confirmed"
    w.known(["r1", "r2"])
    w.wait(2, 20, "ALL (replicas) ON flushed", a.ok, a.fail)
    w.confirm("r1", 20, 20, 20)
    assert len(a.got) == 1
    w.confirm("r2", 20, 20, 0)
    assert a.got[-1] == ("ok", {"xid": 2, "scope": "confirmed"})


def test_abort_on_timeout_says_the_transaction_is_committed() -> None:
    clock, a = Clock(), Answers()
    w = ScopeWaits("ANY 1 (replicas) ON applied ABORT ON 2s", clock=clock)
    w.wait(7, 70, None, a.ok, a.fail)  # the cluster default applies
    clock.t += 1.9
    w.tick()
    assert a.got == []
    clock.t += 0.2
    w.tick()
    code, message = a.got[0]
    assert code == "ReplicaNotConfirmed"
    assert "transaction 7 IS COMMITTED" in message and "not rolled back" in message and "2.1 s" in message
    assert w.counters["timed_out"] == 1 and not w.waits
    w.confirm("r1", 70, 70, 70)  # a late confirmation changes nothing for an answered commit
    assert len(a.got) == 1


def test_degrade_answers_success_then_stops_waiting_until_a_replica_catches_up() -> None:
    clock, a = Clock(), Answers()
    scope = "ANY 1 (replicas) ON applied DEGRADE ON 500ms"
    w = ScopeWaits(clock=clock)
    w.wait(1, 10, scope, a.ok, a.fail)
    clock.t += 0.6
    w.tick()
    assert a.got == [("ok", {"xid": 1, "scope": "degraded"})]
    w.wait(2, 20, scope, a.ok, a.fail)
    assert a.got[-1] == ("ok", {"xid": 2, "scope": "degraded"}), "degraded: answered at once"
    w.confirm("r1", 15, 15, 15)  # not yet past the newest degraded commit
    w.wait(3, 30, scope, a.ok, a.fail)
    assert a.got[-1] == ("ok", {"xid": 3, "scope": "degraded"})
    w.confirm("r1", 30, 30, 30)
    w.wait(4, 40, scope, a.ok, a.fail)
    assert len(a.got) == 3 and len(w.waits) == 1, "caught up: the scope is enforced again"


@pytest.mark.parametrize("text", [["ANY 1 (replicas)"], {"a": 1}, 7, "ANY 1 (replica)"])
def test_a_hostile_scope_on_commit_is_a_scope_error(text: Any) -> None:
    with pytest.raises(ScopeError):
        ScopeWaits().scope(text)


def test_release_ends_one_wait_and_says_it_committed() -> None:
    """A client's cancel ends its commit's wait for replicas (a scope without a timeout waits for ever while the
    replica is down); the answer says the transaction committed, and other waits go on."""
    clock, a = Clock(), Answers()
    w = ScopeWaits(clock=clock)
    w.wait(1, 50, "ANY 1 (replicas)", a.ok, a.fail)
    w.wait(2, 51, "ANY 1 (replicas)", a.ok, a.fail)
    assert not w.release(3) and a.got == []
    assert w.release(1) and a.got == [("ok", {"xid": 1, "scope": "cancelled"})]
    assert [x.xid for x in w.waits] == [2] and w.counters["cancelled"] == 1
    assert not w.release(1)


def test_a_released_commit_is_cancelled_only_where_it_would_wait() -> None:
    """A commit whose client cancelled on its way here: "cancelled" only where a wait would start; without a
    scope, already confirmed, or degraded it is answered as it would be (a review found "cancelled" answered,
    with PostgreSQL's replication warning, on a cluster without any scope)."""
    clock, a = Clock(), Answers()
    w = ScopeWaits(clock=clock)
    w.wait(1, 50, None, a.ok, a.fail, released=True)
    w.confirm("r1", 60, 60, 60)
    w.wait(2, 55, "ANY 1 (replicas)", a.ok, a.fail, released=True)
    w.wait(3, 70, "ANY 1 (replicas)", a.ok, a.fail, released=True)
    assert a.got == [("ok", {"xid": 1}), ("ok", {"xid": 2, "scope": "confirmed"}),
                     ("ok", {"xid": 3, "scope": "cancelled"})]
    assert not w.waits and w.counters["cancelled"] == 1
