"""Writing a merged stream: re-serialise already-validated records into merged segments in bulk.

The sink takes records as numpy header arrays plus (buffer, offset) pairs, never as Python objects.  It places
them exactly like ``WalWriter`` would (8-aligned, never spanning segments, each segment opening with a 64-byte
header), so output LSNs depend only on the order and sizes of the records: a batch merge and a follow-mode
merge of the same input give the same LSNs.  New ``lsn``/``prev_lsn``/``durable_lsn`` fields are set on the
header arrays and folded into the old CRCs (``fold_fields``): the payload is never re-read, and a record that
arrived damaged stays detectably damaged instead of being laundered by a fresh CRC.

Copying without a per-record Python step.  Merged nodes interleave record by record (each node ticks its own
Lamport clock), so runs of records adjacent in both source and output are about one record long, and a slice
per run is a slice per record.  Instead every record of padded length ``A`` moves as at most two power-of-two
blocks (``block_plan``): the largest that fits at its start, and one ending at its end that covers the rest
(they overlap and write the same bytes there; about 12% more bytes than the records).  All blocks of one size
from one source buffer are one numpy gather from a view of the source that starts a block-sized item at every
8-byte word, and one scatter into a like view of the output (``copy_records``): a few numpy calls per (piece,
source, block size), and the GIL is free while numpy copies.

Bulk mode (``incremental=False``, the batch merge) builds the output a *piece* (about ``PIECE`` bytes of whole
records) at a time in a small buffer and ``pwrite``s it into ``<segment>.tmp`` at once, so the bytes are still
in the CPU cache when the kernel copies them; a full segment is zero-filled to its size, (fsynced,) renamed.  A
segment with its final name is therefore complete, so every record can claim ``durable_lsn`` = its own LSN (the
reader then calls any later damage corruption, never a torn tail).  On an error the ``.tmp`` file is removed
(``abort``): published segments stay a prefix of the stream.

Incremental mode (follow mode): the segment file is created zero-filled first (like ``WalWriter``) and records
are ``pwrite``-appended on ``flush``; ``durable_lsn`` is the stream position fsynced before the record was added.
"""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import functools
import os
import threading
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import numpy.typing as npt

from walmerge import jit
from walmerge.errors import RecordTooLarge
from walmerge.crcfast import fold_fields
from walmerge.record import HEADER_DTYPE, HEADER_SIZE
from walmerge.segment import (
    FLAG_MERGED, FORMAT_VERSION, MERGED_NODE_ID, SEGMENT_HEADER_SIZE, SegmentHeader, check_segment_size,
    create_segment_file, encode_segment_header, fsync_dir, segment_name, write_all, zero_fill,
)

Buf = bytes | bytearray | memoryview

PIECE = 4 << 20
"""Bulk mode builds and writes about this many bytes of records at a time (measured here: 1 MiB pieces pay too
much per-call numpy overhead, a whole 16 MiB segment falls out of the cache before it is written)."""
WRITE_DEPTH = 8
"""Pieces (and seals) handed to the write-behind thread and not yet done, at most: enough to ride out uneven
windows, few enough that the input they keep mapped stays small."""
PIECE_SLACK = 64 << 10
"""A piece is the records starting in a ``PIECE``-sized stretch, so it ends up to one record later."""


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


