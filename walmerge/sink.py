"""The one writer of merged (single-node-format) segments: the bulk merge, the follower and a subscriber's copy
of a published stream all write through ``MergedSink``, so their files are byte for byte alike.

Why one: the bulk merge, the follower (``walmerge.follow``) and ``muheam walmerge --subscribe`` each had their own
writer, with their own placement and segment creation, kept equal only by tests.  Here, shared by both modes:

* placement (``place_records``): 8-aligned, never spanning segments, each segment opening with a 64-byte header,
  exactly as ``WalWriter`` places a node's records; output LSNs depend only on the order and sizes of the
  records, so a bulk merge and a follow-mode merge of the same input give the same LSNs;
* the new headers (``rewrite_headers``): new ``lsn``/``prev_lsn`` and ``durable_lsn`` = the record's own LSN,
  folded into the old CRCs (``fold_fields``): the payload is never re-read, and a record that arrived damaged
  stays detectably damaged instead of being laundered by a fresh CRC;
* segment headers (flag "merged", node ``MERGED_NODE_ID``), the record-size limit, the directory sync at close.

Two ways to put bytes in files, because the two uses need different things:

* **Bulk** (``incremental=False``, the batch merge; the fast path): records are taken as numpy header arrays
  plus (buffer, offset) pairs, never as Python objects.  The output is built a *piece* (about ``PIECE`` bytes of
  whole records) at a time in a small buffer, by the compiled ``jit.build_piece`` or the numpy block copy of
  ``walmerge.blockcopy``, and ``pwrite``n into a preallocated ``<segment>.tmp`` (by a write-behind thread) while
  it is still in the CPU cache; a full segment gets its header, zeros to its size, (fsync,) and its final name.
  A segment with its final name is therefore complete, so every record can claim ``durable_lsn`` = its own LSN
  (the reader then calls any later damage corruption, never a torn tail).  On an error the ``.tmp`` file is
  removed (``abort``): published segments stay a prefix of the stream.
* **Incremental** (``incremental=True``: the follower, a subscriber's copy): records must be readable as soon as
  a poll returns, so each segment file is created zero-filled under its final name first (like ``WalWriter``)
  and records are ``pwrite``n run by run on ``flush`` (fdatasync'ed with ``fsync``).  ``add(lsn, prev_lsn,
  data)`` takes an already re-serialised record at its merged LSN (the follower made it, or the publisher
  sent it); ``append`` takes the bulk form.  A crash inside a flush can leave a hole that the reader calls
  corruption (records claim their own LSN durable, as in bulk output): the follower and the copy cut their
  output back to its valid prefix when they restart (``follow.cut_output``).
"""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import functools
import os
import threading
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import numpy.typing as npt

from walmerge import jit
from walmerge.blockcopy import RAW_HEADER, BlockPlan, Buf, block_plan, block_view, copy_records, run_plan
from walmerge.crcfast import fold_fields
from walmerge.errors import RecordTooLarge
from walmerge.record import HEADER_DTYPE, HEADER_SIZE, align8
from walmerge.segment import (
    FLAG_MERGED, FORMAT_VERSION, MERGED_NODE_ID, SEGMENT_HEADER_SIZE, SegmentHeader, check_segment_size,
    create_segment_file, encode_segment_header, fsync_dir, segment_name, write_all, zero_fill,
)

PIECE = 4 << 20
"""Bulk mode builds and writes about this many bytes of records at a time (measured here: 1 MiB pieces pay too
much per-call numpy overhead, a whole 16 MiB segment falls out of the cache before it is written)."""
WRITE_DEPTH = 8
"""Pieces (and seals) handed to the write-behind thread and not yet done, at most: enough to ride out uneven
windows, few enough that the input they keep mapped stays small."""
PIECE_SLACK = 64 << 10
"""A piece is the records starting in a ``PIECE``-sized stretch, so it ends up to one record later."""


