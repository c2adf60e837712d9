"""A statement whose row operations all answer at once runs over several loop turns once a turn's time budget is
spent (``muheam.sql.turns``), with the node's operations replaced by functions and a clock the test moves: a
parked statement resumes where it stopped, a cancel or a closed connection while it is parked behaves as while
it waits for an answer, and statements parked together each go on every turn."""

from __future__ import annotations

from typing import Any

import pytest

from muheam.sql import execute, wire
from muheam.sql.catalog import Catalog
from muheam.sql.session import Session
from muheam.sql.turns import Turns
from tests.unit.sql.frontend import query, startup


class _Node:
    """Operations that each take ``cost`` seconds of the test's clock, and what they were asked."""

    def __init__(self, cost: float = 0.001) -> None:
        self.now = 0.0
        self.cost = cost
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.turns = Turns(0.05, clock=lambda: self.now)
        self.ops: dict[str, Any] = {
            "tables": lambda req: [{"table_id": 1, "name": "t", "columns": [["v", "int64"]]}],
            "begin": self._op("begin", lambda req: {"xid": 7, "sts": 1}),
            "insert": self._op("insert", lambda req: True),
            "commit": self._op("commit", lambda req: {"xid": req["xid"]}),
            "rollback": self._op("rollback", lambda req: {"xid": req["xid"]}),
        }

    def _op(self, name: str, answer: Any) -> Any:
        def op(req: dict[str, Any]) -> Any:
            self.calls.append((name, req))
            self.now += self.cost
            return answer(req)
        return op

    def session(self) -> Session:
        s = Session(self.ops, Catalog(self.ops, None), "127.0.0.1", "trust", None, 1, lambda pid, key: None,
                    self.turns)
        s.feed(startup())
        s.out.clear()
        return s

    def turn(self) -> None:
        self.turns.start()
        self.turns.run()

    def inserted(self) -> list[int]:
        return [int(req["key"]) for name, req in self.calls if name == "insert"]


def _insert(rows: range) -> bytes:
    return query("INSERT INTO t VALUES " + ", ".join(f"({i}, {i})" for i in rows))


def test_a_statement_past_the_budget_goes_on_at_the_next_turns() -> None:
    node = _Node()
    s = node.session()
    node.turns.start()
    s.feed(_insert(range(200)))
    assert b"INSERT" not in bytes(s.out) and node.turns.pending
    assert 45 <= len(node.inserted()) <= 55  # the budget: 50 operations of 1 ms
    turns = 0
    while node.turns.pending:
        node.turn()
        turns += 1
        assert turns < 10
    assert node.inserted() == list(range(200))
    assert [name for name, _ in node.calls][-1] == "commit"
    assert bytes(s.out).endswith(wire.msg_command_complete("INSERT 0 200") + wire.msg_ready("I"))
    assert node.turns.slices == turns


def test_a_statement_within_the_budget_ends_in_its_turn() -> None:
    node = _Node()
    s = node.session()
    node.turns.start()
    s.feed(_insert(range(10)))
    assert not node.turns.pending and node.turns.slices == 0
    assert bytes(s.out).endswith(wire.msg_command_complete("INSERT 0 10") + wire.msg_ready("I"))


def test_a_cancel_while_parked_ends_the_statement_and_rolls_back() -> None:
    node = _Node()
    s = node.session()
    node.turns.start()
    s.feed(_insert(range(200)))
    done = len(node.inserted())
    s.cancel()
    assert b"57014" in bytes(s.out) and bytes(s.out).endswith(wire.msg_ready("I"))
    assert ("rollback", {"xid": 7}) in node.calls
    node.turn()  # the parked rest finds its statement cancelled: nothing more is written
    assert len(node.inserted()) == done and not node.turns.pending
    assert not any(name == "commit" for name, _ in node.calls)


def test_a_connection_closed_after_its_begin_answered_but_before_it_was_learnt_rolls_it_back() -> None:
    node = _Node(cost=0.06)  # the begin alone spends the turn's budget: the statement parks holding its XID
    s = node.session()
    node.turns.start()
    s.feed(_insert(range(3)))
    assert [name for name, _ in node.calls] == ["begin"] and node.turns.pending
    s.close()
    node.turn()
    assert [name for name, _ in node.calls] == ["begin", "rollback"]
    assert node.inserted() == []


def test_statements_parked_together_each_go_on_every_turn() -> None:
    node = _Node()
    first, second = node.session(), node.session()
    node.turns.start()
    first.feed(_insert(range(0, 100)))
    second.feed(_insert(range(1000, 1100)))
    while b"INSERT" not in bytes(first.out):  # the older statement takes the budget, the other one step a turn
        before = node.inserted()
        node.turn()
        after = node.inserted()[len(before):]
        assert any(k >= 1000 for k in after), after
        assert b"INSERT" in bytes(first.out) or any(k < 1000 for k in after), after
    while node.turns.pending:
        node.turn()
    assert sorted(node.inserted()) == list(range(100)) + list(range(1000, 1100))
    assert bytes(first.out).endswith(wire.msg_command_complete("INSERT 0 100") + wire.msg_ready("I"))
    assert bytes(second.out).endswith(wire.msg_command_complete("INSERT 0 100") + wire.msg_ready("I"))


def test_a_statements_own_work_on_many_rows_goes_on_over_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sorting, result columns and encoding of many rows are the statement's own work, no operation between: in
    slices of ``SLICE_ROWS`` rows it parks at a spent budget too, and answers exactly what it answers in one go."""
    monkeypatch.setattr(execute, "SLICE_ROWS", 10)
    table = {k: {"v": (k * 37) % 11} for k in range(300)}
    ticks = [0.0]

    def clock() -> float:  # each look at the clock is a millisecond of work: the budget runs out mid-statement
        ticks[0] += 0.001
        return ticks[0]

    def session(turns: Turns | None) -> Session:
        ops: dict[str, Any] = {
            "tables": lambda req: [{"table_id": 1, "name": "t", "columns": [["v", "int64"]]}],
            "begin": lambda req: {"xid": 7, "sts": 1},
            "snapshot": lambda req: {},
            "scan": lambda req: {"rows": [[k, dict(r)] for k, r in table.items()], "next": None},
            "commit": lambda req: {"xid": req["xid"]},
        }
        s = Session(ops, Catalog(ops, None), "127.0.0.1", "trust", None, 1, lambda pid, key: None, turns)
        s.feed(startup())
        s.out.clear()
        return s

    sorting = query("SELECT key, v FROM t ORDER BY v DESC, key")
    whole = session(None)
    whole.feed(sorting)
    turns = Turns(0.05, clock=clock)
    sliced = session(turns)
    turns.start()
    sliced.feed(sorting)
    assert turns.pending and b"SELECT 300" not in bytes(sliced.out)
    rounds = 0
    while turns.pending:
        turns.start()
        turns.run()
        rounds += 1
        assert rounds < 1000
    assert rounds > 1 and bytes(sliced.out) == bytes(whole.out)
    assert bytes(whole.out).endswith(wire.msg_command_complete("SELECT 300") + wire.msg_ready("I"))
    first = wire.msg_data_row([b"8", b"10"])  # v = 10 first (DESC), then keys ascending: 37 * 8 = 296 = 10 mod 11
    out = bytes(whole.out)
    assert out[:1] == b"T" and out[1 + int.from_bytes(out[1:5], "big"):].startswith(first), out[:120]
