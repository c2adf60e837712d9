"""Physical redo of heap records, many at a time: each change goes only to the pages that lack it.

A run of heap records of one table (``HeapRun``: numpy columns over the raw payload bytes, in the order they
must be applied, i.e. GLSN order) is split into page operations -- initialise a new overflow block, link it,
put a version in a slot, set or clear an xmax, free slots -- grouped by page, keeping the run's order within
each page.  A page takes a record's operations only if the record's GLSN is above the page's GLSN at that point
(its starting GLSN, or the last record applied to it before): the ordinary idempotent redo rule, so the result
is byte for byte what applying the records one at a time gives (a run of one record is exactly that).

What makes it fast is that consecutive inserts into one page become one vectorised ``Page.insert_many``, and
each page is fetched, stamped and marked dirty once per run instead of once per record: a survivor rebuilding a
dead node's chains, a node redoing its own WAL and a whole-cluster replay all go through here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import numpy.typing as npt

from muheam.engine import statefiles, walrec
from muheam.engine.errors import StateFileCorrupt
from muheam.storage import TupleId
from muheam.storage.layout import SLOT_HEADER_SIZE
from muheam.storage.page import KIND_OVERFLOW, Page, slot_images
from walmerge.record import HEADER_SIZE

if TYPE_CHECKING:
    from muheam.engine.buffer import BufferCache
    from muheam.engine.heapops import Table
    from walmerge import Record

BATCH_RECORDS = 4096
"""Records a ``Batcher`` holds before applying them: enough to amortise the set-up, few enough pages to hold."""

I64 = npt.NDArray[np.int64]
Buf = bytes | memoryview
"""A WAL buffer: the bytes of a segment, or a view of a numpy buffer holding them."""

_FRESH, _LINK, _PUT, _XMAX, _PRUNE = 0, 1, 2, 3, 4
"""Page operation types, in the order one record's operations on one page are applied."""
_INSERT_ROW = 24   # walrec._INSERT.size: the row follows the fixed part of an insert payload
_UPDATE_ROW = 32   # walrec._UPDATE.size
_FIXED_NAMES = ("table", "block", "slot", "flags", "link", "key", "old_block", "old_slot", "del_key")
_FIXED = np.dtype({"names": list(_FIXED_NAMES),
                   "formats": ["<u4", "<u4", "<u2", "<u2", "<u4", "<i8", "<u4", "<u2", "<i8"],
                   "offsets": [0, 4, 8, 10, 12, 16, 24, 28, 12], "itemsize": _UPDATE_ROW})
"""The fixed-size fields of heap payloads (``walrec``'s insert/update layout; delete, lock and prune share
its first ones: table, block, slot; a delete's or lock's key is ``del_key``)."""


def _or_minus_one(mask: npt.NDArray[np.bool_], values: I64) -> I64:
    """``values`` where ``mask``, else -1, as int64 whatever numpy's promotion rules (see ``HeapRun.decoded``)."""
    out = np.full(len(values), -1, np.int64)
    out[mask] = values[mask]
    return out


def gather(bufs: Sequence[Buf], buf: npt.NDArray[np.int32], starts: I64, width: int) -> npt.NDArray[np.uint8]:
    """``width`` bytes from ``bufs[buf[i]]`` at ``starts[i]`` for every i, one per line (zero-padded past a
    buffer's end): every ``width``-byte window of a buffer is viewed as one opaque item, so the gather copies
    whole lines (a ``memcpy`` each), with no per-record Python and no per-byte index."""
    n = len(starts)
    if width == 0 or n == 0:
        return np.zeros((n, width), np.uint8)
    item = np.dtype((np.void, width))
    out = np.empty((n, width), np.uint8)
    lines = out.view(item).ravel()
    for b in (np.unique(buf).tolist() if len(bufs) > 1 else [0]):
        sel = np.flatnonzero(buf == b) if len(bufs) > 1 else np.arange(n)
        data = np.frombuffer(bufs[b], np.uint8)
        at = starts[sel]
        inside = at <= len(data) - width
        if inside.any():
            windows = np.ndarray((len(data) - width + 1,), item, data, 0, (1,))
            lo, hi = int(sel[0]), int(sel[-1]) + 1
            if hi - lo == len(sel) and inside.all():  # the usual case: one stretch of lines from one buffer
                lines[lo:hi] = windows[at]
                continue
            lines[sel[inside]] = windows[at[inside]]
        for i, a in zip(sel[~inside].tolist(), at[~inside].tolist()):
            tail = data[a:a + width]
            out[i] = 0
            out[i, :len(tail)] = tail
    return out