def place_records(pos: int, total: npt.NDArray[np.int64], size: int) -> npt.NDArray[np.int64]:
    """Merged LSNs of records of ``total`` bytes placed from stream position ``pos`` on (the end of the previous
    record, or a segment start) in segments of ``size`` bytes: 8-aligned, never spanning a segment, each segment
    starting after its header.  The one placement rule of every merged stream (and of ``WalWriter``)."""
    n = len(total)
    lsns = np.empty(n, dtype=np.int64)
    if n == 0:
        return lsns
    if int(total.max()) > size - SEGMENT_HEADER_SIZE:
        raise RecordTooLarge(f"a record of {int(total.max())} bytes does not fit in output segments of "
                             f"{size} bytes; use a larger output segment size")
    cum = np.zeros(n + 1, dtype=np.int64)
    np.cumsum((total + 7) & ~7, out=cum[1:])
    end_unaligned = cum[:-1] + total  # strictly increasing
    i = 0
    while i < n:  # one turn per output segment
        if pos % size == 0:
            pos += SEGMENT_HEADER_SIZE
        room = size - pos % size
        j = int(np.searchsorted(end_unaligned, cum[i] + room, side="right"))
        if j == i:
            pos += room + SEGMENT_HEADER_SIZE
            continue
        lsns[i:j] = pos + cum[i:j] - cum[i]
        pos += int(cum[j] - cum[i])
        i = j
    return lsns


