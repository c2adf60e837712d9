"""Heap changes through the buffer cache: the do path (find, check, change, WAL-log, stamp) and physical redo.

Both paths change pages with the same ``Page`` methods (``insert(slot=...)``, ``set_xmax``, ``free``,
``clear_xmax``), so redo reproduces the exact bytes the engine produced.  The do path changes the page first
and logs second: the slot number is only known after the change, and a failed append stops the engine (the
changed page is then never written, like a PostgreSQL PANIC inside a critical section).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from numpy.typing import NDArray

from muheam.engine import statefiles, walrec
from muheam.engine.buffer import BufferCache
from muheam.storage import KeyNotFound, RowConflict, Schema, Snapshot, StatusFn, TupleId
from muheam.storage import mvcc
from muheam.storage.heap import (raise_insert_conflict, bucket_block, find_space, find_visible, unique_conflict,
                                 walk_chain)
from muheam.storage.page import KIND_OVERFLOW, Page
from muheam.storage.schema import Row, check_key

PRUNE_HINT = 24
"""An update prunes the page of the version it replaces once that page holds this many versions ..."""
PRUNE_STEP = 8
"""... and then again only once this many more versions accumulated since its last prune.  Without the step, a
page whose live rows alone reach ``PRUNE_HINT`` (a small hot table packs many rows per bucket) was pruned on
every update, although nothing on it could be reclaimed: the visibility pass over all its slots was a fifth of
a pgbench transaction's CPU.  A full chain is still pruned at once (``_place``)."""

Log = Callable[[int, bytes, int], tuple[int, int]]
"""``log(kind, payload, xid) -> (glsn, end_lsn)``: append one WAL record (the engine's writer)."""


@dataclass(frozen=True)
class Table:
    """A catalog entry."""

    table_id: int
    name: str
    schema: Schema
    nbuckets: int
    sql: dict[str, Any] | None = field(default=None, compare=False)
    """The SQL port's description (key column name, declared types), kept with the table: written with it, in
    the same catalog entry and record, so no other table of that name can ever get it."""

    def catalog_entry(self) -> dict[str, Any]:
        """This table as a ``global/catalog`` entry."""
        entry = {"table_id": self.table_id, "nbuckets": self.nbuckets, "schema": self.schema.to_dict()}
        if self.sql:
            entry["sql"] = self.sql
        return entry

    @classmethod
    def from_entry(cls, table_id: int, nbuckets: int, schema: dict[str, Any],
                   sql: dict[str, Any] | None = None) -> "Table":
        """The table of a ``global/catalog`` entry or a CATALOG_CREATE record."""
        s = Schema.from_dict(schema)
        return cls(int(table_id), s.name, s, int(nbuckets), dict(sql) if isinstance(sql, dict) else None)


def catalog_tables(shared: Path) -> list[Table]:
    """Every table ``global/catalog`` lists (but those whose creation is not logged yet)."""
    return usable_tables(statefiles.read_catalog(shared))


def usable_tables(catalog: statefiles.CatalogFile) -> list[Table]:
    """The tables of a catalog read, but those whose creation is not logged yet (not in any WAL: no one uses
    them until the next holder of the catalog lock logs them)."""
    return [Table.from_entry(d["table_id"], d["nbuckets"], d["schema"], d.get("sql")) for d in catalog.entries
            if int(d["table_id"]) not in catalog.unlogged_creates]


