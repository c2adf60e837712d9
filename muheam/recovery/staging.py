"""The recoverer's rebuild of every chain a dead node touched, done at once and handed out chain by chain.

A survivor rebuilds a dead node's chain when its grant comes back invalid (``Survivors.chain``).  Chain by chain
that costs about a millisecond each, and the recoverer's sweep takes every chain the dead node touched.  So
before the sweep the recoverer redoes all of the dead nodes' records onto all the pages they touch in one pass
per table (``engine.rebuild``), and at each invalid grant of the sweep writes the chain's rebuilt pages to the
shared file, after checking that the file still holds exactly the pages they were built from.

Why that check is enough: the rebuilt image of a page is a function of its image in the file and of the dead
nodes' records; a page's GLSN grows with every change (I2), so an unchanged GLSN means an unchanged page, and a
page that was past the file's end or never written must still be.  Whatever else happened meanwhile (another
survivor rebuilt the chain and changed it, another node died) shows as a different GLSN or a different set of
dead nodes, and the chain goes through the page-by-page redo (``deadwal.redo_chain``) instead, which is always
right.  A rebuilt page needs no WAL flush before it is written: its records are in the dead node's WAL, durable.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from muheam.engine import statefiles
from muheam.engine.errors import StateFileCorrupt
from muheam.engine.rebuild import Rebuilt, rebuild_table
from muheam.engine.redo import HeapRun
from muheam.storage import StorageError
from muheam.storage.layout import BLOCK_SIZE
from muheam.storage.page import HEADER_DTYPE, KIND_BUCKET, KIND_OVERFLOW, NO_BLOCK, PAGE_MAGIC

if TYPE_CHECKING:
    from muheam.recovery.deadwal import DeadWal
    from muheam.engine.buffer import BufferCache
    from muheam.engine.heapops import Table

log = logging.getLogger("muheam.staging")

MAX_PAGES = 65536
"""Pages (512 MiB of images) above which a table's chains are left to the page-by-page redo."""

_FIELDS: Mapping[str, Any] = HEADER_DTYPE.fields or {}
_KIND, _NEXT, _GLSN, _MAGIC = (int(_FIELDS[f][1]) for f in ("kind", "next_block", "glsn", "magic"))
"""Where the page header fields the chain walk and the unchanged-page check read lie (``page.HEADER_DTYPE``)."""


def key_of(deads: list["DeadWal"]) -> frozenset[tuple[int, int, int]]:
    """What a staging was built from: each dead node, its epoch and how many records it had."""
    return frozenset((d.node, d.epoch, d.nrecords) for d in deads)


class _Pages:
    """One table's rebuilt pages with what the chain walk at a grant reads of each as plain Python values."""

    def __init__(self, rb: Rebuilt) -> None:
        self.rb = rb
        self.blocks: list[int] = rb.blocks.tolist()
        self.row = dict(zip(self.blocks, range(len(self.blocks))))
        self.excluded = set(rb.excluded.tolist())
        self.kind = rb.images[:, _KIND].tolist()
        self.next = rb.images[:, _NEXT:_NEXT + 4].copy().view("<u4").ravel().tolist()
        self.base = rb.base.tolist()
        self.changed = rb.changed.tolist()


@dataclass
class Staging:
    key: frozenset[tuple[int, int, int]]
    tables: dict[int, _Pages]
    pages: int = 0
    ms: float = 0.0


