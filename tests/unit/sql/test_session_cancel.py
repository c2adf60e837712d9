"""A cancel while a statement's COMMIT waits (``Session.cancel``), with the node's operations replaced by
functions: the commit is not cancelled, but a wait for replicas under a commit scope, which may have no end, is
(as PostgreSQL ends a synchronous-replication wait), and the client is told the transaction committed."""

from __future__ import annotations

from typing import Any


from muheam.net.clientport import Deferred
from muheam.sql import wire
from muheam.sql.catalog import Catalog
from muheam.sql.session import Session
from tests.unit.sql.frontend import query, startup



def _session() -> tuple[Session, list[Deferred], list[dict[str, Any]]]:
    commits: list[Deferred] = []
    released: list[dict[str, Any]] = []

    def commit(req: dict[str, Any]) -> Deferred:
        d = Deferred()  # durable, and waiting for a replica that is down (a scope without a timeout)
        commits.append(d)
        return d

    ops: dict[str, Any] = {
        "tables": lambda req: [{"table_id": 1, "name": "t", "columns": [["v", "int64"]]}],
        "begin": lambda req: {"xid": 7, "sts": 1},
        "insert": lambda req: True,
        "commit": commit,
        "rollback": lambda req: {"xid": req["xid"]},
        "release_commit": lambda req: released.append(req) or {"released": True},
    }
    s = Session(ops, Catalog(ops, None), "127.0.0.1", "trust", None, 1, lambda pid, key: None)
    s.feed(startup())
    s.out.clear()
    return s, commits, released


def test_a_cancel_during_a_commit_ends_its_wait_for_replicas_and_says_it_committed() -> None:
    s, commits, released = _session()
    s.feed(query("INSERT INTO t VALUES (1, 1)"))
    assert commits and s.task is not None and s.task.waiting == "commit"
    s.cancel()
    assert released == [{"xid": 7}] and s.task is not None  # the commit goes on: no 57014
    assert b"57014" not in bytes(s.out)
    commits[0].resolve({"xid": 7, "scope": "cancelled"})   # what the node answers once the wait ended
    out = bytes(s.out)
    assert b"canceling wait for synchronous replication" in out and b"committed locally" in out
    assert b"INSERT 0 1" in out and out.endswith(wire.msg_ready("I"))


def test_a_commit_answered_without_a_cancel_has_no_warning() -> None:
    s, commits, released = _session()
    s.feed(query("INSERT INTO t VALUES (1, 1)"))
    commits[0].resolve({"xid": 7})
    assert released == [] and b"synchronous" not in bytes(s.out) and b"INSERT 0 1" in bytes(s.out)


def test_an_error_in_the_statements_rest_run_by_a_cancel_costs_its_connection() -> None:
    """The cancel's release answers the commit at once, and the rest of the query runs inside the cancel: a bug
    there must end that connection with FATAL XX000 (closing it rolls its transaction back), not be swallowed and
    leave the connection without an answer (a review), nor reach the node's loop (a differential test against
    PostgreSQL found a result encoding that stopped the node from such a continuation)."""
    s, commits, _ = _session()
    calls = [0]

    def insert(req: dict[str, Any]) -> bool:
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("a bug in the statement after the commit")
        return True

    def release(req: dict[str, Any]) -> dict[str, Any]:
        commits[-1].resolve({"xid": req["xid"], "scope": "cancelled"})  # as ScopeWaits.release does
        return {"released": True}

    s.ops["insert"], s.ops["release_commit"] = insert, release  # type: ignore[index]
    # (a transaction statement in it: each statement on its own, not one implicit transaction)
    s.feed(query("BEGIN; INSERT INTO t VALUES (1, 1); COMMIT; INSERT INTO t VALUES (2, 2)"))
    assert s.task is not None and s.task.waiting == "commit"
    s.cancel()
    out = bytes(s.out)
    assert s.closing and s.task is None
    assert b"XX000" in out and b"a bug in the statement after the commit" in out
