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

import numpy as np
import numpy.typing as npt

from muheam.engine import statefiles, walrec
from muheam.engine.buffer import BufferCache
from muheam.engine.heapops import Table, redo_heap
from muheam.storage.heap import buckets_of
from walmerge import Record, WalCorruption, WalReader, format_lsn, node_wal_dir
from walmerge.record import HEADER_SIZE, record_from

log = logging.getLogger("muheam.deadwal")

_HEAP = np.array(sorted(walrec.HEAP_KINDS), dtype=np.uint8)
_KEYED = np.array([walrec.HEAP_INSERT, walrec.HEAP_UPDATE, walrec.HEAP_DELETE, walrec.HEAP_LOCK], dtype=np.uint8)


def _field(buf: npt.NDArray[np.uint8], at: npt.NDArray[np.int64], dtype: str) -> npt.NDArray[np.generic]:
    """One little-endian field of many payloads at once (gathered bytes, reinterpreted)."""
    width = np.dtype(dtype).itemsize
    gathered = buf[at[:, None] + np.arange(width)]
    return np.ascontiguousarray(gathered).view(dtype).ravel()


@dataclass
class DeadWal:
    """The heap records of a dead node's WAL since its checkpoint, indexed by the blocks they touch (vectorised:
    the index is sorted arrays, and a ``Record`` is only built when its chain is redone)."""

    node: int
    epoch: int
    start_lsn: int | None = None
    end_lsn: int = 0
    last_glsn: int = 0
    chains: set[tuple[int, int]] = field(default_factory=set)
    committed: dict[int, int] = field(default_factory=dict)
    aborted: set[int] = field(default_factory=set)
    started: set[int] = field(default_factory=set)
    max_block: dict[int, int] = field(default_factory=dict)
    bytes_read: int = 0
    read_ms: float = 0.0
    damage: str = ""
    torn: str = ""
    _bufs: list[bytes] = field(default_factory=list)
    _rec_buf: npt.NDArray[np.int32] = field(default_factory=lambda: np.zeros(0, np.int32))
    _rec_off: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    _rec_glsn: npt.NDArray[np.uint64] = field(default_factory=lambda: np.zeros(0, np.uint64))
    _rec_new: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    _keys: npt.NDArray[np.uint64] = field(default_factory=lambda: np.zeros(0, np.uint64))
    _key_rec: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def nrecords(self) -> int:
        return len(self._rec_off)

    def undecided(self) -> set[int]:
        return self.started - set(self.committed) - self.aborted

    def records_for(self, table_id: int, block: int) -> npt.NDArray[np.int64]:
        """Indexes of the records touching ``(table_id, block)``."""
        k = np.uint64((table_id << 32) | block)
        lo = int(np.searchsorted(self._keys, k, side="left"))
        hi = int(np.searchsorted(self._keys, k, side="right"))
        return self._key_rec[lo:hi]

    def new_block(self, i: int) -> int:
        """The block record ``i`` allocated (-1: none)."""
        return int(self._rec_new[i])

    def glsn(self, i: int) -> int:
        return int(self._rec_glsn[i])

    def record(self, i: int) -> Record:
        return record_from(self._bufs[int(self._rec_buf[i])], int(self._rec_off[i]))


def load(shared: Path, node: int, epoch: int, system_id: int, table_of: Callable[[int], Table | None]) -> DeadWal:
    """Read ``node``'s WAL from its checkpoint to its end (a torn tail ends it; corruption is logged and ends it:
    what lies beyond cannot be trusted, and the survivors must go on)."""
    ptr = statefiles.read_checkpoint(shared, node)
    dead = DeadWal(node, epoch, start_lsn=ptr.redo_lsn if ptr is not None else None)
    reader = WalReader(node_wal_dir(shared, node), node_id=node, system_id=system_id, start_lsn=dead.start_lsn)
    parts: dict[str, list[npt.NDArray[np.generic]]] = {k: [] for k in ("buf", "off", "glsn", "new", "key", "rec")}
    nrec = 0
    try:
        for batch in reader.batches():
            h, offs = batch.headers, batch.offsets
            if not len(h):
                continue
            dead.end_lsn = int(h["lsn"][-1]) + int(h["total_len"][-1])
            dead.last_glsn = int(h["glsn"][-1])
            dead.bytes_read += dead.end_lsn - int(h["lsn"][0])
            kinds, xids, glsns = h["kind"], h["xid"], h["glsn"]
            c = kinds == walrec.COMMIT
            dead.committed.update(zip(xids[c].tolist(), glsns[c].tolist()))
            dead.aborted.update(xids[kinds == walrec.ABORT].tolist())
            for off in offs[kinds == walrec.CHECKPOINT].tolist():
                dead.started.update(walrec.decode_checkpoint(record_from(batch.data, off).payload).running)
            heap = np.isin(kinds, _HEAP)
            if not heap.any():
                continue
            dead.started.update(x for x in np.unique(xids[heap]).tolist() if x)
            nrec = _index_batch(dead, batch.data, offs[heap], kinds[heap], glsns[heap], parts, nrec, table_of)
    except WalCorruption as e:
        dead.damage = str(e)
        log.error("node %d's WAL is damaged at %s (LSN %s): %s; recovering it up to there", node, e.path,
                  format_lsn(e.lsn), e.reason)
    if reader.torn is not None:
        dead.torn = str(reader.torn)
        log.warning("node %d's WAL ends in a torn record (%s): an interrupted write, ignored", node, reader.torn)
    if dead.end_lsn == 0 and dead.start_lsn is not None:
        dead.end_lsn = dead.start_lsn
    if nrec:
        dead._rec_buf = np.concatenate(parts["buf"]).astype(np.int32)
        dead._rec_off = np.concatenate(parts["off"]).astype(np.int64)
        dead._rec_glsn = np.concatenate(parts["glsn"]).astype(np.uint64)
        dead._rec_new = np.concatenate(parts["new"]).astype(np.int64)
        keys = np.concatenate(parts["key"]).astype(np.uint64)
        recs = np.concatenate(parts["rec"]).astype(np.int64)
        order = np.lexsort((recs, keys))
        dead._keys, dead._key_rec = keys[order], recs[order]
    return dead


