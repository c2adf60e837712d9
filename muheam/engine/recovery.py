"""Crash recovery: checkpoint pointer, then physical redo of this node's WAL, then abort what never committed.

Steps (``recover``):

1. Read ``global/checkpoint-node-<id>`` (redo start = LSN of the last CHECKPOINT record; none = whole WAL),
   ``global/catalog`` and ``xact/node-<id>``.
2. Verify the WAL from the redo start (fast, vectorised CRC pass) before touching any page.  A torn tail is
   logged and later zeroed by the writer.  Mid-stream corruption raises ``WalDamaged`` naming segment and
   offset -- unless ``accept_data_loss``: then ``walmerge.truncate_at`` cuts the stream at the last valid record
   and the report says how many records and bytes were lost.
3. Open the WAL writer (it fsyncs the stream, so pages redone from it may be written back: I3 holds).
4. Redo every record from the redo start: catalog creations (re-creating missing relation files), heap changes
   onto pages whose GLSN is below the record's (idempotent), COMMIT/ABORT into the status sets.
5. Every transaction with changes but no outcome (running at the checkpoint or seen in redo) gets an ABORT
   record; then an end-of-recovery checkpoint makes the redone pages durable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from muheam.engine import statefiles, walrec
from muheam.engine.errors import StateFileCorrupt, WalDamaged
from muheam.engine.heapops import Table, usable_tables
from muheam.engine.redo import Batcher
from muheam.storage.heap import relation_path
from walmerge import WalCorruption, WalReader, WalWriter, format_lsn, node_wal_dir, truncate_at, unpack_glsn
from walmerge.reader import LastRecord, TornTail
from walmerge.segment import list_segments

if TYPE_CHECKING:
    from muheam.engine.engine import Engine

log = logging.getLogger("muheam.engine.recovery")


@dataclass
class WalCheck:
    """What a full CRC pass over one node's WAL found (``last``: its last valid record)."""

    last: LastRecord | None = None
    torn: TornTail | None = None
    data_loss: str | None = None
    records_lost: int = 0
    bytes_lost: int = 0


def check_wal(shared: Path, node: int, system_id: int, start: int | None, accept_data_loss: bool,
              refusal: str) -> WalCheck:
    """Verify a node's WAL from ``start`` before any page is touched.  Mid-stream corruption raises
    ``WalDamaged`` (``refusal`` says what cannot happen) unless ``accept_data_loss``: then the stream is cut at the
    last valid record, the discarded bytes are kept beside it, and the check says what was lost."""
    wal_dir = node_wal_dir(shared, node)
    reader = WalReader(wal_dir, node_id=node, system_id=system_id, start_lsn=start)
    try:
        for _ in reader.batches():
            pass
    except WalCorruption as e:
        if not accept_data_loss:
            raise WalDamaged(
                f"{refusal}: node {node}'s WAL is damaged in segment {e.path} at offset {e.offset} "
                f"(LSN {format_lsn(e.lsn)}): {e.reason}. Records before that point are intact. Restore the "
                f"segment from a copy, or restart with accept_data_loss (the discard-WAL operator flag) to lose "
                f"every change from that LSN on", path=e.path, offset=e.offset, lsn=e.lsn) from e
        report = truncate_at(wal_dir, e.lsn, node_id=node, system_id=system_id)
        log.error("node %d: accepted data loss: WAL corruption in %s at offset %d; %s", node, e.path, e.offset,
                  report)
        after = check_wal(shared, node, system_id, start, False, refusal)
        after.data_loss = f"{e}; {report}"
        after.records_lost, after.bytes_lost = report.records_discarded, report.bytes_discarded
        return after
    if reader.torn is not None:
        log.warning("node %d: %s (an interrupted write at the crash; it is cut off)", node, reader.torn)
    return WalCheck(last=reader.last, torn=reader.torn)


def _verify(eng: "Engine", start: int | None, accept_data_loss: bool) -> None:
    check = check_wal(eng.shared, eng.node_id, eng.config.system_id, start, accept_data_loss,
                      f"node {eng.node_id} will not start")
    rep = eng.recovery
    rep.data_loss, rep.records_lost, rep.bytes_lost = check.data_loss, check.records_lost, check.bytes_lost
    if check.torn is not None:
        rep.torn_tail = str(check.torn)


def _report_damage_before(eng: "Engine", start: int | None) -> None:
    """Damage in the WAL segment of the checkpoint, before it: crash recovery does not read those records (the
    pages hold their changes), so the node starts; but a merge or an archive recovery through them will stop
    there, and the operator should hear of it now, with what to do."""
    if start is None:
        return
    wal_dir = node_wal_dir(eng.shared, eng.node_id)
    segments = [s for s, _ in list_segments(wal_dir) if s <= start]
    if not segments:
        return
    reader = WalReader(wal_dir, node_id=eng.node_id, system_id=eng.config.system_id, start_lsn=segments[-1])
    try:
        for batch in reader.batches():
            if len(batch.headers) and int(batch.headers["lsn"].max()) >= start:
                return
    except WalCorruption as e:
        if e.lsn < start:
            log.warning("node %d: its WAL is damaged in segment %s at offset %d (LSN %s), before its checkpoint "
                        "at LSN %s: %s. Crash recovery does not need those records and the node starts, but a "
                        "merge or an archive recovery through them will stop there: restore the segment from a "
                        "copy if there is one, and take a new base backup", eng.node_id, e.path, e.offset,
                        format_lsn(e.lsn), format_lsn(start), e.reason)