def rewrite_headers(old: npt.NDArray[np.void], lsns: npt.NDArray[np.int64] | npt.NDArray[np.uint64],
                    prev_lsn: int) -> npt.NDArray[np.void]:
    """Copies of ``old`` at their merged LSNs: chained from ``prev_lsn``, each claiming itself durable, CRCs
    folded (the payloads are not read)."""
    new = old.view(RAW_HEADER).copy().view(HEADER_DTYPE)
    new["lsn"] = lsns
    new["prev_lsn"][0] = prev_lsn
    new["prev_lsn"][1:] = lsns[:-1]
    new["durable_lsn"] = lsns
    new["crc"] = fold_fields(old["crc"], old, new)
    return new


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
    """Writes a merged stream into ``directory`` (see the module docstring for the two modes).

    Bulk: the directory must hold no segment; ``append`` the records in stream order, then ``close`` (or
    ``abort`` on an error).  Incremental: ``add``/``append`` at the end of what the directory holds (the caller
    cuts it to a record boundary first), ``flush`` after each batch, ``close`` at the end; ``open_segment`` makes
    the first segment of an empty stream, which every merged stream has, even without a record.
    """

    def __init__(self, directory: Path, *, system_id: int, segment_size: int, epoch: int = 0,
                 incremental: bool = False, fsync: bool = True, piece: int = PIECE, write_threads: int = 0) -> None:
        check_segment_size(segment_size)
        self.directory = directory
        self.system_id = system_id
        self.size = segment_size
        self.epoch = epoch
        self.incremental = incremental
        self.fsync = fsync
        self.piece = min(piece, segment_size)
        self.records = 0
        self._last_lsn = 0
        self._sealed = 0
        directory.mkdir(parents=True, exist_ok=True)
        self._files = None if incremental else _SegmentFiles(directory, segment_size, fsync=fsync, piece=self.piece)
        self._behind = _WriteBehind(write_threads, WRITE_DEPTH) if write_threads > 0 and not incremental else None
        self._seg_start = 0
        self._seg_prev = 0
        self._pos = SEGMENT_HEADER_SIZE  # next record's offset in the current segment
        # incremental: the open segment file and the run of records added since the last flush
        self._fd: int | None = None
        self._fd_seg = -1
        self._unwritten = bytearray()
        self._unwritten_at = 0
        self._inc_segments: list[str] = []
        self._inc_bytes = 0

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
        if n == 0:
            return np.empty(0, dtype=np.uint64)
        total = headers["total_len"].astype(np.int64)
        out_lsn = place_records(self.end_lsn, total, self.size).astype(np.uint64)
        aligned = (total + 7) & ~7
        src_off = np.asarray(src_off, dtype=np.int64)
        seg = out_lsn // np.uint64(self.size)
        cuts = (np.flatnonzero(seg[1:] != seg[:-1]) + 1).tolist()
        for i, j in zip([0] + cuts, cuts + [n]):  # one turn per output segment
            if int(seg[i]) * self.size != self._seg_start:
                self._seal()
            lsns = out_lsn[i:j]
            dst = lsns.astype(np.int64) - self._seg_start
            if self._files is None:
                self._add_run(int(lsns[0]), self._build(buffers, src[i:j], src_off[i:j], aligned[i:j], total[i:j],
                                                        dst, rewrite_headers(headers[i:j], lsns, self._last_lsn)))
            else:
                self._write_pieces(self._files, list(buffers), headers[i:j], src[i:j], src_off[i:j], aligned[i:j],
                                   total[i:j], dst, lsns)
            self._pos = int(dst[-1] + aligned[j - 1])
            self._last_lsn = int(lsns[-1])
        self.records += n
        return out_lsn

    def _build(self, buffers: Sequence[Buf], src: npt.NDArray[np.int32], off: npt.NDArray[np.int64],
               aligned: npt.NDArray[np.int64], total: npt.NDArray[np.int64], dst: npt.NDArray[np.int64],
               new: npt.NDArray[np.void]) -> bytearray:
        """Incremental ``append``: the records of one segment run as one block of bytes."""
        base = int(dst[0])
        buf = bytearray(int(dst[-1] + aligned[-1]) - base)
        self._place(buf, base, buffers, src, off, aligned, total, dst, new)
        return buf

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
        if clipped is None and jit.use_compiled():
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
            new = rewrite_headers(headers, lsns, self._last_lsn)
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

    # --- incremental: records readable as soon as they are flushed ------------------------------------------

    def add(self, lsn: int, prev_lsn: int, data: bytes) -> None:
        """Incremental: a re-serialised record (``total_len`` bytes, header included) at merged LSN ``lsn``,
        right after the previous one; ``prev_lsn`` is its header's, which a new segment's header repeats."""
        if self._files is not None:
            raise ValueError("add() is for an incremental sink; the bulk sink takes append()")
        self._add_run(lsn, data, prev_lsn)
        self._last_lsn = lsn
        self.records += 1

    def _add_run(self, lsn: int, data: bytes | bytearray, prev_lsn: int | None = None) -> None:
        seg = lsn - lsn % self.size
        if seg != self._fd_seg:
            self.open_segment(seg, self._last_lsn if prev_lsn is None else prev_lsn)
        if not self._unwritten:
            self._unwritten_at = lsn - seg
        self._unwritten += data
        self._unwritten += bytes(align8(len(data)) - len(data))
        self._pos = self._unwritten_at + len(self._unwritten)

    def open_segment(self, seg: int, prev_lsn: int) -> None:
        """Incremental: continue in segment ``seg`` (created zero-filled with its header if it is not there;
        ``prev_lsn`` is the LSN of the last record before it)."""
        self.flush()
        self._close_fd()
        path = self.directory / segment_name(seg)
        if not path.exists():
            create_segment_file(self.directory, SegmentHeader(FORMAT_VERSION, FLAG_MERGED, MERGED_NODE_ID, self.size,
                                                              seg, self.system_id, prev_lsn, self.epoch))
            self._inc_segments.append(path.name)
            self._inc_bytes += self.size
        self._fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        self._fd_seg = self._seg_start = seg
        self._seg_prev = prev_lsn
        self._pos = SEGMENT_HEADER_SIZE

    def flush(self) -> int:
        """Incremental: write and (if ``fsync``) sync what was added; return the end of the stream written."""
        if self._unwritten and self._fd is not None:
            write_all(self._fd, memoryview(self._unwritten), self._unwritten_at)
            self._unwritten = bytearray()
            if self.fsync:
                os.fdatasync(self._fd)
        return self.end_lsn

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._fd_seg = -1

    # --- bulk: publishing whole segments --------------------------------------------------------------------

    def _header(self) -> bytes:
        return encode_segment_header(SegmentHeader(FORMAT_VERSION, FLAG_MERGED, MERGED_NODE_ID, self.size,
                                                   self._seg_start, self.system_id, self._seg_prev, self.epoch))

    def _seal(self) -> None:
        """The current segment is full: publish it (bulk) and start the next one."""
        if self._files is None:
            self.open_segment(self._seg_start + self.size, self._last_lsn)
            return
        self._publish()
        self._seg_start += self.size
        self._seg_prev = self._last_lsn
        self._pos = SEGMENT_HEADER_SIZE

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
        """Bulk: publish the last (partial) segment; a stream with no record still gets its first segment.
        Incremental: flush and close the open segment."""
        if self._files is None:
            self.flush()
            self._close_fd()
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
        self._unwritten = bytearray()
        self._close_fd()
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