@dataclass
class Decoded:
    """The fixed payload fields of a run's records (-1 where a kind has no such field)."""

    table: I64
    block: I64
    slot: I64
    fresh: npt.NDArray[np.bool_]
    link: I64
    key: I64   # the row's key (inserts, updates, deletes, locks; 0 for prunes)
    old_block: I64
    old_slot: I64

    def take(self, idx: I64) -> "Decoded":
        return Decoded(*(getattr(self, f)[idx] for f in _DECODED))


_DECODED = ("table", "block", "slot", "fresh", "link", "key", "old_block", "old_slot")


@dataclass
class HeapRun:
    """Heap records in apply order, as columns: ``at[i]`` is where record i's payload starts in
    ``bufs[buf[i]]`` and ``plen[i]`` its length; ``end_lsn`` is what the changed pages wait for (I3)."""

    kind: npt.NDArray[np.uint8]
    glsn: npt.NDArray[np.uint64]
    xid: npt.NDArray[np.uint64]
    end_lsn: I64
    bufs: Sequence[Buf]
    buf: npt.NDArray[np.int32]
    at: I64
    plen: I64
    fields: Decoded | None = None

    @classmethod
    def of_records(cls, recs: Sequence["Record"], dirty_lsn: int | None = None) -> "HeapRun":
        lens = np.fromiter((len(r.payload) for r in recs), np.int64, len(recs))
        starts = np.zeros(len(recs), np.int64)
        np.cumsum(lens[:-1], out=starts[1:])
        ends = [r.end_lsn for r in recs] if dirty_lsn is None else [dirty_lsn] * len(recs)
        return cls(np.fromiter((r.kind for r in recs), np.uint8, len(recs)),
                   np.fromiter((r.glsn for r in recs), np.uint64, len(recs)),
                   np.fromiter((r.xid for r in recs), np.uint64, len(recs)),
                   np.asarray(ends, np.int64), [b"".join(r.payload for r in recs)],
                   np.zeros(len(recs), np.int32), starts, lens)

    @classmethod
    def of_headers(cls, bufs: Sequence[Buf], buf: npt.NDArray[np.int32], rec_off: I64, kind: npt.NDArray[np.uint8],
                   glsn: npt.NDArray[np.uint64], xid: npt.NDArray[np.uint64], total_len: I64) -> "HeapRun":
        """Records of another node's WAL as a reader found them: record i's header starts at ``rec_off[i]`` in
        ``bufs[buf[i]]`` and holds ``kind[i]`` .. ``total_len[i]``.  Already durable, so the pages wait for no WAL
        flush."""
        return cls(kind, glsn, xid, np.zeros(len(kind), np.int64), bufs, buf, rec_off + HEADER_SIZE,
                   total_len - HEADER_SIZE)

    def __len__(self) -> int:
        return len(self.kind)

    def decoded(self) -> Decoded:
        """The fixed fields of every record, decoded once for the whole run."""
        if self.fields is None:
            f = gather(self.bufs, self.buf, self.at, _FIXED.itemsize).view(_FIXED).ravel()
            kind = self.kind
            put = (kind == walrec.HEAP_INSERT) | (kind == walrec.HEAP_UPDATE)
            upd = kind == walrec.HEAP_UPDATE
            dele = (kind == walrec.HEAP_DELETE) | (kind == walrec.HEAP_LOCK)
            fresh = put & ((f["flags"] & walrec.NEW_PAGE) != 0)
            # every field widened to int64 *before* a -1 sentinel is merged in: under numpy >= 2,
            # np.where(mask, uint32_field, -1) keeps uint32 and turns -1 into 4294967295, a block number that a
            # dead node's highest block then took for real (the relation grew to 2^32 blocks)
            wide = {name: f[name].astype(np.int64) for name in _FIXED_NAMES}
            self.fields = Decoded(wide["table"], wide["block"], wide["slot"], fresh, _or_minus_one(fresh, wide["link"]),
                                  np.where(put, wide["key"], np.where(dele, wide["del_key"], 0)),
                                  _or_minus_one(upd, wide["old_block"]), _or_minus_one(upd, wide["old_slot"]))
        return self.fields

    def take(self, idx: I64) -> "HeapRun":
        """Records ``idx`` of this run, in that order (sharing the buffers)."""
        return HeapRun(self.kind[idx], self.glsn[idx], self.xid[idx], self.end_lsn[idx], self.bufs, self.buf[idx],
                       self.at[idx], self.plen[idx], None if self.fields is None else self.fields.take(idx))

    @staticmethod
    def concat(runs: Sequence["HeapRun"]) -> "HeapRun":
        """One run of several (each keeps its own buffers)."""
        if len(runs) == 1:
            return runs[0]
        bufs: list[Buf] = []
        shifted = []
        for r in runs:
            shifted.append(r.buf + len(bufs))
            bufs.extend(r.bufs)
        decoded = [r.decoded() for r in runs]
        return HeapRun(np.concatenate([r.kind for r in runs]), np.concatenate([r.glsn for r in runs]),
                       np.concatenate([r.xid for r in runs]), np.concatenate([r.end_lsn for r in runs]), bufs,
                       np.concatenate(shifted).astype(np.int32), np.concatenate([r.at for r in runs]),
                       np.concatenate([r.plen for r in runs]),
                       Decoded(*(np.concatenate([getattr(d, f) for d in decoded]) for f in _DECODED)))

    def rows(self, which: I64, rel: I64, width: int) -> npt.NDArray[np.uint8]:
        """The row bytes of records ``which`` (payload offset ``rel`` each), one per line."""
        return gather(self.bufs, self.buf[which], self.at[which] + rel, width)

    def payload(self, i: int) -> bytes:
        a = int(self.at[i])
        return bytes(self.bufs[int(self.buf[i])][a:a + int(self.plen[i])])