def stage(cache: "BufferCache", table_of: Callable[[int], "Table | None"], deads: list["DeadWal"]) -> Staging:
    """Rebuild, in memory, every page the records of ``deads`` touch (nothing is written)."""
    t0 = time.perf_counter()
    runs = [d.run for d in deads if d.run is not None and len(d.run)]
    staging = Staging(key_of(deads), {})
    if not runs:
        return staging
    run = HeapRun.concat(runs)
    if len(runs) > 1:
        run = run.take(np.argsort(run.glsn, kind="stable"))
    tables = run.decoded().table
    catalog = statefiles.catalog_path(cache.shared)
    for tid in np.unique(tables).tolist():
        t = table_of(tid)
        if t is None:
            continue
        sub = run.take(np.flatnonzero(tables == tid))
        if len(np.unique(sub.decoded().block)) > MAX_PAGES:
            log.info("table %s: the dead node touched too many pages to rebuild at once; chain by chain instead",
                     t.name)
            continue
        try:
            cache.attach(tid, t.schema)
            rebuilt = rebuild_table(cache.relation_file(tid), t, sub, catalog)
        except (StorageError, StateFileCorrupt, OSError, ValueError) as e:
            log.warning("table %s: cannot rebuild the dead node's pages at once (%s); chain by chain instead",
                        t.name, e)
            continue
        new = rebuilt.blocks[(rebuilt.base < 0) & rebuilt.changed]
        if len(new):  # most are blocks the dead node appended: never written, and about to be, page by page
            cache.relation_file(tid).preallocate(int(new.min()), int(new.max()) + 1)
        staging.tables[tid] = _Pages(rebuilt)
        staging.pages += len(rebuilt.blocks)
    staging.ms = (time.perf_counter() - t0) * 1000
    return staging


def write_chain(staging: Staging, cache: "BufferCache", t: "Table", head: int) -> int | None:
    """Write the rebuilt pages of chain ``head`` of ``t`` to the relation file and return how many there were, or
    None (nothing written) if the chain must go through the page-by-page redo instead (see the module
    docstring).  The caller holds the chain and caches none of its pages."""
    pages = staging.tables.get(t.table_id)
    if pages is None:
        return None
    tid = t.table_id
    rel = cache.relation_file(tid)
    fd = rel._fd()
    size = os.fstat(fd).st_size
    staged: list[int] = []
    block, hops, limit = head, 0, len(pages.row) + size // BLOCK_SIZE + 1
    while True:
        if cache.cached(tid, block):
            return None
        i = pages.row.get(block, -1)
        if i >= 0:
            if not _unchanged(fd, size, block, pages.base[i]):
                return None
            kind, nxt = pages.kind[i], pages.next[i]
            staged.append(i)
        elif block in pages.excluded:
            return None
        else:  # a block of the chain the dead nodes did not touch: as the file has it
            try:
                page = cache.read(tid, block)
            except StorageError:
                return None  # the page-by-page redo names the problem
            kind, nxt = page.kind, page.next_block
        if kind != (KIND_BUCKET if hops == 0 else KIND_OVERFLOW):
            return None
        if nxt == NO_BLOCK:
            break
        hops += 1
        if nxt <= t.nbuckets or hops >= limit:
            return None
        block = nxt
    written = 0
    images, blocks = pages.rb.images, pages.blocks
    for i in staged:
        if pages.changed[i]:
            at = blocks[i] * BLOCK_SIZE
            try:  # one call per page (this is most of the sweep's time): write_block only to finish or report
                done = os.pwrite(fd, images[i], at)
            except OSError:
                done = 0
            if done != BLOCK_SIZE:
                rel.write_block(blocks[i], images[i])
            written += 1
    return written


def _unchanged(fd: int, size: int, block: int, base: int) -> bool:
    """Whether the file still holds what the page was rebuilt from: a page with GLSN ``base``, or (-1) none."""
    at = block * BLOCK_SIZE
    if base < 0 and at + BLOCK_SIZE > size:
        return True
    head = os.pread(fd, _GLSN + 8, at)
    magic = int.from_bytes(head[_MAGIC:_MAGIC + 4], "little") if len(head) == _GLSN + 8 else -1
    if base < 0:  # it was all zeros when rebuilt; anybody's write since would have put a page header there
        return magic == 0
    return magic == PAGE_MAGIC and int.from_bytes(head[_GLSN:], "little") == base
