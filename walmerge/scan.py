"""Fast header scanning of one segment buffer: find the records, view their headers as a numpy array, and
check them in bulk.  The reader and (later) the k-way merge are built on this; a per-record Python loop is
left only for the CRC (a C call per record) and for damaged buffers.

Finding records: every record stores its own LSN at byte 8 of its header, so the 8-aligned positions ``p``
whose u64 at ``p + 8`` equals ``base_lsn + p`` are (almost exactly) the records.  If those candidates chain
(``p + align8(total_len)`` is the next candidate) the walk is done without a Python loop; otherwise (a payload
that happens to contain such a value, or damage) a plain sequential walk takes over from where the chain broke.
"""

from __future__ import annotations

import functools
import struct
from typing import NamedTuple

import google_crc32c
import numpy as np
import numpy.typing as npt

from walmerge.crcfast import c_extend, address, first_bad_crc
from walmerge.record import ALIGN, CRC_OFFSET, HEADER_DTYPE, HEADER_SIZE, MAX_NODE_ID, compute_crc, format_glsn

SECTOR = 512
"""Unit of atomic writes assumed when telling a torn write from corruption (see reader)."""

END = "end"
_U32 = struct.Struct("<I")
_U64_MAX = np.uint64(0xFFFFFFFFFFFFFFFF)

Buf = bytes | bytearray | memoryview


class HeaderScan(NamedTuple):
    """Result of walking one segment buffer.

    ``offsets[i]`` is the file offset of record ``i`` and ``headers[i]`` its header (``HEADER_DTYPE``).
    ``stop`` is the offset where the walk ended; ``stop_reason`` is ``"end"`` for a clean end (zeros to the end
    of the segment, or the segment is full) or a description of what is wrong at ``stop``.  The records are
    structurally sound (length fits) but not yet validated (see ``validate``).
    """

    offsets: npt.NDArray[np.int64]
    headers: npt.NDArray[np.void]
    stop: int
    stop_reason: str
    crc: tuple[int, int] | None = None
    """``(start, crc)``: the CRC-32C of ``buf[start:]``, taken during the scan for ``validate``'s CRC check."""


def _u8(buf: Buf) -> npt.NDArray[np.uint8]:
    return np.frombuffer(buf, dtype=np.uint8)


def is_zero(buf: Buf, start: int, stop: int) -> bool:
    if stop <= start:
        return True
    return not _u8(buf)[start:stop].any()


def _sequential_walk(buf: Buf, start: int, segment_size: int, out: list[int]) -> tuple[int, str]:
    size = len(buf)
    off = start
    while True:
        if off + HEADER_SIZE > segment_size:
            if is_zero(buf, off, size):
                return off, END
            return off, "non-zero bytes in the space too small for a record at the end of the segment"
        if off + 8 > size:
            return off, f"segment file ends at offset {size} (truncated; expected {segment_size} bytes)"
        (tl,) = _U32.unpack_from(buf, off)
        if tl == 0:
            if is_zero(buf, off, size):
                if size < segment_size:
                    return off, f"segment file ends at offset {size} (truncated; expected {segment_size} bytes)"
                return off, END
            return off, "zero record length but non-zero bytes follow"
        if tl < HEADER_SIZE or off + tl > segment_size:
            return off, f"impossible record length {tl}"
        if off + tl > size:
            return off, f"record of {tl} bytes cut off by the end of the file at offset {size}"
        out.append(off)
        off = (off + tl + ALIGN - 1) & ~(ALIGN - 1)


_BLOCK = 1 << 17
"""Words compared per numpy call when looking for LSN fields (temporaries stay in cache)."""


@functools.cache
def _ramp(n: int) -> npt.NDArray[np.uint32]:
    out: npt.NDArray[np.uint32] = np.arange(n, dtype=np.uint32) * np.uint32(8)
    return out


