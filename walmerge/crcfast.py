"""Verifying the CRCs of many records at once: one C call per segment instead of two per record.

A record's CRC is ``crc(payload || header[0:52])``.  CRC-32C is affine: ``crc(M) = lin(M) ^ crc(0^|M|)`` with
``lin`` linear, and appending ``k`` zero bytes maps ``lin`` through a fixed linear map ``Z_k``.  So the ``lin``
of a whole run of records *as stored* (header first, payload, padding) is an XOR, over the records, of each
record's stored CRC and header bytes pushed through ``Z_k`` for a per-record distance ``k`` (``aggregate_ok``).
One ``google_crc32c`` call over the run gives the left side; the right side is numpy table lookups (``Z_k`` for
any ``k < 2^30`` is five lookups in base-64 digit tables, each four byte-indexed gathers).

Strength: the check is the XOR of each record's own CRC syndrome pushed through an invertible map, so a damaged
record is caught whenever its own CRC would catch it and it is the only damaged one in the run; several damaged
records escape only if their 32-bit syndromes cancel exactly.  On a mismatch the exact per-record check
(``payload_crcs``: one slice and one C call per record, the header part vectorised) finds the first bad record.
"""

from __future__ import annotations

import functools

import google_crc32c
import numpy as np
import numpy.typing as npt

from walmerge.record import CRC_OFFSET, HEADER_SIZE, _lin_table

Buf = bytes | bytearray | memoryview


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


F32 = 0xFFFFFFFF
_DIGIT_BITS = 6
_LEVELS = 5  # 64**5 == 2**30 == MAX_SEGMENT_SIZE: every distance inside a segment


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


def zshift(k: npt.NDArray[np.int64], v: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
    """``Z_k(v)`` elementwise: the ``lin`` register ``v`` after ``k[i]`` more zero bytes (0 <= k < 2**30)."""
    flat = _shift_tables().reshape(-1)
    v = v.astype(np.uint32)
    k = k.astype(np.int64)
    for level in range(_LEVELS):
        digit = (k >> (_DIGIT_BITS * level)) & 63
        if not digit.any():
            continue
        base = (level * 64 + digit) * 1024
        v = (flat[base + (v & 0xFF)] ^ flat[base + 256 + ((v >> 8) & 0xFF)]
             ^ flat[base + 512 + ((v >> 16) & 0xFF)] ^ flat[base + 768 + (v >> 24)])
    return v


@functools.cache
def _lin4_tables() -> npt.NDArray[np.uint32]:
    """Byte tables of ``c -> lin(c as 4 little-endian bytes)`` (the stored CRC field's share of ``lin``)."""
    zero = int(google_crc32c.value(bytes(4)))
    images = np.array([int(google_crc32c.value((1 << b).to_bytes(4, "little"))) ^ zero for b in range(32)],
                      dtype=np.uint32)
    return _byte_tables(images)


def _lut(tables: npt.NDArray[np.uint32], v: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
    out: npt.NDArray[np.uint32] = (tables[0, v & 0xFF] ^ tables[1, (v >> 8) & 0xFF] ^ tables[2, (v >> 16) & 0xFF]
                                   ^ tables[3, v >> 24])
    return out


def aggregate_ok(data: bytes, offsets: npt.NDArray[np.int64], headers: npt.NDArray[np.void]) -> bool:
    """True if the records at ``offsets`` (a chain: each starts at the previous one's 8-aligned end, padding
    zero) all carry correct CRCs, checked with one CRC call over the run (see module docstring)."""
    n = len(offsets)
    if n == 0:
        return True
    tl = headers["total_len"].astype(np.int64)
    start = int(offsets[0])
    end = int(offsets[-1] + tl[-1])
    run_crc = int(google_crc32c.value(data[start:end]))
    one = np.ones(1, dtype=np.uint32)
    f = np.uint32(F32)
    # lin(run || 0^56) from the one bulk call: lin(run) = crc(run) ^ Z_len(F) ^ F
    lin_run = np.uint32(run_crc) ^ zshift(np.array([end - start]), one * f)[0] ^ f
    lhs = int(zshift(np.array([56]), one * lin_run)[0])
    stored = headers["crc"].astype(np.uint32)
    lin52 = header_lin(headers)
    lin56 = zshift(np.full(n, 4, dtype=np.int64), lin52) ^ _lut(_lin4_tables(), stored)
    g = end - offsets
    m = tl - 4
    terms = zshift(g, lin56 ^ f) ^ zshift(g - m, stored ^ f ^ lin52)
    return int(np.bitwise_xor.reduce(terms)) == lhs


@functools.cache
def _lin52_u16_tables() -> npt.NDArray[np.uint32]:
    """``T[i, w]`` = lin52 of a header that is zero except the little-endian u16 word ``i`` == ``w`` (6.8 MB:
    half as many gathers as byte tables, which is what the header part of the check costs)."""
    table = _lin_table()
    w = np.arange(1 << 16)
    return np.stack([table[2 * i][w & 0xFF] ^ table[2 * i + 1][w >> 8] for i in range(CRC_OFFSET // 2)])


def fold_fields(old_crcs: npt.NDArray[np.uint32], old: npt.NDArray[np.void], new: npt.NDArray[np.void],
                words: tuple[int, ...] = (4, 5, 6, 7, 8, 9, 10, 11, 20, 21, 22, 23)) -> npt.NDArray[np.uint32]:
    """``fold_crcs`` for headers that differ only in the given u16 words (default: ``lsn``, ``prev_lsn``,
    ``durable_lsn``, what re-serialising changes): 12 table gathers per record instead of up to 52."""
    ow = np.ascontiguousarray(old).view(np.uint16).reshape(-1, HEADER_SIZE // 2)
    nw = np.ascontiguousarray(new).view(np.uint16).reshape(-1, HEADER_SIZE // 2)
    table = _lin52_u16_tables()
    acc = np.asarray(old_crcs, dtype=np.uint32).copy()
    for i in words:
        acc ^= table[i][ow[:, i] ^ nw[:, i]]
    return acc


def header_lin(headers: npt.NDArray[np.void]) -> npt.NDArray[np.uint32]:
    """``lin52`` of each header's first 52 bytes."""
    words = np.ascontiguousarray(headers).view(np.uint16).reshape(-1, HEADER_SIZE // 2)
    cols = np.ascontiguousarray(words[:, : CRC_OFFSET // 2].T)
    table = _lin52_u16_tables()
    acc: npt.NDArray[np.uint32] = table[0][cols[0]]
    for i in range(1, CRC_OFFSET // 2):
        acc ^= table[i][cols[i]]
    return acc


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


def first_bad_crc(buf: Buf, offsets: npt.NDArray[np.int64], headers: npt.NDArray[np.void]) -> int:
    """Index of the first record whose stored CRC is wrong, or -1.

    ``offsets`` must be a chain of records (as ``scan_headers`` finds them) for the one-call aggregate check;
    otherwise, and whenever the aggregate fails, every record is checked on its own.
    """
    if len(offsets) == 0:
        return -1
    data = buf if isinstance(buf, bytes) else bytes(buf)
    tl = headers["total_len"].astype(np.int64)
    chained = len(offsets) == 1 or bool(np.all(offsets[1:] == ((offsets[:-1] + tl[:-1] + 7) & ~7)))
    if chained and aggregate_ok(data, offsets, headers):
        return -1
    pc = payload_crcs(data, offsets, tl)
    bad = np.flatnonzero(expected_crcs(pc, headers) != headers["crc"])
    return int(bad[0]) if len(bad) else -1
