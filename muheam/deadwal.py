"""A dead node's WAL since its last checkpoint, indexed for survivors (DESIGN.md section 8).

When a node's lease expires it has stopped writing (it fences itself before the lease can run out, I6), so its
WAL is final.  Every survivor reads it once, before the lock manager drops the dead member, so that any chain
whose ownership comes back marked invalid (the dead node may have held it with changes not yet written to the
shared file) can be rebuilt at once from the shared file plus the dead node's records for that chain.

``redo_chain`` finds the chain's blocks -- the ones on disk plus any the dead node appended (``NEW_PAGE`` records
linked from a chain block, transitively) -- and applies every record touching them in GLSN order, each only to
pages that do not have it yet (the ordinary idempotent redo).  Outcomes found in the WAL decide the dead node's
transactions: COMMIT records are commits (with their GLSN as commit timestamp); everything else it started
(changes, or running at its checkpoint) without an outcome is aborted by the recoverer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from muheam.engine import statefiles, walrec
from muheam.engine.buffer import BufferCache
from muheam.engine.heapops import Table, redo_heap
from muheam.storage.heap import bucket_block
from walmerge import Record, WalCorruption, WalReader, format_lsn, node_wal_dir

log = logging.getLogger("muheam.deadwal")

Block = tuple[int, int]


@dataclass
class DeadWal:
    node: int
    epoch: int
    start_lsn: int | None = None
    end_lsn: int = 0
    last_glsn: int = 0
    records: list[Record] = field(default_factory=list)
    by_block: dict[Block, list[int]] = field(default_factory=dict)
    chains: set[Block] = field(default_factory=set)
    committed: dict[int, int] = field(default_factory=dict)
    aborted: set[int] = field(default_factory=set)
    started: set[int] = field(default_factory=set)
    max_block: dict[int, int] = field(default_factory=dict)
    bytes_read: int = 0
    damage: str = ""

    def undecided(self) -> set[int]:
        return self.started - set(self.committed) - self.aborted

    def _index(self, rec: Record, table_of: Callable[[int], Table | None]) -> None:
        i = len(self.records)
        self.records.append(rec)
        tid = walrec.heap_table_id(rec.payload)
        t = table_of(tid)
        kind = rec.kind
        blocks: list[int] = []
        key: int | None = None
        if kind == walrec.HEAP_INSERT:
            r = walrec.decode_insert(rec.payload)
            blocks, key = [r.block], r.key
            if r.flags & walrec.NEW_PAGE:
                blocks.append(r.link_from)
        elif kind == walrec.HEAP_UPDATE:
            u = walrec.decode_update(rec.payload)
            blocks, key = [u.new_block, u.old_block], u.key
            if u.flags & walrec.NEW_PAGE:
                blocks.append(u.link_from)
        elif kind in (walrec.HEAP_DELETE, walrec.HEAP_LOCK):
            d = walrec.decode_delete(rec.payload)
            blocks, key = [d.block], d.key
        elif kind == walrec.HEAP_PRUNE:
            p = walrec.decode_prune(rec.payload)
            blocks = [p.block]
            if t is not None and 1 <= p.block <= t.nbuckets:
                self.chains.add((tid, p.block))
        for b in set(blocks):
            self.by_block.setdefault((tid, b), []).append(i)
        if blocks:
            self.max_block[tid] = max(self.max_block.get(tid, 0), *blocks)
        if key is not None and t is not None:
            self.chains.add((tid, bucket_block(key, t.nbuckets)))


def load(shared: Path, node: int, epoch: int, system_id: int, table_of: Callable[[int], Table | None]) -> DeadWal:
    """Read ``node``'s WAL from its checkpoint to its end (a torn tail ends it; corruption is logged and ends it:
    what lies beyond cannot be trusted, and the survivors must go on)."""
    ptr = statefiles.read_checkpoint(shared, node)
    dead = DeadWal(node, epoch, start_lsn=ptr.redo_lsn if ptr is not None else None)
    reader = WalReader(node_wal_dir(shared, node), node_id=node, system_id=system_id, start_lsn=dead.start_lsn)
    try:
        for rec in reader:
            dead.end_lsn = rec.end_lsn
            dead.last_glsn = rec.glsn
            dead.bytes_read += rec.end_lsn - rec.lsn
            kind, xid = rec.kind, rec.xid
            if kind in walrec.HEAP_KINDS:
                dead._index(rec, table_of)
                if xid:
                    dead.started.add(xid)
            elif kind == walrec.COMMIT:
                dead.committed[xid] = rec.glsn
            elif kind == walrec.ABORT:
                dead.aborted.add(xid)
            elif kind == walrec.CHECKPOINT:
                dead.started.update(walrec.decode_checkpoint(rec.payload).running)
    except WalCorruption as e:
        dead.damage = str(e)
        log.error("node %d's WAL is damaged at %s (LSN %s): %s; recovering it up to there", node, e.path,
                  format_lsn(e.lsn), e.reason)
    if reader.torn is not None:
        log.warning("node %d's WAL ends in a torn record (%s): an interrupted write, ignored", node, reader.torn)
    if dead.end_lsn == 0 and dead.start_lsn is not None:
        dead.end_lsn = dead.start_lsn
    return dead


def redo_chain(cache: BufferCache, t: Table, head: int, deads: list[DeadWal]) -> int:
    """Apply the dead nodes' records of chain ``head`` (its bucket block) onto the cached pages; returns the
    number of page changes.  The caller owns the chain."""
    tid = t.table_id
    blocks = set(cache.chain_blocks(tid, head, t.nbuckets))
    picked: dict[tuple[int, int], Record] = {}
    todo = list(blocks)
    while todo:
        b = todo.pop()
        for k, dead in enumerate(deads):
            for i in dead.by_block.get((tid, b), ()):
                if (k, i) in picked:
                    continue
                rec = picked[(k, i)] = dead.records[i]
                if rec.kind in (walrec.HEAP_INSERT, walrec.HEAP_UPDATE):
                    p = rec.payload
                    r = walrec.decode_insert(p) if rec.kind == walrec.HEAP_INSERT else walrec.decode_update(p)
                    new = r.block if isinstance(r, walrec.Insert) else r.new_block
                    if r.flags & walrec.NEW_PAGE and new not in blocks:
                        blocks.add(new)
                        todo.append(new)
    changed = 0
    for rec in sorted(picked.values(), key=lambda r: r.glsn):
        changed += redo_heap(cache, t, rec, dirty_lsn=0)
    return changed
