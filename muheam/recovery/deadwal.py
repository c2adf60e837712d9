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
from typing import Any, Callable

import numpy as np
import numpy.typing as npt

from muheam.engine import statefiles, walrec
from muheam.engine.buffer import BufferCache
from muheam.engine.heapops import Table
from muheam.engine.redo import HeapRun, redo_run
from muheam.storage.heap import buckets_of
from walmerge import WalCorruption, WalReader, format_lsn, jit, node_wal_dir
from walmerge.record import record_from

log = logging.getLogger("muheam.deadwal")

SCAN_CHAINS = 4
"""Chains whose records a survivor finds by scanning the run before it indexes the run by block: most survivors
rebuild one chain or two, and the index (a sort of every block reference) costs about four scans."""

_HEAP = np.array(sorted(walrec.HEAP_KINDS), dtype=np.uint8)
_KEYED = np.array([walrec.HEAP_INSERT, walrec.HEAP_UPDATE, walrec.HEAP_DELETE, walrec.HEAP_LOCK], dtype=np.uint8)


@dataclass
class DeadWal:
    """The heap records of a dead node's WAL since its checkpoint, indexed by the blocks they touch (vectorised:
    the index is sorted arrays; a chain's records go to ``redo.redo_run`` as columns over the WAL buffers)."""

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
    redo_ms: float = 0.0
    damage: str = ""
    torn: str = ""
    loaded: bool = True
    """False until the WAL is read (``Survivors`` reads it when first needed)."""
    run: HeapRun | None = None
    """Every heap record, in WAL order, decoded once (``redo.HeapRun``)."""
    table_of: Callable[[int], Table | None] | None = None
    _chains_found: bool = False
    _scans: int = 0
    _rec_new: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    _keys: npt.NDArray[np.uint64] = field(default_factory=lambda: np.zeros(0, np.uint64))
    _key_rec: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def nrecords(self) -> int:
        return 0 if self.run is None else len(self.run)

    def find_chains(self) -> set[tuple[int, int]]:
        """The chains (bucket heads) the records changed: what the recoverer sweeps (found on the first call;
        a survivor that only rebuilds a chain on demand never needs them)."""
        if not self._chains_found and self.run is not None and self.table_of is not None:
            _find_chains(self, self.run, self.table_of)
        self._chains_found = True
        return self.chains

    def undecided(self) -> set[int]:
        return self.started - set(self.committed) - self.aborted

    def records_for(self, table_id: int, block: int) -> npt.NDArray[np.int64]:
        """Indexes of the records touching ``(table_id, block)``."""
        if self.run is not None and len(self._keys) == 0:
            _index_blocks(self, self.run)
        k = np.uint64((table_id << 32) | block)
        lo = int(np.searchsorted(self._keys, k, side="left"))
        hi = int(np.searchsorted(self._keys, k, side="right"))
        return self._key_rec[lo:hi]

    def chain_records(self, table_id: int, blocks: set[int]) -> npt.NDArray[np.int64]:
        """Indexes of the records touching a chain of ``table_id`` whose blocks in the shared file are
        ``blocks``, after adding to ``blocks`` every block the records appended to the chain (transitively):
        by scanning the run for the first ``SCAN_CHAINS`` chains, then through the block index."""
        if self.run is None:
            return np.zeros(0, np.int64)
        if len(self._keys) == 0 and self._scans < SCAN_CHAINS:
            self._scans += 1
            return _scan_chain(self.run, table_id, blocks)
        picked = []
        todo = list(blocks)
        while todo:
            recs = self.records_for(table_id, todo.pop())
            picked.append(recs)
            for new in np.unique(self._rec_new[recs]).tolist():
                if new >= 0 and new not in blocks:
                    blocks.add(new)
                    todo.append(new)
        return np.unique(np.concatenate(picked)) if picked else np.zeros(0, np.int64)



