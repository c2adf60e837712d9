"""Bounded buffer cache of 8 KiB pages with LRU eviction, dirty tracking and the WAL-before-data rule (I3).

Every page access of the engine goes through ``read`` (to look) or ``modify`` (to change), so block ownership
(fetch the latest image from the node that last changed the block, DESIGN I2) can later be added by wrapping
these two calls.  A changed page is reported with ``mark_dirty(table, block, lsn)`` where ``lsn`` is the end of
the WAL record of the change; before the page is written to its relation file the cache makes the WAL durable
up to that LSN (``wal_flush``), whether it is written by eviction or by a checkpoint.

Eviction only happens in ``trim()``, which the engine calls between operations: an operation may hold several
``Page`` objects at once (an update touches two blocks), and a page evicted under its feet would silently lose
the change.  The cache may therefore exceed ``capacity`` by the few pages one operation touches.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Callable

from muheam.storage import PageZeroed, RelationFile, RelationFileError, Schema
from muheam.storage.heap import relation_path, walk_chain
from muheam.storage.page import MAX_BLOCK, NO_BLOCK, Page

log = logging.getLogger("muheam.buffer")

Key = tuple[int, int]
WriteHook = Callable[[int, int, int, int], None]
"""``hook(table_id, block, page_lsn, wal_flushed_lsn)`` called just before each page write (tests check I3)."""


class _Frame:
    __slots__ = ("page", "dirty", "lsn")

    def __init__(self, page: Page) -> None:
        self.page = page
        self.dirty = False
        self.lsn = 0


class _Rel:
    __slots__ = ("schema", "file", "nblocks")

    def __init__(self, schema: Schema, file: RelationFile) -> None:
        self.schema = schema
        self.file = file
        self.nblocks = file.nblocks()


class BufferCache:
    """Pages of every table of one node, at most ``capacity`` between operations (see module docstring)."""

    def __init__(self, shared: Path, capacity: int, *, wal_flush: Callable[[int], int],
                 flushed_lsn: Callable[[], int]) -> None:
        if capacity < 4:
            raise ValueError(f"buffer cache capacity must be at least 4 pages, got {capacity}")
        self.shared = shared
        self.capacity = capacity
        self._wal_flush = wal_flush
        self._flushed_lsn = flushed_lsn
        self._frames: OrderedDict[Key, _Frame] = OrderedDict()
        self._pinned: set[Key] = set()
        """Frames ``trim`` must keep: consistent-read copies for the operation running now (``pin``)."""
        self._rels: dict[int, _Rel] = {}
        self.write_hook: WriteHook | None = None
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self.evictions = 0

    # -- relations -----------------------------------------------------------------------------------------------

    def attach(self, table_id: int, schema: Schema) -> None:
        """Open ``base/<table_id>`` for this cache (the file must exist)."""
        if table_id not in self._rels:
            self._rels[table_id] = _Rel(schema, RelationFile(relation_path(self.shared, table_id)))

    def detach(self, table_id: int) -> None:
        """Forget a relation whose file is about to be recreated (its cached pages are dropped unwritten)."""
        rel = self._rels.pop(table_id, None)
        for k in [k for k in self._frames if k[0] == table_id]:
            del self._frames[k]
        if rel is not None:
            rel.file.close()

    def remove(self, table_id: int) -> None:
        """A table that is gone (dropped, or its creation undone): its cached pages are dropped unwritten and its
        file removed (ids are never reused, so no later table has that file)."""
        self.detach(table_id)
        relation_path(self.shared, table_id).unlink(missing_ok=True)

    def relation_file(self, table_id: int) -> RelationFile:
        """The open file of an attached relation (for a caller that writes whole rebuilt blocks itself)."""
        return self._rels[table_id].file

    def nblocks(self, table_id: int) -> int:
        """Blocks of the relation including allocated blocks not yet written (here, or by another node that
        has written them since: the file may have grown)."""
        rel = self._rels[table_id]
        size = rel.file.nblocks()
        if size > rel.nblocks:
            rel.nblocks = size
        return rel.nblocks

    def grow(self, table_id: int, nblocks: int) -> None:
        """Another node allocated blocks up to ``nblocks`` (the relation-extension lock's value).  Never past the
        largest valid block: a size from a peer or a dead node's WAL beyond it is a bug or damage, and taking it
        would make every later allocation fail on every node that learns the size."""
        rel = self._rels[table_id]
        if nblocks > MAX_BLOCK + 1:
            log.error("table %d: refusing to grow the relation to %d blocks (at most %d are valid); keeping %d",
                      table_id, nblocks, MAX_BLOCK + 1, rel.nblocks)
            return
        rel.nblocks = max(rel.nblocks, nblocks)

    # -- cluster block ownership (cache fusion) -----------------------------------------------------------------

    def chain_blocks(self, table_id: int, bucket: int, nbuckets: int) -> list[int]:
        """Block numbers of one bucket chain, walked through the cache (the caller owns the chain)."""
        return [p.block for p in walk_chain(bucket, lambda b: self.read(table_id, b),
                                            max_blocks=self.nblocks(table_id), first_overflow=nbuckets + 1)]

    def export(self, table_id: int, blocks: list[int]) -> list[tuple[int, bytes]]:
        """Images of ``blocks`` for shipping to the next owner: the WAL is made durable up to their changes
        and the dirty ones are written to the shared file first (I3: log, then data, then ship), so a checkpoint
        of this node never depends on pages now in another node's cache."""
        frames = [(b, self._frames.get((table_id, b))) for b in blocks]
        dirty = [(b, fr) for b, fr in frames if fr is not None and fr.dirty]
        need = max((fr.lsn for _, fr in dirty), default=0)
        if need > self._flushed_lsn():
            self._wal_flush(need)
        for b, fr in dirty:
            self._write((table_id, b), fr)
        return [(b, (fr.page if fr is not None else self.read(table_id, b)).encode()) for b, fr in frames]

    def forget_chain(self, table_id: int, bucket: int, nbuckets: int) -> int:
        """Drop every cached page of the chain of ``bucket`` (this node does not own it: it is about to take it,
        or to read it afresh); returns how many.  The walk follows each page's pointer from its cached frame, or
        from the shared file where the frame is gone: the cache evicts a chain's bucket page first (the least
        recently used), and a walk through cached pages alone stopped there and kept the old overflow pages,
        which a new owner then read as current when its grant carried fewer images than the chain has.  When a
        grant or an upgrade runs this the file is current (no other node holds the chain exclusively, and the
        last one that did wrote its pages through); before a consistent read another node may hold it, but then
        nothing of the chain is cached here.  A chain only grows, so every page cached here lies on the walk.
        A pointer out of range or a dirty frame (never one of a chain not owned here) ends it."""
        file = self._rels[table_id].file
        block, seen, dropped = bucket, set(), 0
        while block not in seen:
            seen.add(block)
            frame = self._frames.get((table_id, block))
            if frame is not None and frame.dirty:
                log.error("table %d: a walk to forget the chain of bucket %d met dirty block %d; kept",
                          table_id, bucket, block)
                break
            if frame is not None:
                nxt: int | None = frame.page.next_block
                del self._frames[(table_id, block)]
                dropped += 1
            else:
                nxt = file.next_block(block)
            if nxt is None or nxt == NO_BLOCK or nxt <= nbuckets or nxt > MAX_BLOCK:
                break
            block = nxt
        return dropped

    def forget(self, table_id: int, blocks: list[int]) -> None:
        """Drop cached images (ownership moved away); they must have been exported (written) if dirty."""
        for b in blocks:
            fr = self._frames.pop((table_id, b), None)
            if fr is not None and fr.dirty:
                raise AssertionError(f"dropping dirty block {b} of relation {table_id} unwritten")

    def adopt(self, table_id: int, images: list[tuple[int, bytes]], verified: bool = False) -> None:
        """Install images shipped by the previous owner (clean: the sender wrote them to the shared file).
        ``verified``: these very bytes were installed and verified before (a consistent-read copy the holder
        says is unchanged), so the checks of ``Page.decode`` are not repeated."""
        rel = self._rels[table_id]
        for block, data in images:
            page = (Page(rel.schema, bytearray(data)) if verified
                    else Page.decode(data, rel.schema, block=block, table_id=table_id, path=rel.file.path))
            old = self._frames.get((table_id, block))
            if old is not None and old.dirty:
                raise AssertionError(f"adopting block {block} of relation {table_id} over a dirty image")
            self._frames[(table_id, block)] = _Frame(page)
            rel.nblocks = max(rel.nblocks, block + 1)

    def cached(self, table_id: int, block: int) -> bool:
        return (table_id, block) in self._frames

    def forget_all(self) -> None:
        """Drop every (clean) page: a cluster node owns nothing when it starts serving."""
        if self.dirty_count:
            raise AssertionError("forget_all with dirty pages")
        self._frames.clear()

    # -- page access ---------------------------------------------------------------------------------------------

    def read(self, table_id: int, block: int) -> Page:
        """The current image of a block, for reading only."""
        key = (table_id, block)
        fr = self._frames.get(key)
        if fr is not None:
            self.hits += 1
            self._frames.move_to_end(key)
            return fr.page
        rel = self._rels[table_id]
        self.misses += 1
        page = Page.decode(rel.file.read_block(block), rel.schema, block=block, table_id=table_id,
                           path=rel.file.path)
        self._frames[key] = _Frame(page)
        return page

    modify = read
    """The image of a block the caller is about to change (the seam for cluster block ownership)."""

    def try_read(self, table_id: int, block: int) -> Page | None:
        """Like ``read`` but ``None`` for a block past the end of the file or never written (redo of a
        freshly allocated block)."""
        if (table_id, block) in self._frames:
            return self.read(table_id, block)
        try:
            return self.read(table_id, block)
        except (RelationFileError, PageZeroed):
            return None

    def install(self, table_id: int, page: Page) -> Page:
        """Put a freshly initialised block (new overflow page) in the cache; it is dirty once changed."""
        rel = self._rels[table_id]
        self._frames[(table_id, page.block)] = _Frame(page)
        rel.nblocks = max(rel.nblocks, page.block + 1)
        return page

    def mark_dirty(self, table_id: int, block: int, lsn: int) -> None:
        """The block was changed by the WAL record ending at ``lsn`` (must be in the cache)."""
        fr = self._frames[(table_id, block)]
        fr.dirty = True
        if lsn > fr.lsn:
            fr.lsn = lsn

    # -- writing -------------------------------------------------------------------------------------------------

    def _write(self, key: Key, fr: _Frame) -> None:
        """Write one dirty frame; the caller has made the WAL durable up to ``fr.lsn`` (I3)."""
        flushed = self._flushed_lsn()
        if flushed < fr.lsn:
            flushed = self._wal_flush(fr.lsn)
        if self.write_hook is not None:
            self.write_hook(key[0], key[1], fr.lsn, flushed)
        self._rels[key[0]].file.write_block(key[1], fr.page.encode())
        fr.dirty = False
        self.writes += 1

    def pin(self, table_id: int, blocks: list[int]) -> None:
        """Keep these frames through ``trim`` until ``unpin``: copies of another node's pages that the shared
        file does not have yet (evicted, they would be read again from the file, stale)."""
        self._pinned.update((table_id, b) for b in blocks)

    def unpin(self, table_id: int, blocks: list[int]) -> None:
        self._pinned.difference_update((table_id, b) for b in blocks)

    def trim(self) -> None:
        """Evict least recently used pages (not pinned ones) until at most ``capacity`` remain (one WAL flush for
        them all)."""
        excess = len(self._frames) - self.capacity
        if excess <= 0:
            return
        victims: list[tuple[Key, _Frame]] = []
        for item in self._frames.items():
            if len(victims) == excess:
                break
            if item[0] not in self._pinned:
                victims.append(item)
        need = max((fr.lsn for _, fr in victims if fr.dirty), default=0)
        if need > self._flushed_lsn():
            self._wal_flush(need)
        for key, fr in victims:
            if fr.dirty:
                self._write(key, fr)
            del self._frames[key]
            self.evictions += 1

    def flush_all(self) -> int:
        """Write every dirty page (checkpoint); returns how many were written.  Does not fsync."""
        dirty = [(k, fr) for k, fr in self._frames.items() if fr.dirty]
        need = max((fr.lsn for _, fr in dirty), default=0)
        if need > self._flushed_lsn():
            self._wal_flush(need)
        for key, fr in sorted(dirty, key=lambda kf: kf[0]):
            self._write(key, fr)
        return len(dirty)

    def sync(self) -> None:
        """fsync every relation file (after ``flush_all``, before the checkpoint pointer moves)."""
        for rel in self._rels.values():
            rel.file.fsync()

    @property
    def dirty_count(self) -> int:
        return sum(1 for fr in self._frames.values() if fr.dirty)

    def __len__(self) -> int:
        return len(self._frames)

    def discard(self) -> None:
        """Drop every page unwritten and close the files (after a failure, or a simulated crash in tests)."""
        self._frames.clear()
        for rel in self._rels.values():
            rel.file.close()
        self._rels.clear()

    def close(self) -> None:
        """Close the files; dirty pages must have been flushed (``flush_all``) or are lost to redo."""
        self.discard()
