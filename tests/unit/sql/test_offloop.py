"""Large SQL texts are parsed (and a single statement compiled) in a thread beside the node's loop
(``muheam.sql.offloop``): the session waits, the loop does not; a cancel or the connection's end drops the
result; the worker's plan is used only against the tables the session still knows."""

from __future__ import annotations

import select
import socket
from typing import Any

import pytest
import zmq

from muheam.sql import offloop, plan, wire
from muheam.sql.catalog import Catalog
from muheam.sql.expr import SqlError, TableInfo
from muheam.sql.server import SqlServer
from muheam.sql.session import Session
from tests.unit.sql.frontend import query, startup

ROWS = 3000  # a text of about 40 KiB: over plan.LONG_STATEMENT_BYTES, so it goes to the worker



def _big_insert(start: int = 0) -> str:
    return "INSERT INTO t (id, v) VALUES " + ", ".join(f"({i}, {i})" for i in range(start, start + ROWS))


def _session(worker: offloop.ParseWorker | None) -> tuple[Session, list[tuple[str, dict[str, Any]]]]:
    calls: list[tuple[str, dict[str, Any]]] = []

    def op(name: str, answer: Any) -> Any:
        return lambda req: calls.append((name, req)) or answer

    ops: dict[str, Any] = {
        "tables": lambda req: [{"table_id": 1, "name": "t", "columns": [["v", "int64"]], "sql": {"key": "id"}}],
        "begin": op("begin", {"xid": 7, "sts": 1}), "insert_many": op("insert_many", True),
        "insert": op("insert", True), "commit": op("commit", {"xid": 7}), "rollback": op("rollback", {"xid": 7}),
    }
    s = Session(ops, Catalog(ops, None), "127.0.0.1", "trust", None, 1, lambda pid, key: None, offloop=worker)
    s.feed(startup())
    s.out.clear()
    return s, calls


def _wait_and_drain(worker: offloop.ParseWorker) -> None:
    ready, _, _ = select.select([worker.fd], [], [], 30)
    assert ready, "the worker did not finish within 30 s"

    def failed(job: offloop.Job, exc: Exception) -> None:
        raise AssertionError(f"a statement failed with a bug: {exc!r}")
    worker.drain(failed)


def _settle(worker: offloop.ParseWorker) -> None:
    """Every job handed over so far is done or dropped: a last job behind them (FIFO) has come back."""
    back: list[offloop.Parsed] = []
    worker.submit(offloop.Job("SELECT 1", [], {}, {}, 0, back.append))
    while not back:
        _wait_and_drain(worker)


@pytest.fixture
def worker() -> Any:
    w = offloop.ParseWorker()
    yield w
    w.close()


def test_the_thread_parses_and_plans_one_statement_against_the_tables_it_was_given() -> None:
    info = TableInfo("t", "id", {"v": "int64"}, {"v": "bigint"}, table_id=1)
    job = offloop.Job(_big_insert(), [], {"t": info}, {}, 4, lambda r: None)
    done = offloop.work(job)
    assert done.error is None and done.stmts is not None and len(done.stmts) == 1
    assert done.compiled is not None and done.generation == 4
    unknown = offloop.work(offloop.Job(_big_insert(), [], {}, {}, 4, lambda r: None))
    assert unknown.stmts is not None and unknown.compiled is None  # not in the copy: planned in the loop
    bad = offloop.work(offloop.Job(_big_insert() + " garbage", [], {"t": info}, {}, 4, lambda r: None))
    assert bad.stmts is None and isinstance(bad.error, SqlError) and bad.error.code == "42601"
    two = offloop.work(offloop.Job(_big_insert() + "; SELECT 1", [], {"t": info}, {}, 4, lambda r: None))
    assert two.stmts is not None and len(two.stmts) == 2 and two.compiled is None


