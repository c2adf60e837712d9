"""Replay of a merged WAL stream onto the shared data files (DESIGN.md I4).

One code path serves three jobs:

* **whole-cluster crash recovery** (``redo_cluster``): the first node to start after every node died merges every
  node's WAL from that node's last checkpoint and replays the merged stream before anyone serves.  A node's own
  redo is not enough once pages move between nodes: the latest change of a page may sit in another node's WAL;
* **point-in-time recovery** (``muheam recover --from-merged``): replay an archived merged stream onto a base
  copy of the shared directory, stopping at a target XID, GLSN or commit time (``find_stop``);
* replay-equivalence checks: the merged stream replayed onto an empty cluster gives the live cluster's rows.

Redo is physical and idempotent: a heap record changes a page only if the page's GLSN is below the record's, so
replaying a stretch that is already on disk changes nothing.  Outcomes go into each origin node's ``xact`` file
(the origin is the node part of the record's GLSN); an XID with changes but no outcome in the replayed stretch
is recorded as aborted there, so the origin node, when it starts, finds it decided and writes no second outcome.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from muheam.engine import statefiles, walrec
from muheam.engine.buffer import BufferCache
from muheam.engine.errors import StateFileCorrupt
from muheam.errors import MuheamError
from muheam.engine.heapops import Table, usable_tables
from muheam.engine.redo import Batcher
from muheam.engine.recovery import check_wal
from muheam.storage import Heap
from muheam.storage.heap import relation_path
from walmerge import MERGED_NODE_ID, Record, WalError, WalReader, format_glsn, format_lsn, node_wal_dir, unpack_glsn
from walmerge.segment import list_segments
from walmerge.merge import merge, node_dirs

log = logging.getLogger("muheam.engine.replay")

NO_FLUSH_NEEDED = (1 << 63) - 1
"""The replayed WAL is already durable: pages redone from it may be written at once (I3 holds)."""


class TargetNotReached(MuheamError):
    """The merged stream does not contain the recovery target; nothing was changed."""


@dataclass(frozen=True)
class Target:
    """Where point-in-time recovery stops; at most one field is set (none: replay everything).

    ``xid``: up to and including that transaction's outcome record.  ``glsn``: every record with a GLSN at or
    below it.  ``time_us``: every transaction that committed at or before that time (the stop is the first COMMIT
    stamped later), as PostgreSQL's ``recovery_target_time`` with ``recovery_target_inclusive``."""

    xid: int | None = None
    glsn: int | None = None
    time_us: int | None = None

    def describe(self) -> str:
        if self.xid is not None:
            return f"XID {self.xid}"
        if self.glsn is not None:
            return f"GLSN {format_glsn(self.glsn)}"
        if self.time_us is not None:
            return f"commit time {self.time_us / 1e6:.6f}"
        return "end of stream"


@dataclass
class Stop:
    """The first record *not* replayed (``lsn`` None: replay to the end), the last GLSN replayed, the target
    record reached, and the whole stream's highest XID and Lamport time (a restored cluster must stay above
    both: XIDs and GLSNs of the abandoned history are never reused) and its last GLSN (a base copy newer than
    that needs another archive, not another target)."""

    lsn: int | None
    glsn: int
    xid: int = 0
    time_us: int | None = None
    max_xid: int = 0
    max_lamport: int = 0
    end_glsn: int = 0


@dataclass
class ReplayReport:
    records: int = 0
    pages_changed: int = 0
    committed: dict[int, set[int]] = field(default_factory=dict)
    aborted: dict[int, set[int]] = field(default_factory=dict)
    no_outcome: dict[int, set[int]] = field(default_factory=dict)
    tables_created: list[str] = field(default_factory=list)
    tables_dropped: list[str] = field(default_factory=list)
    max_lamport: int = 0
    max_xid: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records, "pages_changed": self.pages_changed,
            "committed": sum(len(v) for v in self.committed.values()),
            "aborted": sum(len(v) for v in self.aborted.values()),
            "aborted_without_outcome": sum(len(v) for v in self.no_outcome.values()),
            "tables_created": self.tables_created, "tables_dropped": self.tables_dropped,
            "max_xid": self.max_xid, "max_lamport": self.max_lamport,
        }


def merged_records(merged_dir: Path, system_id: int, stop_lsn: int | None = None) -> Iterable[Record]:
    """The merged stream, read and checked by the ordinary reader (length, prev chain, CRC)."""
    return WalReader(merged_dir, node_id=MERGED_NODE_ID, system_id=system_id, stop_lsn=stop_lsn)


