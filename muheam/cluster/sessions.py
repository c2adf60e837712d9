"""Interactive transactions over the client port: the node-side half of ``muheam.client``.

Runs in the node's event loop.  ``begin`` takes a global XID (it may wait for the ``xid`` lock), row operations
run against the engine at once, and a row held by a running transaction parks the request until that
transaction ends (or the lock timeout passes).  Commits that arrive in one loop iteration are committed together
with one WAL flush (group commit) and answered only once durable (I7).  As in PostgreSQL, any error inside a
transaction aborts it.  Transactions idle for longer than ``idle_timeout`` are aborted, so a vanished client
cannot hold row locks forever.  ``begin`` answers the XID and the snapshot's timestamp (``sts``); ``writers``
lists the transactions that wrote and have not ended (running, or committing until their COMMIT is durable), for
the replicator's initial copy (``muheam.replica.copy``).

In a cluster (``muheam.cluster.txstate`` for the rules): ``begin`` takes a commit-timestamp snapshot and waits for the
outcome of transactions prepared at that moment; an operation that needs block ownership it lacks
(``NeedOwnership``) is parked until the lock is granted and then run again; a row held by a transaction of any node
parks the request until that transaction's outcome is known here (local end or the owner's DONE message).
COMMIT is two rounds over ``CommitService`` -- prepare (all members acknowledge), then the COMMIT records and one
WAL flush for the whole batch, then the outcome to every member, acknowledged by all -- and the client hears
"committed" then.  With ``lazy_outcome`` the outcome is not acknowledged and the client hears it at once (I5:
every member knows the XID prepared, so a later begin waits for the outcome and retakes its snapshot if the commit
is not below it; docs/architecture.md, "Cheaper commit rounds").  Waits that form a cycle
across nodes are found from the wait edges every node gossips (``wfg``); the youngest transaction of the cycle is the victim and gets ``DeadlockDetected``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

from locking.messages import Mode
from muheam.cluster.commits import CommitService
from muheam.engine import Engine, statefiles
from muheam.engine.errors import Deadlock, EngineError, StorageFailed
from muheam.engine.flusher import WalFlusher
from muheam.engine import Transaction
from muheam.errors import MuheamError, SerializationFailure
from muheam.engine.errors import NeedOwnership, NoSuchTable
from muheam.storage import KeyNotFound
from muheam.cluster.ownership import Ownership
from muheam import failpoints
from muheam.cluster.reads import ConsistentReads
from muheam.cluster.snapwait import SnapshotWaits
from muheam.net.clientport import ClientPort, Deferred, RequestError, int_arg
from muheam.cluster.catalogops import CatalogOps
from muheam.storage.errors import RowConflict
from muheam.cluster.txstate import HORIZON_ALL, TxTable
from muheam.cluster.xids import XidService

log = logging.getLogger("muheam.sessions")

MAX_SCAN_ROWS = 200_000
"""Rows one unpaged ``scan`` may return (its reply is one message); a paged scan has no total limit."""
MAX_PAGE_ROWS = 100_000
"""The largest ``page_rows`` a paged scan may ask for."""
MAX_PAGE_CHAINS = 1024
"""A page also ends after this many hash chains, rows or not: a page of an empty table with many chains walked
them all in one turn of the loop (seconds), long enough for its peers to take the node for cut off."""


def _snapshot_answered(tx: "_Tx", what: str) -> None:
    """Refuse a request sent before the transaction's ``begin`` or ``snapshot`` is answered: the snapshot may still
    be taken again while it waits (``SnapshotWaits._retake``), so nothing may use it or stack another wait yet."""
    if tx.snapshotting is not None and not tx.snapshotting.done:
        raise RequestError("bad_request", f"{what} is not answered yet: wait for its answer")


@dataclass
class _Tx:
    txn: Transaction
    last_active: float
    sts: int
    scope: str | None = None
    """The commit scope the client asked for with COMMIT (``muheam.cluster.scopes``)."""
    read_committed: bool = False
    """Begun with ``isolation = "read committed"``: a change that loses to a committed one fails with
    ``RowChanged`` and leaves the transaction running, to be redone after ``snapshot`` (the SQL port's READ
    COMMITTED); otherwise it is a ``SerializationFailure`` that aborts it."""
    outstanding: list[Deferred] = field(default_factory=list)
    """Its row operations' answers (``snapshot`` refuses to move the snapshot under one still unanswered)."""
    snapshotting: Deferred | None = None
    """Its last ``snapshot`` answer: row operations are refused until it is given (the snapshot may still be
    taken again, ``SnapshotWaits._retake``, and must not have been used by then)."""
    commit_asked: bool = False
    """A COMMIT of it was asked for (a second one is refused)."""
    released: bool = False
    """Its client cancelled while its COMMIT was under way (``op_release_commit``): a wait for replicas it would
    start ends at once."""