def _lsn_candidates(buf: Buf, k0: int, n8: int, base_lsn: int) -> tuple[npt.NDArray[np.int64], int | None]:
    """Word indexes ``k >= k0`` with ``u64 word k + 1 == base_lsn + 8k`` (a record's own LSN field), and the
    CRC-32C of ``buf[8 * k0:]`` (None without the C function).

    Compared on the low 32 bits (``lo - 8k == base`` wraps correctly mod 2**32), block by block; each block's
    CRC is taken just before, so the block is read from memory once for both.  The few candidates are then
    checked on all 64 bits."""
    u32 = np.frombuffer(buf, dtype="<u4", count=2 * n8)
    ramp = _ramp(_BLOCK)
    extend = c_extend()
    at = address(buf) if extend is not None else 0
    crc = 0
    found = []
    diff = np.empty(min(_BLOCK, n8), dtype=np.uint32)  # reused for every block: no allocation per numpy call
    same = np.empty(len(diff), dtype=np.bool_)
    for a in range(k0, n8 - 1, _BLOCK):
        b = min(a + _BLOCK, n8 - 1)
        if extend is not None:
            crc = extend(crc, at + 8 * a, 8 * (b - a))
        d, m = diff[: b - a], same[: b - a]
        np.subtract(u32[2 * a + 2: 2 * b + 2: 2], ramp[: b - a], out=d)
        np.equal(d, np.uint32((base_lsn + 8 * a) & 0xFFFFFFFF), out=m)
        hit = np.flatnonzero(m)
        if len(hit):
            found.append(hit + a)
    if extend is not None:
        crc = extend(crc, at + 8 * max(k0, n8 - 1), len(buf) - 8 * max(k0, n8 - 1))
    if not found:
        return np.zeros(0, dtype=np.int64), crc if extend is not None else None
    cand = np.concatenate(found) if len(found) > 1 else found[0]
    words = np.frombuffer(buf, dtype="<u8", count=n8)
    full = words[cand + 1] == cand.astype(np.uint64) * np.uint64(8) + np.uint64(base_lsn)
    out: npt.NDArray[np.int64] = cand[full].astype(np.int64)
    return out, crc if extend is not None else None