def find_stop(merged_dir: Path, system_id: int, target: Target) -> Stop:
    """Scan the whole stream once (nothing is changed yet) for where ``target`` stops replay."""
    stop: Stop | None = None
    last_glsn = max_xid = max_lamport = end_glsn = 0
    for rec in merged_records(merged_dir, system_id):
        max_xid = max(max_xid, rec.xid)
        max_lamport = max(max_lamport, unpack_glsn(rec.glsn)[0])
        end_glsn = max(end_glsn, rec.glsn)
        if stop is not None:
            continue
        if target.glsn is not None and rec.glsn > target.glsn:
            stop = Stop(rec.lsn, last_glsn)
        elif target.time_us is not None and rec.kind == walrec.COMMIT and \
                (walrec.decode_commit_time(rec.payload) or 0) > target.time_us:
            stop = Stop(rec.lsn, last_glsn, rec.xid, walrec.decode_commit_time(rec.payload))
        elif target.xid is not None and rec.xid == target.xid and rec.kind in (walrec.COMMIT, walrec.ABORT):
            if rec.kind == walrec.ABORT:
                raise TargetNotReached(f"transaction {target.xid} aborted (its ABORT is at merged LSN "
                                       f"{format_lsn(rec.lsn)}); pick a committed XID as the target")
            stop = Stop(rec.end_lsn, rec.glsn, rec.xid, walrec.decode_commit_time(rec.payload))
        last_glsn = rec.glsn  # (once ``stop`` is set it is no longer read)
    if stop is None:
        if target.xid is not None:
            raise TargetNotReached(f"transaction {target.xid} has no COMMIT in the merged stream in {merged_dir}; "
                                   f"check the XID, or merge more of the WAL (a later archive)")
        stop = Stop(None, last_glsn)
    stop.max_xid, stop.max_lamport, stop.end_glsn = max_xid, max_lamport, end_glsn
    return stop


class Replayer:
    """Applies merged records to the shared directory's pages through a cache that never waits for a WAL flush."""

    def __init__(self, shared: Path, cache_pages: int = 4096) -> None:
        self.shared = shared
        self.cache = BufferCache(shared, cache_pages, wal_flush=lambda lsn: lsn, flushed_lsn=lambda: NO_FLUSH_NEEDED)
        self.tables: dict[int, Table] = {}
        catalog = statefiles.read_catalog(shared)
        self.dropped = set(catalog.dropped)
        self.report = ReplayReport()
        self._data_xids: dict[int, set[int]] = {}
        self._catalog_dirty = False
        self._batch = Batcher(self.cache)
        for t in usable_tables(catalog):
            self._attach(t)

    def _attach(self, t: Table) -> None:
        path = relation_path(self.shared, t.table_id)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            Heap.create(path, t.schema, table_id=t.table_id, nbuckets=t.nbuckets).close()
        self.cache.attach(t.table_id, t.schema)
        self.tables[t.table_id] = t

    def apply(self, rec: Record) -> None:
        rep = self.report
        rep.records += 1
        lam, origin = unpack_glsn(rec.glsn)
        rep.max_lamport = max(rep.max_lamport, lam)
        rep.max_xid = max(rep.max_xid, rec.xid)
        kind, xid = rec.kind, rec.xid
        if kind in walrec.HEAP_KINDS:
            t = self.tables.get(walrec.heap_table_id(rec.payload))
            if xid:  # its outcome counts even when the table is gone (an undecided one is then aborted)
                self._data_xids.setdefault(origin, set()).add(xid)
            if t is None and walrec.heap_table_id(rec.payload) in self.dropped:
                return  # a change of a dropped table (written before the drop reached its node)
            if t is None:
                raise StateFileCorrupt(f"merged record at LSN {format_lsn(rec.lsn)} changes a table neither the "
                                       f"catalog nor the stream creates; the replay target is not a copy of this "
                                       f"cluster's data (or its global/catalog is newer than its tables)",
                                       path=statefiles.catalog_path(self.shared))
            rep.pages_changed += self._batch.add(t, rec)
            self.cache.trim()
        elif kind == walrec.COMMIT:
            rep.committed.setdefault(origin, set()).add(xid)
        elif kind == walrec.ABORT:
            rep.aborted.setdefault(origin, set()).add(xid)
        elif kind == walrec.CHECKPOINT:
            running = walrec.decode_checkpoint(rec.payload).running
            if running:
                self._data_xids.setdefault(origin, set()).update(running)
        elif kind == walrec.CATALOG_CREATE:
            c = walrec.decode_create_table(rec.payload)
            if c.table_id not in self.tables and c.table_id not in self.dropped:
                t = Table.from_entry(c.table_id, c.nbuckets, c.schema, c.sql)
                self._attach(t)
                rep.tables_created.append(t.name)
                self._catalog_dirty = True
        elif kind == walrec.CATALOG_DROP:
            d = walrec.decode_drop_table(rec.payload)
            if d.table_id not in self.dropped:
                self._batch.discard(d.table_id)
                self.cache.remove(d.table_id)
                self.tables.pop(d.table_id, None)
                self.dropped.add(d.table_id)
                rep.tables_dropped.append(d.name)
                self._catalog_dirty = True

    def finish(self) -> ReplayReport:
        """Write the redone pages (and fsync), the catalog, and every origin node's outcomes."""
        rep = self.report
        rep.pages_changed += self._batch.flush()
        self.cache.flush_all()
        self.cache.sync()
        if self._catalog_dirty:
            statefiles.merge_catalog(self.shared, [t.catalog_entry() for t in self.tables.values()], self.dropped)
        for origin in sorted(set(rep.committed) | set(rep.aborted) | set(self._data_xids)):
            committed, aborted = statefiles.read_xact(self.shared, origin)
            committed |= rep.committed.get(origin, set())
            aborted |= rep.aborted.get(origin, set())
            open_ = self._data_xids.get(origin, set()) - committed - aborted
            if open_:
                rep.no_outcome[origin] = open_
            statefiles.write_xact(self.shared, origin, committed, aborted | open_)
        self.cache.close()
        return rep