def checkpoint_lsn(shared: Path, node: int) -> int | None:
    """Where ``node``'s redo starts: its checkpoint pointer (None: from its first segment)."""
    ptr = statefiles.read_checkpoint(shared, node)
    return ptr.redo_lsn if ptr is not None else None


def load(shared: Path, node: int, epoch: int, system_id: int, table_of: Callable[[int], Table | None],
         start_lsn: int | None | bool = True) -> DeadWal:
    """Read ``node``'s WAL of incarnation ``epoch`` from ``start_lsn`` (True: its checkpoint pointer now) to its
    end (a torn tail ends it; corruption is logged and ends it: what lies beyond cannot be trusted, and the
    survivors must go on).  Records of a later incarnation (the node restarted) or past this incarnation's fence
    (a recoverer has fenced it: a zombie's writes) end it too, so it may be read at any time after the expiry."""
    start = checkpoint_lsn(shared, node) if start_lsn is True else start_lsn
    assert not isinstance(start, bool)
    dead = DeadWal(node, epoch, start_lsn=start, table_of=table_of)
    fence = min((g for e, g in statefiles.read_fences(shared).get(node, []) if e == epoch), default=None)
    reader = WalReader(node_wal_dir(shared, node), node_id=node, system_id=system_id, start_lsn=dead.start_lsn,
                       compiled=jit.use_compiled(load=False))  # the compiled walk if the node has loaded it (same answers)
    bufs: list[bytes | memoryview] = []
    parts: dict[str, list[npt.NDArray[Any]]] = {k: [] for k in ("buf", "off", "kind", "glsn", "xid", "len")}
    try:
        for batch in reader.segments(arrays=True):
            h, offs = batch.headers, batch.offsets
            beyond = h["epoch"] > epoch
            if fence is not None:
                beyond |= (h["epoch"] == epoch) & (h["glsn"] > fence)
            cut = int(np.argmax(beyond)) if beyond.any() else -1
            if cut >= 0:
                h, offs = h[:cut], offs[:cut]
            if not len(h):
                if cut >= 0:
                    break
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
            if heap.any():
                x = xids[heap]  # one transaction's records mostly follow one another: keep one per stretch
                dead.started.update(x[np.r_[True, x[1:] != x[:-1]]].tolist())
                dead.started.discard(0)
                parts["buf"].append(np.full(int(heap.sum()), len(bufs), np.int32))
                parts["off"].append(offs[heap].astype(np.int64))
                parts["kind"].append(kinds[heap])  # the columns redo needs, not whole headers
                parts["glsn"].append(glsns[heap].astype(np.uint64, copy=False))
                parts["xid"].append(x.astype(np.uint64, copy=False))
                parts["len"].append(h["total_len"][heap].astype(np.int64))
                bufs.append(batch.data)
            if cut >= 0:
                break
    except WalCorruption as e:
        dead.damage = str(e)
        log.error("node %d's WAL is damaged at %s (LSN %s): %s; recovering it up to there", node, e.path,
                  format_lsn(e.lsn), e.reason)
    if reader.torn is not None:
        dead.torn = str(reader.torn)
        log.warning("node %d's WAL ends in a torn record (%s): an interrupted write, ignored", node, reader.torn)
    if dead.end_lsn == 0 and dead.start_lsn is not None:
        dead.end_lsn = dead.start_lsn
    if parts["buf"]:
        run = HeapRun.of_headers(bufs, *(np.concatenate(parts[k]) for k in ("buf", "off", "kind", "glsn", "xid",
                                                                             "len")))
        _max_blocks(dead, run)
    return dead


