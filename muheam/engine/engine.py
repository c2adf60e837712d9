"""The single-node storage engine: catalog, transactions, buffer cache, WAL, checkpoints and crash recovery.

The node agent drives it from one event loop; ``commit`` may also be called from several threads at once (the
WAL flush happens outside the engine lock, so concurrent commits share fsyncs).  A caller that batches requests
can commit many transactions with one fsync through ``commit_batch``.

Injected from outside (the seams the cluster work fills): the Lamport clock (``lamport``), transaction
snapshots (``begin(xid, snapshot)``), the commit-status callback (``status``), the pruning rule (``prune_rule``)
and block ownership (``owner``: asked before a bucket chain is read or changed, a relation extended or the
catalog changed; it raises ``NeedOwnership`` when the node must first acquire it).  Block access goes through
``BufferCache.read``/``modify`` only.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Iterator, Protocol

import numpy as np
from numpy.typing import NDArray

from muheam import failpoints
from muheam.engine import statefiles, walrec
from muheam.engine.buffer import BufferCache
from muheam.engine.catalog import Catalog
from muheam.engine.errors import (Deadlock, EngineStopped, NeedOwnership, SerializationFailure,
                                  StorageFailed, TransactionError)
from muheam.engine.heapops import HeapOps, Table
from muheam.engine.txn import Transaction, adder
from muheam.storage import RowConflict, SchemaError, Snapshot, TupleId, mvcc
from muheam.storage.heap import bucket_block
from muheam.storage.schema import Row, check_key
from walmerge import WalError, WalWriter, pack_glsn, unpack_glsn

log = logging.getLogger("muheam.engine")

Status = str
EndCallback = Callable[[int, str, frozenset[int]], None]
"""``on_end(xid, "committed" | "aborted", woken_xids)``: called after a transaction finished."""


class Owner(Protocol):
    """Cluster block ownership as the engine sees it: each call returns if this node may go on, else raises
    ``NeedOwnership`` (the caller acquires what it names and retries the whole operation)."""

    def chain(self, table_id: int, bucket: int, write: bool) -> None: ...

    def extend(self, table_id: int) -> None: ...

    def catalog(self, write: bool = True) -> None: ...


@dataclass
class EngineConfig:
    """Tunables (defaults suit a benchmark node; tests shrink them)."""

    cache_pages: int = 8192
    checkpoint_interval: float = 300.0
    checkpoint_wal_bytes: int = 256 * 1024 * 1024
    segment_size: int | None = None
    system_id: int = 0
    epoch: int = 1


@dataclass
class RecoveryReport:
    """What ``Engine.open`` found and did (also logged)."""

    redo_start: int | None = None
    records_replayed: int = 0
    fenced_skipped: int = 0
    pages_changed: int = 0
    torn_tail: str | None = None
    data_loss: str | None = None
    records_lost: int = 0
    bytes_lost: int = 0
    aborted_in_flight: list[int] = field(default_factory=list)


class Engine(Catalog):
    """Open with ``Engine.open``; see the package docstring for the API."""

    def __init__(self, shared: Path, node_id: int, config: EngineConfig,
                 lamport: Callable[[], int] | None) -> None:
        self.shared = shared
        self.node_id = node_id
        self.config = config
        self._lock = threading.RLock()
        self._external_clock = lamport
        self._clock = 0
        self._last_lamport = 0
        self._wal: WalWriter | None = None
        self.cache = BufferCache(shared, config.cache_pages, wal_flush=self._wal_flush,
                                 flushed_lsn=self._wal_flushed)
        self.ops = HeapOps(self.cache, self._log, lambda: self.prune_rule(), self._check_extend)
        self.tables_by_name: dict[str, Table] = {}
        self.tables_by_id: dict[int, Table] = {}
        self.dropped: set[int] = set()
        """Ids of dropped tables: never reused, and every WAL record of one is ignored by redo."""
        self.catalog_stale = False
        """The catalog lock came back but ``global/catalog`` could not be read: read it before the next operation."""
        self.long_work: Callable[[], ContextManager[None]] = contextlib.nullcontext
        """Wraps writing a new table's relation file (every bucket page: up to 128 MiB): a node sets it to excuse
        its loop's silence meanwhile (``NodeAgent._long_work``)."""
        self.committed: set[int] = set()
        self.aborted: set[int] = set()
        self.running: dict[int, Transaction] = {}
        self._committing: set[int] = set()
        self.max_xid = mvcc.FIRST_NORMAL_XID - 1
        self._waits_for: dict[int, int] = {}
        self._waiters: dict[int, set[int]] = {}
        self.on_end: EndCallback | None = None
        self.status: Callable[[int], str] = self.local_status
        self.horizon: Callable[[], int] = self.local_horizon
        self.prune_rule: Callable[[], tuple[int, Callable[[int], str]]] = lambda: (self.horizon(), self.status)
        self.owner: Owner | None = None
        self._catalog_dirty = False
        self._failed: BaseException | None = None
        self._last_checkpoint_time: float | None = None
        self._checkpoint_lsn = 0
        self.pointer_gate: Callable[[statefiles.CheckpointPointer], None] | None = None
        """Set by a cluster member: a checkpoint hands its redo pointer here instead of persisting it, and the
        member persists it (``publish_checkpoint``) once every other member has heard every outcome logged before
        it.  A survivor reads a dead node's WAL only from that pointer: passing a COMMIT whose outcome some member
        missed made that member's recovery abort an acknowledged commit (or leave it prepared for ever)."""
        self._hb_records = -1
        self._hb_time = 0.0
        self.recovery = RecoveryReport()

    @classmethod
    def open(cls, shared: str | Path, node_id: int, *, lamport: Callable[[], int] | None = None,
             seed_clock: Callable[[int], None] | None = None, config: EngineConfig | None = None,
             accept_data_loss: bool = False) -> "Engine":
        """Recover this node's state (checkpoint + redo of its WAL) and open for work.

        ``lamport`` is the node's clock tick (default: an internal counter continuing after the WAL's last GLSN);
        ``seed_clock(lamport_value)`` is called with the WAL's last Lamport time before anything is appended, so
        an external clock can move above it.  Raises ``WalDamaged`` on mid-stream WAL corruption unless
        ``accept_data_loss`` (then the damaged tail is cut off and ``engine.recovery`` says what was lost).
        """
        from muheam.engine.recovery import recover
        eng = cls(Path(shared), node_id, config or EngineConfig(), lamport)
        for leftover in statefiles.sweep_stale_tmp(eng.shared):
            log.warning("removed %s: a state file's temporary copy left by a writer killed long ago", leftover)
        try:
            recover(eng, seed_clock=seed_clock, accept_data_loss=accept_data_loss)
        except BaseException:
            eng.crash()          # release files; nothing half-recovered is written
            raise
        return eng

    # -- WAL plumbing --------------------------------------------------------------------------------------------

    def _tick(self) -> int:
        if self._external_clock is not None:
            self._last_lamport = self._external_clock()
        else:
            self._clock += 1
            self._last_lamport = self._clock
        return self._last_lamport

    def _writer(self) -> WalWriter:
        if self._failed is not None:
            raise EngineStopped(f"node {self.node_id}'s engine stopped after an earlier failure ({self._failed}); "
                                f"restart the node so recovery rebuilds its state from the WAL")
        assert self._wal is not None
        return self._wal

    def _check_extend(self, table_id: int) -> None:
        if self.owner is not None:
            self.owner.extend(table_id)

    def _log(self, kind: int, payload: bytes, xid: int) -> tuple[int, int]:
        """Append one record; returns ``(glsn, end_lsn)``.  A failure stops the engine: a page may already
        carry the unlogged change, so no page may be written any more."""
        wal = self._writer()
        try:
            _, end = wal.append(kind, payload, lamport=self._tick, xid=xid)
        except BaseException as e:
            raise self._fail(e)
        return pack_glsn(self._last_lamport, self.node_id), end

    def _fail(self, e: BaseException) -> BaseException:
        """Stop the engine for good; returns what to raise: a storage failure (the WAL writer's errors, OS errors)
        becomes ``StorageFailed``, one of the project's errors, so every caller reports it like any other."""
        log.critical("node %d: engine stopped: %s", self.node_id, e)
        self._failed = e
        self.cache.discard()
        if isinstance(e, (WalError, OSError)):
            return StorageFailed(f"node {self.node_id} cannot write its WAL or data files ({e}); it stops now and "
                                 f"the other nodes recover its work: fix the cause (e.g. free space on that file "
                                 f"system) and start it again")
        return e

    def _wal_flush(self, lsn: int) -> int:
        return self._writer().flush(lsn)

    def _durable(self, end: int) -> None:
        """Flush the WAL up to ``end``; a failed flush stops the engine like a failed append."""
        try:
            self._writer().flush(end)
        except BaseException as e:
            with self._lock:
                raise self._fail(e)

    def _wal_flushed(self) -> int:
        return self._wal.flushed_lsn if self._wal is not None else 0

    @property
    def failed(self) -> BaseException | None:
        """Why the engine stopped accepting changes (a WAL write failed), or ``None``."""
        return self._failed

    @property
    def wal(self) -> WalWriter:
        return self._writer()

    # -- status, snapshots, horizon ------------------------------------------------------------------------------

    def local_status(self, xid: int) -> str:
        """Commit status from this engine's own records: running, committed, else aborted (an XID this node
        never saw finish committed did not commit here)."""
        if xid in self.running:
            return mvcc.IN_PROGRESS
        return mvcc.COMMITTED if xid in self.committed else mvcc.ABORTED

    def local_snapshot(self, xid: int) -> Snapshot:
        """A REPEATABLE READ snapshot from this engine's running set (single node only)."""
        nxt = max(self.max_xid, xid) + 1
        running = frozenset(x for x in self.running if x != xid)
        xmin = min(running | {xid})
        return Snapshot(xmin, nxt, running, xid)

    def local_horizon(self) -> int:
        """Oldest snapshot xmin in use here: versions deleted by commits below it may be pruned."""
        if self.running:
            return min(t.snapshot.xmin for t in self.running.values())
        return self.max_xid + 1

    # -- transactions --------------------------------------------------------------------------------------------

    def begin(self, xid: int, snapshot: Snapshot | None = None) -> Transaction:
        """Start transaction ``xid`` (from the global XID service) with ``snapshot`` (default: ``local_snapshot``)."""
        with self._lock:
            self._writer()
            if xid < mvcc.FIRST_NORMAL_XID:
                raise TransactionError(f"XID {xid} is reserved; transactions use XIDs >= {mvcc.FIRST_NORMAL_XID}")
            if xid in self.running or xid in self.committed or xid in self.aborted:
                raise TransactionError(f"XID {xid} was already used on node {self.node_id}; the XID service "
                                       f"handed it out twice (invariant I1) -- do not reuse XIDs")
            snap = snapshot if snapshot is not None else self.local_snapshot(xid)
            if snap.xid != xid:
                raise TransactionError(f"snapshot belongs to XID {snap.xid}, not {xid}")
            txn = Transaction(self, xid, snap)
            self.running[xid] = txn
            self.max_xid = max(self.max_xid, xid)
            return txn

    def transaction(self, xid: int) -> Transaction:
        txn = self.running.get(xid)
        if txn is None:
            raise TransactionError(f"transaction {xid} is not running on node {self.node_id}")
        return txn

    def _check(self, txn: Transaction) -> None:
        if txn.state != mvcc.IN_PROGRESS or self.running.get(txn.xid) is not txn:
            raise TransactionError(f"transaction {txn.xid} already {txn.state}; begin a new one")
        if txn.xid in self._committing:
            raise TransactionError(f"transaction {txn.xid} is committing; it takes no more work")

    def _get(self, txn: Transaction, table: str | int, key: int) -> Row | None:
        with self._lock:
            self._check(txn)
            t = self.op_table(table)
            if self.owner is not None:
                self.owner.chain(t.table_id, bucket_block(check_key(key, t.name), t.nbuckets), False)
            return self.ops.get(t, key, txn.snapshot, self.status)

    def scan_arrays(self, txn: Transaction, table: str | int) -> Iterator[tuple[NDArray[np.int64], NDArray[Any]]]:
        """Visible rows as numpy (keys, rows) per bucket chain; the cache may change between chunks."""
        t = self.table(table)  # scan_from checks it for each chunk
        nxt = 1
        while nxt <= t.nbuckets:
            chunk, nxt = self.scan_from(txn, t, nxt)
            if chunk is not None:
                yield chunk

    def scan_from(self, txn: Transaction, t: Table, first: int, last: int | None = None,
                  ) -> tuple[tuple[NDArray[np.int64], NDArray[Any]] | None, int]:
        """Visible rows of the chains ``first..last`` (default: to the end) that this node may read without
        waiting, and the next bucket to scan.  A cluster scan resumes there after ``NeedOwnership`` (raised
        only when ``first`` itself is not readable): each chain image is at least as new as the snapshot,
        which is all MVCC needs, so chains may be read at different moments."""
        end = t.nbuckets if last is None else last
        batch: list[int] = []
        with self._lock:
            self._check(txn)
            self.op_table(t)
            for b in range(first, end + 1):
                if self.owner is not None:
                    try:
                        self.owner.chain(t.table_id, b, False)
                    except NeedOwnership:
                        if not batch:
                            raise
                        break
                batch.append(b)
                if len(batch) >= 256:
                    break
            chunk = self.ops.scan_buckets(t, batch, txn.snapshot, self.status)
            self.cache.trim()  # consistent-read copies of the chains still to scan are pinned (``reads``)
            return chunk, first + len(batch)

    def _write(self, txn: Transaction, table: str | int, key: int, op: str, arg: Any) -> TupleId:
        with self._lock:
            self._check(txn)
            self._writer()
            t = self.op_table(table)
            xid, snap, status = txn.xid, txn.snapshot, self.status
            if self.owner is not None:
                self.owner.chain(t.table_id, bucket_block(check_key(key, t.name), t.nbuckets), True)
            self._stop_waiting(xid)
            try:
                if op == "insert":
                    tid = self.ops.insert(t, key, arg, snap, status)
                elif op == "update":
                    tid = self.ops.update(t, key, lambda old: {**old, **arg}, snap, status)
                elif op == "add":
                    tid = self.ops.update(t, key, adder(t, *arg), snap, status)
                else:
                    tid = self.ops.delete(t, key, snap, status, lock_only=op == "lock")
            except RowConflict as e:
                if e.committed:
                    raise SerializationFailure(
                        f"could not serialize access due to concurrent update: {e}; abort transaction {xid} and "
                        f"retry it with a new XID and snapshot", key=e.key, blocker=e.blocker) from e
                self._start_waiting(xid, e.blocker)
                raise
            finally:
                if self._failed is None:
                    self.cache.trim()
            txn.wrote = True
            return tid

    def _start_waiting(self, xid: int, blocker: int) -> None:
        b: int | None = blocker
        while b is not None:
            if b == xid:
                raise Deadlock(f"deadlock: transaction {xid} would wait for {blocker}, which (transitively) waits "
                               f"for {xid}; abort transaction {xid} and retry it", xid=xid, blocker=blocker)
            b = self._waits_for.get(b)
        self._waits_for[xid] = blocker
        self._waiters.setdefault(blocker, set()).add(xid)

    def _stop_waiting(self, xid: int) -> None:
        b = self._waits_for.pop(xid, None)
        if b is not None:
            self._waiters.get(b, set()).discard(xid)

    def _finish(self, txn: Transaction, outcome: mvcc.XidStatus) -> frozenset[int]:
        """Publish the outcome (caller holds the lock); returns the XIDs that were waiting for ``txn``."""
        xid = txn.xid
        (self.committed if outcome == mvcc.COMMITTED else self.aborted).add(xid)
        self._committing.discard(xid)
        txn.state = outcome
        del self.running[xid]
        self._stop_waiting(xid)
        woken = frozenset(self._waiters.pop(xid, ()))
        for w in woken:
            self._waits_for.pop(w, None)
        if self.on_end is not None:
            self.on_end(xid, outcome, woken)
        return woken

    def commit(self, txn: Transaction) -> frozenset[int]:
        """Commit; returns only after the COMMIT record is durable (I7).  Returns the XIDs woken."""
        return self.commit_batch([txn])

    def commit_batch(self, txns: Iterable[Transaction]) -> frozenset[int]:
        """Commit several transactions with one WAL flush (group commit for a batching caller)."""
        todo = list(txns)
        end = self.log_commits(todo)
        if end:
            self._durable(end)
        return self.finish_commits(todo)

    def log_commits(self, txns: list[Transaction]) -> int:
        """A commit's first half: append the COMMIT records; returns the WAL end to make durable (0: nothing was
        written).  The transactions read as running until ``finish_commits``, which the caller may call only
        once ``flush_wal`` of that end returned (I7; ``muheam.engine.flusher`` does the flush in a thread)."""
        end = 0
        with self._lock:
            for txn in txns:
                self._check(txn)
            stamp = walrec.encode_commit(time.time_ns() // 1000)
            for txn in txns:
                if txn.wrote:
                    txn.commit_glsn, e = self._log(walrec.COMMIT, stamp, txn.xid)
                    end = max(end, e)
                self._committing.add(txn.xid)
        return end

    def flush_wal(self, end: int) -> None:
        """Make the WAL durable up to ``end``; a failure stops the engine.  Thread-safe."""
        self._durable(end)

    def finish_commits(self, txns: list[Transaction]) -> frozenset[int]:
        """A commit's second half, once its COMMIT records are durable: publish; returns the XIDs woken."""
        woken: set[int] = set()
        with self._lock:
            for txn in txns:
                woken |= self._finish(txn, mvcc.COMMITTED)
        return frozenset(woken)

    def abort(self, txn: Transaction) -> frozenset[int]:
        """Roll back: an ABORT record (no flush needed: a lost ABORT reads as aborted after recovery too)."""
        with self._lock:
            self._check(txn)
            if txn.wrote and self._failed is None:
                if failpoints.hit("engine.abort_record"):  # tests: the ABORT record meets a full file system
                    raise self._fail(OSError(errno.ENOSPC, "No space left on device (failpoint engine.abort_record)"))
                self._log(walrec.ABORT, b"", txn.xid)
            return self._finish(txn, mvcc.ABORTED)

    # -- checkpoints and shutdown --------------------------------------------------------------------------------

    def checkpoint(self, gated: bool = True) -> int:
        """Write every dirty page (WAL first), fsync the relation files, log CHECKPOINT and persist the redo
        start point -- through ``pointer_gate`` if one is set and ``gated`` -- returns the redo LSN.
        Transactions may stay open across it."""
        with self._lock:
            wal = self._writer()
            try:
                self.cache.flush_all()
                self.cache.sync()
                running = tuple(self.running)
                lsn, end = wal.append(walrec.CHECKPOINT, walrec.encode_checkpoint(wal.end_lsn, running),
                                      lamport=self._tick)
                wal.flush(end)
            except BaseException as e:
                raise self._fail(e)
            # every COMMIT appended so far is durable now: committing transactions count as committed
            statefiles.write_xact(self.shared, self.node_id, self.committed | self._committing, self.aborted)
            if self._catalog_dirty:
                self.write_catalog()
                self._catalog_dirty = False
            pointer = statefiles.CheckpointPointer(lsn, pack_glsn(self._last_lamport, self.node_id))
            self._checkpoint_lsn = lsn
            log.info("node %d: checkpoint at LSN %#x", self.node_id, lsn)
            if gated and self.pointer_gate is not None:
                self.pointer_gate(pointer)
            else:
                self.publish_checkpoint(pointer)
            return lsn

    def publish_checkpoint(self, pointer: statefiles.CheckpointPointer) -> None:
        """Persist a checkpoint's redo pointer: never once the engine failed (a commit whose flush failed is
        behind it, its outcome never sent), never over a newer one (ours, or the one a recoverer set at our WAL's
        end: a zombie incarnation must not move it back)."""
        with self._lock:
            if self._failed is not None:
                return
            current = statefiles.read_checkpoint(self.shared, self.node_id)
            if current is None or pointer.redo_lsn > current.redo_lsn:
                statefiles.write_checkpoint(self.shared, self.node_id, pointer)

    def log_decided(self, aborts: Iterable[int], fence: walrec.Fence | None = None) -> None:
        """Log, durably and with one flush, what recovery decided for other incarnations: the FENCE of a dead one
        (recovered up to there; its later writes are void) and ABORT for XIDs whose node died before an outcome
        -- the merged history must say how they ended before any later change that waited on them."""
        with self._lock:
            end = 0
            if fence is not None:
                _, end = self._log(walrec.FENCE, walrec.encode_fence(*fence), 0)
            for xid in sorted(aborts):
                _, end = self._log(walrec.ABORT, b"", xid)
            if end:
                self._durable(end)

    def heartbeat(self, idle_for: float, now: float) -> bool:
        """Log and flush a HEARTBEAT record if nothing was appended for ``idle_for`` seconds (of ``now``'s
        clock); returns whether it did.  Follow-mode merging emits a record only once every live node's WAL has
        passed its GLSN, so an idle node must keep moving its stream forward (DESIGN.md section 7)."""
        with self._lock:
            wal = self._writer()
            if wal.records_appended != self._hb_records:
                self._hb_records, self._hb_time = wal.records_appended, now
                return False
            if now - self._hb_time < idle_for:
                return False
            _, end = self._log(walrec.HEARTBEAT, b"", 0)
            self._durable(end)
            self._hb_records, self._hb_time = wal.records_appended, now
            return True

    def maybe_checkpoint(self, now: float) -> bool:
        """Checkpoint if ``checkpoint_interval`` seconds (of the caller's clock) passed since the last one, or
        ``checkpoint_wal_bytes`` of WAL were written; returns whether it did."""
        if self._last_checkpoint_time is None:
            self._last_checkpoint_time = now
        due = (now - self._last_checkpoint_time >= self.config.checkpoint_interval
               or self._writer().end_lsn - self._checkpoint_lsn >= self.config.checkpoint_wal_bytes)
        if due:
            self.checkpoint()
            self._last_checkpoint_time = now
        return due

    def close(self) -> None:
        """Clean shutdown: running transactions are aborted, then a final checkpoint."""
        with self._lock:
            if self._wal is None:
                return
            if self._failed is None:
                for txn in list(self.running.values()):
                    if txn.xid not in self._committing:
                        self.abort(txn)
                self.checkpoint(gated=False)  # (the node let its outcome rounds finish before: ``_finish_rounds``)
                self._wal.close()
            self.cache.close()
            self._wal = None

    def crash(self) -> None:
        """Testing aid: stop like a killed process (no checkpoint, no flush, dirty pages lost)."""
        with self._lock:
            self.cache.discard()
            if self._wal is not None:
                self._wal._closed = True
                os.close(self._wal._fd)
                self._wal = None

    @property
    def last_lamport(self) -> int:
        return unpack_glsn(self._wal.last_glsn)[0] if self._wal is not None else self._last_lamport


__all__ = ["Engine", "EngineConfig", "RecoveryReport", "SchemaError", "Transaction"]