def replay(shared: Path, merged_dir: Path, system_id: int, stop_lsn: int | None = None) -> ReplayReport:
    """Replay the merged stream in ``merged_dir`` (up to ``stop_lsn``, exclusive) onto ``shared``."""
    r = Replayer(shared)
    for rec in merged_records(merged_dir, system_id, stop_lsn):
        r.apply(rec)
    return r.finish()


def redo_cluster(shared: Path, system_id: int, *, accept_data_loss: bool = False) -> ReplayReport:
    """Whole-cluster crash recovery: merge every node's WAL from its last checkpoint and replay it."""
    starts: dict[int, int] = {}
    ends: dict[int, tuple[int, int]] = {}
    for node in sorted(node_dirs(shared)):
        ptr = statefiles.read_checkpoint(shared, node)
        if ptr is not None:
            starts[node] = ptr.redo_lsn
        last = check_wal(shared, node, system_id, starts.get(node), accept_data_loss,
                         "the cluster cannot start (whole-cluster recovery needs every node's WAL)").last
        if last is not None:
            ends[node] = (last.end_lsn, last.glsn)
    work = shared / "recovery" / "merged"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        summary = merge(shared, work, system_id=system_id, start_lsns=starts, fsync=False,
                        fences=statefiles.read_fences(shared))
        rep = replay(shared, work, system_id)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for node, (end_lsn, last_glsn) in ends.items():
        # every node's WAL is applied to the end: a node starting later must not redo it onto pages that
        # others may have changed by then
        statefiles.write_checkpoint(shared, node, statefiles.CheckpointPointer(end_lsn, last_glsn))
    for node, torn in summary.torn.items():
        log.warning("cluster recovery: node %d's WAL ends in a torn record (%s); it is cut when the node starts",
                    node, torn)
    log.info("cluster recovery: replayed %d merged records of %d node(s) from their checkpoints: %d page changes, "
             "%d transactions without an outcome recorded as aborted", rep.records, len(node_dirs(shared)),
             rep.pages_changed, sum(len(v) for v in rep.no_outcome.values()))
    return rep


def wal_tail_glsn(shared: Path, node: int, system_id: int) -> int:
    """The last GLSN in ``node``'s WAL (from its last segment that holds a record; 0 if none, or if the tail is
    damaged: its owner's recovery deals with that)."""
    directory = node_wal_dir(shared, node)
    if not directory.is_dir():
        return 0
    segments = list_segments(directory)
    for k in range(len(segments) - 1, -1, -1):
        start = segments[k][0]
        last, damaged = _tail_from(directory, node, system_id, start)
        if damaged:  # a node runs with damage before its checkpoint (it needs nothing before it), and its records
            ptr = statefiles.read_checkpoint(shared, node)  # after the checkpoint are the tail that moves
            following = segments[k + 1][0] if k + 1 < len(segments) else None
            if ptr is not None and ptr.redo_lsn > start and (following is None or ptr.redo_lsn < following):
                last = _tail_from(directory, node, system_id, ptr.redo_lsn)[0] or last
            return last
        if last:
            return last
    return 0


def _tail_from(directory: Path, node: int, system_id: int, start: int) -> tuple[int, bool]:
    """The highest GLSN read from ``start`` (up to damage, if any), and whether damage stopped the reading."""
    reader = WalReader(directory, node_id=node, system_id=system_id, start_lsn=start, verify_crc=False)
    last = 0
    try:
        for batch in reader.batches():
            if len(batch.headers):
                last = max(last, int(batch.headers["glsn"].max()))
    except WalError:
        return last, True
    return last, False


def wal_tail_glsns(shared: Path, system_id: int) -> dict[int, int]:
    """The last GLSN in every node's WAL (nodes with no record are left out).  A running node's later records
    have higher GLSNs than its last one: the bulk merge's consistent cut rests on it."""
    tails = {node: wal_tail_glsn(shared, node, system_id) for node in node_dirs(shared)}
    return {node: glsn for node, glsn in tails.items() if glsn}


def wal_tails_lamport(shared: Path, system_id: int) -> int:
    """The highest Lamport time in the last segment of every node's WAL (running nodes log at least a heartbeat
    every fraction of a second, so this is close to the cluster's clock)."""
    return max(wal_tail_glsns(shared, system_id).values(), default=0) >> 16
