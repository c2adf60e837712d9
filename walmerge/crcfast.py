"""Verifying the CRCs of many records at once: one C call per segment instead of two per record.

A record's CRC is ``crc(payload || header[0:52])``.  CRC-32C is affine: ``crc(M) = lin(M) ^ Z_|M|(F) ^ F`` with
``lin`` linear (zero init, no final xor), ``F = 0xFFFFFFFF``, and ``Z_k`` the linear map "append ``k`` zero
bytes".  Appending the 4 bytes of a value ``v`` to a zero register gives ``Z_4(v)``, so the header's share of
``lin`` is ``lin52(header) ^ crc_field`` pushed through the right ``Z``.

The aggregate check (``aggregate_ok``).  For a buffer ``B`` of length ``L`` holding records at ``o_i`` of total
length ``t_i`` (``x_i = lin52(header_i) ^ crc_i``), every record carries its correct CRC iff (up to the 2^-32
chance that several damaged records' syndromes cancel)::

    Z_52(lin of the records' bytes in B) == XOR_i  Z_{L-o_i}(x_i ^ G)  ^  Z_{L-o_i-t_i}(x_i ^ F)

with ``G`` the constant ``Z_4(G) == F``.  The left side is one CRC-32C pass over the run (``crc_range``: the C
function ``google_crc32c`` wraps, called on the buffer in place and without the GIL; ``scan_headers`` already
computes it while it looks for records, so the bytes are read from memory once).  The right side is numpy: ``x_i`` from table lookups on the header words that vary, and the XOR of
shifted terms from ``Z_k`` digit tables, applied low digit first so terms whose remaining shift agrees are
XOR-ed together before the next digit (``zxor``): about two table passes per term instead of five.

Strength: the check is the XOR of each record's own CRC syndrome pushed through an invertible map, so a damaged
record is caught whenever its own CRC would catch it and it is the only damaged one in the run; several damaged
records escape only if their 32-bit syndromes cancel exactly.  On a mismatch the exact per-record check
(``payload_crcs``: one slice and one C call per record, the header part vectorised) finds the first bad record.
"""

from __future__ import annotations

import array
import ctypes
import functools
from typing import Callable, Sequence

import google_crc32c
import numpy as np
import numpy.typing as npt

from walmerge.record import CRC_OFFSET, HEADER_SIZE, _lin_table

Buf = bytes | bytearray | memoryview

F32 = 0xFFFFFFFF
_DIGIT_BITS = 6
_LEVELS = 5  # 64**5 == 2**30 == MAX_SEGMENT_SIZE: every distance inside a segment
_ROW = 4 * 256  # table entries per (level, digit): four byte tables


@functools.cache
def _append_zeros_tables() -> tuple[npt.NDArray[np.uint32], int]:
    """``(T, e0)`` with ``extend(c, 0^52) == e0 ^ T[0][c & 255] ^ T[1][c >> 8 & 255] ^ ...``."""
    zeros = bytes(CRC_OFFSET)
    e0 = int(google_crc32c.extend(0, zeros))
    table = np.zeros((4, 256), dtype=np.uint32)
    for j in range(4):
        for b in range(256):
            table[j, b] = int(google_crc32c.extend(b << (8 * j), zeros)) ^ e0
    return table, e0


