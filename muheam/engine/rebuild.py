"""Redo of a whole run of another node's heap records onto one table's pages at once.

``redo.redo_run`` applies a run page by page with a few numpy calls and some Python per page and per operation:
right for a node replaying its own WAL, and for a survivor rebuilding one chain of a dead node's on demand.  The
recoverer, though, rebuilds *every* chain the dead node touched, and doing that chain by chain costs about a
millisecond per chain.  Here the same redo is done for all of a table's pages in one pass, two ways:

**Compiled** (``_rebuild_kernel``, numba; the default once ``load_kernel`` has run, which a node does in a
background thread at start): the pages are read and verified as below, then one compiled loop applies the records
in GLSN order straight to the page images, each only to pages whose GLSN before the run is below its own and
refusing what ``Page`` refuses, and a second sets each changed page's ``nused``, ``free_hint``, GLSN and checksum.
Only pages with a prune among their operations go through ``redo``'s page code one operation at a time.  About
2.5 times faster than the arrays on the bench's 17 MB of WAL (12 ms against 31).

**With numpy arrays** (the reference; before the kernel is loaded, or ``MUHEAM_NO_JIT=1``):

* the pages the run touches are read from the relation file into one ``(n, 8192)`` array (one read per stretch
  of consecutive blocks) and verified with the checks ``Page.decode`` makes, over all of them at once;
* a record applies to a page iff its GLSN is above the page's: the run is in GLSN order, so once one record
  applies to a page every later one does too, and the ordinary idempotent rule ("above the page's GLSN or the
  last record applied to it") reduces to one comparison per operation;
* without a prune, a slot is filled at most once per run and an xmax is whole (``set_xmax`` rewrites every field
  it touches), so every insert is one scatter of slot images, every xmax the last one set per slot, and the
  header fields (``nused``, ``free_hint``, ``next_block``, GLSN, checksum) are computed per page afterwards.

The result is byte for byte what ``redo_run`` gives, either way (``tests/unit/engine/test_rebuild.py`` compares them on a
random history).  Pages with a prune among their operations (as arrays, also a page initialised twice or after
other changes) go through ``redo``'s page code and report their GLSN after the run as ``base``, so ``staging``
never writes them and their chains take the chain-by-chain redo.  Pages that fail verification, or that an
operation would be refused on, are left out (``excluded``): whoever needs them runs the page-by-page redo, which
also names any problem.

Only for records of another node's WAL: those are durable already, so the rebuilt pages need no WAL flush
before they are written (I3).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import numpy.typing as npt

from muheam.engine import walrec
from muheam.engine.redo import _FRESH, _LINK, _PRUNE, _PUT, _XMAX, HeapRun, _Apply, _operations, _Ops, check_run
from muheam.storage import StorageError, mvcc
from muheam.storage.heap import RelationFile
from muheam.storage.layout import BLOCK_SIZE, PAGE_HEADER_SIZE
from muheam.storage.page import (HEADER_DTYPE, KIND_BUCKET, KIND_OVERFLOW, MAX_BLOCK, PAGE_MAGIC, PAGE_VERSION,
                                 Page, _empty_image, slot_dtype, slot_images)
from walmerge import jit
from walmerge.crcfast import crc_lines

if TYPE_CHECKING:
    from muheam.engine.heapops import Table

log = logging.getLogger("muheam.rebuild")

I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]

_kernel: ModuleType | None = None
"""``_rebuild_kernel`` once ``load_kernel`` has loaded and run it."""


@dataclass
class Rebuilt:
    """One table's pages after a run: ``images[i]`` is block ``blocks[i]`` (sorted), checksummed; ``base[i]`` the
    GLSN the page had before (-1: absent, i.e. past the file's end or never written); ``changed[i]`` whether the
    run changed it.  ``excluded`` lists blocks the run touches that were not rebuilt here (see the module
    docstring); ``changes`` counts (record, page) changes like ``redo_run``."""

    table_id: int
    blocks: I64
    base: I64
    images: npt.NDArray[np.uint8]
    changed: Mask
    excluded: I64
    changes: int

    def row(self, block: int) -> int:
        """Index of ``block`` in ``blocks``, or -1."""
        i = int(np.searchsorted(self.blocks, block))
        return i if i < len(self.blocks) and int(self.blocks[i]) == block else -1

    def is_excluded(self, block: int) -> bool:
        i = int(np.searchsorted(self.excluded, block))
        return i < len(self.excluded) and int(self.excluded[i]) == block


def read_pages(file: RelationFile, blocks: I64, out: npt.NDArray[np.uint8]) -> Mask:
    """Read ``blocks`` (sorted, unique) into the lines of ``out`` with one ``preadv`` per stretch of consecutive
    blocks; returns which lines hold a page (a block past the file's end, or all zeros, holds none)."""
    fd = file._fd()
    inside = blocks < os.fstat(fd).st_size // BLOCK_SIZE
    idx = np.flatnonzero(inside)
    if len(idx):
        breaks = np.flatnonzero(np.diff(blocks[idx]) != 1) + 1
        for lo, hi in zip(np.r_[0, breaks].tolist(), np.r_[breaks, len(idx)].tolist()):
            a, b = int(idx[lo]), int(idx[hi - 1]) + 1
            want = (b - a) * BLOCK_SIZE
            got = os.preadv(fd, [out[a:b].data.cast("B")], int(blocks[a]) * BLOCK_SIZE)
            if got != want:
                raise OSError(f"{file.path}: short read of {got} of {want} bytes at block {int(blocks[a])}")
    present = inside.copy()
    magic = out[:, 4:8].copy().view("<u4").ravel()
    unsure = np.flatnonzero(present & (magic == 0))
    if len(unsure):  # no magic: all zeros is a never-written block; anything else fails verification
        present[unsure] = out[unsure].any(axis=1)
    return present


def _header(images: npt.NDArray[np.uint8]) -> npt.NDArray[Any]:
    return images[:, :PAGE_HEADER_SIZE].view(HEADER_DTYPE)[:, 0]


def _slots(images: npt.NDArray[np.uint8], t: "Table") -> npt.NDArray[Any]:
    dt = slot_dtype(t.schema)
    nslots = (BLOCK_SIZE - PAGE_HEADER_SIZE) // dt.itemsize
    return images[:, PAGE_HEADER_SIZE:PAGE_HEADER_SIZE + nslots * dt.itemsize].view(dt)


def verify(images: npt.NDArray[np.uint8], present: Mask, blocks: I64, t: "Table") -> Mask:
    """Which present pages pass every check ``Page.decode`` makes of a tuple page of ``t``."""
    ok = np.zeros(len(images), bool)
    rows = np.flatnonzero(present)
    if len(rows):
        ok[rows] = _verify(images, rows, blocks[rows], t)
    return ok


def _verify(all_images: npt.NDArray[np.uint8], rows: I64, blocks: I64, t: "Table") -> Mask:
    images = all_images[rows]
    h = _header(images)
    s = _slots(images, t)
    nslots = s.shape[1]
    ok: Mask = (h["magic"] == PAGE_MAGIC) & (h["version"] == PAGE_VERSION) & (h["blkno"] == blocks)
    ok &= (h["table_id"] == t.table_id) & ((h["kind"] == KIND_BUCKET) | (h["kind"] == KIND_OVERFLOW))
    ok &= (h["row_width"] == t.schema.row_width) & (h["schema_crc"] == t.schema.fingerprint)
    ok &= (h["nslots"] == nslots) & (h["slot_size"] == s.dtype.itemsize)
    flags = s["flags"]
    ok &= ~(flags & np.uint8(~mvcc.SLOT_KNOWN_FLAGS & 0xFF)).any(axis=1)
    free = (flags & mvcc.SLOT_USED) == 0
    ok &= (nslots - free.sum(axis=1)) == h["nused"]
    ok &= np.where(free.any(axis=1), free.argmax(axis=1), nslots) == h["free_hint"]
    raw = images[:, PAGE_HEADER_SIZE:PAGE_HEADER_SIZE + nslots * s.dtype.itemsize].reshape(len(images), nslots, -1)
    ok &= ~(raw.any(axis=2) & free).any(axis=1)
    sure = np.flatnonzero(ok)
    ok[sure] = np.array(crc_lines(images, sure.tolist(), 4, BLOCK_SIZE), np.uint32) == h["checksum"][sure]
    return ok


def _read(file: RelationFile, blocks: I64, t: "Table") -> tuple[npt.NDArray[np.uint8], Mask, Mask, I64]:
    """The pages ``blocks`` as the file has them: their images, which exist, which pass verification, and each
    one's GLSN (-1: none), which ``staging`` checks the file against before writing the rebuilt page."""
    n = len(blocks)
    images = np.zeros((n, BLOCK_SIZE), np.uint8)
    present = read_pages(file, blocks, images)
    good = np.ones(n, bool)
    good[present & ~verify(images, present, blocks, t)] = False
    base = np.full(n, -1, np.int64)
    base[present] = _header(images)["glsn"][present].astype(np.int64)
    return images, present, good, base


def _redone(images: npt.NDArray[np.uint8], base: I64, rows: Mask) -> None:
    """Pages ``rows`` went through redo's page code (a prune among their operations): they report their GLSN
    after the run as ``base``, so ``staging`` never writes them and their chains take the chain-by-chain redo.
    (Letting the staging write them went with a kill-rounds test failure -- a relation grown to 2**32 blocks on
    the survivors -- not understood yet; see docs/architecture.md.)"""
    base[rows] = _header(images)["glsn"][rows].astype(np.int64)


def _first_per_group(group: I64) -> Mask:
    first = np.ones(len(group), bool)
    first[1:] = group[1:] != group[:-1]
    return first


def _last_per_group(group: I64) -> Mask:
    last = np.ones(len(group), bool)
    last[:-1] = group[1:] != group[:-1]
    return last


class _Install:
    """What ``redo._Apply`` needs of a buffer cache to initialise a page: here the page stays where it is."""

    @staticmethod
    def install(table_id: int, page: Page) -> Page:
        return page


def _serial(images: npt.NDArray[np.uint8], present: Mask, good: Mask, changed: Mask, serial: Mask, prow: I64,
            ops: _Ops, t: "Table", run: HeapRun) -> int:
    """Apply the operations of the ``serial`` pages one by one with ``redo``'s page code, on ``Page`` objects over
    copies of the lines; a page that refuses one is marked not ``good``.  Returns the (record, page) changes."""
    sel = np.flatnonzero(serial[prow])
    if not len(sel):
        return 0
    sub = _Ops(*(getattr(ops, f.name)[sel] for f in fields(_Ops)))
    app = _Apply(_Install(), t, run, sub)  # type: ignore[arg-type]
    rows = prow[sel].tolist()
    changes, lo, n = 0, 0, len(rows)
    while lo < n:
        i = rows[lo]
        hi = lo + 1
        while hi < n and rows[hi] == i:
            hi += 1
        page = Page(t.schema, bytearray(images[i].tobytes())) if present[i] else None
        take, above, records = app.applying(lo, hi, -1 if page is None else page.glsn)
        if take:
            try:
                page = app.page_ops(take, page)
                page.stamp(above)
            except (StorageError, ValueError):
                good[i] = False  # the page-by-page redo at the chain's grant names the problem
            else:
                images[i] = np.frombuffer(page.buf, np.uint8)
                changed[i] = True
                changes += records
        lo = hi
    return changes


def rebuild_table(file: RelationFile, t: "Table", run: HeapRun, catalog: Path, compiled: bool = True) -> Rebuilt:
    """Apply ``run`` (records of ``t`` from another node's WAL, in GLSN order) to ``t``'s pages as they are in
    ``file``; nothing is written.  ``compiled``: with the compiled kernel if ``load_kernel`` has loaded it (the
    same pages, several times faster), else with numpy arrays."""
    k = _kernel if compiled else None
    return _rebuild_arrays(file, t, run, catalog) if k is None else _rebuild_compiled(k, file, t, run, catalog)


def _rebuild_compiled(k: ModuleType, file: RelationFile, t: "Table", run: HeapRun, catalog: Path) -> Rebuilt:
    """``rebuild_table`` with ``_rebuild_kernel``: one pass over the records in GLSN order, each applied straight
    to its pages (so a page initialised twice takes this path too); pages with a prune go to ``_serial``."""
    check_run(run, t, catalog)
    d = run.decoded()
    kind = run.kind
    upd, prune = kind == walrec.HEAP_UPDATE, kind == walrec.HEAP_PRUNE
    blocks = np.unique(np.concatenate([d.block, d.link[d.fresh], d.old_block[upd]]))
    n = len(blocks)
    images, present, good, base = _read(file, blocks, t)
    serial = np.zeros(n, bool)
    if prune.any():
        serial[np.searchsorted(blocks, d.block[prune])] = True
        serial &= good
    changed = np.zeros(n, bool)
    top = base.copy()
    per_row = np.zeros(n, np.int64)
    schema = t.schema
    ss = slot_dtype(schema).itemsize
    nslots = (BLOCK_SIZE - PAGE_HEADER_SIZE) // ss
    template = np.frombuffer(_empty_image(schema, KIND_OVERFLOW, t.table_id), np.uint8).copy()
    sources = [np.frombuffer(b, np.uint8) for b in run.bufs]  # held until the kernel returns
    addresses = np.array([int(a.ctypes.data) if len(a) else 0 for a in sources], np.int64)
    c = np.ascontiguousarray
    img_addr = int(images.ctypes.data)
    u16, u32, u64, i64 = (images.view(dt) for dt in (np.uint16, np.uint32, np.uint64, np.int64))
    k.apply_run(images, u16, u32, u64, i64, img_addr, blocks, present.copy(), good, serial, base, template,
                c(kind), c(run.glsn), c(run.xid), c(d.block), c(d.slot), c(d.fresh), c(d.link), c(d.key),
                c(d.old_block), c(d.old_slot), addresses, c(run.buf), c(run.at), schema.row_width, ss, nslots,
                changed, top, per_row)
    del sources
    changes = int(per_row[good & ~serial].sum())
    if serial.any():  # the records touching a page with a prune, page by page
        on_serial = serial[np.searchsorted(blocks, d.block)]
        on_serial[d.fresh] |= serial[np.searchsorted(blocks, d.link[d.fresh])]
        on_serial[upd] |= serial[np.searchsorted(blocks, d.old_block[upd])]
        sub = run.take(np.flatnonzero(on_serial))
        ops = _operations(sub, t, catalog)
        changes += _serial(images, present, good, changed, serial, np.searchsorted(blocks, ops.page), ops, t, sub)
    changed &= good
    top[serial] = _header(images)["glsn"][serial].astype(np.int64)  # stamped by the page-by-page code
    _redone(images, base, serial & present)
    k.finish_pages(images, u16, u32, u64, img_addr, np.flatnonzero(changed), top, ss, nslots)
    if good.all():
        return Rebuilt(t.table_id, blocks, base, images, changed, blocks[:0], changes)
    return Rebuilt(t.table_id, blocks[good], base[good], images[good], changed[good], blocks[~good], changes)


def _rebuild_arrays(file: RelationFile, t: "Table", run: HeapRun, catalog: Path) -> Rebuilt:
    """``rebuild_table`` with numpy arrays: the reference, and the path while the kernel is not loaded."""
    ops = _operations(run, t, catalog)  # sorted by page
    first = _first_per_group(ops.page)
    blocks = ops.page[first]
    prow = np.cumsum(first) - 1
    n = len(blocks)
    images, present, good, base = _read(file, blocks, t)
    kind, rec, xid = ops.kind, ops.rec, run.xid
    fresh = kind == _FRESH
    good[prow[first & ~fresh & ~present[prow]]] = False  # a change to a page that does not exist
    # pages whose operations must run one by one: a prune, or a page initialised after other changes
    serial = np.zeros(n, bool)
    serial[prow[(kind == _PRUNE) | (fresh & ~first)]] = True
    serial &= good
    changed = np.zeros(n, bool)
    changes = _serial(images, present, good, changed, serial, prow, ops, t, run)
    _redone(images, base, serial & present)

    vec = good & ~serial  # the rest: as arrays
    h = _header(images)
    applies = (run.glsn[rec].astype(np.int64) > base[prow]) & vec[prow]
    fresh_page = np.zeros(n, bool)
    fresh_page[prow[fresh & applies]] = True
    s = _slots(images, t)
    nslots = s.shape[1]
    sink = n * nslots  # the flat slot index of every out-of-range slot (their pages are refused)

    def flat(rows: I64, slots: I64) -> I64:
        at: I64 = np.where((slots >= 0) & (slots < nslots), rows * nslots + slots, sink)
        return at

    was_used = np.zeros(sink + 1, bool)
    was_used[:-1] = ((s["flags"] & mvcc.SLOT_USED) != 0).ravel() & ~np.repeat(fresh_page, nslots)
    put = np.flatnonzero((kind == _PUT) & applies)
    xmax = np.flatnonzero((kind == _XMAX) & applies)
    link = np.flatnonzero((kind == _LINK) & applies)
    # what Page.insert refuses: a slot out of range, in use, or filled twice; xmin 0
    put_at = flat(prow[put], ops.slot[put])
    bad = (put_at == sink) | was_used[put_at] | (xid[rec[put]] == mvcc.INVALID_XID)
    by_slot = np.argsort(put_at, kind="stable")
    bad[by_slot[1:][put_at[by_slot][1:] == put_at[by_slot][:-1]]] = True
    vec[prow[put[bad]]] = False
    # what Page.set_xmax refuses: a slot out of range, or free when it comes (no prune here: a slot of this run
    # is filled once, by the operation ``filled_by``); an XID below the first normal one
    xmax_at = flat(prow[xmax], ops.slot[xmax])
    filled_by = np.full(sink + 1, len(kind), np.int64)
    filled_by[put_at] = put
    used_then = was_used[xmax_at] | (filled_by[xmax_at] < xmax)
    bad = (xmax_at == sink) | ~used_then | (xid[rec[xmax]] < mvcc.FIRST_NORMAL_XID)
    vec[prow[xmax[bad]]] = False
    nxt = ops.arg[link]
    bad = (nxt < 0) | (nxt > MAX_BLOCK) | ((nxt != 0) & (nxt == blocks[prow[link]]))  # Page.next_block's checks
    vec[prow[link[bad]]] = False
    good &= vec | serial

    xmax_at = xmax_at[vec[prow[xmax]]]
    put, xmax, link = (sel[vec[prow[sel]]] for sel in (put, xmax, link))
    fresh_page &= vec
    template = np.frombuffer(_empty_image(t.schema, KIND_OVERFLOW, t.table_id), np.uint8)
    images[fresh_page & present] = template  # re-initialised; a page that was absent is zeros past its header
    images[fresh_page & ~present, :PAGE_HEADER_SIZE] = template[:PAGE_HEADER_SIZE]
    assert not template[PAGE_HEADER_SIZE:].any()
    h["blkno"][fresh_page] = blocks[fresh_page]
    if len(put):
        r = rec[put]
        raw = images[:, PAGE_HEADER_SIZE:PAGE_HEADER_SIZE + nslots * s.dtype.itemsize].view()
        raw.shape = (n, nslots, s.dtype.itemsize)  # a view (setting .shape never copies)
        raw[prow[put], ops.slot[put]] = slot_images(t.schema, ops.key[put], xid[r],
                                                    run.rows(r, ops.arg[put], t.schema.row_width))
    if len(xmax):  # set_xmax rewrites every field it touches: the last one per slot decides
        by_slot = np.argsort(xmax_at, kind="stable")
        last = xmax[by_slot[_last_per_group(xmax_at[by_slot])]]
        rows, slots, ctid_block, ctid_slot = prow[last], ops.slot[last], ops.arg[last], ops.arg2[last]
        update = ctid_block >= 0
        s["xmax"][rows, slots] = xid[rec[last]]
        s["ctid_block"][rows, slots] = np.where(update, ctid_block, 0)
        s["ctid_slot"][rows, slots] = np.where(update, ctid_slot, 0)
        s["flags"][rows, slots] = (mvcc.SLOT_USED | np.where(ctid_slot == -2, mvcc.SLOT_LOCK_ONLY, 0)
                                   | np.where(update, mvcc.SLOT_UPDATED, 0))
    if len(link):
        last = link[_last_per_group(prow[link])]
        h["next_block"][prow[last]] = ops.arg[last]
    h["nused"] += np.bincount(prow[put], minlength=n).astype(np.uint16)

    taken = np.flatnonzero(applies & vec[prow])
    rows = np.unique(prow[taken])
    if len(rows):
        changed[rows] = True
        last = taken[_last_per_group(prow[taken])]
        h["glsn"][prow[last]] = run.glsn[rec[last]]
        free = (s["flags"][rows] & mvcc.SLOT_USED) == 0
        h["free_hint"][rows] = np.where(free.any(axis=1), free.argmax(axis=1), nslots)
        pairs = prow[taken] * (len(run) + 1) + rec[taken]
        changes += int(np.count_nonzero(_first_per_group(pairs)))
    changed &= good
    rows = np.flatnonzero(changed)
    h["checksum"][rows] = crc_lines(images, rows.tolist(), 4, BLOCK_SIZE)
    if good.all():
        return Rebuilt(t.table_id, blocks, base, images, changed, blocks[:0], changes)
    return Rebuilt(t.table_id, blocks[good], base[good], images[good], changed[good], blocks[~good], changes)


def compiled() -> bool:
    """Whether ``rebuild_table`` runs the compiled kernel now."""
    return _kernel is not None


def load_kernel() -> bool:
    """Load the compiled kernel (numba, from its on-disk cache after the first time; a node calls this in a
    background thread at start, see ``warm_up_in_background``) and run it once; from then on ``rebuild_table``
    uses it.  Returns whether it is loaded; a failure is logged, and the numpy code stays in use."""
    global _kernel
    if _kernel is not None:
        return True
    if not jit.use_compiled():  # turned off (MUHEAM_NO_JIT) or numba unusable: logged there
        return False
    try:
        from muheam.engine import _rebuild_kernel

        warm_up(_rebuild_kernel)
    except Exception as e:  # noqa: BLE001 - numba raises RuntimeError too (e.g. no writable cache directory)
        log.warning("compiled page redo unavailable (%s: %s); a dead peer's pages are rebuilt with numpy "
                    "(about half the speed)", type(e).__name__, e)
        return False
    _kernel = _rebuild_kernel
    return True


def warm_up_in_background(then: Callable[[], object] | None = None) -> threading.Thread | None:
    """``load_kernel`` in a daemon thread (after ``walmerge.jit``'s kernels, which bind the C functions it
    calls), so that a node's first recovery of a dead peer finds it loaded, then ``then()`` in that thread; None
    (and nothing called) if compiled code is off."""
    if _kernel is not None or jit.turned_off():
        return None

    def run() -> None:
        load_kernel()
        if then is not None:
            then()

    thread = threading.Thread(target=run, name="jit-warm-up-rebuild", daemon=True)
    thread.start()
    return thread


def warm_up(kernel: ModuleType | None = None) -> int:
    """Run the redo once (with numpy arrays, or with ``kernel``) on a tiny table in a scratch file (an insert,
    an update onto a new overflow block, a row lock), so that a node's first real rebuild -- a dead peer's
    recovery, timed in tens of milliseconds -- does not also pay the first-call costs of the code it goes
    through (measured here at 15-80 ms for numpy; numba compiles or loads its cache).  Returns the pages
    rebuilt (2)."""
    import tempfile

    from muheam.engine.heapops import Table
    from muheam.storage import Schema
    from walmerge.record import Record

    t = Table(1, "warm_up", Schema("warm_up", {"v": "int64"}), 1)
    row = t.schema.to_record({"v": 1}).tobytes()
    payloads = [(walrec.HEAP_INSERT, walrec.encode_insert(1, 1, 0, 0, 0, 7, row)),
                (walrec.HEAP_UPDATE, walrec.encode_update(1, 2, 0, walrec.NEW_PAGE, 1, 7, 1, 0, row)),
                (walrec.HEAP_LOCK, walrec.encode_delete(1, 2, 0, 7))]
    recs = [Record(0, 0, kind, 1, (i + 1) << 16, 100 + i, 1, 0, 0, p) for i, (kind, p) in enumerate(payloads)]
    with tempfile.TemporaryDirectory(prefix="muheam-warm-up-") as tmp:
        path = Path(tmp) / "1"
        with open(path, "wb") as f:
            f.write(bytes(BLOCK_SIZE) + Page.new(t.schema, block=1, table_id=1).encode())
        file = RelationFile(path)
        try:
            run, catalog = HeapRun.of_records(recs, dirty_lsn=0), Path(tmp) / "catalog"
            rebuilt = (_rebuild_arrays(file, t, run, catalog) if kernel is None
                       else _rebuild_compiled(kernel, file, t, run, catalog))
        finally:
            file.close()
    return len(rebuilt.blocks)