def test_a_large_text_waits_for_the_worker_and_the_statements_behind_it_keep_their_order(
        worker: offloop.ParseWorker, monkeypatch: pytest.MonkeyPatch) -> None:
    in_loop: list[str] = []
    real = plan.parse
    monkeypatch.setattr(plan, "parse", lambda sql: in_loop.append(sql) or real(sql))
    s, calls = _session(worker)
    # the session has not looked the table up yet: the worker is given every table of the node (``known``)
    big = _big_insert()
    s.feed(query(big) + query("SELECT 1"))
    assert s.out == b"" and s.parsing is not None and calls == []  # nothing ran: the text is being parsed
    _wait_and_drain(worker)
    out = bytes(s.out)
    assert out.count(wire.msg_ready("I")) == 2 and out.index(b"INSERT 0 3000") < out.index(b"SELECT 1")
    assert s.parsing is None and s.preparsed is None
    assert worker.counters == {"parsed_off_loop": 1, "compiled_off_loop": 1}
    # the loop parsed only the short text, the large one came from the worker
    # (``plan.parse`` was also the worker's function, so it appears once for each)
    assert in_loop.count("SELECT 1") == 1 and in_loop.count(big) == 1


def test_a_plan_made_against_an_older_catalog_is_not_used(worker: offloop.ParseWorker) -> None:
    s, _ = _session(worker)
    s.catalog.lookup("t")
    s.feed(query(_big_insert()))
    s.catalog.generation += 1  # a table was found gone meanwhile: plans of the old generation are not trusted
    _wait_and_drain(worker)
    assert b"INSERT 0 3000" in bytes(s.out)
    assert s._preparsed_plan(object(), []) is None


def test_a_cancel_while_the_worker_parses_ends_the_statement_and_drops_its_result(
        worker: offloop.ParseWorker) -> None:
    s, calls = _session(worker)
    s.feed(query(_big_insert()) + query("SELECT 2"))
    assert s.parsing is not None
    s.cancel()
    out = bytes(s.out)
    assert b"57014" in out and b"SELECT 1" in out  # the next Query ran at once ("SELECT 1" is its tag)
    assert out.count(wire.msg_ready("I")) == 2
    s.out.clear()
    _settle(worker)
    assert s.out == b"" and not any(name == "insert_many" or name == "insert" for name, _ in calls)
    assert worker.counters["parsed_off_loop"] == 1  # (the settling job)


def test_a_connection_that_ends_while_its_text_is_parsed_leaves_nothing_behind(worker: offloop.ParseWorker) -> None:
    s, calls = _session(worker)
    s.feed(query(_big_insert()))
    s.close()
    _settle(worker)
    assert s.out == b"" and calls == [] and s.parsing is None


def test_without_a_worker_a_large_text_is_parsed_in_the_loop_as_before() -> None:
    s, _ = _session(None)
    s.feed(query(_big_insert()))
    assert b"INSERT 0 3000" in bytes(s.out) and s.parsing is None


