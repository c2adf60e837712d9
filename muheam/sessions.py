"""Interactive transactions over the client port: the node-side half of ``muheam.client``.

Runs in the node's event loop.  ``begin`` takes a global XID (it may wait for the ``xid`` lock), row operations
run against the engine at once, and a row held by a running transaction parks the request until that
transaction ends (or the lock timeout passes).  Commits that arrive in one loop iteration are committed together
with one WAL flush (group commit) and answered only once durable (I7).  As in PostgreSQL, any error inside a
transaction aborts it.  Transactions idle for longer than ``idle_timeout`` are aborted, so a vanished client
cannot hold row locks forever.

Until block ownership exists (cluster transactions), data operations are refused when more than one node is a
member: two engines writing the same blocks without it would corrupt them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from muheam.engine import Engine
from muheam.engine.errors import Deadlock, EngineError
from muheam.engine.engine import Transaction
from muheam.errors import MuheamError
from muheam.server import ClientPort, Deferred, RequestError
from muheam.storage.errors import RowConflict
from muheam.xids import XidService

log = logging.getLogger("muheam.sessions")

MAX_SCAN_ROWS = 200_000


@dataclass
class _Tx:
    txn: Transaction
    last_active: float


@dataclass
class _Parked:
    retry: Callable[[], None]
    deadline: float
    reply: Deferred
    xid: int


class LockTimeout(MuheamError):
    """A row stayed locked by another transaction for longer than the lock timeout."""


def error_code(exc: BaseException) -> str:
    if isinstance(exc, Deadlock):
        return "DeadlockDetected"
    return type(exc).__name__


class Sessions:
    def __init__(self, engine: Engine, xids: XidService, port: ClientPort, fence_check: Callable[[], None],
                 single_node: Callable[[], bool], lock_timeout: float = 10.0, idle_timeout: float = 300.0) -> None:
        self.engine = engine
        self.xids = xids
        self.fence_check = fence_check
        self.single_node = single_node
        self.lock_timeout = lock_timeout
        self.idle_timeout = idle_timeout
        self.txns: dict[int, _Tx] = {}
        self.parked: dict[int, list[_Parked]] = {}
        self.commits: list[tuple[_Tx, Deferred]] = []
        self.counters: dict[str, int] = {"commits": 0, "aborts": 0, "commit_batches": 0, "waits": 0}
        for op in ("create_table", "tables", "begin", "get", "insert", "update", "add", "delete", "lock", "scan",
                   "commit", "rollback"):
            port.register(op, getattr(self, "op_" + op))

    # catalog ------------------------------------------------------------------------------------------------
    def _guard(self) -> None:
        self.fence_check()
        if not self.single_node():
            raise RequestError("NotSupported", "data operations need cluster-wide block ownership, which is not "
                               "built yet; run a single node (muheam cluster up --nodes 1) for data")

    def op_create_table(self, req: dict[str, Any]) -> Any:
        self._guard()
        name, columns = req.get("name"), req.get("columns")
        if not isinstance(name, str) or not isinstance(columns, dict):
            raise RequestError("bad_request", "create_table needs name (str) and columns ({column: type})")
        t = self.engine.create_table(name, columns, expected_rows=int(req.get("expected_rows", 0)))
        return {"table_id": t.table_id, "name": t.name, "columns": t.schema.to_dict()["columns"]}

    def op_tables(self, req: dict[str, Any]) -> Any:
        return [{"table_id": t.table_id, "name": t.name, "columns": t.schema.to_dict()["columns"]}
                for t in self.engine.tables()]

    # transactions -------------------------------------------------------------------------------------------
    def op_begin(self, req: dict[str, Any]) -> Deferred:
        self._guard()
        reply = Deferred()

        def started(ranges: list[tuple[int, int]], _waited_us: int) -> None:
            xid = ranges[0][0]
            try:
                self.txns[xid] = _Tx(self.engine.begin(xid), time.monotonic())
            except MuheamError as exc:
                reply.fail(error_code(exc), str(exc))
                return
            reply.resolve({"xid": xid})

        self.xids.allocate(1, started)
        return reply

    def _tx(self, req: dict[str, Any]) -> _Tx:
        xid = req.get("xid")
        tx = self.txns.get(xid) if isinstance(xid, int) else None
        if tx is None:
            raise RequestError("NoSuchTransaction", f"transaction {xid!r} is not running here (it ended, was "
                               "aborted after an error or timeout, or belongs to another node)")
        tx.last_active = time.monotonic()
        return tx

    def _row_op(self, req: dict[str, Any], action: Callable[[Transaction], Any]) -> Any:
        self._guard()
        tx = self._tx(req)
        reply = Deferred()
        deadline = time.monotonic() + self.lock_timeout

        def attempt() -> None:
            try:
                result = action(tx.txn)
            except RowConflict as conflict:
                if conflict.committed:
                    self._fail_tx(tx, reply, conflict, "SerializationFailure")
                    return
                self.counters["waits"] += 1
                self.parked.setdefault(conflict.blocker, []).append(_Parked(attempt, deadline, reply, tx.txn.xid))
                return
            except (MuheamError, ValueError, TypeError) as exc:
                self._fail_tx(tx, reply, exc)
                return
            reply.resolve(result)

        attempt()
        return reply

    def _fail_tx(self, tx: _Tx, reply: Deferred, exc: BaseException, code: str | None = None) -> None:
        """An error inside a transaction aborts it (PostgreSQL semantics); the client gets the error."""
        self._abort(tx)
        reply.fail(code or error_code(exc), f"{exc} (transaction {tx.txn.xid} rolled back)")

    def _table(self, req: dict[str, Any]) -> str:
        table = req.get("table")
        if not isinstance(table, str):
            raise RequestError("bad_request", "table must be a string")
        return table

    def _key(self, req: dict[str, Any]) -> int:
        key = req.get("key")
        if not isinstance(key, int) or isinstance(key, bool) or not -(1 << 63) <= key < (1 << 63):
            raise RequestError("bad_request", "key must be a 64-bit integer")
        return key

    def op_get(self, req: dict[str, Any]) -> Any:
        table, key = self._table(req), self._key(req)
        return self._row_op(req, lambda t: t.get(table, key))

    def op_insert(self, req: dict[str, Any]) -> Any:
        table, key, row = self._table(req), self._key(req), req.get("row")
        if not isinstance(row, dict):
            raise RequestError("bad_request", "row must be a map of column values")
        return self._row_op(req, lambda t: bool(t.insert(table, key, row)))

    def op_update(self, req: dict[str, Any]) -> Any:
        table, key, changes = self._table(req), self._key(req), req.get("changes")
        if not isinstance(changes, dict):
            raise RequestError("bad_request", "changes must be a map of column values")
        return self._row_op(req, lambda t: bool(t.update(table, key, changes)))

    def op_add(self, req: dict[str, Any]) -> Any:
        table, key, column, delta = self._table(req), self._key(req), req.get("column"), req.get("delta")
        if not isinstance(column, str) or isinstance(delta, bool) or not isinstance(delta, (int, float)):
            raise RequestError("bad_request", "add needs column (str) and a numeric delta")
        return self._row_op(req, lambda t: bool(t.add(table, key, column, delta)))

    def op_delete(self, req: dict[str, Any]) -> Any:
        table, key = self._table(req), self._key(req)
        return self._row_op(req, lambda t: bool(t.delete(table, key)))

    def op_lock(self, req: dict[str, Any]) -> Any:
        table, key = self._table(req), self._key(req)
        return self._row_op(req, lambda t: bool(t.lock(table, key)))

    def op_scan(self, req: dict[str, Any]) -> Any:
        table = self._table(req)

        def scan(t: Transaction) -> list[list[Any]]:
            rows: list[list[Any]] = []
            for key, row in t.scan(table):
                rows.append([key, row])
                if len(rows) > MAX_SCAN_ROWS:
                    raise RequestError("bad_request", f"scan of {table} exceeds {MAX_SCAN_ROWS} rows")
            return rows

        return self._row_op(req, scan)

    def op_commit(self, req: dict[str, Any]) -> Deferred:
        self.fence_check()
        tx = self._tx(req)
        reply = Deferred()
        self.commits.append((tx, reply))
        return reply

    def op_rollback(self, req: dict[str, Any]) -> Any:
        tx = self._tx(req)
        self._abort(tx)
        return {"xid": tx.txn.xid}

    # loop hooks ---------------------------------------------------------------------------------------------
    def _abort(self, tx: _Tx) -> None:
        if self.txns.pop(tx.txn.xid, None) is None:
            return
        self.counters["aborts"] += 1
        try:
            woken = tx.txn.abort()
        except EngineError as exc:
            log.error("abort of %d failed: %s", tx.txn.xid, exc)
            woken = frozenset()
        self._wake({tx.txn.xid, *woken})

    def flush_commits(self) -> None:
        """Commit everything that asked in this loop iteration with one WAL flush, then answer."""
        if not self.commits:
            return
        batch, self.commits = self.commits, []
        live = []
        for tx, reply in batch:
            if self.txns.pop(tx.txn.xid, None) is not None:
                live.append((tx, reply))
            else:  # rolled back between the commit request and this flush (an error, the idle timeout)
                reply.fail("NoSuchTransaction", f"transaction {tx.txn.xid} was rolled back before it could commit")
        try:
            woken = self.engine.commit_batch([tx.txn for tx, _ in live])
        except MuheamError as exc:
            for tx, reply in live:
                reply.fail(error_code(exc), f"commit failed: {exc}; the transaction is not committed")
            return
        self.counters["commits"] += len(live)
        self.counters["commit_batches"] += 1
        for tx, reply in live:
            reply.resolve({"xid": tx.txn.xid})
        self._wake({tx.txn.xid for tx, _ in live} | set(woken))

    def _wake(self, ended: set[int]) -> None:
        for xid in ended:
            for parked in self.parked.pop(xid, []):
                if parked.xid in self.txns and not parked.reply.done:
                    parked.retry()

    def tick(self, now: float) -> None:
        """Lock timeouts and idle transactions; called by the loop a few times a second."""
        for blocker, waiting in list(self.parked.items()):
            keep = []
            for parked in waiting:
                if parked.reply.done or parked.xid not in self.txns:
                    continue
                if now >= parked.deadline:
                    self._fail_tx(self.txns[parked.xid], parked.reply, LockTimeout(
                        f"lock timeout: waited {self.lock_timeout:g} s for transaction {blocker}"))
                else:
                    keep.append(parked)
            if keep:
                self.parked[blocker] = keep
            else:
                self.parked.pop(blocker, None)
        for tx in [t for t in self.txns.values() if now - t.last_active > self.idle_timeout]:
            log.warning("aborting transaction %d: idle for more than %g s", tx.txn.xid, self.idle_timeout)
            self._abort(tx)
        self.engine.maybe_checkpoint(time.time())