def _index_batch(dead: DeadWal, data: bytes, offs: npt.NDArray[np.int64], kinds: npt.NDArray[np.uint8],
                 glsns: npt.NDArray[np.uint64], parts: dict[str, list[npt.NDArray[np.generic]]], nrec: int,
                 table_of: Callable[[int], Table | None]) -> int:
    buf = np.frombuffer(data, dtype=np.uint8)
    at = offs.astype(np.int64) + HEADER_SIZE
    n = len(at)

    def masked(mask: npt.NDArray[np.bool_], shift: int, dtype: str, default: int) -> npt.NDArray[np.int64]:
        out = np.full(n, default, dtype=np.int64)
        if mask.any():
            out[mask] = _field(buf, at[mask] + shift, dtype).astype(np.int64)
        return out

    every = np.ones(n, dtype=bool)
    table = masked(every, 0, "<u4", 0)
    block = masked(every, 4, "<u4", 0)
    ins_upd = (kinds == walrec.HEAP_INSERT) | (kinds == walrec.HEAP_UPDATE)
    newpage = ins_upd & ((masked(ins_upd, 10, "<u2", 0) & walrec.NEW_PAGE) != 0)
    link = masked(newpage, 12, "<u4", -1)
    old = masked(kinds == walrec.HEAP_UPDATE, 24, "<u4", -1)
    is_del = (kinds == walrec.HEAP_DELETE) | (kinds == walrec.HEAP_LOCK)
    key = masked(ins_upd, 16, "<i8", 0) + masked(is_del, 12, "<i8", 0)
    idx = np.arange(nrec, nrec + n, dtype=np.int64)
    parts["buf"].append(np.full(n, len(dead._bufs), np.int32))
    dead._bufs.append(data)
    parts["off"].append(offs.astype(np.int64))
    parts["glsn"].append(glsns)
    parts["new"].append(np.where(newpage, block, -1))
    for blocks, sel in ((block, every), (old, (old >= 0) & (old != block)), (link, link >= 0)):
        parts["key"].append(((table[sel] << 32) | blocks[sel]).astype(np.uint64))
        parts["rec"].append(idx[sel])
    touched = np.concatenate([block, old[old >= 0], link[link >= 0]])
    tables = np.concatenate([table, table[old >= 0], table[link >= 0]])
    for tid in np.unique(table).tolist():
        dead.max_block[tid] = max(dead.max_block.get(tid, 0), int(touched[tables == tid].max()))
        t = table_of(tid)
        if t is None:
            continue
        mine = table == tid
        keyed = mine & np.isin(kinds, _KEYED)
        heads = np.unique(buckets_of(key[keyed], t.nbuckets) + 1).tolist()
        pruned = block[mine & (kinds == walrec.HEAP_PRUNE)]
        heads += [b for b in np.unique(pruned).tolist() if 1 <= b <= t.nbuckets]
        dead.chains.update((tid, int(hd)) for hd in heads)
    return nrec + n


def redo_chain(cache: BufferCache, t: Table, head: int, deads: list[DeadWal]) -> int:
    """Apply the dead nodes' records of chain ``head`` (its bucket block) onto the cached pages; returns the
    number of page changes.  The caller owns the chain."""
    tid = t.table_id
    blocks = set(cache.chain_blocks(tid, head, t.nbuckets))
    picked: set[tuple[int, int]] = set()
    todo = list(blocks)
    while todo:
        b = todo.pop()
        for k, dead in enumerate(deads):
            for i in dead.records_for(tid, b).tolist():
                if (k, i) in picked:
                    continue
                picked.add((k, i))
                new = dead.new_block(i)
                if new >= 0 and new not in blocks:
                    blocks.add(new)
                    todo.append(new)
    changed = 0
    for k, i in sorted(picked, key=lambda ki: deads[ki[0]].glsn(ki[1])):
        changed += redo_heap(cache, t, deads[k].record(i), dirty_lsn=0)
    return changed