def test_a_bug_in_a_statement_that_went_on_from_the_worker_costs_its_connection_not_the_node(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The statement runs from the worker's callback, outside ``SqlServer._read``'s guard: a bug there left the
    node's loop (a review's reproducer).  Now it closes that connection only; another connection is served."""
    real = plan.compile_statement

    def compile_statement(stmt: Any, *args: Any) -> Any:
        if "boom" in repr(stmt):
            raise RuntimeError("a bug in the compiler")
        return real(stmt, *args)

    monkeypatch.setattr(plan, "compile_statement", compile_statement)
    ops: dict[str, Any] = {"tables": lambda req: []}
    srv = SqlServer("postgresql://127.0.0.1:0", ops, None, 1)
    poller = zmq.Poller()
    srv.attach(poller)
    other = socket.create_connection(("127.0.0.1", srv.port))
    bad = socket.create_connection(("127.0.0.1", srv.port))
    try:
        other.sendall(startup())
        bad.sendall(startup() + query("SELECT 'boom' /* " + "x" * (40 << 10) + " */"))
        for _ in range(600):
            srv.handle(dict(poller.poll(50)))  # raised out of here before
            if srv.counters["closed"]:
                break
        assert srv.counters["closed"] == 1 and srv.offloop.counters["parsed_off_loop"] == 1
        other.sendall(query("SELECT 3"))
        got = b""
        for _ in range(200):
            srv.handle(dict(poller.poll(50)))
            other.settimeout(0.05)
            try:
                got += other.recv(65536)
            except TimeoutError:
                pass
            if b"SELECT 1" in got and got.endswith(wire.msg_ready("I")):
                break
        assert b"SELECT 1" in got  # (the command tag of a one-row SELECT)
    finally:
        srv.close()
        bad.close()
        other.close()


def test_a_column_without_a_table_and_an_expression_nested_too_deep_are_errors_of_the_statement() -> None:
    """Both escaped the compiler as Python exceptions (``RowDependent``, ``RecursionError``), which cost the
    connection; PostgreSQL answers 42703 and 54001."""
    with pytest.raises(SqlError) as missing:
        plan.compile_statement(plan.parse("SELECT nope")[0], lambda name: None, [], lambda name: "")
    assert missing.value.code == "42703" and 'column "nope" does not exist' in missing.value.message
    with pytest.raises(SqlError) as deep:
        plan.compile_statement(plan.parse("SELECT " + "+".join(["1"] * 5000))[0], lambda name: None, [],
                               lambda name: "")
    assert deep.value.code == "54001"


def test_two_workers_busy_at_once_give_the_process_its_switch_interval_back() -> None:
    """Each worker lowered the interpreter's switch interval while it worked and put back what it had found: two
    workers of one process (two SQL ports) overlapping left it at the lowered value for good, so the whole
    process switched threads ten times as often ever after."""
    import sys
    import threading

    normal = sys.getswitchinterval()
    gate_a, gate_b, inside = threading.Event(), threading.Event(), threading.Barrier(3)
    real_work = offloop.work

    def held(job: offloop.Job) -> offloop.Parsed:
        inside.wait(10)
        (gate_a if job.sql == "SELECT 1" else gate_b).wait(10)
        return real_work(job)

    a, b = offloop.ParseWorker(), offloop.ParseWorker()
    try:
        offloop.work = held  # type: ignore[assignment]
        back: list[offloop.Parsed] = []
        a.submit(offloop.Job("SELECT 1", [], {}, {}, 0, back.append))
        b.submit(offloop.Job("SELECT 2", [], {}, {}, 0, back.append))
        inside.wait(10)  # both are working
        assert sys.getswitchinterval() == offloop.SWITCH_INTERVAL
        gate_a.set()  # a finishes first, b still works
        _wait_and_drain(a)
        assert sys.getswitchinterval() == offloop.SWITCH_INTERVAL
        gate_b.set()
        _wait_and_drain(b)
        assert len(back) == 2
        assert sys.getswitchinterval() == normal
    finally:
        offloop.work = real_work  # type: ignore[assignment]
        gate_a.set()
        gate_b.set()
        a.close()
        b.close()
        sys.setswitchinterval(normal)


def test_a_failing_failure_handler_does_not_strand_the_jobs_behind_it() -> None:
    """``drain`` hands a statement's bug to ``failed`` (the server closes that connection); had that raised too,
    the jobs finished behind it waited for the next job's wake-up, which may never come."""
    worker = offloop.ParseWorker()
    try:
        back: list[str] = []

        def broken(parsed: offloop.Parsed) -> None:
            raise RuntimeError("a bug in the statement")
        worker.submit(offloop.Job("SELECT 1", [], {}, {}, 0, broken))
        worker.submit(offloop.Job("SELECT 2", [], {}, {}, 0, lambda p: back.append(p.sql)))
        seen: list[str] = []

        def failed(job: offloop.Job, exc: Exception) -> None:
            seen.append(job.sql)
            raise OSError("closing the connection failed too")
        deadline = 30.0
        while not back and deadline > 0:
            ready, _, _ = select.select([worker.fd], [], [], 1.0)
            deadline -= 1.0
            if ready:
                worker.drain(failed)
        assert seen == ["SELECT 1"] and back == ["SELECT 2"]
    finally:
        worker.close()