def _byte_tables(images: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
    """``T[j, b]`` = the linear map (given by the images of the 32 unit vectors) applied to ``b << 8j``."""
    out = np.zeros((4, 256), dtype=np.uint32)
    for j in range(4):
        for t in range(8):
            out[j, 1 << t: 2 << t] = out[j, : 1 << t] ^ images[8 * j + t]
    return out


@functools.cache
def _shift_tables() -> npt.NDArray[np.uint32]:
    """``T[level, digit, j, b]``: byte tables of ``Z_k`` for ``k = digit * 64**level`` (about 1.3 MB)."""
    z1 = np.array([google_crc32c.extend((1 << b) ^ F32, b"\0") ^ F32 for b in range(32)], dtype=np.uint32)
    out = np.zeros((_LEVELS, 1 << _DIGIT_BITS, 4, 256), dtype=np.uint32)
    step = _byte_tables(z1)  # Z_{64**level}
    ident = _byte_tables(np.array([1 << b for b in range(32)], dtype=np.uint32))
    for level in range(_LEVELS):
        cur = ident
        for digit in range(1 << _DIGIT_BITS):
            out[level, digit] = cur
            cur = _lut(step, cur)  # Z_{(digit+1) * 64**level}: apply Z_{64**level} to every table entry
        step = cur
    return out


@functools.cache
def _flat_shift_tables() -> npt.NDArray[np.uint32]:
    return _shift_tables().reshape(-1)


def _lut(tables: npt.NDArray[np.uint32], v: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
    out: npt.NDArray[np.uint32] = (tables[0, v & 0xFF] ^ tables[1, (v >> 8) & 0xFF] ^ tables[2, (v >> 16) & 0xFF]
                                   ^ tables[3, v >> 24])
    return out


def _zdigit(level: int, digit: npt.NDArray[np.int64], v: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
    """``Z_{digit * 64**level}(v)`` elementwise (four byte-table gathers)."""
    flat = _flat_shift_tables()
    base = (level << _DIGIT_BITS) * _ROW + digit * _ROW
    b = np.ascontiguousarray(v, dtype=np.uint32).view(np.uint8).reshape(-1, 4)
    out: npt.NDArray[np.uint32] = flat[base + b[:, 0]]
    base += 256
    out ^= flat[base + b[:, 1]]
    base += 256
    out ^= flat[base + b[:, 2]]
    base += 256
    out ^= flat[base + b[:, 3]]
    return out


def zshift(k: npt.NDArray[np.int64], v: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
    """``Z_k(v)`` elementwise: the ``lin`` register ``v`` after ``k[i]`` more zero bytes (0 <= k < 2**30)."""
    v = np.asarray(v, dtype=np.uint32)
    k = np.asarray(k, dtype=np.int64)
    for level in range(_LEVELS):
        digit = (k >> (_DIGIT_BITS * level)) & 63
        if digit.any():
            v = _zdigit(level, digit, v)
    return v


def zxor(k: npt.NDArray[np.int64], v: npt.NDArray[np.uint32]) -> int:
    """``XOR_i Z_{k[i]}(v[i])`` for non-increasing ``k`` (0 <= k < 2**30).

    Digit by digit from the lowest: after a digit is applied, neighbours whose remaining (higher) digits agree
    are XOR-ed into one term (linearity), so the upper digits touch only a few terms."""
    k = np.asarray(k, dtype=np.int64)
    v = np.asarray(v, dtype=np.uint32)
    for level in range(_LEVELS):
        if len(v) <= 8:  # a few terms left: plain Python beats a numpy call per digit
            acc = 0
            for kk, vv in zip(k.tolist(), v.tolist()):
                acc ^= _zscalar(kk, vv)
            return acc
        digit = (k >> (_DIGIT_BITS * level)) & 63
        if digit.any():
            v = _zdigit(level, digit, v)
        k = k >> _DIGIT_BITS * (level + 1) << _DIGIT_BITS * (level + 1)
        if len(k) > 1:
            new = np.flatnonzero(k[1:] != k[:-1]) + 1
            if len(new) + 1 < len(k):
                starts = np.concatenate((np.zeros(1, dtype=np.int64), new))
                v = np.bitwise_xor.reduceat(v, starts)
                k = k[starts]
    return int(np.bitwise_xor.reduce(v)) if len(v) else 0


@functools.cache
def _scalar_tables() -> array.array[int]:
    return array.array("I", _flat_shift_tables().tobytes())


def _zscalar(k: int, v: int) -> int:
    """``Z_k(v)`` for one value, in plain Python (a numpy call per digit would cost more than the lookups)."""
    flat = _scalar_tables()
    level = 0
    while k:
        digit = k & 63
        if digit:
            base = ((level << _DIGIT_BITS) + digit) * _ROW
            v = (flat[base + (v & 0xFF)] ^ flat[base + 256 + (v >> 8 & 0xFF)] ^ flat[base + 512 + (v >> 16 & 0xFF)]
                 ^ flat[base + 768 + (v >> 24)])
        k >>= _DIGIT_BITS
        level += 1
    return v


@functools.cache
def c_extend() -> Callable[[int, int, int], int] | None:
    """``crc32c_extend(crc, pointer, length)`` of the C library ``google_crc32c`` wraps, through ctypes: it
    reads any buffer in place (``google_crc32c.extend`` wants ``bytes``, so a sub-range costs a copy) and runs
    without the GIL.  None if the symbol cannot be found (then slices are copied)."""
    try:
        from google_crc32c import _crc32c

        fn = ctypes.CDLL(_crc32c.__file__).crc32c_extend
    except (ImportError, OSError, AttributeError):
        return None
    fn.restype = ctypes.c_uint32
    fn.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]
    out: Callable[[int, int, int], int] = fn
    return out


def address(buf: Buf) -> int:
    """Address of a buffer's first byte (keep ``buf`` alive while it is used)."""
    return int(np.frombuffer(buf, dtype=np.uint8).ctypes.data) if len(buf) else 0


def crc_range(buf: Buf, start: int, stop: int, crc: int = 0) -> int:
    """``google_crc32c.extend(crc, buf[start:stop])`` without copying the range when the C function is
    reachable."""
    fn = c_extend()
    if stop <= start:
        return crc
    if fn is None:
        return int(google_crc32c.extend(crc, bytes(memoryview(buf)[start:stop])))
    return int(fn(crc, address(buf) + start, stop - start))


def crc_lines(lines: npt.NDArray[np.uint8], rows: Sequence[int], start: int, stop: int) -> list[int]:
    """CRC-32C of ``lines[i, start:stop]`` for each i in ``rows`` (``lines`` C-contiguous, one item per line:
    page images), one C call per line and no copies when the C function is reachable."""
    fn = c_extend()
    if fn is None or not lines.flags.c_contiguous:
        return [int(google_crc32c.value(lines[i, start:stop].tobytes())) for i in rows]
    base, width, n = int(lines.ctypes.data) + start, int(lines.strides[0]), stop - start
    return [int(fn(0, base + i * width, n)) for i in rows]


def crc_to_lin(crc: int, length: int) -> int:
    """``lin`` of a message of ``length`` bytes whose CRC-32C is ``crc``."""
    return crc ^ _zscalar(length, F32) ^ F32


def lin(data: Buf, start: int = 0, stop: int | None = None) -> int:
    """``lin`` of ``data[start:stop]`` (one C call over the range)."""
    stop = len(data) if stop is None else stop
    return crc_to_lin(crc_range(data, start, stop), stop - start)


@functools.cache
def _g_const() -> int:
    """``G`` with ``Z_4(G) == F`` (``Z_4`` is invertible: solve the 32x32 system over GF(2))."""
    images = [_zscalar(4, 1 << b) for b in range(32)]
    basis: dict[int, tuple[int, int]] = {}
    for b, img in enumerate(images):
        val, comb = img, 1 << b
        for bit in reversed(range(32)):
            if not val >> bit & 1:
                continue
            if bit not in basis:
                basis[bit] = (val, comb)
                break
            val ^= basis[bit][0]
            comb ^= basis[bit][1]
    target, g = F32, 0
    for bit in reversed(range(32)):
        if target >> bit & 1:
            target ^= basis[bit][0]
            g ^= basis[bit][1]
    assert target == 0 and _zscalar(4, g) == F32
    return g


@functools.cache
def _lin52_u16_tables() -> npt.NDArray[np.uint32]:
    """``T[i, w]`` = lin52 of a header that is zero except the little-endian u16 word ``i`` == ``w`` (6.8 MB:
    half as many gathers as byte tables)."""
    table = _lin_table()
    w = np.arange(1 << 16)
    return np.stack([table[2 * i][w & 0xFF] ^ table[2 * i + 1][w >> 8] for i in range(CRC_OFFSET // 2)])


def fold_fields(old_crcs: npt.NDArray[np.uint32], old: npt.NDArray[np.void], new: npt.NDArray[np.void],
                words: tuple[int, ...] = (4, 5, 6, 7, 8, 9, 10, 11, 20, 21, 22, 23)) -> npt.NDArray[np.uint32]:
    """``fold_crcs`` for headers that differ only in the given u16 words (default: ``lsn``, ``prev_lsn``,
    ``durable_lsn``, what re-serialising changes): one table gather per record for each word that changed in
    any record (the high words of an LSN rarely do; changes are found per u64 field, one pass each)."""
    n = len(old)
    ow = np.ascontiguousarray(old).view("<u8").reshape(n, HEADER_SIZE // 8)
    nw = np.ascontiguousarray(new).view("<u8").reshape(n, HEADER_SIZE // 8)
    table = _lin52_u16_tables()
    acc = np.array(old_crcs, dtype=np.uint32)
    for j in sorted({i // 4 for i in words}):
        delta = ow[:, j] ^ nw[:, j]
        changed = int(np.bitwise_or.reduce(delta)) if n else 0
        parts = delta.view(np.uint16).reshape(n, 4)
        for i in words:
            if i // 4 == j and changed >> (16 * (i % 4)) & 0xFFFF:
                acc ^= table[i][parts[:, i % 4]]
    return acc


def header_lin(headers: npt.NDArray[np.void]) -> npt.NDArray[np.uint32]:
    """``lin52`` of each header's first 52 bytes: ``lin52(first header)`` plus, by linearity, one gather per
    u16 word that differs from the first header's in any record (about 9 of 26 in a node's segment)."""
    n = len(headers)
    if n == 0:
        return np.zeros(0, dtype=np.uint32)
    table = _lin52_u16_tables()
    hw = np.ascontiguousarray(headers).view("<u8").reshape(n, HEADER_SIZE // 8)
    words = hw.view(np.uint16)  # (n, 28)
    first = words[0, : CRC_OFFSET // 2].astype(np.intp)
    acc = np.full(n, np.bitwise_xor.reduce(table[np.arange(CRC_OFFSET // 2), first]), dtype=np.uint32)
    for j in range((CRC_OFFSET + 7) // 8):
        delta = hw[:, j] ^ hw[0, j]
        varying = int(np.bitwise_or.reduce(delta))
        if not varying:
            continue
        parts = delta.view(np.uint16).reshape(n, 4)
        for q in range(4):
            i = 4 * j + q
            if i < CRC_OFFSET // 2 and varying >> (16 * q) & 0xFFFF:
                acc ^= table[i][parts[:, q]]
    return acc


def aggregate_ok(data: Buf, offsets: npt.NDArray[np.int64], headers: npt.NDArray[np.void],
                 known: tuple[int, int] | None = None) -> bool:
    """True if the records at ``offsets`` (a chain: each starts at the previous one's 8-aligned end, padding
    zero) all carry correct CRCs, checked with one CRC over the run (see module docstring).

    ``known = (start, crc)``: the CRC-32C of ``data[start:]``, if the caller has it (``scan_headers`` computes
    it while the bytes are in the cache anyway); used when ``start`` is the first record, saving a pass."""
    n = len(offsets)
    if n == 0:
        return True
    tl = headers["total_len"].astype(np.int64)
    first, end = int(offsets[0]), int(offsets[-1] + tl[-1])
    if known is not None and known[0] == first:
        ref = len(data)  # the run's bytes measured to the end of the buffer: take out what follows the run
        run = crc_to_lin(known[1], ref - first)
        if np.frombuffer(data, dtype=np.uint8)[end:].any():
            run ^= lin(data, end, ref)
    else:
        ref = end
        run = lin(data, first, end)
    lhs = _zscalar(52, run)
    x = header_lin(headers) ^ headers["crc"].astype(np.uint32)
    # Z_{L-o}(x ^ G) ^ Z_{L-o-t}(x ^ F) == Z_{L-o-t}(Z_t(x ^ G) ^ x ^ F): one short shift per record, then
    # one XOR of shifted terms measured from each record's end
    y = zshift(tl, x ^ np.uint32(_g_const())) ^ x ^ np.uint32(F32)
    return zxor(ref - offsets.astype(np.int64) - tl, y) == lhs


def expected_crcs(payload_crcs: npt.NDArray[np.uint32], headers: npt.NDArray[np.void]) -> npt.NDArray[np.uint32]:
    """The CRC each record should carry, given ``crc(payload)`` per record and its header."""
    table, e0 = _append_zeros_tables()
    c = payload_crcs.astype(np.uint32)
    return (_lut(table, c) ^ np.uint32(e0) ^ header_lin(headers)).astype(np.uint32)


def payload_crcs(buf: Buf, offsets: npt.NDArray[np.int64], total_lens: npt.NDArray[np.int64]) -> npt.NDArray[np.uint32]:
    """``crc(payload)`` of the records at ``offsets``: the one per-record loop (a slice and a C call each)."""
    data = buf if isinstance(buf, bytes) else bytes(buf)
    value = google_crc32c.value
    starts = (offsets + HEADER_SIZE).tolist()
    ends = (offsets + total_lens).tolist()
    return np.fromiter((value(data[a:b]) for a, b in zip(starts, ends)), dtype=np.uint32, count=len(starts))


def first_bad_crc(buf: Buf, offsets: npt.NDArray[np.int64], headers: npt.NDArray[np.void],
                  known: tuple[int, int] | None = None) -> int:
    """Index of the first record whose stored CRC is wrong, or -1.

    ``offsets`` must be a chain of records (as ``scan_headers`` finds them) for the one-call aggregate check
    (``known`` as for ``aggregate_ok``); otherwise, and whenever the aggregate fails, every record is checked
    on its own.
    """
    if len(offsets) == 0:
        return -1
    tl = headers["total_len"].astype(np.int64)
    chained = len(offsets) == 1 or bool(np.all(offsets[1:] == ((offsets[:-1] + tl[:-1] + 7) & ~7)))
    if chained and aggregate_ok(buf, offsets, headers, known):
        return -1
    pc = payload_crcs(buf, offsets, tl)
    bad = np.flatnonzero(expected_crcs(pc, headers) != headers["crc"])
    return int(bad[0]) if len(bad) else -1