_IN_TRANSACTION = frozenset({"get", "insert", "update", "add", "delete", "lock", "scan"})
"""Operations of a running transaction: a malformed one ends the transaction (``_bad_request_rolls_back``)."""


@dataclass
class _Parked:
    retry: Callable[[], None]
    deadline: float
    reply: Deferred
    xid: int
    since: float
    limit: float
    """The wait's lock timeout in seconds (the node's, or a SQL session's shorter one)."""


@dataclass
class Cluster:
    """The cluster parts a session layer runs on (all in the node's event loop)."""

    table: TxTable
    commits: CommitService
    ownership: Ownership
    stamp: Callable[[], int]
    """A fresh GLSN from the node's clock (a snapshot timestamp)."""
    now_glsn: Callable[[], int]
    """The clock's current GLSN without ticking (horizon gossip)."""
    reads: ConsistentReads | None = None
    """Consistent-read copies: readers need not take chains (None: they take them shared)."""


SCAN_AHEAD = 1 << 30
"""An unpaged scan reads every chain after the one it waits for (``ConsistentReads.read`` stops at the table's
end); a paged one the chains the rest of its page should need (``page_ahead``)."""


def page_ahead(wanted: int, rows: int, chains: int) -> int:
    """How many chains after the one a paged scan waits for its consistent-read request should ask for too, having
    found ``rows`` rows in ``chains`` chains of this page and wanting ``wanted`` more: the rest of the page while it
    has found nothing, else as many as should hold the rows still wanted, and at least as many again as it has read
    (so a page whose chains turn sparse asks a few times, doubling, never once per chain), within the page's
    ``MAX_PAGE_CHAINS``.  Why not always the rest of the table: the copies are dropped after each page, and every
    page asking for all of it made a scan in many pages copy the table's chains quadratically (a review).  Why not
    only the engine's next call: a small table's one page made a request per call (more peer messages per bank
    transfer).  Why not one chain per row wanted: a copy of chains read from the file completes inside the request,
    so a request per chain nested one call per chain, and an empty table's page of 1,024 chains ended the node in
    a RecursionError (CI, ``test_a_page_of_an_empty_wide_table_ends_after_so_many_chains``)."""
    room = MAX_PAGE_CHAINS - chains
    need = room if rows == 0 else max(_chains_for(wanted, rows, chains), chains)
    return max(0, min(room, need) - 1)


def page_batch(wanted: int, rows: int, chains: int) -> int:
    """How many chains a paged scan reads next to come near ``wanted`` more rows, having found ``rows`` rows in
    ``chains`` chains so far: the engine reads up to 256 chains per call, and a page that checked its size only
    after each call held a whole table of 256 chains, however many rows (one long loop turn)."""
    if wanted <= 0:
        return 1
    if rows == 0:
        return 1 if chains == 0 else min(256, chains * 2)  # (one chain first: it tells how full chains are)
    return max(1, min(256, _chains_for(wanted, rows, chains)))