def recover(eng: "Engine", *, seed_clock: Callable[[int], None] | None, accept_data_loss: bool) -> None:
    shared, node = eng.shared, eng.node_id
    for sub in ("global", "xact", "base"):
        (shared / sub).mkdir(parents=True, exist_ok=True)
    ptr = statefiles.read_checkpoint(shared, node)
    start = ptr.redo_lsn if ptr is not None else None
    rep = eng.recovery
    rep.redo_start = start
    catalog = statefiles.read_catalog(shared)
    eng.dropped = set(catalog.dropped)
    for table_id in eng.dropped:  # a drop whose file removal a crash interrupted
        relation_path(shared, table_id).unlink(missing_ok=True)
    for known in usable_tables(catalog):
        eng.add_table(known)
    # created but still marked unlogged (this node died before clearing the mark): nobody uses it until the next
    # holder of the catalog lock settles it, not even this node, whose WAL may hold its CATALOG_CREATE
    marked = catalog.unlogged_creates
    eng.committed, eng.aborted = statefiles.read_xact(shared, node)
    eng.max_xid = max(eng.max_xid, max(eng.committed, default=0), max(eng.aborted, default=0))

    _verify(eng, start, accept_data_loss)
    cfg = eng.config
    _report_damage_before(eng, start)
    wal = WalWriter(node_wal_dir(shared, node), node_id=node, system_id=cfg.system_id, epoch=cfg.epoch,
                    segment_size=cfg.segment_size, resume_from=start)
    eng._wal = wal
    if ptr is not None and wal.end_lsn < ptr.redo_lsn:  # equal: recovered by others up to the WAL's end
        raise StateFileCorrupt(f"{statefiles.checkpoint_path(shared, node)} points at LSN "
                               f"{format_lsn(ptr.redo_lsn)} but node {node}'s WAL ends at "
                               f"{format_lsn(wal.end_lsn)}; restore the WAL segments (or the data files and "
                               f"remove the pointer)", path=statefiles.checkpoint_path(shared, node))

    in_flight: set[int] = set()
    reader = WalReader(node_wal_dir(shared, node), node_id=node, system_id=cfg.system_id, start_lsn=start,
                       verify_crc=False)
    fences = statefiles.read_fences(shared).get(node, [])
    batch = Batcher(eng.cache)
    for rec in reader:
        if fences and any(rec.epoch == e and rec.glsn > g for e, g in fences):
            rep.fenced_skipped += 1  # written by a zombie incarnation after survivors recovered it (I6)
            continue
        kind, xid = rec.kind, rec.xid
        rep.records_replayed += 1
        if kind in walrec.HEAP_KINDS:
            t = eng.tables_by_id.get(walrec.heap_table_id(rec.payload))
            if t is None and walrec.heap_table_id(rec.payload) in eng.dropped:
                pass  # the table is gone: its changes are not redone (the transaction's outcome still counts)
            elif t is None:
                raise StateFileCorrupt(f"WAL record at LSN {format_lsn(rec.lsn)} changes a table the catalog does "
                                       f"not know; the catalog file is older than the WAL: restore it",
                                       path=statefiles.catalog_path(shared))
            else:
                rep.pages_changed += batch.add(t, rec)
            if xid and xid not in eng.committed and xid not in eng.aborted:
                in_flight.add(xid)
        elif kind == walrec.COMMIT:
            eng.committed.add(xid)
            in_flight.discard(xid)
        elif kind == walrec.ABORT:
            eng.aborted.add(xid)
            in_flight.discard(xid)
        elif kind == walrec.CHECKPOINT:
            in_flight |= set(walrec.decode_checkpoint(rec.payload).running) - eng.committed - eng.aborted
        elif kind == walrec.CATALOG_CREATE:
            c = walrec.decode_create_table(rec.payload)
            if c.table_id not in eng.tables_by_id and c.table_id not in eng.dropped and c.table_id not in marked:
                eng.add_table(Table.from_entry(c.table_id, c.nbuckets, c.schema, c.sql))
                eng._catalog_dirty = True
        elif kind == walrec.CATALOG_DROP:
            d = walrec.decode_drop_table(rec.payload)
            if d.table_id not in eng.dropped:
                batch.discard(d.table_id)
                eng.forget_table(d.table_id)
                eng._catalog_dirty = True
        eng.max_xid = max(eng.max_xid, xid)
        eng.cache.trim()
    rep.pages_changed += batch.flush()
    eng.cache.trim()

    last = unpack_glsn(wal.last_glsn)[0]
    eng._clock = eng._last_lamport = max(last, unpack_glsn(ptr.glsn)[0] if ptr is not None else 0,
                                         statefiles.read_glsn_floor(shared))
    if seed_clock is not None:
        seed_clock(eng._clock)
    for xid in sorted(in_flight):
        eng._log(walrec.ABORT, b"", xid)
        eng.aborted.add(xid)
    rep.aborted_in_flight = sorted(in_flight)
    eng.checkpoint()
    log.info("node %d: recovered: redo from %s, %d records, %d page changes, %d in-flight transactions aborted",
             node, "the start" if start is None else format_lsn(start), rep.records_replayed, rep.pages_changed,
             len(in_flight))