def _fast_chain(buf: Buf, start: int, base_lsn: int, segment_size: int
                ) -> tuple[npt.NDArray[np.int64], int | None]:
    """Offsets of the chain of records starting at ``start`` found by the LSN-field trick (may be short), and
    the CRC-32C of ``buf[start:]`` if it was computed on the way."""
    n8 = len(buf) // 8
    k0 = start // 8
    if n8 - 1 <= k0:
        return np.zeros(0, dtype=np.int64), None
    words, crc = _lsn_candidates(buf, k0, n8, base_lsn)
    cand = words * 8
    if len(cand) == 0 or cand[0] != start:
        return np.zeros(0, dtype=np.int64), crc
    lens = np.frombuffer(buf, dtype="<u4", count=len(buf) // 4)[cand // 4].astype(np.int64)
    ends = cand + lens
    sane = (lens >= HEADER_SIZE) & (ends <= min(len(buf), segment_size))
    nxt = (ends + ALIGN - 1) & ~(ALIGN - 1)
    ok = sane[:-1] & (nxt[:-1] == cand[1:])
    bad = np.flatnonzero(~ok)
    n = int(bad[0]) + 1 if len(bad) else len(cand)
    if not sane[n - 1]:
        n -= 1
    return cand[:n], crc


def gather_headers(buf: Buf, offsets: npt.NDArray[np.int64]) -> npt.NDArray[np.void]:
    """Copy the headers at ``offsets`` (8-aligned, fully inside ``buf``) into one ``HEADER_DTYPE`` array: one
    gather of 56-byte items from a view that starts a header at every 8-byte word."""
    n8 = len(buf) // 8
    if len(offsets) == 0 or n8 < HEADER_SIZE // 8:
        return np.zeros(0, dtype=HEADER_DTYPE)
    view = np.ndarray(shape=(n8 - HEADER_SIZE // 8 + 1,), dtype=np.dtype((np.void, HEADER_SIZE)), buffer=buf,
                      strides=(8,))
    out: npt.NDArray[np.void] = view[offsets // 8].view(HEADER_DTYPE)
    return out


def scan_headers(buf: Buf, base_lsn: int, start: int, segment_size: int) -> HeaderScan:
    """Walk the records of one segment buffer from file offset ``start`` (use ``SEGMENT_HEADER_SIZE``).

    ``base_lsn`` is the segment's start LSN.  Returns the headers as a numpy structured array plus offsets.
    """
    chain, crc = _fast_chain(buf, start, base_lsn, segment_size)
    offsets: list[int] = []
    if len(chain):
        last = int(chain[-1])
        (tl,) = _U32.unpack_from(buf, last)
        resume = (last + tl + ALIGN - 1) & ~(ALIGN - 1)
    else:
        resume = start
    stop, reason = _sequential_walk(buf, resume, segment_size, offsets)
    all_off = np.concatenate([chain, np.asarray(offsets, dtype=np.int64)]) if offsets else chain
    known = None if crc is None or start % ALIGN else (start, crc)
    return HeaderScan(all_off, gather_headers(buf, all_off), stop, reason, known)


class Expect(NamedTuple):
    """What the next record must look like, carried from one segment to the next."""

    prev_lsn: int | None
    glsn: int
    epoch: int


def _first(mask: npt.NDArray[np.bool_]) -> int:
    idx = np.flatnonzero(mask)
    return int(idx[0]) if len(idx) else -1


def validate(
    buf: Buf, scan: HeaderScan, base_lsn: int, expect: Expect, *, stream_node: int | None, verify_crc: bool = True
) -> tuple[int, str]:
    """Check the scanned records in bulk.  Returns ``(n_valid, reason)``: records ``[0, n_valid)`` are valid;
    if ``n_valid < len(offsets)`` then ``reason`` says what is wrong with record ``n_valid``.

    Checks: LSN field == position, prev-LSN chain, GLSN node == node field, kind != 0, zero padding, GLSN never
    decreasing; for a node stream (``stream_node`` given) also node field == stream node and epoch never
    decreasing; finally the CRC of every record.
    """
    h, off = scan.headers, scan.offsets
    n = len(off)
    if n == 0:
        return 0, ""
    lsn = h["lsn"]
    prev = h["prev_lsn"]
    glsn = h["glsn"]
    node = h["node"].astype(np.uint64)
    checks: list[tuple[npt.NDArray[np.bool_], str]] = []
    checks.append((lsn != off.astype(np.uint64) + np.uint64(base_lsn), "LSN field does not match the position"))
    prev_expected = np.empty(n, dtype=np.uint64)
    prev_expected[1:] = lsn[:-1]
    prev_expected[0] = prev[0] if expect.prev_lsn is None else expect.prev_lsn
    checks.append((prev != prev_expected, "prev-LSN does not point to the previous record (broken chain)"))
    checks.append(((glsn & np.uint64(MAX_NODE_ID)) != node, "GLSN node part differs from the node field"))
    checks.append((h["kind"] == 0, "record kind 0"))
    prev_glsn = np.empty(n, dtype=np.uint64)
    prev_glsn[1:] = glsn[:-1]
    prev_glsn[0] = expect.glsn
    checks.append((glsn < prev_glsn, "GLSN lower than the previous record's"))
    if stream_node is not None:
        checks.append((node != np.uint64(stream_node), f"record from another node in the WAL of node {stream_node}"))
        ep = h["epoch"].astype(np.int64)
        prev_ep = np.empty(n, dtype=np.int64)
        prev_ep[1:] = ep[:-1]
        prev_ep[0] = expect.epoch
        checks.append((ep < prev_ep, "epoch lower than the previous record's"))
    checks.append((_bad_padding(buf, off, h["total_len"].astype(np.int64)), "non-zero alignment padding"))
    first, reason = n, ""
    anything = checks[0][0].copy()
    for mask, _ in checks[1:]:
        anything |= mask
    if anything.any():  # the usual clean buffer costs one flag pass, not a search per check
        for mask, why in checks:
            i = _first(mask)
            if 0 <= i < first:
                first, reason = i, why
    if verify_crc:
        bad = first_bad_crc(buf, off[: first + 1], h[: first + 1], scan.crc)
        if bad >= 0:
            o, tl = int(off[bad]), int(h["total_len"][bad])
            return bad, f"CRC mismatch (stored {int(h['crc'][bad]):08x}, computed {compute_crc(buf, o, tl):08x})"
    if first < n:
        reason += f" (lsn {int(lsn[first]):#x}, prev {int(prev[first]):#x}, GLSN {format_glsn(int(glsn[first]))})"
    return first, reason


def _first_bad_crc(buf: Buf, offs: list[int], lens: list[int], crcs: list[int]) -> int:
    """Index of the first record whose CRC is wrong, or -1: the plain two-calls-per-record reference that
    ``crcfast.first_bad_crc`` (used by ``validate``) must agree with."""
    data = buf if isinstance(buf, bytes) else bytes(buf)  # google_crc32c takes only bytes
    value, extend = google_crc32c.value, google_crc32c.extend
    for i, (o, tl, crc) in enumerate(zip(offs, lens, crcs)):
        if extend(value(data[o + HEADER_SIZE: o + tl]), data[o: o + CRC_OFFSET]) != crc:
            return i
    return -1


def _bad_padding(buf: Buf, off: npt.NDArray[np.int64], lens: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    ends = off + lens
    pad = ((ends + ALIGN - 1) & ~(ALIGN - 1)) - ends
    n8 = len(buf) // 8
    word = (ends + pad - 8) // 8
    bad = np.zeros(len(off), dtype=bool)
    sel = (pad > 0) & (word < n8)
    if sel.any():
        words = np.frombuffer(buf, dtype="<u8", count=n8)[word[sel]]
        mask = _U64_MAX << (np.uint64(8) * (np.uint64(8) - pad[sel].astype(np.uint64)))
        bad[sel] = (words & mask) != 0
    return bad


def valid_records_after(buf: Buf, start: int, base_lsn: int, segment_size: int) -> list[tuple[int, int]]:
    """Offsets and ``durable_lsn`` of every CRC-valid record at or after ``start``, found without following
    the (broken) chain: used to decide whether damage lies in the unsynced tail or in fsynced data."""
    n8 = len(buf) // 8
    k0 = (start + ALIGN - 1) // 8
    if n8 - 1 <= k0:
        return []
    words = np.frombuffer(buf, dtype="<u8", count=n8)
    expect = np.arange(k0, n8 - 1, dtype=np.uint64) * np.uint64(8) + np.uint64(base_lsn)
    found = []
    for k in (np.flatnonzero(words[k0 + 1: n8] == expect) + k0).tolist():
        o = k * 8
        if o + HEADER_SIZE > len(buf):
            continue
        (tl,) = _U32.unpack_from(buf, o)
        if tl < HEADER_SIZE or o + tl > min(len(buf), segment_size):
            continue
        if compute_crc(buf, o, tl) == int.from_bytes(buf[o + 52: o + 56], "little"):
            found.append((o, int(words[k + 5])))
    return found


def looks_torn(buf: Buf, start: int, stop: int) -> bool:
    """Could ``buf[start:stop]`` be an interrupted write into zero-filled space?

    True if the first 8 bytes (a record header start, 8-aligned, so inside one sector) are zero, or some whole
    ``SECTOR`` inside the range is zero: a sector that never reached the disk reads as the zeros the segment
    was filled with.  Non-zero garbage cannot come from a crash.
    """
    arr = _u8(buf)
    stop = min(stop, len(arr))
    if start + 8 > stop or not arr[start: start + 8].any():
        return True
    s0 = -(-start // SECTOR) * SECTOR
    s1 = stop // SECTOR * SECTOR
    if s1 <= s0:
        return False
    blocks = arr[s0:s1].reshape(-1, SECTOR)
    return bool((~blocks.any(axis=1)).any())