class _SegmentFiles:
    """Bulk publishing: pieces ``pwrite``n into ``<segment>.tmp`` as they are built, then the segment header,
    zeros to the segment's size, (fdatasync,) rename.  Safe to use from several threads: a thread that builds
    and writes its pieces has its own reused buffer (``buffer``); pieces built in one thread and written in
    another come from a pool (``take``, ``write_and_give``).  Pieces of one segment may be written in any
    order; ``seal`` must come after them (``_WriteBehind`` orders it)."""

    def __init__(self, directory: Path, size: int, *, fsync: bool, piece: int) -> None:
        self.directory = directory
        self.size = size
        self.fsync = fsync
        self.segments: list[str] = []
        self.bytes_written = 0
        self._piece = piece + PIECE_SLACK
        self._local = threading.local()
        self._lock = threading.Lock()
        self._fds: dict[int, int] = {}  # seg_start -> fd of its .tmp file, until sealed
        self._free: list[bytearray] = []  # piece buffers built by the caller, back from the write-behind thread

    def _tmp(self, seg_start: int) -> Path:
        return self.directory / (segment_name(seg_start) + ".tmp")

    def buffer(self, length: int) -> bytearray:
        """This thread's piece buffer, at least ``length`` bytes (grown for a piece holding a very large
        record)."""
        buf: bytearray | None = getattr(self._local, "buf", None)
        if buf is None or len(buf) < length:
            buf = self._local.buf = bytearray(max(length, self._piece))
        return buf

    def take(self, length: int) -> bytearray:
        """A free piece buffer of at least ``length`` bytes (hand it back with ``write_and_give``)."""
        with self._lock:
            buf = self._free.pop() if self._free else None
        if buf is None or len(buf) < length:
            buf = bytearray(max(length, self._piece))
        return buf

    def write_and_give(self, seg_start: int, buf: bytearray, length: int, offset: int) -> None:
        """``write``, then put ``buf`` back among the free piece buffers."""
        try:
            self.write(seg_start, buf, length, offset)
        finally:
            with self._lock:
                self._free.append(buf)

    def _fd(self, seg_start: int) -> int:
        with self._lock:
            fd = self._fds.get(seg_start)
            if fd is None:
                fd = os.open(self._tmp(seg_start), os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                             | getattr(os, "O_CLOEXEC", 0), 0o600)
                self._fds[seg_start] = fd
                _preallocate(fd, self.size)
            return fd

    def write(self, seg_start: int, buf: bytearray, length: int, offset: int) -> None:
        write_all(self._fd(seg_start), memoryview(buf)[:length], offset)

    def seal(self, seg_start: int, header: bytes, end: int) -> None:
        """Complete the segment (its records end at offset ``end``) and publish it under its final name."""
        fd = self._fd(seg_start)
        try:
            write_all(fd, header, 0)
            zero_fill(fd, end, self.size)
            if self.fsync:
                os.fdatasync(fd)
        finally:
            with self._lock:
                del self._fds[seg_start]
            os.close(fd)
        name = segment_name(seg_start)
        os.replace(self._tmp(seg_start), self.directory / name)
        self.segments.append(name)
        self.bytes_written += self.size

    def abort(self) -> None:
        """Remove the unfinished ``.tmp`` files (segments already sealed stay: a prefix of the stream)."""
        with self._lock:
            fds, self._fds = self._fds, {}
        for seg_start, fd in fds.items():
            os.close(fd)
            try:
                os.unlink(self._tmp(seg_start))
            except OSError:
                pass