@dataclass
class _Ops:
    """Page operations of a run, sorted by (page, record, type)."""

    page: I64
    rec: I64
    kind: I64
    slot: I64
    arg: I64   # _LINK: the next block; _XMAX: the ctid block (-1 none); _PUT: the row's payload offset
    arg2: I64  # _XMAX: ctid slot, or -2 for a row lock
    key: I64   # _PUT: the row's key


def check_run(run: HeapRun, t: "Table", catalog: Path) -> None:
    """Refuse a run that is not all heap records of ``t`` as the catalog describes it (rows of another width)."""
    kind = run.kind
    ins, upd = kind == walrec.HEAP_INSERT, kind == walrec.HEAP_UPDATE
    dele = (kind == walrec.HEAP_DELETE) | (kind == walrec.HEAP_LOCK)
    prune = kind == walrec.HEAP_PRUNE
    if not (ins | upd | dele | prune).all():
        raise ValueError(f"record kinds {sorted(set(kind[~(ins | upd | dele | prune)].tolist()))} are not heap records")
    width = t.schema.row_width
    row_at = np.where(upd, _UPDATE_ROW, _INSERT_ROW)
    wrong = (ins | upd) & (run.plen != row_at + width)
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        raise StateFileCorrupt(f"a WAL record to redo carries a {int(run.plen[i] - row_at[i])}-byte row; table "
                               f"{t.name!r} has {width}-byte rows in the catalog: the catalog does not belong to "
                               f"this WAL (restore the shared directory's global/catalog)", path=catalog)


