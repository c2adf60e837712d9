"""The numba kernels behind ``walmerge.jit`` (import that module, not this one: it binds the C symbols first).

Integer care: numba turns ``int64 op uint64`` into float64, so every mixed expression casts explicitly.
Header words (little-endian u64 at a record's offset / 8): 0 = total_len | kind << 32 | flags << 40 |
node << 48, 1 = lsn, 2 = prev_lsn, 3 = glsn, 4 = xid, 5 = durable_lsn, 6 = epoch | crc << 32.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import types

from walmerge.record import CRC_OFFSET, HEADER_SIZE, MAX_NODE_ID

_crc_extend: Any = types.ExternalFunction("crc32c_extend", types.uint32(types.uint32, types.intp, types.intp))
_memcpy: Any = types.ExternalFunction("memcpy", types.intp(types.intp, types.intp, types.intp))

_HS = HEADER_SIZE
_W = HEADER_SIZE // 8
_NODE_MASK = np.uint64(MAX_NODE_ID)
_LOW32 = np.uint64(0xFFFFFFFF)
_CRC_AT = CRC_OFFSET


@numba.njit(nogil=True, cache=True)
def _zero(u8: Any, u64: Any, a: int, b: int) -> bool:
    """``u8[a:b]`` is all zero (``a`` 8-aligned)."""
    i = a
    while i < b and i % 8:
        if u8[i]:
            return False
        i += 1
    while i + 8 <= b:
        if u64[i >> 3]:
            return False
        i += 8
    while i < b:
        if u8[i]:
            return False
        i += 1
    return True


@numba.njit(nogil=True, cache=True)
def walk_clean(u8: Any, u64: Any, addr: int, start: int, base_lsn: Any, segment_size: int, has_prev: bool,
               exp_prev: Any, exp_glsn: Any, exp_epoch: Any, stream_node: int, check_crc: bool, offsets: Any,
               heads: Any) -> tuple[int, int]:
    """Walk and check the records from ``start``; return ``(n, end offset)``, or ``(-1, offset)`` at the first
    thing that is not clean (the caller then asks the reference code what it is)."""
    size = len(u8)
    n8 = len(u64)
    off = start
    n = 0
    prev_lsn = exp_prev
    prev_glsn = exp_glsn
    prev_ep = exp_epoch
    while True:
        if off + _HS > segment_size:
            if _zero(u8, u64, off, size):
                return n, off
            return -1, off
        if off + 8 > size:
            return -1, off
        k = off >> 3
        w0 = u64[k]
        tl = np.int64(w0 & _LOW32)
        if tl == 0:
            if size == segment_size and _zero(u8, u64, off, size):
                return n, off
            return -1, off
        if tl < _HS or off + tl > segment_size or off + tl > size:
            return -1, off
        kind = (w0 >> np.uint64(32)) & np.uint64(0xFF)
        node = (w0 >> np.uint64(48)) & np.uint64(0xFFFF)
        lsn = u64[k + 1]
        prev = u64[k + 2]
        glsn = u64[k + 3]
        w6 = u64[k + 6]
        epoch = w6 & _LOW32
        if lsn != base_lsn + np.uint64(off):
            return -1, off
        if (n > 0 or has_prev) and prev != prev_lsn:
            return -1, off
        if (glsn & _NODE_MASK) != node or kind == 0 or glsn < prev_glsn:
            return -1, off
        if stream_node >= 0 and (node != np.uint64(stream_node) or epoch < prev_ep):
            return -1, off
        end = off + tl
        a_end = (end + 7) & ~7
        pad = a_end - end
        if pad > 0 and (a_end - 8) >> 3 < n8:
            mask = np.uint64(0xFFFFFFFFFFFFFFFF) << np.uint64(8 * (8 - pad))
            if u64[(a_end - 8) >> 3] & mask:
                return -1, off
        if check_crc:
            c = _crc_extend(np.uint32(0), addr + off + _HS, tl - _HS)
            c = _crc_extend(c, addr + off, _CRC_AT)
            if np.uint64(c) != (w6 >> np.uint64(32)):
                return -1, off
        offsets[n] = off
        for j in range(_W):
            heads[n * _W + j] = u64[k + j]
        n += 1
        prev_lsn = lsn
        prev_glsn = glsn
        prev_ep = epoch
        off = int(a_end)


@numba.njit(nogil=True, cache=True)
def build_piece(dst8: Any, dst64: Any, base: int, addresses: Any, src: Any, off: Any, aligned: Any, dst_off: Any,
                lsns: Any, prevs: Any, table: Any) -> None:
    """Copy records into the piece and rewrite words 1, 2, 5 of each header, folding the CRC (``fold_crc``)."""
    at = dst8.ctypes.data
    for i in range(len(src)):
        d = dst_off[i] - base
        _memcpy(at + d, addresses[src[i]] + off[i], aligned[i])
        k = d >> 3
        crc = dst64[k + 6] >> np.uint64(32)
        for w, new in ((1, lsns[i]), (2, prevs[i]), (5, lsns[i])):
            delta = dst64[k + w] ^ new
            b = 0
            while delta:
                byte = delta & np.uint64(0xFF)
                if byte:
                    crc ^= np.uint64(table[8 * w + b, byte])
                delta >>= np.uint64(8)
                b += 1
            dst64[k + w] = new
        dst64[k + 6] = (dst64[k + 6] & _LOW32) | (crc << np.uint64(32))
