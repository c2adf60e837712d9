"""The implicit transaction of a multi-statement Query (found by a review: a cancel left it in a failed block),
with the node's operations replaced by functions as in test_session_cancel.py."""

from __future__ import annotations

from typing import Any

from muheam.net.clientport import Deferred, RequestError
from muheam.sql import wire
from muheam.sql.catalog import Catalog
from muheam.sql.session import Session
from tests.unit.sql.frontend import query, startup


def _session(insert: Any, commit: Any = None) -> tuple[Session, list[Any]]:
    calls: list[Any] = []
    xids = iter(range(7, 1000))

    def begin(req: dict[str, Any]) -> dict[str, Any]:
        x = next(xids)
        calls.append(("begin", x))
        return {"xid": x, "sts": 1}

    ops: dict[str, Any] = {
        "tables": lambda req: [{"table_id": 1, "name": "t", "columns": [["v", "int64"]]}],
        "begin": begin,
        "snapshot": lambda req: {},
        "insert": insert,
        "commit": commit or (lambda req: calls.append(("commit", req["xid"])) or {"xid": req["xid"]}),
        "rollback": lambda req: calls.append(("rollback", req["xid"])) or {"xid": req["xid"]},
    }
    s = Session(ops, Catalog(ops, None), "127.0.0.1", "trust", None, 1, lambda pid, key: None)
    s.feed(startup())
    s.out.clear()
    return s, calls


def test_cancel_during_an_implicit_transaction_leaves_the_session_idle() -> None:
    """PostgreSQL: a cancel of a multi-statement Query answers 57014 and ReadyForQuery 'I'; the next Query runs
    normally.  The implicit block set ``explicit``/``tx='T'``; ``cancel`` goes through ``_failed`` (tx 'E') and
    sends ReadyForQuery('E') without ending the implicit block: the session is left in a failed block."""
    waits: list[Deferred] = []

    def insert(req: dict[str, Any]) -> Any:
        if req["key"] == 2:  # the second row waits (a row lock another transaction holds)
            d = Deferred()
            waits.append(d)
            return d
        return True

    s, _ = _session(insert)
    s.feed(query("INSERT INTO t VALUES (1, 1); INSERT INTO t VALUES (2, 2)"))
    assert waits and s.task is not None
    s.cancel()
    out = bytes(s.out)
    assert b"57014" in out
    assert out.endswith(wire.msg_ready("I")), out[-6:]
    s.out.clear()
    s.feed(query("SELECT 1"))
    out = bytes(s.out)
    assert b"25P02" not in out and out.endswith(wire.msg_ready("I")), out


def test_failed_implicit_commit_ends_idle() -> None:
    """The implicit block's COMMIT fails (40001): error, ReadyForQuery 'I', next Query normal (this passes)."""
    def commit(req: dict[str, Any]) -> Any:
        raise RequestError("SerializationFailure", "could not serialize")

    s, _ = _session(lambda req: True, commit)
    s.feed(query("INSERT INTO t VALUES (1, 1); INSERT INTO t VALUES (2, 2)"))
    out = bytes(s.out)
    assert b"40001" in out and out.endswith(wire.msg_ready("I")), out
    assert out.count(b"INSERT 0 1") == 2
    s.out.clear()
    s.feed(query("SELECT 1"))
    assert bytes(s.out).endswith(wire.msg_ready("I")) and b"25P02" not in bytes(s.out)
