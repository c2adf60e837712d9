"""Moving variable-length records between buffers without a per-record Python step (the numpy reference of the
merged-segment writer, ``walmerge.sink``; the compiled path is ``jit.build_piece``).

Merged nodes interleave record by record (each node ticks its own Lamport clock), so runs of records adjacent in
both source and output are about one record long, and a slice per run is a slice per record.  Instead every
record of padded length ``A`` moves as at most two power-of-two blocks (``block_plan``): the largest that fits
at its start, and one ending at its end that covers the rest (they overlap and write the same bytes there; about
12% more bytes than the records).  All blocks of one size from one source buffer are one numpy gather from a
view of the source that starts a block-sized item at every 8-byte word, and one scatter into a like view of the
output (``copy_records``): a few numpy calls per (piece, source, block size), and the GIL is free while numpy
copies.  Split out of ``sink.py`` so the writer module holds only placement and files.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import numpy as np
import numpy.typing as npt

from walmerge.record import HEADER_SIZE

Buf = bytes | bytearray | memoryview

MIN_BLOCK = 64
"""Smallest block moved for a record's tail (smaller tails are widened into bytes copied anyway): fewer block
sizes mean fewer numpy calls."""
RAW_HEADER = np.dtype((np.void, HEADER_SIZE))
"""A header as an opaque 56-byte item: numpy copies structured items field by field, these with one memcpy."""


@functools.cache
def _block_dtype(size: int) -> np.dtype[np.void]:
    return np.dtype((np.void, size))


def block_view(buf: Buf, size: int) -> npt.NDArray[np.void]:
    """``buf`` as overlapping ``size``-byte items, one starting at every 8-byte word (item ``k`` = bytes
    ``[8k, 8k + size)``); fancy indexing on it moves whole blocks.  Read-only if ``buf`` is."""
    n = (len(buf) - size) // 8 + 1
    return np.ndarray(shape=(max(n, 0),), dtype=_block_dtype(size), buffer=buf, strides=(8,))


class BlockPlan(NamedTuple):
    """Every block to move: source and destination word indexes, sorted into groups of one (piece, source
    buffer, block size); ``groups[g] = (piece, source, size, a, b)`` covers items ``[a, b)``."""

    si: npt.NDArray[np.int64]
    di: npt.NDArray[np.int64]
    groups: list[tuple[int, int, int, int, int]]


def block_plan(src: npt.NDArray[np.int32], src_off: npt.NDArray[np.int64], dst_off: npt.NDArray[np.int64],
               aligned: npt.NDArray[np.int64], piece: npt.NDArray[np.int64] | None = None) -> BlockPlan:
    """Cover each record (padded length ``A``, a multiple of 8, at least 16) with at most two power-of-two
    blocks: ``C1`` = the largest power of two <= ``A`` at its start, and, if ``A`` is not one, a block ending at
    its end of the power of two covering the rest (at least ``MIN_BLOCK``, at most ``C1``; it overlaps the first
    and writes the same bytes there).  About 13% more bytes than the records, two numpy items per record."""
    lg1 = np.frexp(aligned.astype(np.float64))[1].astype(np.int64) - 1  # 2**lg1 <= A < 2**(lg1 + 1)
    rest = aligned - (np.int64(1) << lg1)
    two = np.flatnonzero(rest)
    lg2 = np.frexp((np.maximum(rest[two], MIN_BLOCK) - 1).astype(np.float64))[1].astype(np.int64)
    lg2 = np.minimum(lg2, lg1[two])
    back = aligned[two] - (np.int64(1) << lg2)
    lg = np.concatenate((lg1, lg2))
    low = int(lg.min())
    n_lg, n_src = int(lg.max()) - low + 1, int(src.max()) + 1
    key = np.concatenate((src, src[two])).astype(np.int64) * n_lg + (lg - low)
    if piece is not None:
        key += np.concatenate((piece, piece[two])) * (n_src * n_lg)
    # group by key; the order inside a group does not matter (16-bit keys sort by radix sort)
    order = np.argsort(key.astype(np.uint16), kind="stable") if int(key.max()) < 1 << 16 else np.argsort(key)
    key = key[order]
    si = (np.concatenate((src_off, src_off[two] + back)) >> 3)[order]
    di = (np.concatenate((dst_off, dst_off[two] + back)) >> 3)[order]
    cuts = np.flatnonzero(key[1:] != key[:-1]) + 1
    starts = np.concatenate((np.zeros(1, dtype=np.int64), cuts)).tolist()
    ends = np.append(cuts, len(key)).tolist()
    groups = [(k // (n_src * n_lg), k // n_lg % n_src, 1 << (k % n_lg + low), a, b)
              for k, a, b in zip(key[starts].tolist(), starts, ends)]
    return BlockPlan(si, di, groups)


def copy_records(dst: bytearray, dst_off: npt.NDArray[np.int64], buffers: Sequence[Buf],
                 src: npt.NDArray[np.int32], src_off: npt.NDArray[np.int64], aligned: npt.NDArray[np.int64]) -> None:
    """``dst[dst_off[i]: dst_off[i] + aligned[i]] = buffers[src[i]][src_off[i]: ...]`` for every record, as at
    most two blocks per record (``block_plan``).  Offsets and lengths are multiples of 8 and ``aligned >= 16``
    (a record is at least its 56-byte header); every range lies inside its buffer."""
    if len(src) == 0:
        return
    plan = block_plan(src, src_off, dst_off, aligned)
    run_plan(plan, dst, 0, buffers, 0, len(plan.groups))


ViewCache = dict[tuple[int, int], npt.NDArray[np.void]]


def run_plan(plan: BlockPlan, dst: bytearray, shift: int, buffers: Sequence[Buf], g0: int, g1: int,
             views: ViewCache | None = None) -> None:
    """Move the blocks of groups ``[g0, g1)`` into ``dst`` (destination word indexes minus ``shift``).
    ``views`` caches block views by ``(id(buffer), size)`` across calls (the buffers must stay alive)."""
    cache: ViewCache = {} if views is None else views
    for g in range(g0, g1):
        _, s, c, a, b = plan.groups[g]
        buf = buffers[s]
        sv = cache.get((id(buf), c))
        if sv is None:
            sv = cache[(id(buf), c)] = block_view(buf, c)
        dv = cache.get((id(dst), c))
        if dv is None:
            dv = cache[(id(dst), c)] = block_view(dst, c)
        dv[plan.di[a:b] - shift if shift else plan.di[a:b]] = sv[plan.si[a:b]]


__all__ = ["BlockPlan", "Buf", "MIN_BLOCK", "RAW_HEADER", "ViewCache", "block_plan", "block_view", "copy_records", "run_plan"]