def _operations(run: HeapRun, t: "Table", catalog: Path) -> _Ops:
    check_run(run, t, catalog)
    kind = run.kind.astype(np.int64)
    n = len(run)
    ins, upd = kind == walrec.HEAP_INSERT, kind == walrec.HEAP_UPDATE
    dele = (kind == walrec.HEAP_DELETE) | (kind == walrec.HEAP_LOCK)
    prune = kind == walrec.HEAP_PRUNE
    put = ins | upd
    row_at = np.where(upd, _UPDATE_ROW, _INSERT_ROW)
    d = run.decoded()
    block, slot, fresh, link, key = d.block, d.slot, d.fresh, d.link, d.key
    old_block, old_slot = d.old_block, d.old_slot
    recs = np.arange(n, dtype=np.int64)
    minus = np.full(n, -1, np.int64)
    lock = np.where(kind == walrec.HEAP_LOCK, -2, -1)
    parts = [
        (fresh, block, _FRESH, minus, minus, minus),
        (fresh, link, _LINK, minus, block, minus),
        (put, block, _PUT, slot, row_at, minus),
        (upd, old_block, _XMAX, old_slot, block, slot),
        (dele, block, _XMAX, slot, minus, lock),
        (prune, block, _PRUNE, minus, minus, minus),
    ]
    page = np.concatenate([b[m] for m, b, *_ in parts])
    rec = np.concatenate([recs[m] for m, *_ in parts])
    typ = np.concatenate([np.full(int(m.sum()), k, np.int64) for m, _, k, *_ in parts])
    slots = np.concatenate([s[m] for m, _, _, s, _, _ in parts])
    arg = np.concatenate([a[m] for m, _, _, _, a, _ in parts])
    arg2 = np.concatenate([a[m] for m, *_, a in parts])
    keys = key[rec]
    if len(page) and int(page.max()) < 1 << 28 and n < 1 << 32:  # one sort of one packed key (unique keys)
        order = np.argsort((page << 35) | (rec << 3) | typ)
    else:
        order = np.lexsort((typ, rec, page))
    return _Ops(page[order], rec[order], typ[order], slots[order], arg[order], arg2[order], keys[order])


LONG_RUN = 6
"""Consecutive inserts into one page from which one vectorised ``insert_many`` beats ``insert`` one by one."""


class _Apply:
    """One run's operations as Python lists (cheap per-operation access) plus the slot images of its inserts."""

    def __init__(self, cache: "BufferCache", t: "Table", run: HeapRun, ops: _Ops) -> None:
        self.cache, self.t, self.run, self.ops = cache, t, run, ops
        self.page, self.rec, self.kind = ops.page.tolist(), ops.rec.tolist(), ops.kind.tolist()
        self.slot, self.arg, self.arg2 = ops.slot.tolist(), ops.arg.tolist(), ops.arg2.tolist()
        self.key = ops.key.tolist()
        self.xid, self.glsn, self.end = run.xid.tolist(), run.glsn.tolist(), run.end_lsn.tolist()
        is_put = ops.kind == _PUT
        puts = np.flatnonzero(is_put)
        recs = ops.rec[puts]
        self.images = slot_images(t.schema, ops.key[puts], run.xid[recs], run.rows(recs, ops.arg[puts],
                                                                                   t.schema.row_width))
        self.image_at = (np.cumsum(is_put) - 1).tolist()

    def applying(self, lo: int, hi: int, above: int) -> tuple[list[int], int, int]:
        """Which of the operations ``lo:hi`` (one page's) apply to a page whose GLSN is ``above`` (-1: no page):
        a record applies if its GLSN is above the page's, i.e. its own or that of the latest record applied to
        it; returns them, the page's GLSN after, and how many records applied."""
        rec_of, glsn = self.rec, self.glsn
        take: list[int] = []
        last_rec = -1
        records = 0
        for j in range(lo, hi):
            r = rec_of[j]
            if r != last_rec:
                last_rec = r
                if glsn[r] > above:
                    above = glsn[r]
                    records += 1
                    take.append(j)
            elif take and take[-1] == j - 1:
                take.append(j)
        return take, above, records

    def page_ops(self, take: list[int], page: Page | None) -> Page:
        """Apply the operations ``take`` (all on one page, in order) and return the page."""
        kind, n = self.kind, len(take)
        i = 0
        while i < n:
            j = take[i]
            k = kind[j]
            if k == _PUT:
                stop = i + 1
                while stop < n and kind[take[stop]] == _PUT:
                    stop += 1
                assert page is not None
                self._put(page, take[i:stop])
                i = stop
                continue
            if k == _FRESH:
                t = self.t
                page = self.cache.install(t.table_id, Page.new(t.schema, block=self.page[j], kind=KIND_OVERFLOW,
                                                               table_id=t.table_id))
            else:
                assert page is not None
                r = self.rec[j]
                if k == _LINK:
                    page.next_block = self.arg[j]
                elif k == _XMAX:
                    ctid = TupleId(self.arg[j], self.arg2[j]) if self.arg[j] >= 0 else None
                    page.set_xmax(self.slot[j], self.xid[r], lock_only=self.arg2[j] == -2, ctid=ctid)
                else:
                    p = walrec.decode_prune(self.run.payload(r))
                    page.free(list(p.freed))
                    for s in p.cleared:
                        page.clear_xmax(s)
            i += 1
        assert page is not None
        return page

    def _put(self, page: Page, js: list[int]) -> None:
        """Consecutive inserts into ``page``: one vectorised write when there are several, else one by one."""
        first, last = js[0], js[-1]
        if len(js) >= LONG_RUN:
            if last - first + 1 == len(js):  # the usual case: every operation in between applies
                a = self.image_at[first]
                page.insert_many(self.ops.slot[first:last + 1], self.images[a:a + len(js)])
            else:
                idx = np.asarray(js, np.int64)
                page.insert_many(self.ops.slot[idx], self.images[[self.image_at[j] for j in js]])
            return
        width = self.t.schema.row_width
        for j in js:
            image = self.images[self.image_at[j]]
            page.insert(self.key[j], image[SLOT_HEADER_SIZE:SLOT_HEADER_SIZE + width].tobytes(),
                        self.xid[self.rec[j]], slot=self.slot[j])