def _preallocate(fd: int, size: int) -> None:
    """Reserve the segment's blocks before its pieces are written: measured here (ext4), writes into
    preallocated space cost 30% less kernel time than delayed allocation page by page, and a full disk fails
    here with ``OSError`` instead of mid-segment.  Skipped where the file system cannot (the writes allocate)."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    except AttributeError:  # no posix_fallocate on this platform
        pass


class _WriteBehind:
    """Worker threads writing (and, on the numpy path, building) the bulk sink's pieces while the caller merges
    the next window.

    Copying records into a piece and the kernel's copy of it into the page cache both run without the GIL, so
    they overlap with the merge and the reader thread (measured here on two cores: one worker is best, a second
    one only adds contention).  With several workers the pieces of a segment are written in any order; its
    ``seal`` waits for them and for the previous segment's seal, so segments are published in order.  At most
    ``depth`` jobs are queued or running; the first error is raised to the caller at its next
    ``piece``/``seal``/``close``, and later jobs are skipped."""

    def __init__(self, workers: int = 1, depth: int = WRITE_DEPTH) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="walmerge-write")
        self._depth = depth
        self._pending: collections.deque[concurrent.futures.Future[None]] = collections.deque()
        self._segment: list[concurrent.futures.Future[None]] = []  # pieces of the segment being built
        self._last_seal: concurrent.futures.Future[None] | None = None
        self._failed = False

    def _submit(self, fn: Callable[[], None]) -> concurrent.futures.Future[None]:
        while self._pending and (self._pending[0].done() or len(self._pending) >= self._depth):
            self._pending.popleft().result()  # raises a job's error here, in the caller
        fut = self._pool.submit(self._guarded, fn)
        self._pending.append(fut)
        return fut

    def _guarded(self, fn: Callable[[], None]) -> None:
        if self._failed:
            raise RuntimeError("an earlier output job failed")
        try:
            fn()
        except BaseException:
            self._failed = True
            raise

    def piece(self, fn: Callable[[], None]) -> None:
        self._segment.append(self._submit(fn))

    def seal(self, fn: Callable[[], None]) -> None:
        waits = self._segment + ([self._last_seal] if self._last_seal is not None else [])
        self._segment = []

        def after() -> None:
            for w in waits:
                w.result()
            fn()
        self._last_seal = self._submit(after)

    def close(self, *, cancel: bool = False) -> None:
        """Wait for every job (``cancel``: drop those not started, ignore errors); raise the first error."""
        if cancel:
            self._failed = True
            for f in self._pending:
                f.cancel()
        try:
            while self._pending:
                fut = self._pending.popleft()
                if not cancel:
                    fut.result()
        finally:
            self._pool.shutdown(wait=True)


class MergedSink:
    """Appends records to a merged stream directory, starting at ``start_lsn`` (a record boundary).

    ``prev_lsn`` is the LSN of the last record before ``start_lsn`` (0 for a new stream).  For a stream that
    already has segments, the segment holding ``start_lsn`` must exist (incremental mode) and is continued.
    """

    def __init__(self, directory: Path, *, system_id: int, segment_size: int, epoch: int = 0,
                 start_lsn: int | None = None, prev_lsn: int = 0, incremental: bool = False,
                 fsync: bool = True, piece: int = PIECE, write_threads: int = 0) -> None:
        check_segment_size(segment_size)
        self.directory = directory
        self.system_id = system_id
        self.size = segment_size
        self.epoch = epoch
        self.incremental = incremental
        self.fsync = fsync
        self.piece = min(piece, segment_size)
        self.records = 0
        self._last_lsn = prev_lsn
        self._fd: int | None = None
        self._sealed = 0
        directory.mkdir(parents=True, exist_ok=True)
        self._files = None if incremental else _SegmentFiles(directory, segment_size, fsync=fsync, piece=self.piece)
        self._behind = _WriteBehind(write_threads, WRITE_DEPTH) if write_threads > 0 and not incremental else None
        self._buf = bytearray(segment_size if incremental else 0)
        self._inc_segments: list[str] = []
        self._inc_bytes = 0
        lsn = SEGMENT_HEADER_SIZE if start_lsn is None else start_lsn
        self._seg_start = lsn - lsn % segment_size
        self._pos = lsn - self._seg_start  # next record's offset in the current segment
        if self._pos < SEGMENT_HEADER_SIZE:
            self._pos = SEGMENT_HEADER_SIZE
        self._written = self._pos  # incremental: bytes of the segment already in the file
        self._durable = self._seg_start + self._pos
        self._seg_prev = prev_lsn
        if incremental:
            self._open_incremental(existing=start_lsn is not None and self._pos > SEGMENT_HEADER_SIZE)

    @property
    def segments(self) -> list[str]:
        """Names of the segments this sink created (bulk: published so far)."""
        return self._inc_segments if self._files is None else self._files.segments

    @property
    def bytes_written(self) -> int:
        return self._inc_bytes if self._files is None else self._files.bytes_written

    # --- placement ------------------------------------------------------------------------------------------

    @property
    def end_lsn(self) -> int:
        """Where the next record goes."""
        return self._seg_start + self._pos

    @property
    def last_lsn(self) -> int:
        return self._last_lsn

    def append(self, headers: npt.NDArray[np.void], src: npt.NDArray[np.int32], src_off: npt.NDArray[np.int64],
               buffers: Sequence[Buf]) -> npt.NDArray[np.uint64]:
        """Append records in the given order; return their new LSNs.

        ``headers`` (``HEADER_DTYPE``, copied, not modified) are the records' current headers, ``buffers[src[i]]``
        holds record ``i`` at byte offset ``src_off[i]`` with zero padding up to the next 8-byte boundary (the
        buffer may end inside that padding).
        """
        n = len(headers)
        out_lsn = np.empty(n, dtype=np.uint64)
        if n == 0:
            return out_lsn
        total = headers["total_len"].astype(np.int64)
        if int(total.max()) > self.size - SEGMENT_HEADER_SIZE:
            raise RecordTooLarge(f"a record of {int(total.max())} bytes does not fit in output segments of "
                                 f"{self.size} bytes; use a larger output segment size")
        aligned = (total + 7) & ~7
        cum = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(aligned, out=cum[1:])
        end_unaligned = cum[:-1] + total  # strictly increasing
        src_off = np.asarray(src_off, dtype=np.int64)
        i = 0
        while i < n:
            room = self.size - self._pos
            j = int(np.searchsorted(end_unaligned, cum[i] + room, side="right"))
            if j == i:
                self._seal()
                continue
            dst = self._pos + cum[i:j] - cum[i]
            lsns = (dst + self._seg_start).astype(np.uint64)
            out_lsn[i:j] = lsns
            if self._files is None:
                new = self._new_headers(headers[i:j], lsns)
                self._place(self._buf, 0, buffers, src[i:j], src_off[i:j], aligned[i:j], total[i:j], dst, new)
            else:
                self._write_pieces(self._files, list(buffers), headers[i:j], src[i:j], src_off[i:j], aligned[i:j],
                                   total[i:j], dst, lsns)
            self._pos += int(cum[j] - cum[i])
            self._last_lsn = int(lsns[-1])
            i = j
        self.records += n
        return out_lsn

    def _new_headers(self, old: npt.NDArray[np.void], lsns: npt.NDArray[np.uint64]) -> npt.NDArray[np.void]:
        new = old.view(RAW_HEADER).copy().view(HEADER_DTYPE)
        new["lsn"] = lsns
        new["prev_lsn"][0] = self._last_lsn
        new["prev_lsn"][1:] = lsns[:-1]
        new["durable_lsn"] = self._durable if self.incremental else lsns
        new["crc"] = fold_fields(old["crc"], old, new)
        return new

    def _place(self, target: bytearray, base: int, buffers: Sequence[Buf], src: npt.NDArray[np.int32],
               off: npt.NDArray[np.int64], aligned: npt.NDArray[np.int64], total: npt.NDArray[np.int64],
               dst: npt.NDArray[np.int64], new: npt.NDArray[np.void]) -> None:
        """Put records (with their zero padding) and their new headers at ``dst - base`` in ``target``.

        A record whose buffer ends inside its padding (a torn tail cut there: at most one per buffer) is copied
        on its own, its padding written as zeros."""
        rel = dst - base
        clipped = _clipped(buffers, src, off, aligned)
        if clipped is None:
            copy_records(target, rel, buffers, src, off, aligned)
        else:
            mv = memoryview(target)
            for i in np.flatnonzero(clipped).tolist():
                o, d, t, a = int(off[i]), int(rel[i]), int(total[i]), int(aligned[i])
                mv[d: d + t] = memoryview(buffers[int(src[i])])[o: o + t]
                mv[d + t: d + a] = bytes(a - t)
            keep = ~clipped
            copy_records(target, rel[keep], buffers, src[keep], off[keep], aligned[keep])
        block_view(target, HEADER_SIZE)[rel // 8] = new.view(RAW_HEADER)

    def _write_pieces(self, files: _SegmentFiles, buffers: Sequence[Buf], headers: npt.NDArray[np.void],
                      src: npt.NDArray[np.int32], off: npt.NDArray[np.int64], aligned: npt.NDArray[np.int64],
                      total: npt.NDArray[np.int64], dst: npt.NDArray[np.int64], lsns: npt.NDArray[np.uint64]) -> None:
        """Bulk mode: cut the records into pieces (those that start in one stretch of ``piece`` bytes), build each
        and write it (in the write-behind thread if there is one).

        Compiled (``jit.build_piece``) when it is on and no record is cut inside its padding: the piece is built
        here, in a buffer of the pool, and only its ``pwrite`` goes behind (measured here: the merging thread
        waited for the write-behind thread when that built the pieces too).  Else through a block plan and
        numpy, with the new headers made here, built and written behind (a job holds ``buffers``, so mapped
        input stays mapped until its records are copied)."""
        stretch = (dst - dst[0]) // self.piece
        new_piece = stretch[1:] != stretch[:-1]
        piece = np.concatenate((np.zeros(1, dtype=np.int64), np.cumsum(new_piece)))  # numbered 0, 1, 2... (a
        # record larger than PIECE leaves stretches without a start)
        starts = np.concatenate(([0], np.flatnonzero(new_piece) + 1)).tolist()
        ends = starts[1:] + [len(dst)]
        clipped = _clipped(buffers, src, off, aligned)
        if clipped is None and jit.enabled():
            prevs = np.empty(len(lsns), dtype=np.uint64)
            prevs[0] = self._last_lsn
            prevs[1:] = lsns[:-1]
            addresses = np.fromiter((jit.address(b) for b in buffers), dtype=np.int64, count=len(buffers))
            for a, b in zip(starts, ends):
                base = int(dst[a])
                length = int(dst[b - 1] + aligned[b - 1]) - base
                buf = files.take(length)
                jit.build_piece(buf, base, addresses, src[a:b], off[a:b], aligned[a:b], dst[a:b], lsns[a:b],
                                prevs[a:b])
                self._run(functools.partial(files.write_and_give, self._seg_start, buf, length, base))
        else:
            new = self._new_headers(headers, lsns)
            plan = block_plan(src, off, dst, aligned, piece) if clipped is None else None
            g = 0
            for p, (a, b) in enumerate(zip(starts, ends)):
                g1 = g
                if plan is not None:
                    while g1 < len(plan.groups) and plan.groups[g1][0] == p:
                        g1 += 1
                self._run(functools.partial(self._build_piece, files, self._seg_start, buffers, plan, g, g1,
                                            src[a:b], off[a:b], aligned[a:b], total[a:b], dst[a:b], new[a:b]))
                g = g1

    def _run(self, job: Callable[[], None]) -> None:
        """Run a piece job here, or hand it to the write-behind thread."""
        if self._behind is None:
            job()
        else:
            self._behind.piece(job)

    def _build_piece(self, files: _SegmentFiles, seg_start: int, buffers: Sequence[Buf], plan: BlockPlan | None,
                     g0: int, g1: int, src: npt.NDArray[np.int32], off: npt.NDArray[np.int64],
                     aligned: npt.NDArray[np.int64], total: npt.NDArray[np.int64], dst: npt.NDArray[np.int64],
                     new: npt.NDArray[np.void]) -> None:
        """Copy one piece's records (``plan`` groups ``[g0, g1)``) and new headers into this thread's piece
        buffer and write it at its place in the segment."""
        base = int(dst[0])
        length = int(dst[-1] + aligned[-1]) - base
        buf = files.buffer(length)
        if plan is None:
            self._place(buf, base, buffers, src, off, aligned, total, dst, new)
        else:
            run_plan(plan, buf, base >> 3, buffers, g0, g1)
            block_view(buf, HEADER_SIZE)[(dst - base) >> 3] = new.view(RAW_HEADER)
        files.write(seg_start, buf, length, base)

    # --- publishing -----------------------------------------------------------------------------------------

    def _header(self) -> bytes:
        return encode_segment_header(SegmentHeader(FORMAT_VERSION, FLAG_MERGED, MERGED_NODE_ID, self.size,
                                                   self._seg_start, self.system_id, self._seg_prev, self.epoch))

    def _open_incremental(self, existing: bool) -> None:
        path = self.directory / segment_name(self._seg_start)
        if not existing and not path.exists():
            create_segment_file(self.directory, SegmentHeader(FORMAT_VERSION, FLAG_MERGED, MERGED_NODE_ID, self.size,
                                                              self._seg_start, self.system_id, self._seg_prev,
                                                              self.epoch))
            self._inc_segments.append(path.name)
        self._fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))

    def flush(self) -> int:
        """Incremental mode: write and (if ``fsync``) sync what was appended; return the durable LSN."""
        if not self.incremental:
            return self._seg_start + self._written
        assert self._fd is not None
        if self._pos > self._written:
            write_all(self._fd, memoryview(self._buf)[self._written: self._pos], self._written)
            self._inc_bytes += self._pos - self._written
            self._written = self._pos
            if self.fsync:
                os.fdatasync(self._fd)
        self._durable = self._seg_start + self._written
        return self._durable

    def _seal(self) -> None:
        """The current segment is full: publish it and start the next one."""
        if self._files is None:
            self.flush()
            assert self._fd is not None
            os.close(self._fd)
            self._fd = None
        else:
            self._publish()
        self._seg_start += self.size
        self._seg_prev = self._last_lsn
        self._pos = self._written = SEGMENT_HEADER_SIZE
        if self.incremental:
            self._open_incremental(existing=False)
            self._durable = self._seg_start + SEGMENT_HEADER_SIZE

    def _publish(self) -> None:
        """Bulk mode: seal the current segment (after the pieces already handed to the write-behind thread)."""
        assert self._files is not None
        job = functools.partial(self._files.seal, self._seg_start, self._header(), self._pos)
        if self._behind is None:
            job()
        else:
            self._behind.seal(job)
        self._sealed += 1

    def close(self) -> None:
        """Publish the last (partial) segment.  A stream with no record still gets its first segment."""
        if self._files is None:
            self.flush()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        else:
            if self._pos > SEGMENT_HEADER_SIZE or not self._sealed:
                self._publish()
            if self._behind is not None:
                self._behind.close()
        if self.fsync:
            fsync_dir(self.directory)

    def abort(self) -> None:
        """Error path: stop without publishing the partial segment (bulk: its ``.tmp`` file is removed; whole
        segments already sealed are published, so the output stays a prefix of the stream)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._behind is not None:
            self._behind.close(cancel=True)
        if self._files is not None:
            self._files.abort()


def _clipped(buffers: Sequence[Buf], src: npt.NDArray[np.int32], off: npt.NDArray[np.int64],
             aligned: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_] | None:
    """Which records' padding runs past the end of their buffer (None: none)."""
    src_len = np.fromiter((len(b) for b in buffers), dtype=np.int64, count=len(buffers))
    clipped = off + aligned > src_len[src]
    return clipped if clipped.any() else None


def empty_headers() -> npt.NDArray[np.void]:
    return np.zeros(0, dtype=HEADER_DTYPE)