def _chains_for(wanted: int, rows: int, chains: int) -> int:
    """The chains that should hold ``wanted`` rows, ``rows`` having been found in ``chains`` (rounded up)."""
    return -(-wanted * chains // rows)


class LockTimeout(MuheamError):
    """A row stayed locked by another transaction for longer than the lock timeout."""


def error_code(exc: BaseException) -> str:
    if isinstance(exc, Deadlock):
        return "DeadlockDetected"
    return type(exc).__name__


class Sessions:
    def __init__(self, engine: Engine, xids: XidService, port: ClientPort, fence_check: Callable[[], None],
                 cluster: Cluster, lock_timeout: float = 10.0, idle_timeout: float = 300.0,
                 deadlock_timeout: float = 1.0, flusher: WalFlusher | None = None, lazy_outcome: bool = False) -> None:
        """``flusher``: WAL flushes of commits off the loop (``None``: in the loop, as tests of one module do);
        ``lazy_outcome``: answer a commit without waiting for the outcome round's acknowledgements (the config's
        ``lazy_outcome``)."""
        self.engine = engine
        self.lazy_outcome = lazy_outcome
        self.flusher = flusher
        self.xids = xids
        self.fence_check = fence_check
        self.cluster = cluster
        self.lock_timeout = lock_timeout
        self.idle_timeout = idle_timeout
        self.deadlock_timeout = deadlock_timeout
        self.txns: dict[int, _Tx] = {}
        self.parked: dict[int, list[_Parked]] = {}
        self.commits: list[tuple[_Tx, Deferred]] = []
        self.prepared: list[list[tuple[_Tx, Deferred]]] = []
        self.published_waits: list[tuple[int, int]] = []
        self.after_commit: Callable[[int, int, str | None, Deferred, bool], None] | None = None
        """Set by the node when commits may wait for replicas (``muheam.cluster.scopes``): called instead of
        answering a committed writer once its outcome is recorded and sent; ``check_scope`` vets a COMMIT's scope."""
        self.check_scope: Callable[[str], None] = lambda _s: None
        self.release_scope: Callable[[int], bool] = lambda _xid: False
        """Set with ``after_commit``: stop a commit's wait for its scope now (True if it was waiting)."""
        self.answering: dict[int, _Tx] = {}
        """Commits durable and not answered yet (their outcome round runs)."""
        self.counters: dict[str, int] = {"commits": 0, "aborts": 0, "commit_batches": 0, "waits": 0,
                                         "ownership_waits": 0, "begin_waits": 0, "deadlocks": 0,
                                         "begin_retakes": 0, "rows_changed": 0}
        self.abort_reasons: dict[str, int] = {}
        """Aborts caused by an error, by its code (the rest are rollbacks: the client's, idle, shutdown)."""
        self.snapshots = SnapshotWaits(cluster.table, cluster.stamp, self.counters)
        table = cluster.table
        engine.status = table.status
        engine.prune_rule = lambda: (HORIZON_ALL, table.prune_status(self.horizon()))
        self.committing: dict[int, _Tx] = {}
        """Writers whose COMMIT is under way (no longer in ``txns``, not yet durable): ``op_writers`` counts them."""
        self.pointer_waits: list[tuple[statefiles.CheckpointPointer, set[int]]] = []
        """Checkpoints whose redo pointer waits to be persisted, each with the commits under way when it was
        taken (``_gate_pointer``)."""
        engine.pointer_gate = self._gate_pointer
        self.catalog = CatalogOps(engine, cluster.ownership, fence_check, port)
        for op in ("begin", "snapshot", "get", "insert", "update", "add", "delete", "lock", "scan", "commit",
                   "rollback", "writers", "release_commit"):
            fn = getattr(self, "op_" + op)
            port.register(op, self._bad_request_rolls_back(fn) if op in _IN_TRANSACTION else fn)

    def _bad_request_rolls_back(self, fn: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
        """A row operation of a running transaction that is refused as malformed (a key that is not an integer, a
        bad page size) ends the transaction too, as every other error inside one does: the
        client takes any error for the end of its transaction, so one left running held its row locks until the
        idle timeout with no way to release them (a black-box test)."""
        def run(req: dict[str, Any]) -> Any:
            try:
                return fn(req)
            except RequestError as exc:
                xid = req.get("xid")
                tx = self.txns.get(xid) if isinstance(xid, int) and not isinstance(xid, bool) else None
                if not exc.malformed or tx is None:  # (a request refused for the state it meets, e.g. a
                    raise                              # second COMMIT under way, leaves the transaction be)
                self.abort_reasons["bad_request"] = self.abort_reasons.get("bad_request", 0) + 1
                self._abort(tx)
                raise RequestError("bad_request", f"{exc} (transaction {xid} rolled back)") from None
        return run

    # writers ------------------------------------------------------------------------------------------------

    def op_writers(self, req: dict[str, Any]) -> Any:
        """``{"xids": [...]}``: this node's transactions that wrote and have not ended yet (running, or
        committing until their COMMIT is durable).  The replicator's initial copy waits until the writers it saw
        have ended (``muheam.replica.copy``); a transaction that wrote nothing has no record to be missed.  A commit
        whose answer waits for replicas (a commit scope) is durable and no longer listed: the copy must not wait for
        it, since it may be waiting for that very replica."""
        xids = {x for x, tx in self.txns.items() if tx.txn.wrote} | self.committing.keys()
        return {"xids": sorted(xids)}

    # transactions -------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """The counters, and ``open``: transactions begun here and not ended (an operator's first look for one
        that holds back pruning)."""
        return {**self.counters, "open": len(self.txns)}

    def op_begin(self, req: dict[str, Any]) -> Deferred:
        self.fence_check()
        isolation = req.get("isolation", "repeatable read")
        if isolation not in ("repeatable read", "read committed"):
            raise RequestError("bad_request", "isolation must be 'repeatable read' or 'read committed'")
        reply = Deferred()

        def started(ranges: list[tuple[int, int]], _waited_us: int) -> None:
            xid = ranges[0][0]
            snap, pending = self.snapshots.snapshot(xid)
            try:
                tx = _Tx(self.engine.begin(xid, snap), time.monotonic(), snap.sts,
                         read_committed=isolation == "read committed")
            except MuheamError as exc:
                reply.fail(error_code(exc), str(exc))
                return
            self.txns[xid] = tx
            tx.snapshotting = reply  # (a client guessing its XID must not use the snapshot before it is final)
            self.snapshots.answer(tx, reply, pending, time.monotonic() + self.lock_timeout)

        self.cluster.commits.when_ready(lambda: self.xids.allocate(1, started))
        return reply

    def op_snapshot(self, req: dict[str, Any]) -> Deferred:
        """A new snapshot for a running transaction (READ COMMITTED: each statement sees what committed before
        it), taken and waited for exactly as ``begin`` takes one, so I5 holds per statement.  The old one is in
        use no more, so the horizon may pass it."""
        self.fence_check()
        tx, reply = self._tx(req), Deferred()
        if not tx.read_committed:
            raise RequestError("bad_request", "snapshot: only a transaction begun with isolation 'read committed' "
                               "takes a new snapshot")
        _snapshot_answered(tx, "snapshot: the transaction's previous snapshot request")
        if any(not d.done for d in tx.outstanding):  # a scan page or a copy in flight was asked for the old one
            raise RequestError("bad_request", "snapshot: an operation of this transaction is still unanswered; "
                               "take a new snapshot between operations")
        tx.snapshotting = reply
        self.snapshots.answer(tx, reply, self.snapshots.take(tx), time.monotonic() + self.lock_timeout)
        return reply

    def _tx(self, req: dict[str, Any]) -> _Tx:
        xid = req.get("xid")
        tx = self.txns.get(xid) if isinstance(xid, int) else None
        if tx is None:
            raise RequestError("NoSuchTransaction", f"transaction {xid!r} is not running here (it ended, was "
                               "aborted after an error or timeout, or belongs to another node)")
        tx.last_active = time.monotonic()
        return tx

    def _row_op(self, req: dict[str, Any], action: Callable[[Transaction], Any],
                ahead: Callable[[], int] = lambda: 0, nowait: bool = False) -> Any:
        """Run ``action`` in the request's transaction, again after each wait it needs.  ``ahead``: how many
        chains after the one a read lacks it will want too, at that moment (a scan), so a consistent-read
        request asks for them at once.  ``nowait``: a row another transaction holds fails the transaction
        instead (LockTimeout)."""
        self.fence_check()
        tx = self._tx(req)
        _snapshot_answered(tx, "the transaction's snapshot request")
        reply = Deferred()
        if tx.read_committed:
            tx.outstanding = [d for d in tx.outstanding if not d.done] + [reply]
        limit = req.get("lock_timeout")  # a SQL session's own lock_timeout, within the node's
        if not isinstance(limit, (int, float)) or isinstance(limit, bool) or not 0 < limit < self.lock_timeout:
            limit = self.lock_timeout
        deadline = time.monotonic() + limit

        def attempt() -> None:
            if reply.done or self.txns.get(tx.txn.xid) is not tx:
                return
            try:
                result = self._run_attempt(attempt, action, tx.txn)
            except NeedOwnership as need:
                self.counters["ownership_waits"] += 1
                reads = self.cluster.reads
                if need.mode is Mode.SHARED and reads is not None and reads.read(need.resource, attempt, ahead()):
                    return
                self.cluster.ownership.acquire(need.resource, need.mode, attempt, need.keep)
                return
            except RowConflict as conflict:
                if conflict.committed:
                    self._fail_tx(tx, reply, conflict, "SerializationFailure")
                    return
                if nowait:
                    self._fail_tx(tx, reply, LockTimeout(f"could not obtain lock on row: {conflict} (NOWAIT)"))
                    return
                self.counters["waits"] += 1
                self.parked.setdefault(conflict.blocker, []).append(
                    _Parked(attempt, deadline, reply, tx.txn.xid, time.monotonic(), limit))
                return
            except RequestError as exc:  # refused (a scan too big unpaged): on a retry this runs in a callback,
                self._fail_tx(tx, reply, exc, exc.code)  # where nothing else would answer the client
                return
            except SerializationFailure as exc:
                if tx.read_committed:  # nothing was changed: redone on the newest version after a new snapshot
                    self.counters["rows_changed"] += 1
                    reply.fail("RowChanged", f"{exc} (READ COMMITTED: take a new snapshot and redo the change)")
                else:
                    self._fail_tx(tx, reply, exc)
                return
            except NoSuchTable as exc:
                if req.get("replannable") is not True:
                    self._fail_tx(tx, reply, exc)
                    return
                # the SQL port's plan predates a DROP TABLE.  Nothing was changed, and the transaction goes on, so
                # it may plan the statement again (or fail it and roll back); a client that did not ask for this
                # has its transaction rolled back, as for any error
                reply.fail("NoSuchTable", str(exc))
                return
            except (MuheamError, ValueError, TypeError) as exc:
                self._fail_tx(tx, reply, exc)
                return
            reply.resolve(result)

        attempt()
        return reply

    def _run_attempt(self, attempt: Callable[[], None], action: Callable[[Transaction], Any],
                     txn: Transaction) -> Any:
        """``action`` as the innermost running operation: only it may read consistent-read copies made readable
        for ``attempt`` (``Ownership.running``), not another transaction's operation run inside it."""
        running = self.cluster.ownership.running
        running.append(attempt)
        try:
            return action(txn)
        finally:
            running.pop()

    def _fail_tx(self, tx: _Tx, reply: Deferred, exc: BaseException, code: str | None = None) -> None:
        """An error inside a transaction aborts it (PostgreSQL semantics); the client gets the error."""
        reason = code or error_code(exc)
        if tx.txn.xid in self.txns:
            self.abort_reasons[reason] = self.abort_reasons.get(reason, 0) + 1
        self._abort(tx)
        stopped = self._stopped()
        if stopped is not None and reason not in ("StorageFailed", "EngineStopped"):
            # the rollback's ABORT record (or something before it) stopped the engine: the client must hear that
            # the node is gone, not a reason to retry here (told "serialization failure", it retried against a
            # closed port and never learned of the full disk)
            reply.fail("StorageFailed", f"{exc}; then {stopped} (transaction {tx.txn.xid} rolled back)")
            return
        reply.fail(reason, f"{exc} (transaction {tx.txn.xid} rolled back)")

    def _stopped(self) -> str | None:
        """What to tell a client once this node's engine stopped (a WAL or data file write failed: the node stops
        within this loop turn), or ``None``."""
        failed = self.engine.failed
        if failed is None:
            return None
        return (f"node {self.engine.node_id} stops: its engine failed ({failed}); the other nodes recover its "
                f"work: connect to another node, and start this one again once the cause is fixed")

    def _table(self, req: dict[str, Any]) -> str | int:
        """A table name, or a table id (the SQL port names tables by id, so a table dropped and created again
        under the same name is never mistaken for the one it planned against)."""
        table = req.get("table")
        if not isinstance(table, str) and not (type(table) is int and 0 < table < 1 << 32):
            raise RequestError("bad_request", "table must be a name (string) or a table id", malformed=True)
        return table

    def _key(self, req: dict[str, Any]) -> int:
        return int_arg(req, "key", None, -(1 << 63), (1 << 63) - 1, "a 64-bit integer")

    def op_get(self, req: dict[str, Any]) -> Any:
        table, key = self._table(req), self._key(req)
        return self._row_op(req, lambda t: t.get(table, key))

    def op_insert(self, req: dict[str, Any]) -> Any:
        table, key, row = self._table(req), self._key(req), req.get("row")
        if not isinstance(row, dict):
            raise RequestError("bad_request", "row must be a map of column values", malformed=True)
        return self._row_op(req, lambda t: bool(t.insert(table, key, row)))

    def op_update(self, req: dict[str, Any]) -> Any:
        table, key, changes = self._table(req), self._key(req), req.get("changes")
        if not isinstance(changes, dict):
            raise RequestError("bad_request", "changes must be a map of column values", malformed=True)
        return self._row_op(req, lambda t: bool(t.update(table, key, changes)))

    def op_add(self, req: dict[str, Any]) -> Any:
        """``column += delta`` on the row the transaction sees.  ``missing_ok``: no such row answers False and
        the transaction goes on (SQL's ``UPDATE ... WHERE key = k`` that matches nothing), instead of failing it."""
        table, key, column, delta = self._table(req), self._key(req), req.get("column"), req.get("delta")
        missing_ok, within = req.get("missing_ok", False), req.get("range")
        if not isinstance(column, str) or isinstance(delta, bool) or not isinstance(delta, (int, float)) \
                or not isinstance(missing_ok, bool):
            raise RequestError("bad_request", "add needs column (str), a numeric delta and missing_ok (bool, "
                                              "optional)", malformed=True)
        bounds: tuple[int, int] | None = None
        if within is not None:
            if not (isinstance(within, list) and len(within) == 2 and all(type(b) is int for b in within)):
                raise RequestError("bad_request", "add: range must be [lowest, highest] (integers), if given", malformed=True)
            bounds = (within[0], within[1])

        def add(t: Transaction) -> bool:
            try:
                return bool(t.add(table, key, column, delta, bounds))
            except KeyNotFound:
                if missing_ok:
                    return False
                raise

        return self._row_op(req, add)

    def op_delete(self, req: dict[str, Any]) -> Any:
        table, key = self._table(req), self._key(req)
        return self._row_op(req, lambda t: bool(t.delete(table, key)))

    def op_lock(self, req: dict[str, Any]) -> Any:
        """``nowait``: a row another transaction holds fails the transaction at once (LockTimeout) instead of
        waiting for it (SQL's FOR UPDATE NOWAIT)."""
        table, key, nowait = self._table(req), self._key(req), req.get("nowait", False)
        if not isinstance(nowait, bool):
            raise RequestError("bad_request", "lock: nowait must be a boolean, if given", malformed=True)
        return self._row_op(req, lambda t: bool(t.lock(table, key)), nowait=nowait)

    def op_scan(self, req: dict[str, Any]) -> Any:
        """The rows the transaction sees.  Unpaged (no ``from_bucket``): a list of ``[key, row]``, at most
        ``MAX_SCAN_ROWS``.  Paged: ``from_bucket`` (1 for the first page) and ``page_rows``; the reply is
        ``{"rows": [...], "next": bucket or None}``, a page ending at a hash-chain boundary once it holds
        ``page_rows`` rows or more, so every row comes exactly once over the pages of one transaction (its snapshot
        stays the same from page to page)."""
        table = self._table(req)
        paged = "from_bucket" in req
        start, limit = 1, MAX_SCAN_ROWS
        if paged:
            start = int_arg(req, "from_bucket", None, 1, 1 << 62, "a bucket number from 1")
            limit = int_arg(req, "page_rows", 10_000, 1, MAX_PAGE_ROWS, f"an integer from 1 to {MAX_PAGE_ROWS}")
        rows: list[list[Any]] = []
        at = [start]  # the next bucket: a scan resumes there after waiting for a chain's ownership
        named: list[str | int] = [table]  # its id once resolved: a table made anew under the name is another one

        def scan(txn: Transaction) -> Any:
            t = self.engine.op_table(named[0])
            named[0] = t.table_id
            while at[0] <= t.nbuckets:
                last = None
                if paged:  # as many chains as should hold the rows still wanted: a page is about page_rows
                    want = page_batch(limit - len(rows), len(rows), at[0] - start)
                    last = min(t.nbuckets, at[0] + min(want, start + MAX_PAGE_CHAINS - at[0]) - 1)
                chunk, at[0] = self.engine.scan_from(txn, t, at[0], last)
                if chunk is not None:
                    for key, rec in zip(chunk[0].tolist(), chunk[1]):
                        rows.append([key, t.schema.from_record(rec)])
                if paged and (len(rows) >= limit or at[0] - start >= MAX_PAGE_CHAINS):
                    break
                if chunk is not None and (len(rows) > limit or (not paged and failpoints.hit("sessions.scan_limit"))):
                    raise RequestError("bad_request", f"scan of {table} exceeds {limit} rows: page it "
                                                      "(from_bucket, page_rows; the Python client does)")
            if paged:  # (its id: the next page names the table by it, as a name may be another table by then)
                return {"rows": rows, "next": at[0] if at[0] <= t.nbuckets else None, "table_id": t.table_id}
            return rows

        return self._row_op(req, scan, ahead=(lambda: page_ahead(limit - len(rows), len(rows), at[0] - start))
                            if paged else lambda: SCAN_AHEAD)

    def op_commit(self, req: dict[str, Any]) -> Deferred:
        self.fence_check()
        tx = self._tx(req)
        scope = req.get("scope")
        if scope is not None:
            try:
                self.check_scope(scope)
            except ValueError as exc:
                raise RequestError("bad_request", str(exc)) from None
            tx.scope = scope
        if tx.commit_asked:  # (answering the second one "rolled back" told the client a lie: the first commits)
            raise RequestError("bad_request", f"a COMMIT of transaction {tx.txn.xid} is already under way: its "
                                              "answer says whether the transaction committed")
        tx.commit_asked = True
        reply = Deferred()
        self.commits.append((tx, reply))
        return reply

    def op_release_commit(self, req: dict[str, Any]) -> Any:
        """The client cancelled while its COMMIT waits: it is not cancelled (it takes effect whatever the client
        does), but a wait for replicas under a commit scope ends now, answered ``"scope": "cancelled"``, as
        PostgreSQL ends a synchronous-replication wait on a cancel ("committed locally, but might not have been
        replicated").  A commit still in its prepare round (bounded by the members' leases) gets this answer
        when it reaches that wait, if it does."""
        xid = int_arg(req, "xid", None, 1, (1 << 63) - 1, "the committing transaction's id")
        if self.release_scope(xid):
            return {"released": True}
        # on its way to the wait, if it has a scope: queued for the next pump, preparing, or in its outcome round
        tx = self.committing.get(xid) or self.answering.get(xid) or \
            next((t for t, _ in self.commits if t.txn.xid == xid), None)
        if tx is not None:
            tx.released = True
        return {"released": False}

    def op_rollback(self, req: dict[str, Any]) -> Any:
        tx = self._tx(req)
        reply = Deferred()

        def answer() -> None:
            stopped = self._stopped() if tx.txn.wrote else None
            if stopped is None:
                reply.resolve({"xid": tx.txn.xid})
            else:  # rolled back all the same (nothing of it committed), but the node stops now: the client must know
                reply.fail("StorageFailed", f"transaction {tx.txn.xid} rolled back, but {stopped}")

        self._abort(tx, answer)
        return reply

    # ending -------------------------------------------------------------------------------------------------
    def _abort(self, tx: _Tx, then: Callable[[], None] | None = None) -> None:
        xid = tx.txn.xid
        if self.txns.pop(xid, None) is None:
            return
        self.counters["aborts"] += 1
        try:
            woken = tx.txn.abort()
        except EngineError as exc:
            log.error("abort of %d failed: %s", xid, exc)
            woken = frozenset()
        if tx.txn.wrote and self.engine.failed is None:
            # others may hold its XID in their pages: tell them (nobody needs to wait for that)
            self.cluster.commits.finish([], [xid], then or (lambda: None))
        elif then is not None:
            # a failed engine logged no ABORT: the outcome is announced by the node that recovers this one,
            # after it logged the ABORT, so no change that waited on the XID precedes its end in the history
            then()
        self._wake({xid, *woken})

    def abort_all(self) -> None:
        """Shutdown: roll back everything running and tell the other members."""
        for tx in list(self.txns.values()):
            self._abort(tx)

    @property
    def flushing(self) -> int:
        """Commits whose WAL flush runs (their answers are still due)."""
        return self.flusher.pending if self.flusher is not None else 0

    def pump(self) -> None:
        """Once per loop turn: start the commits that arrived, finish the ones every member acknowledged and
        answer the ones whose flush finished."""
        if self.flusher is not None:
            self.flusher.drain()
        if self.commits:
            self._start_commits()
        if self.prepared:
            self._commit_prepared()

    def _start_commits(self) -> None:
        batch, self.commits = self.commits, []
        readonly: list[tuple[_Tx, Deferred]] = []
        writers: list[tuple[_Tx, Deferred]] = []
        for tx, reply in batch:
            if self.txns.pop(tx.txn.xid, None) is None:
                # rolled back between the commit request and now (an error, a timeout, a deadlock victim)
                reply.fail("NoSuchTransaction", f"transaction {tx.txn.xid} was rolled back before it could commit")
            else:
                (writers if tx.txn.wrote else readonly).append((tx, reply))
        if readonly:
            self._commit_now(readonly)
        if writers:
            self.committing.update((tx.txn.xid, tx) for tx, _ in writers)
            self.cluster.commits.prepare([tx.txn.xid for tx, _ in writers], lambda: self.prepared.append(writers))

    def _commit_prepared(self) -> None:
        """Every member acknowledged the prepare: COMMIT records and one WAL flush for all ready batches."""
        failpoints.hit("sessions.commit_prepared")  # prepared everywhere, no outcome yet (the others' snapshots wait)
        batches, self.prepared = self.prepared, []
        self._commit_now([item for batch in batches for item in batch])

    def _commit_now(self, live: list[tuple[_Tx, Deferred]]) -> None:
        """COMMIT records now; the answer once they are durable (the flusher's thread, or here at once)."""
        try:
            end = self.engine.log_commits([tx.txn for tx, _ in live])
            if end and self.flusher is None:
                self.engine.flush_wal(end)
        except StorageFailed as exc:
            self._durable(live, exc)
            return
        except MuheamError as exc:
            for tx, reply in live:
                self.committing.pop(tx.txn.xid, None)
                reply.fail(error_code(exc), f"commit failed: {exc}; the transaction is not committed")
            return
        if end and self.flusher is not None:
            self.flusher.request(end, lambda error: self._durable(live, error))
        else:
            self._durable(live, None)

    def _durable(self, live: list[tuple[_Tx, Deferred]], error: BaseException | None) -> None:
        if error is not None:
            # COMMIT records may have reached the file without being made durable: the outcome is unknown here,
            # and the node stops so that the survivors decide it from what the WAL really holds
            for tx, reply in live:
                self.committing.pop(tx.txn.xid, None)
                reply.fail(error_code(error), f"commit outcome unknown: {error}; look the change up on another node")
            return
        woken = self.engine.finish_commits([tx.txn for tx, _ in live])
        for tx, _ in live:
            self.committing.pop(tx.txn.xid, None)
            self.answering[tx.txn.xid] = tx
        self.counters["commits"] += len(live)
        self.counters["commit_batches"] += 1
        decided = [(tx.txn.xid, tx.txn.commit_glsn) for tx, _ in live if tx.txn.wrote]

        def answer() -> None:
            for tx, reply in live:
                xid = tx.txn.xid
                self.answering.pop(xid, None)
                if self.after_commit is not None and tx.txn.wrote:
                    self.after_commit(xid, tx.txn.commit_glsn, tx.scope, reply, tx.released)
                else:
                    reply.resolve({"xid": xid})

        if decided:
            # lazily (``lazy_outcome``), the outcome round is not acknowledged: every member acknowledged the
            # prepare, so a snapshot taken anywhere from now on waits for this outcome and is retaken if it would
            # miss it (``_retake``); by default every member knows the outcome before the client does
            self.cluster.commits.finish(decided, [], answer, acked=not self.lazy_outcome)
        else:
            answer()
        # on_outcome, not only _wake: a begin may have waited for these XIDs while their flush ran
        self.on_outcome({tx.txn.xid for tx, _ in live} | set(woken))

    # waking -------------------------------------------------------------------------------------------------
    def on_outcome(self, ended: set[int]) -> None:
        """Outcomes learned from another node (or a join sync): wake row waits and waiting begins."""
        self._wake(ended)
        self.snapshots.on_outcome()

    def _wake(self, ended: set[int]) -> None:
        for xid in ended:
            for parked in self.parked.pop(xid, []):
                if parked.xid in self.txns and not parked.reply.done:
                    parked.retry()

    # periodic -----------------------------------------------------------------------------------------------
    def local_horizon(self) -> int:
        """The oldest snapshot timestamp this node may still use (what it gossips)."""
        now = self.cluster.now_glsn()
        return min(min((tx.sts for tx in self.txns.values()), default=now), now)

    def horizon(self) -> int:
        """The pruning horizon: the oldest snapshot timestamp in use anywhere in the cluster."""
        return self.cluster.commits.horizon(self.local_horizon())

    def _waits(self, now: float, older_than: float) -> list[tuple[int, int]]:
        return sorted((p.xid, blocker) for blocker, waiting in self.parked.items() for p in waiting
                      if not p.reply.done and p.xid in self.txns and now - p.since >= older_than)

    def _find_deadlocks(self, now: float) -> None:
        """Cycles through the gossiped wait edges: the youngest XID of a cycle is the victim, and only its own
        node aborts it, so every node that sees the cycle agrees on the one victim."""
        graph = dict(self.cluster.commits.remote_waits())
        graph.update(self._waits(now, 0.0))
        for start in list(graph):
            path, x = [start], graph.get(start)
            while x is not None and x not in path and len(path) <= len(graph):
                path.append(x)
                x = graph.get(x)
            if x != start:
                continue
            victim = max(path)
            tx = self.txns.get(victim)
            if tx is None:
                continue
            parked = [p for waiting in self.parked.values() for p in waiting
                      if p.xid == victim and not p.reply.done]
            if parked:
                self.counters["deadlocks"] += 1
                self._fail_tx(tx, parked[0].reply, Deadlock(
                    f"deadlock detected: transaction {victim} waits in a cycle across nodes "
                    f"({' -> '.join(map(str, path))} -> {start}); it was chosen as the victim; retry it",
                    xid=victim, blocker=graph[victim]))
                return

    def tick(self, now: float) -> None:
        """Lock timeouts, idle transactions, deadlocks, gossip; called by the loop a few times a second."""
        for blocker, waiting in list(self.parked.items()):
            keep = []
            for parked in waiting:
                if parked.reply.done or parked.xid not in self.txns:
                    continue
                if now >= parked.deadline:
                    self._fail_tx(self.txns[parked.xid], parked.reply, LockTimeout(
                        f"lock timeout: waited {parked.limit:g} s for transaction {blocker}"))
                else:
                    keep.append(parked)
            if keep:
                self.parked[blocker] = keep
            else:
                self.parked.pop(blocker, None)
        for bw in self.snapshots.expired(now):
            assert isinstance(bw.tx, _Tx)
            self._fail_tx(bw.tx, bw.reply, LockTimeout(
                f"a snapshot waited {self.lock_timeout:g} s for the outcome of prepared transactions "
                f"{sorted(bw.waits)} (their node may have failed)"))
        for tx in [t for t in self.txns.values() if now - t.last_active > self.idle_timeout]:
            log.warning("aborting transaction %d: idle for more than %g s", tx.txn.xid, self.idle_timeout)
            self._abort(tx)
        self._find_deadlocks(now)
        waits = self._waits(now, self.deadlock_timeout)
        self.cluster.commits.publish(self.local_horizon(), waits, waits != self.published_waits)
        self.published_waits = waits
        self.engine.maybe_checkpoint(time.time())
        self._release_pointers()

    def _gate_pointer(self, pointer: statefiles.CheckpointPointer) -> None:
        """A checkpoint's redo pointer is persisted only once every member has heard every outcome logged before
        the CHECKPOINT record: a recoverer reads a dead node's WAL from that pointer on, and one that had missed
        the outcome of a COMMIT behind it aborted an acknowledged commit (or, having heard it itself, did not
        announce it, so a member that missed it kept the XID prepared for ever).  Commits under way now may have
        logged COMMIT without having sent their outcome yet (a flush in the flusher's thread): first they must
        send it (``_release_pointers``).  Then ``CommitService.barrier``."""
        self.pointer_waits.append((pointer, set(self.committing)))
        self._release_pointers()

    def _release_pointers(self) -> None:
        waiting = []
        for pointer, xids in self.pointer_waits:
            if any(x in self.committing for x in xids):
                waiting.append((pointer, xids))
            else:
                self.cluster.commits.barrier(partial(self.engine.publish_checkpoint, pointer))
        self.pointer_waits = waiting