class HeapOps:
    """Row operations of one node over its buffer cache; every change is WAL-logged before it returns."""

    def __init__(self, cache: BufferCache, log: Log, prune_rule: Callable[[], tuple[int, StatusFn]],
                 before_extend: Callable[[int], None] = lambda table_id: None) -> None:
        """``prune_rule() -> (oldest_xmin, status)`` says what pruning may reclaim (``mvcc.dead_mask``);
        ``before_extend(table_id)`` runs before a new overflow block is allocated (cluster: may raise to
        acquire the relation-extension lock first; nothing has been changed at that point but pruning)."""
        self.cache = cache
        self.log = log
        self.prune_rule = prune_rule
        self.before_extend = before_extend

    # -- helpers -------------------------------------------------------------------------------------------------

    def _chain(self, t: Table, start: int) -> Iterator[Page]:
        tid = t.table_id
        return walk_chain(start, lambda b: self.cache.modify(tid, b), max_blocks=lambda: self.cache.nblocks(tid),
                          first_overflow=t.nbuckets + 1)

    def _done(self, t: Table, pages: list[Page], glsn: int, end_lsn: int) -> None:
        seen: set[int] = set()
        for p in pages:
            if p.block not in seen:
                seen.add(p.block)
                p.stamp(glsn)
                self.cache.mark_dirty(t.table_id, p.block, end_lsn)

    def _prune(self, t: Table, page: Page, rule: tuple[int, StatusFn]) -> None:
        res = page.prune(*rule)
        if res:
            glsn, end = self.log(walrec.HEAP_PRUNE,
                                 walrec.encode_prune(t.table_id, page.block, res.freed, res.xmax_cleared), 0)
            self._done(t, [page], glsn, end)

    def _place(self, t: Table, key: int, status: StatusFn) -> tuple[Page, Page | None]:
        """A page with a free slot in ``key``'s chain (pruning a full chain first, then extending it);
        returns ``(page, link_from)`` where ``link_from`` is set if ``page`` is a new overflow block."""
        start = bucket_block(key, t.nbuckets)
        page, last = find_space(start, lambda b: self.cache.modify(t.table_id, b),
                                max_blocks=lambda: self.cache.nblocks(t.table_id), first_overflow=t.nbuckets + 1)
        if page is not None:
            return page, None
        rule = self.prune_rule()
        for cand in self._chain(t, start):
            self._prune(t, cand, rule)
            if cand.nfree:
                return cand, None
        self.before_extend(t.table_id)
        block = self.cache.nblocks(t.table_id)
        new = self.cache.install(t.table_id, Page.new(t.schema, block=block, kind=KIND_OVERFLOW,
                                                      table_id=t.table_id))
        last.next_block = block
        return new, last

    def _writable(self, t: Table, key: int, snap: Snapshot, status: StatusFn) -> tuple[Page, int]:
        hit = find_visible(bucket_block(key, t.nbuckets), key, snap, status,
                           lambda b: self.cache.modify(t.table_id, b), max_blocks=lambda: self.cache.nblocks(t.table_id),
                           first_overflow=t.nbuckets + 1)
        if hit is None:
            raise KeyNotFound(f"table {t.name!r}: no row with key {key} is visible to transaction {snap.xid}",
                              key=key)
        page, slot = hit
        s = page.slots[slot]
        blocker = mvcc.write_conflict(int(s["xmax"]), int(s["flags"]), snap.xid, status)
        if blocker is not None:
            who, committed = blocker
            what = ("changed it after this transaction's snapshot; roll back and retry the transaction"
                    if committed else "is changing or locking it; wait for it to finish and retry")
            raise RowConflict(f"table {t.name!r}, key {key}: transaction {who} {what}", key=key, blocker=who,
                              committed=committed)
        return page, slot

    # -- reads ---------------------------------------------------------------------------------------------------

    def get(self, t: Table, key: int, snap: Snapshot, status: StatusFn) -> Row | None:
        key = check_key(key, t.name)
        tid = t.table_id
        hit = find_visible(bucket_block(key, t.nbuckets), key, snap, status, lambda b: self.cache.read(tid, b),
                           max_blocks=lambda: self.cache.nblocks(tid), first_overflow=t.nbuckets + 1)
        if hit is None:
            return None
        return t.schema.from_record(hit[0].slots["row"][hit[1]])

    def scan_buckets(self, t: Table, buckets: list[int], snap: Snapshot,
                     status: StatusFn) -> tuple[NDArray[np.int64], NDArray[Any]] | None:
        """Visible (keys, rows) of several bucket chains, with one vectorised visibility pass over all their
        slots (per-page passes made a scan of a many-chain table cost a pass per chain)."""
        tid = t.table_id
        nblocks = self.cache.nblocks(tid)
        slots = [page.slots[page.used_mask()] for bucket in buckets
                 for page in walk_chain(bucket, lambda b: self.cache.read(tid, b), max_blocks=nblocks,
                                        first_overflow=t.nbuckets + 1)]
        if not slots:
            return None
        if len(slots) == 1:
            s = slots[0]
        else:  # slice assignment: np.concatenate of structured arrays re-derives the dtype per array (slow)
            s = np.empty(sum(len(x) for x in slots), dtype=slots[0].dtype)
            pos = 0
            for x in slots:
                s[pos:pos + len(x)] = x
                pos += len(x)
        mask = mvcc.visible_mask(s["xmin"], s["xmax"], s["flags"], snap, status)
        if not mask.any():
            return None
        sel = s[mask]
        return sel["key"].copy(), sel["row"].copy()

    # -- writes --------------------------------------------------------------------------------------------------

    def insert(self, t: Table, key: int, row: Row, snap: Snapshot, status: StatusFn) -> TupleId:
        key = check_key(key, t.name)
        rec = t.schema.to_record(row)
        versions = [v for p in self._chain(t, bucket_block(key, t.nbuckets)) for v in p.versions(key)]
        verdict = unique_conflict(versions, snap, status) if versions else None
        if verdict is not None:
            raise_insert_conflict(t.name, key, *verdict)
        page, link = self._place(t, key, status)
        slot = page.insert(key, rec, snap.xid)
        flags = walrec.NEW_PAGE if link is not None else 0
        glsn, end = self.log(walrec.HEAP_INSERT, walrec.encode_insert(
            t.table_id, page.block, slot, flags, link.block if link is not None else 0, key, rec.tobytes()),
            snap.xid)
        self._done(t, [page] if link is None else [page, link], glsn, end)
        return TupleId(page.block, slot)

    def update(self, t: Table, key: int, change: Callable[[Row], Row], snap: Snapshot,
               status: StatusFn) -> TupleId:
        """Replace the visible version of ``key`` by ``change(old_row)``."""
        key = check_key(key, t.name)
        old, oslot = self._writable(t, key, snap, status)
        if old.nused >= max(PRUNE_HINT, old.prune_floor + PRUNE_STEP):
            # prune before the page is full, so readers do not wade through a page of dead versions of hot rows
            # (the version we are about to replace is live for us, hence not prunable: oslot stays valid)
            self._prune(t, old, self.prune_rule())
            old.prune_floor = old.nused
        rec = t.schema.to_record(change(t.schema.from_record(old.slots["row"][oslot])))
        page, link = self._place(t, key, status)
        nslot = page.insert(key, rec, snap.xid)
        old.set_xmax(oslot, snap.xid, ctid=TupleId(page.block, nslot))
        flags = walrec.NEW_PAGE if link is not None else 0
        glsn, end = self.log(walrec.HEAP_UPDATE, walrec.encode_update(
            t.table_id, page.block, nslot, flags, link.block if link is not None else 0, key, old.block, oslot,
            rec.tobytes()), snap.xid)
        self._done(t, [page, old] if link is None else [page, old, link], glsn, end)
        return TupleId(page.block, nslot)

    def delete(self, t: Table, key: int, snap: Snapshot, status: StatusFn, *, lock_only: bool = False) -> TupleId:
        key = check_key(key, t.name)
        page, slot = self._writable(t, key, snap, status)
        if lock_only and int(page.slots["xmax"][slot]) == snap.xid:
            return TupleId(page.block, slot)       # already locked (or deleted) by us
        page.set_xmax(slot, snap.xid, lock_only=lock_only)
        glsn, end = self.log(walrec.HEAP_LOCK if lock_only else walrec.HEAP_DELETE,
                             walrec.encode_delete(t.table_id, page.block, slot, key), snap.xid)
        self._done(t, [page], glsn, end)
        return TupleId(page.block, slot)