def redo_run(cache: "BufferCache", t: "Table", run: HeapRun) -> int:
    """Apply ``run`` to the cached pages of ``t`` (see the module docstring); returns the number of
    (record, page) changes made, 0 when every page already had every record."""
    if not len(run):
        return 0
    app = _Apply(cache, t, run, _operations(run, t, statefiles.catalog_path(cache.shared)))
    page_of, rec_of, kind_of, end = app.page, app.rec, app.kind, app.end
    tid, n = t.table_id, len(page_of)
    changes = 0
    lo = 0
    while lo < n:
        block = page_of[lo]
        hi = lo + 1
        while hi < n and page_of[hi] == block:
            hi += 1
        page = cache.try_read(tid, block) if kind_of[lo] == _FRESH else cache.modify(tid, block)
        take, above, records = app.applying(lo, hi, -1 if page is None else page.glsn)
        changes += records
        if take:
            page = app.page_ops(take, page)
            page.stamp(above)
            cache.mark_dirty(tid, block, max(end[rec_of[j]] for j in take))
        lo = hi
    return changes


class Batcher:
    """Collects the heap records of a WAL being replayed and applies them in runs (per table, in arrival order,
    which keeps every page's order).  ``flush`` before anything reads the pages or the replay ends."""

    def __init__(self, cache: "BufferCache", limit: int = BATCH_RECORDS) -> None:
        self.cache = cache
        self.limit = limit
        self._pending: dict[int, tuple["Table", list["Record"]]] = {}
        self._count = 0

    def add(self, t: "Table", rec: "Record") -> int:
        """Queue one heap record; returns the page changes made if this filled the batch (else 0)."""
        self._pending.setdefault(t.table_id, (t, []))[1].append(rec)
        self._count += 1
        return self.flush() if self._count >= self.limit else 0

    def discard(self, table_id: int) -> None:
        """Forget the queued records of a table that was dropped (its file goes away unread)."""
        _, recs = self._pending.pop(table_id, (None, []))
        self._count -= len(recs)

    def flush(self) -> int:
        changes = 0
        pending, self._pending, self._count = self._pending, {}, 0
        for t, recs in pending.values():
            changes += redo_run(self.cache, t, HeapRun.of_records(recs))
        return changes