def _index_blocks(dead: DeadWal, run: HeapRun) -> None:
    """Index ``run`` by the blocks each record touches (for ``records_for``: built when first needed, since
    the recoverer's rebuild of every chain at once does without it)."""
    d, n = run.decoded(), len(run)
    table, block, old, link = d.table, d.block, d.old_block, d.link
    dead._rec_new = np.where(d.fresh, block, -1)
    idx = np.arange(n, dtype=np.int64)
    keys, recs = [], []
    for blocks, sel in ((block, np.ones(n, bool)), (old, (old >= 0) & (old != block)), (link, link >= 0)):
        keys.append(((table[sel] << 32) | blocks[sel]).astype(np.uint64))
        recs.append(idx[sel])
    key_all, rec_all = np.concatenate(keys), np.concatenate(recs)
    order = np.argsort(key_all, kind="stable")  # the order of a block's records does not matter: redo_chain sorts
    dead._keys, dead._key_rec = key_all[order], rec_all[order]


def _max_blocks(dead: DeadWal, run: HeapRun) -> None:
    """The highest block ``run`` touched per table (a relation-extension grant grows the relation past it)."""
    dead.run = run
    d = run.decoded()
    table, block, old, link = d.table, d.block, d.old_block, d.link
    touched = np.concatenate([block, old[old >= 0], link[link >= 0]])
    tables = np.concatenate([table, table[old >= 0], table[link >= 0]])
    for tid in np.unique(table).tolist():
        dead.max_block[tid] = int(touched[tables == tid].max())


def _scan_chain(run: HeapRun, table_id: int, blocks: set[int]) -> npt.NDArray[np.int64]:
    """``DeadWal.chain_records`` without the index: a block joins the chain if a NEW_PAGE record linked it from
    a chain block, or put a version updated from a chain block there (as ``records_for`` finds them)."""
    d = run.decoded()
    mine = d.table == table_id
    fresh = np.flatnonzero(mine & d.fresh)
    children: dict[int, list[int]] = {}
    for parent, child in zip(d.link[fresh].tolist(), d.block[fresh].tolist()):
        children.setdefault(parent, []).append(child)
    todo = list(blocks)
    while True:
        while todo:
            for child in children.get(todo.pop(), ()):
                if child not in blocks:
                    blocks.add(child)
                    todo.append(child)
        chain = np.fromiter(blocks, np.int64, len(blocks))
        hit = mine & (np.isin(d.block, chain) | np.isin(d.old_block, chain) | np.isin(d.link, chain))
        todo = [b for b in set(d.block[hit & d.fresh].tolist()) if b not in blocks]
        if not todo:
            return np.flatnonzero(hit)
        blocks.update(todo)


def _find_chains(dead: DeadWal, run: HeapRun, table_of: Callable[[int], Table | None]) -> None:
    """Find the chains (bucket heads) ``run`` changed."""
    d, kinds = run.decoded(), run.kind
    table, block = d.table, d.block
    for tid in np.unique(table).tolist():
        t = table_of(tid)
        if t is None:
            continue
        mine = table == tid
        keyed = mine & np.isin(kinds, _KEYED)
        heads = np.unique(buckets_of(d.key[keyed], t.nbuckets) + 1).tolist()
        pruned = block[mine & (kinds == walrec.HEAP_PRUNE)]
        heads += [b for b in np.unique(pruned).tolist() if 1 <= b <= t.nbuckets]
        dead.chains.update((tid, int(hd)) for hd in heads)


def redo_chain(cache: BufferCache, t: Table, head: int, deads: list[DeadWal]) -> int:
    """Apply the dead nodes' records of chain ``head`` (its bucket block) onto the cached pages; returns the
    number of page changes.  The caller owns the chain."""
    tid = t.table_id
    blocks = set(cache.chain_blocks(tid, head, t.nbuckets))
    while True:  # the chain's blocks, plus every block the dead nodes appended to it (transitively)
        size = len(blocks)
        picked = [dead.chain_records(tid, blocks) for dead in deads]
        if len(deads) == 1 or len(blocks) == size:  # one node's records were followed to the end already
            break
    runs = [dead.run.take(chosen) for dead, chosen in zip(deads, picked) if dead.run is not None and len(chosen)]
    if not runs:
        return 0
    run = HeapRun.concat(runs)
    return redo_run(cache, t, run.take(np.argsort(run.glsn, kind="stable")))
