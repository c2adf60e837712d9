"""Running plans through the session layer: each statement is a generator that yields session operations.

A plan's run is a Python generator that yields ``(op, args)`` -- the very operations the client port serves
(``get``, ``insert``, ``add``, ``scan``, ...; ``muheam.cluster.sessions``) -- and is sent each result back.  The
driver (``Task``) calls the operation in the node's loop; when it answers at once the generator goes on at once,
when it answers later (a ``Deferred``: a lock grant, a commit round) the generator resumes from that callback.
So a statement waits without a thread and without blocking the loop, and the SQL layer adds no protocol of its
own under the sessions: a SQL transaction is exactly a client-port transaction.

An operation's error code becomes the SQLSTATE a PostgreSQL client expects (``SQLSTATE_BY_CODE``).
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Callable, Generator, Mapping, cast

from muheam import failpoints
from muheam.errors import MuheamError
from muheam.net.clientport import Deferred, RequestError
from muheam.sql import wire
from muheam.sql.aggregate import Accumulator
from muheam.sql.expr import (Expr, Params, Row, SqlError, TableInfo, arithmetic_error, coerce, int_range,
                             sort_key, to_column)
from muheam.sql.plan import Delete, Insert, Select, Update
from muheam.sql.turns import Turns

Request = tuple[str, dict[str, Any]]
Gen = Generator[Request, Any, "Result"]
Operation = Callable[[dict[str, Any]], Any]

SQLSTATE_BY_CODE = {
    "SerializationFailure": "40001", "RowChanged": "40001", "DeadlockDetected": "40P01", "LockTimeout": "55P03",
    "DuplicateKey": "23505", "NoSuchTable": "42P01", "TableExists": "42P07", "KeyNotFound": "02000",
    "RowValueError": "22023", "ValueOutOfRange": "22003", "SchemaError": "42601", "NoSuchTransaction": "25P01", "StorageFailed": "58030",
    "EngineStopped": "58030", "Fenced": "57P01", "bad_request": "XX000",
}


@dataclass
class Result:
    tag: str
    rows: list[list[Any]] = field(default_factory=list)
    encoded: list[bytes] | None = None
    """The rows as DataRow messages, once ``encoded`` made them."""


TURN: Request = ("turn", {})
"""Yielded between slices of a statement's own work on many rows (sorting keys, result columns, encoding): no
operation, but the statement parks there when the loop turn's budget is spent (``Task``)."""
SLICE_ROWS = 5_000
"""Rows per slice of that work."""


