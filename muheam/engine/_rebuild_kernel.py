"""The numba kernel behind ``muheam.engine.rebuild``'s compiled path, loaded through ``rebuild.load_kernel()``:
that loads ``walmerge.jit``'s kernels first, which bind the C symbols it calls (``crc32c_extend``; ``memcpy``).

One pass over a table's run of records in GLSN order, each record's page operations applied straight to the page
images in the order ``redo`` applies them (initialise, link, put, xmax), each only to a page whose GLSN before
the run is below the record's; then each changed page's ``nused``, ``free_hint``, GLSN and checksum.  Anything
``Page`` would refuse marks the page not ``good`` (the page-by-page redo then names the problem).

Integer care: numba turns ``int64 op uint64`` into float64, so mixed expressions cast explicitly.  Every field
written is naturally aligned (64-byte header, slots a multiple of 8 bytes), so each goes through the view of
its width: ``u16``/``u32``/``u64`` index in units of their item size.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import types

from muheam.engine import walrec
from muheam.storage import mvcc
from muheam.storage.layout import BLOCK_SIZE, PAGE_HEADER_SIZE, SLOT_HEADER_SIZE

_crc_extend: Any = types.ExternalFunction("crc32c_extend", types.uint32(types.uint32, types.intp, types.intp))
_memcpy: Any = types.ExternalFunction("memcpy", types.intp(types.intp, types.intp, types.intp))

_INSERT, _UPDATE = walrec.HEAP_INSERT, walrec.HEAP_UPDATE
_DELETE, _LOCK = walrec.HEAP_DELETE, walrec.HEAP_LOCK
_USED, _LOCK_ONLY, _UPDATED = mvcc.SLOT_USED, mvcc.SLOT_LOCK_ONLY, mvcc.SLOT_UPDATED
_FIRST_NORMAL, _INVALID = mvcc.FIRST_NORMAL_XID, mvcc.INVALID_XID
_BS, _PH, _SH = BLOCK_SIZE, PAGE_HEADER_SIZE, SLOT_HEADER_SIZE
_INSERT_ROW, _UPDATE_ROW = 24, 32  # where the row starts in an insert's / an update's payload (redo._INSERT_ROW)
# page header and slot field offsets (``storage.page``'s layout)
_H_GLSN, _H_BLKNO, _H_NEXT, _H_NUSED, _H_HINT = 16, 24, 28, 34, 36
_S_XMIN, _S_XMAX, _S_CTID_BLOCK, _S_CTID_SLOT, _S_FLAGS = 8, 16, 24, 28, 30


@numba.njit(nogil=True, cache=True)
def _row(blocks: Any, block: int) -> int:
    """Index of ``block`` in the sorted ``blocks`` (it is there: they are every block the run touches)."""
    lo, hi = 0, blocks.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if blocks[mid] < block:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(nogil=True, cache=True)
def apply_run(u8: Any, u16: Any, u32: Any, u64: Any, i64: Any, img_addr: int, blocks: Any, exists: Any, good: Any,
              skip: Any, base: Any, template: Any, kind: Any, glsn: Any, xid: Any, block: Any, slot: Any,
              fresh: Any, link: Any, key: Any, old_block: Any, old_slot: Any, buf_addr: Any, buf: Any, at: Any,
              width: int, slot_size: int, nslots: int, changed: Any, top: Any, per_row: Any) -> None:
    """Apply the run (columns ``kind`` .. ``at``, one entry per record) to the images ``u8`` (one page per line,
    block ``blocks[i]``; ``u16`` .. ``i64`` are views of the same memory).  ``exists``: the line holds a page;
    ``skip``: leave the line alone (its operations run page by page elsewhere); ``base``: the page's GLSN
    before the run (-1: none).  Sets ``good`` False for a page an operation is refused on, ``changed`` for a
    page an operation applied to, ``top`` to the GLSN of the last record applied to it and ``per_row`` to the
    number of records applied to it."""
    n = kind.shape[0]
    for r in range(n):
        k = kind[r]
        g = np.int64(glsn[r])
        x = xid[r]
        put = k == _INSERT or k == _UPDATE
        seen0, seen1, seen2 = -1, -1, -1
        for op in range(4):  # the record's operations, in redo's order: initialise, link, put, xmax
            if op == 0:
                if not (put and fresh[r]):
                    continue
                p = block[r]
            elif op == 1:
                if not (put and fresh[r]):
                    continue
                p = link[r]
            elif op == 2:
                if not put:
                    continue
                p = block[r]
            else:
                if k == _UPDATE:
                    p = old_block[r]
                elif k == _DELETE or k == _LOCK:
                    p = block[r]
                else:
                    continue
            i = _row(blocks, p)
            if skip[i] or not good[i] or g <= base[i]:
                continue
            if op == 0:  # a new overflow page replaces whatever the line held
                if exists[i]:
                    u8[i, :] = template
                else:  # the line is zeros (no page, nothing applied yet), as is the template past its header
                    u8[i, :_PH] = template[:_PH]
                u32[i, _H_BLKNO // 4] = np.uint32(p)
                exists[i] = True
            elif not exists[i]:  # a change to a page that does not exist
                good[i] = False
                continue
            elif op == 1:
                nxt = block[r]
                if nxt < 0 or nxt > 0xFFFFFFFF or (nxt != 0 and nxt == p):
                    good[i] = False
                    continue
                u32[i, _H_NEXT // 4] = np.uint32(nxt)
            elif op == 2:
                s = slot[r]
                if s < 0 or s >= nslots or x == _INVALID:
                    good[i] = False
                    continue
                at0 = _PH + s * slot_size
                if u8[i, at0 + _S_FLAGS] & _USED:
                    good[i] = False
                    continue
                i64[i, at0 // 8] = key[r]
                u64[i, (at0 + _S_XMIN) // 8] = x
                u64[i, (at0 + _S_XMAX) // 8] = np.uint64(0)
                u32[i, (at0 + _S_CTID_BLOCK) // 4] = np.uint32(0)
                u16[i, (at0 + _S_CTID_SLOT) // 2] = np.uint16(0)
                u8[i, at0 + _S_FLAGS] = np.uint8(_USED)
                u8[i, at0 + _S_FLAGS + 1] = np.uint8(0)
                row_at = _UPDATE_ROW if k == _UPDATE else _INSERT_ROW
                _memcpy(img_addr + i * _BS + at0 + _SH, buf_addr[buf[r]] + at[r] + row_at, width)
            else:
                if k == _UPDATE:
                    s, cblock, cslot, flags = old_slot[r], block[r], slot[r], _USED | _UPDATED
                elif k == _LOCK:
                    s, cblock, cslot, flags = slot[r], 0, 0, _USED | _LOCK_ONLY
                else:
                    s, cblock, cslot, flags = slot[r], 0, 0, _USED
                if s < 0 or s >= nslots or x < _FIRST_NORMAL:
                    good[i] = False
                    continue
                at0 = _PH + s * slot_size
                if not (u8[i, at0 + _S_FLAGS] & _USED):
                    good[i] = False
                    continue
                u64[i, (at0 + _S_XMAX) // 8] = x
                u32[i, (at0 + _S_CTID_BLOCK) // 4] = np.uint32(cblock)
                u16[i, (at0 + _S_CTID_SLOT) // 2] = np.uint16(cslot)
                u8[i, at0 + _S_FLAGS] = np.uint8(flags)
            changed[i] = True
            top[i] = g  # the last record applied: the page's GLSN after the run
            if i != seen0 and i != seen1 and i != seen2:
                per_row[i] += 1
                if seen0 < 0:
                    seen0 = i
                elif seen1 < 0:
                    seen1 = i
                else:
                    seen2 = i


@numba.njit(nogil=True, cache=True)
def finish_pages(u8: Any, u16: Any, u32: Any, u64: Any, img_addr: int, rows: Any, top: Any, slot_size: int,
                 nslots: int) -> None:
    """The GLSN (``top``), the header fields that follow from the slots (``nused``, ``free_hint``) and the
    checksum of pages ``rows``."""
    for i in rows:
        u64[i, _H_GLSN // 8] = np.uint64(top[i])
        used, hint = 0, nslots
        for s in range(nslots):
            if u8[i, _PH + s * slot_size + _S_FLAGS] & _USED:
                used += 1
            elif hint == nslots:
                hint = s
        u16[i, _H_NUSED // 2] = np.uint16(used)
        u16[i, _H_HINT // 2] = np.uint16(hint)
        u32[i, 0] = _crc_extend(np.uint32(0), img_addr + i * _BS + 4, _BS - 4)