class OpFailed(Exception):
    """A session operation answered with an error (thrown into the statement's generator)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def sql(self) -> SqlError:
        message = self.message
        if self.code == "DuplicateKey":  # the words PostgreSQL clients and people look for
            message = f"duplicate key value violates unique constraint (primary key): {message}"
        return SqlError(SQLSTATE_BY_CODE.get(self.code, "XX000"), message)


class Task:
    """Drives one generator to its end over ``ops``; ``done(result, error)`` is called exactly once."""

    def __init__(self, gen: Generator[Request, Any, Any], ops: Mapping[str, Operation],
                 done: Callable[[Any, SqlError | None], None], xid: Callable[[], int | None],
                 table_gone: Callable[[], object] = lambda: None,
                 internal_error: Callable[[BaseException], None] | None = None, turns: Turns | None = None,
                 lock_timeout: float = 0.0) -> None:
        """``turns``: the loop turn's time budget; past it, the statement continues at the next turn
        (``muheam.sql.turns``; without it the statement runs to its first wait).  ``table_gone``: called when a
        row operation named a table the node no longer has (dropped since the statement was planned: the
        caller's catalog must look again).  ``internal_error``: called with an
        exception the statement's generator or ``done`` raised while resuming from an operation's answer
        (there, nothing above would catch it but the node's loop); without it the exception propagates."""
        self.gen, self.ops, self.done, self.xid = gen, ops, done, xid
        self.table_gone = table_gone
        self.internal_error = internal_error
        self.turns = turns
        self.lock_timeout = lock_timeout
        """Seconds a row operation may wait for a row lock (the session's ``lock_timeout``; 0: the node's)."""
        self.cancelled = False
        self.waiting: str | None = None
        """The operation whose answer the task waits for (``None`` between operations) ..."""
        self.waiting_args: dict[str, Any] = {}
        """... and what it was asked (the session ends a commit's wait for replicas by its ``xid``)."""

    def start(self) -> None:
        self._step(True, None)

    def _step(self, ok: bool, value: Any) -> None:
        while True:
            try:
                if ok:
                    op, args = self.gen.send(value)
                else:
                    op, args = self.gen.throw(value)
            except StopIteration as stop:
                self.done(stop.value, None)
                return
            except OpFailed as exc:
                if exc.code == "NoSuchTable":
                    self.table_gone()
                self.done(None, exc.sql())
                return
            except SqlError as exc:
                self.done(None, exc)
                return
            except ArithmeticError as exc:  # (a Decimal's edge the checks did not foresee: the statement's error)
                self.done(None, arithmetic_error(exc))
                return
            if op == "turn":  # no operation: the statement's own work, which goes on here or at the next turn
                ok, value = True, None
            else:
                if "xid" not in args and op not in ("begin", "tables", "create_table", "drop_table"):
                    args["xid"] = self.xid()
                if "table" in args:
                    args["replannable"] = True  # a table id gone leaves the transaction running: the session decides
                    if self.lock_timeout:
                        args["lock_timeout"] = self.lock_timeout
                failpoints.hit("sql.operation")  # tests: row operations slow enough to outlast a loop turn's budget
                ok, value = self._call(op, args)
                if isinstance(value, Deferred):
                    settled = value.take()
                    if settled is None:  # it answers later: resume from its callback
                        self.waiting, self.waiting_args = op, args
                        value.then(self._resume)
                        return
                    ok, value = settled[0], settled[1] if settled[0] else OpFailed(*settled[1])
            if self.turns is not None and self.turns.spent():  # answered at once, but the turn is over: the
                self.waiting, self.waiting_args = op, args     # rest goes on at the next, as if answered then
                self.turns.later(functools.partial(self._go, ok, value))
                return

    def _call(self, op: str, args: dict[str, Any]) -> tuple[bool, Any]:
        try:
            return True, self.ops[op](args)
        except RequestError as exc:
            return False, OpFailed(exc.code, str(exc))
        except MuheamError as exc:
            return False, OpFailed(type(exc).__name__, str(exc))
        except (ValueError, TypeError, KeyError) as exc:
            return False, OpFailed("bad_request", f"{op}: {exc}")

    def _resume(self, ok: bool, value: Any) -> None:
        self._go(ok, value if ok else OpFailed(*value))

    def _go(self, ok: bool, value: Any) -> None:
        op, self.waiting = self.waiting, None
        if self.cancelled:
            if ok and op == "begin":  # cancelled (or the connection closed) while the snapshot waited: the
                self._abandon(value)  # session never learnt this XID, so nobody else would ever end it
            return
        if self.internal_error is None:
            self._step(ok, value)
            return
        try:
            self._step(ok, value)
        except Exception as exc:  # noqa: BLE001 - handed to the connection's owner, which closes it
            self.cancelled = True
            self.internal_error(exc)

    def _abandon(self, started: Any) -> None:
        """Roll back a transaction whose ``begin`` answered after the task was cancelled."""
        try:
            self.ops["rollback"]({"xid": int(started["xid"])})
        except (MuheamError, RequestError, KeyError, TypeError, ValueError):
            pass  # ended meanwhile (the idle timeout): nothing left to undo


# --- statements ------------------------------------------------------------------------------------------------

def _point_key(v: Any) -> int | None:
    """The key a ``key = v`` lookup reads, or ``None`` when no bigint equals ``v`` (a fraction, a number beyond
    bigint's range: PostgreSQL compares such a value and finds no row)."""
    if isinstance(v, str):
        v = coerce(v, wire.INT8)
    if isinstance(v, (float, Decimal)):
        if not (math.isfinite(v) if isinstance(v, float) else v.is_finite()) or v != int(v):
            return None
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise SqlError("42883", f"operator does not exist: bigint = {type(v).__name__}")
    lowest, highest, _ = int_range(wire.INT8)
    return v if lowest <= v <= highest else None


def store(table: TableInfo, column: str, value: Any) -> Any:
    """``value`` as ``column`` keeps it, checked against the column's declared SQL type."""
    return to_column(value, table.columns[column], column, table.oid(column), table.char_limit(column))


def _add_range(table: TableInfo, column: str) -> list[int] | None:
    """The bounds an ``add`` on ``column`` must keep (an ``integer`` column is an int64 in the engine)."""
    oid = table.oid(column)
    if oid not in (wire.INT4, wire.INT2):
        return None
    lowest, highest, _ = int_range(oid)
    return [lowest, highest]


@dataclass
class Redo:
    """One statement's READ COMMITTED bookkeeping: may it redo a change that lost to a committed one (``rc``),
    and has a redo moved its snapshot (``moved``: the rows it read before are then read again, WHERE checked
    again, before each is changed or locked; computed from the old read, a later row's change would overwrite
    a commit the new snapshot sees)."""

    rc: bool = False
    moved: bool = False


MAX_STATEMENT_ROWS = 200_000
"""Rows one statement may hold (a SELECT's rows before ORDER BY and LIMIT, an UPDATE's or DELETE's before they
change them): beyond, SQLSTATE 54000 names the limit.  A SELECT of aggregates alone holds none."""
SCAN_PAGE_ROWS = 5_000
"""Rows per page of a statement's table scan: the pages of one statement share its snapshot, so every row comes
exactly once (``Sessions.op_scan``); a page is one operation of a few milliseconds, and the statement's turn
budget (``muheam.sql.turns``) applies between pages, so a large table neither hits the unpaged scan's row limit
nor holds the node's loop for one long turn."""


def _read_each(table: TableInfo, where: Expr | None, points: list[Expr] | None, params: Params,
               each: Callable[[list[Row]], bool]) -> Generator[Request, Any, None]:
    """The rows the statement's WHERE selects, handed to ``each`` a page at a time (the key in each row), until
    ``each`` answers False."""
    name, key = table.ref, table.key
    if points is not None:
        rows: list[Row] = []
        seen: set[int] = set()
        for p in points:
            v = p.fn({}, params)
            if v is None:
                continue
            k = _point_key(v)
            if k is None or k in seen:
                continue
            seen.add(k)
            found = yield ("get", {"table": name, "key": k})
            if found is not None:
                found[key] = k
                rows.append(found)
        each(rows if where is None else [r for r in rows if where.fn(r, params)])
        return
    at: int | None = 1  # paged: each page one bounded operation (the loop's turn budget applies between them)
    while at is not None:
        page = yield ("scan", {"table": name, "from_bucket": at, "page_rows": SCAN_PAGE_ROWS})
        found = []
        for k, row in page["rows"]:
            row[key] = k
            if where is None or where.fn(row, params):
                found.append(row)
        if not each(found):
            return
        at = page["next"]


def _read(table: TableInfo, where: Expr | None, points: list[Expr] | None, params: Params,
          lock: bool = False, redo: Redo | None = None, nowait: bool = False,
          cap: int | None = None) -> Generator[Request, Any, list[Row]]:
    """The rows selected (at most ``cap``: the first found)."""
    rows: list[Row] = []

    def keep(found: list[Row]) -> bool:
        if cap is not None and len(rows) + len(found) >= cap:
            rows.extend(found[:cap - len(rows)])
            return False
        if len(rows) + len(found) > MAX_STATEMENT_ROWS:
            raise SqlError("54000", f"the statement reads more than {MAX_STATEMENT_ROWS:,} rows of table "
                                    f"{table.name!r}, which MUHEAM's SQL port holds in memory",
                           "narrow the WHERE (a key, a key range), or read it in parts; aggregates alone "
                           "(count(*), sum, min, max, avg) have no such limit")
        rows.extend(found)
        return True

    yield from _read_each(table, where, points, params, keep)
    if lock:
        rows = yield from _change_rows(table, rows, where, params, redo or Redo(),
                                       lambda row: (("lock", {"table": table.ref, "key": row[table.key],
                                                              **({"nowait": True} if nowait else {})}), row))
    return rows


REDO_LIMIT = 100
"""READ COMMITTED: how often one row's change is redone after losing to committed changes before the statement
fails with 40001 (PostgreSQL redoes it without limit; a row changed this often is better retried whole)."""


def _again(table: TableInfo, row: Row, where: Expr | None, params: Params,
           redo: Redo) -> Generator[Request, Any, Row | None]:
    """``row`` as the statement's snapshot sees it now: as read, or after a redo moved the snapshot, read again
    (``None``: gone, or no longer matching WHERE)."""
    if not redo.moved:
        return row
    key = row[table.key]
    found = yield ("get", {"table": table.ref, "key": key})
    if found is None:
        return None
    found[table.key] = key
    return found if where is None or where.fn(found, params) else None


def _new_snapshot(exc: OpFailed, redo: Redo, tries: list[int]) -> Generator[Request, Any, None]:
    """A row change lost to a transaction that committed after the snapshot.  Under REPEATABLE READ (or after
    ``REDO_LIMIT`` tries) the error stands; under READ COMMITTED the statement takes a new snapshot, which sees
    that commit, to redo the change."""
    if not redo.rc or exc.code != "RowChanged":
        raise exc
    tries[0] += 1
    if tries[0] > REDO_LIMIT:
        raise exc
    yield ("snapshot", {})
    redo.moved = True


def _redo(exc: OpFailed, table: TableInfo, key: int, where: Expr | None, params: Params,
          redo: Redo, tries: list[int]) -> Generator[Request, Any, Row | None]:
    """The row change is redone on the newest version, as PostgreSQL's EvalPlanQual does: a new snapshot
    (``_new_snapshot``), the row read again and WHERE checked again; ``None`` when the row is gone or no longer
    qualifies (the statement skips it)."""
    yield from _new_snapshot(exc, redo, tries)
    return (yield from _again(table, {table.key: key}, where, params, redo))


def _change_rows(table: TableInfo, rows: list[Row], where: Expr | None, params: Params, redo: Redo,
                 change: Callable[[Row], tuple[Request, Row]],
                 returning: list[Expr] | None = None) -> Generator[Request, Any, list[Any]]:
    """Send ``change(row)``'s request for each row (an update, delete or lock), reading a row again first once a
    redo has moved the snapshot (``_again``) and redoing a change that lost to a commit (``_redo``); returns the
    rows changed, as ``change`` says they are after it, or with ``returning`` what it gives for each, computed
    right after that row's change (an error in it ends the statement there, as in PostgreSQL)."""
    changed: list[Any] = []
    for first in rows:
        key, tries = first[table.key], [0]
        row = yield from _again(table, first, where, params, redo)
        while row is not None:
            request, after = change(row)
            try:
                yield request
            except OpFailed as exc:
                row = yield from _redo(exc, table, key, where, params, redo, tries)
                continue
            changed.append([t.fn(after, params) for t in returning] if returning else after)
            break
    return changed


def _count(e: Expr | None, params: Params, what: str = "LIMIT") -> int | None:
    if e is None:
        return None
    v = e.fn({}, params)
    if v is None:
        return None
    n = int(to_column(v, "int64", what))
    if n < 0:
        raise SqlError("2201W" if what == "LIMIT" else "2201X", f"{what} must not be negative")
    return n


def run_select(plan: Select, params: Params, redo: Redo | None = None) -> Gen:
    offset, limit = _count(plan.offset, params, "OFFSET") or 0, _count(plan.limit, params)
    if plan.table is None:
        one = [] if plan.where is not None and not plan.where.fn({}, params) else [[t.fn({}, params) for t in plan.targets]]
        return _window(one, offset, limit)
    if plan.aggs is not None:  # accumulated page by page: no rows kept (the compiler refuses FOR UPDATE here)
        accs = [Accumulator(a.func, a.arg) for a in plan.aggs]

        def add(rows: list[Row]) -> bool:
            for acc in accs:
                acc.add(rows, params)
            return True

        yield from _read_each(plan.table, plan.where, plan.points, params, add)
        return _window([[acc.result() for acc in accs]], offset, limit)
    # without ORDER BY, the first offset + limit rows found are the answer: no need to read (and hold) the rest
    cap = offset + limit if limit is not None and not plan.order and not plan.lock else None
    rows = yield from _read(plan.table, plan.where, plan.points, params, plan.lock, redo, plan.nowait, cap)
    for expr, desc in reversed(plan.order):  # stable sorts, last key first
        rows = yield from _sorted(rows, expr, desc, params)
    rows = rows[offset:] if limit is None else rows[offset:offset + limit]
    out = yield from _in_slices(rows, lambda part: [[t.fn(r, params) for t in plan.targets] for r in part])
    return Result(f"SELECT {len(out)}", out)


def _in_slices(items: list[Any], work: Callable[[list[Any]], list[Any]]) -> Generator[Request, Any, list[Any]]:
    """``work`` over ``items`` in slices of ``SLICE_ROWS``, with ``TURN`` between, its results concatenated."""
    out: list[Any] = []
    for i in range(0, len(items), SLICE_ROWS):
        if i:
            yield TURN
        out += work(items[i:i + SLICE_ROWS])
    return out


def _window(rows: list[list[Any]], offset: int, limit: int | None) -> Result:
    rows = rows[offset:] if limit is None else rows[offset:offset + limit]
    return Result(f"SELECT {len(rows)}", rows)


def _sorted(rows: list[Row], expr: Expr, desc: bool, params: Params) -> Generator[Request, Any, list[Row]]:
    """``rows`` stably sorted by ``expr`` in slices of ``SLICE_ROWS`` with ``TURN`` between: each slice's keys
    and order, then a merge of the sorted slices (stable: a tie takes the earlier slice first), taken a slice at
    a time.  Sorting 200,000 rows in one call took about a second of one loop turn."""
    f = expr.fn
    keys: list[Any] = []
    runs: list[list[int]] = []
    for i in range(0, len(rows), SLICE_ROWS):
        if i:
            yield TURN
        keys.extend(sort_key(f(r, params)) for r in rows[i:i + SLICE_ROWS])
        runs.append(sorted(range(i, min(i + SLICE_ROWS, len(rows))), key=keys.__getitem__, reverse=desc))
    if len(runs) <= 1:
        return [rows[i] for run in runs for i in run]
    merged = heapq.merge(*runs, key=keys.__getitem__, reverse=desc)
    out: list[Row] = []
    while len(out) < len(rows):
        yield TURN
        out.extend(rows[i] for i in itertools.islice(merged, SLICE_ROWS))
    return out


def run_insert(plan: Insert, params: Params, redo: Redo | None = None) -> Gen:
    table, out = plan.table, []
    for exprs in plan.rows:
        row: Row = {}
        key = 0
        for col, e in exprs.items():
            if col == table.key:
                key = int(to_column(e.fn({}, params), "int64", col))
            else:
                row[col] = store(table, col, e.fn({}, params))
        tries = [0]
        while True:
            try:
                yield ("insert", {"table": table.ref, "key": key, "row": row})
                break
            except OpFailed as exc:  # the key was inserted or deleted by a later commit: look again
                yield from _new_snapshot(exc, redo or Redo(), tries)
        if plan.returning:
            full = {**row, table.key: key}
            out.append([t.fn(full, params) for t in plan.returning])
    return Result(f"INSERT 0 {len(plan.rows)}", out)


def run_update(plan: Update, params: Params, redo: Redo | None = None) -> Gen:
    table = plan.table

    def change(row: Row) -> tuple[Request, Row]:
        key = row[table.key]
        raw = plan.add[1].fn(row, params) if plan.add is not None else None
        if plan.add is not None and _whole_delta(table, plan.add[0], raw):
            col, _, sign = plan.add
            delta = sign * to_column(raw, table.columns[col], col)
            # the new value as computed from the version read: returned, not stored (the engine adds)
            return ("add", {"table": table.ref, "key": key, "column": col, "delta": delta,
                            "range": _add_range(table, col)}), {**row, col: row[col] + delta}
        changes = {c: store(table, c, e.fn(row, params)) for c, e in plan.sets.items()}
        return ("update", {"table": table.ref, "key": key, "changes": changes}), {**row, **changes}

    fast = _fast_add(plan, params)
    if fast is not None:
        return (yield from _add_by_key(plan, fast[0], fast[1], redo or Redo()))
    rows = yield from _read(table, plan.where, plan.points, params)
    changed = yield from _change_rows(table, rows, plan.where, params, redo or Redo(), change, plan.returning)
    return Result(f"UPDATE {len(changed)}", changed if plan.returning else [])


def _fast_add(plan: Update, params: Params) -> tuple[int, int | float] | None:
    """``(key, delta)`` when ``_add_by_key`` gives what reading the row first would: ``SET c = c + x`` with
    ``WHERE key = k`` alone and no RETURNING, the key a whole number (a fractional one matches no row: the read
    path's WHERE says so) and the delta valid (NULL or out of range is an error only for a row that exists: the
    read path evaluates it per row found).  Else ``None``."""
    if plan.add is None or not plan.key_only or plan.returning or plan.points is None:
        return None
    col, delta_e, sign = plan.add
    k = plan.points[0].fn({}, params)
    if type(k) is not int or not _whole_delta(plan.table, col, delta_e.fn({}, params)):
        return None
    try:
        return int(to_column(k, "int64", "key")), sign * to_column(delta_e.fn({}, params), plan.table.columns[col], col)
    except SqlError:
        return None


def _whole_delta(table: TableInfo, column: str, delta: Any) -> bool:
    """May ``c = c + delta`` be an ``add`` of ``delta``?  Not a fraction into an integer column: PostgreSQL
    rounds the sum, not the delta (-2 + 1.5 is -1, -2 + round(1.5) is 0)."""
    return table.columns[column] != "int64" or not isinstance(delta, (float, Decimal))


def _add_by_key(plan: Update, key: int, delta: int | float, redo: Redo) -> Gen:
    """``UPDATE t SET c = c + x WHERE key = k`` without RETURNING: one ``add`` on the row the snapshot sees,
    without reading it first (pgbench's three updates).  The same outcome as reading it (``_fast_add`` says
    when): ``add`` finds exactly the version the read would, a row the snapshot does not see answers False
    (UPDATE 0, as the read would find nothing), and one changed by a later commit is redone under READ
    COMMITTED after a new snapshot."""
    assert plan.add is not None
    table, col = plan.table, plan.add[0]
    tries = [0]
    while True:
        try:
            found = yield ("add", {"table": table.ref, "key": key, "column": col, "delta": delta,
                                   "missing_ok": True, "range": _add_range(table, col)})
            return Result(f"UPDATE {1 if found else 0}")
        except OpFailed as exc:
            yield from _new_snapshot(exc, redo, tries)


def run_delete(plan: Delete, params: Params, redo: Redo | None = None) -> Gen:
    table = plan.table
    rows = yield from _read(table, plan.where, plan.points, params)
    changed = yield from _change_rows(table, rows, plan.where, params, redo or Redo(),
                                      lambda row: (("delete", {"table": table.ref, "key": row[table.key]}), row),
                                      plan.returning)
    return Result(f"DELETE {len(changed)}", changed if plan.returning else [])


def answers_counted(gen: Gen, answered: list[int]) -> Gen:
    """``gen``'s requests, passed through; ``answered[0]`` counts the answers it got (errors thrown in are passed
    on and not counted).  Tells whether a statement that failed had done anything before (``Session``: a plan
    is made again only for a statement whose first operation found its table gone)."""
    answer: Any = None
    error: BaseException | None = None
    while True:
        try:
            request = gen.throw(error) if error is not None else gen.send(answer)
        except StopIteration as stop:
            return cast(Result, stop.value)
        answer, error = None, None
        try:
            answer = yield request
            answered[0] += 1
        except Exception as exc:  # noqa: BLE001 - thrown in by the task: the statement's generator decides
            error = exc


def run_plan(plan: Select | Insert | Update | Delete, params: Params, rc: bool = False) -> Gen:
    """The statement; ``rc``: its transaction runs READ COMMITTED (a change that loses to a committed one is
    redone on the newest version, see ``_redo``)."""
    redo = Redo(rc)
    if isinstance(plan, Select):
        return run_select(plan, params, redo)
    if isinstance(plan, Insert):
        return run_insert(plan, params, redo)
    if isinstance(plan, Update):
        return run_update(plan, params, redo)
    return run_delete(plan, params, redo)


def encoded(gen: Gen, oids: list[int], formats: list[int] | None) -> Gen:
    """``gen``'s result with its rows encoded (``Result.encoded``), slice by slice (``TURN`` between)."""
    result = yield from gen
    if result is not None and result.rows:
        result.encoded = yield from _in_slices(result.rows, lambda part: encode_rows(part, oids, formats))
    return result


def encode_rows(rows: list[list[Any]], oids: list[int], formats: list[int] | None) -> list[bytes]:
    """DataRow messages for ``rows``; ``SqlError`` for a value its type cannot hold (22003) or a binary format
    not written (0A000)."""
    fmts = [wire.result_format(formats, i) for i in range(len(oids))]
    try:
        return [wire.msg_data_row([wire.encode_value(v, oid, f) for v, oid, f in zip(row, oids, fmts)])
                for row in rows]
    except OverflowError as exc:
        raise SqlError("22003", str(exc)) from None
    except ValueError as exc:
        raise SqlError("0A000", str(exc)) from None
