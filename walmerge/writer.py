"""WAL writer: appends records to the current segment and makes them durable with group commit.

``append`` writes the record into the (zero-filled, preallocated) segment file at once with ``pwrite``, so a
process crash loses nothing that ``append`` returned; only ``flush`` makes records survive a power loss.

Group commit (leader/follower): ``flush(lsn)`` returns at once if ``lsn`` is already durable.  Otherwise, if
no fsync is running, the caller becomes the leader: it fsyncs everything written so far (not just its own
record), publishes the new durable LSN and wakes all waiters.  If an fsync is running, the caller waits for it;
woken, it finds its LSN durable and returns, or (its record came after the running fsync started) becomes the
next leader, covering everyone who appended meanwhile.  One fsync therefore covers every commit that arrived while the
previous fsync was running.  ``fsync_count`` counts every fsync the writer issues (benchmarks report fsyncs per
commit); ``flush_count`` only those done by ``flush`` leaders.

Segment switch: when a record does not fit, the writer fsyncs the old segment, creates the next one (temp
file, zero fill, fsync, rename, directory fsync) and only then writes to it.  The reader relies on this order:
a segment followed by another one was durable in full.

Errors: any failed write, fsync or segment creation raises ``WalWriteError`` and stops the writer (later
appends and flushes raise too).  Records ``flush`` reported durable stay intact; nothing earlier is rewritten.
Retrying an fsync after a failure is unsafe (the kernel may have dropped the dirty pages), so the only way on
is to reopen: a new ``WalWriter`` on the directory re-reads it, resumes after the last valid record and zeroes
whatever torn bytes follow.
"""

from __future__ import annotations

import errno as errno_mod
import os
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Callable

from walmerge.errors import RecordTooLarge, WalCorruption, WalError, WalMismatch, WalWriteError, format_lsn
from walmerge.reader import TornTail, WalReader
from walmerge.record import HEADER_SIZE, LamportSource, align8, encode_record, pack_glsn
from walmerge.segment import (
    DEFAULT_SEGMENT_SIZE, FLAG_MERGED, FORMAT_VERSION, SEGMENT_HEADER_SIZE, SegmentHeader, check_segment_size,
    create_segment_file, decode_segment_header, list_segments, segment_name, write_all, zero_fill,
)


def _datasync(fd: int) -> None:
    """The one place the writer syncs data (a seam for tests that simulate a slow or failing disk)."""
    sync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)
    sync(fd)


class WalWriter:
    """Appends to one stream directory (``<shared>/wal/node-<id>/``).  Thread-safe.

    A node stream (default) stamps every record with ``node_id`` and ``epoch``.  A merged stream
    (``merged=True``, written by the consolidator) takes the origin ``node`` and ``epoch`` per record.
    """

    def __init__(self, directory: str | os.PathLike[str], *, node_id: int, system_id: int, epoch: int,
                 segment_size: int | None = None, merged: bool = False, resume_from: int | None = None) -> None:
        """``resume_from``: the LSN of a record known to be valid (the node's checkpoint): damage found before it
        while looking for the end (recovery no longer needs those records) does not stop the writer, which then
        looks for the end from that record."""
        self.directory = Path(directory)
        self.node_id = node_id
        self.system_id = system_id
        self.epoch = epoch
        self.merged = merged
        self.fsync_count = 0
        self.flush_count = 0
        self.records_appended = 0
        self.torn_at_open: TornTail | None = None
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()
        self._cond = threading.Condition(threading.Lock())
        self._leader = False
        self._contended = False
        """Set once a flush waited for another thread's fsync: from then on a leader yields before its fsync."""
        self._failed: WalWriteError | None = None
        self._closed = False
        self.directory.mkdir(parents=True, exist_ok=True)
        for entry in self.directory.iterdir():
            if entry.name.endswith(".tmp") and len(entry.name) == 20:
                entry.unlink()
        segs = list_segments(self.directory)
        self._last_lsn = 0
        self._last_glsn = 0
        self._last_epoch = 0
        if not segs:
            size = DEFAULT_SEGMENT_SIZE if segment_size is None else segment_size
            check_segment_size(size)
            self._size = size
            self._path = self._create(0, 0)
            self._seg_start = 0
            pos = SEGMENT_HEADER_SIZE
        else:
            pos = self._resume(segs, segment_size, resume_from)
        self._fd = os.open(self._path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        self._pos = pos
        self._tail = (self._fd, pos)
        try:
            _datasync(self._fd)
        except OSError as e:
            os.close(self._fd)
            raise self._error("fsync", self._path, pos, e) from e
        self.fsync_count += 1
        self._flushed = pos
        if epoch < self._last_epoch and not merged:
            os.close(self._fd)
            raise ValueError(f"epoch {epoch} is lower than the epoch {self._last_epoch} already in the WAL of "
                             f"node {node_id}; a restarted node needs a new, larger epoch")
        self._max_total = self._size - SEGMENT_HEADER_SIZE

    def _flags(self) -> int:
        return FLAG_MERGED if self.merged else 0

    def _create(self, start: int, prev_lsn: int) -> Path:
        header = SegmentHeader(FORMAT_VERSION, self._flags(), self.node_id, self._size, start, self.system_id,
                               prev_lsn, self.epoch)
        path = create_segment_file(self.directory, header)
        self.fsync_count += 2
        return path

    def _resume(self, segs: list[tuple[int, Path]], segment_size: int | None, resume_from: int | None) -> int:
        with open(segs[0][1], "rb") as f:
            first = decode_segment_header(f.read(SEGMENT_HEADER_SIZE), segs[0][1], node_id=self.node_id,
                                          system_id=self.system_id)
        if segment_size is not None and segment_size != first.segment_size:
            raise WalMismatch(f"the WAL in {self.directory} uses segment size {first.segment_size}, not "
                              f"{segment_size}", path=segs[0][1])
        if first.merged != self.merged:
            raise WalMismatch(f"the WAL in {self.directory} is {'' if first.merged else 'not '}a merged stream",
                              path=segs[0][1])
        self._size = first.segment_size
        # Read from the newest segment that holds a record (usually the last one): enough to find the end and
        # the chain/GLSN/epoch to continue from.  Full verification is recovery's job.
        for k in range(len(segs) - 1, -1, -1):
            reader = WalReader(self.directory, node_id=self.node_id, system_id=self.system_id,
                               start_lsn=segs[k][0])
            try:
                for _ in reader.batches():
                    pass
            except WalCorruption as e:
                if resume_from is None or not segs[k][0] <= e.lsn < resume_from:
                    raise
                # damage before a record known to be valid: the end is found from that record, whose prev-LSN
                # the chain goes on from (with no record there, nothing tells where the chain stood: refused)
                reader = WalReader(self.directory, node_id=self.node_id, system_id=self.system_id,
                                   start_lsn=resume_from)
                for _ in reader.batches():
                    pass
                if reader.last is None:
                    raise
            if reader.last is not None or k == 0:
                break
        self._seg_start, self._path = segs[-1]
        if reader.last is not None:
            self._last_lsn = reader.last.lsn
            self._last_glsn = reader.last.glsn
            self._last_epoch = reader.last.epoch
        else:
            with open(self._path, "rb") as f:
                hdr = decode_segment_header(f.read(SEGMENT_HEADER_SIZE), self._path, node_id=self.node_id,
                                            system_id=self.system_id)
            self._last_lsn = hdr.prev_lsn
        assert reader.end_lsn is not None
        end = reader.end_lsn
        self.torn_at_open = reader.torn
        if reader.torn is not None:
            fd = os.open(self._path, os.O_RDWR)
            try:
                zero_fill(fd, end - self._seg_start, self._size)
                os.fsync(fd)
                self.fsync_count += 1
            except OSError as e:
                raise self._error("zero the torn tail of", self._path, end, e) from e
            finally:
                os.close(fd)
        return end

    # --- appending ------------------------------------------------------------------------------------------

    def append(self, kind: int, payload: bytes, *, lamport: LamportSource, xid: int = 0,
               node: int | None = None, epoch: int | None = None) -> tuple[int, int]:
        """Append one record; return ``(lsn, end_lsn)``.  Not durable until ``flush(end_lsn)`` returns.

        ``lamport`` may be a callable (e.g. the node's clock tick); it is called under the writer's lock, so
        GLSNs in the stream never decrease.  ``node``/``epoch`` are only for merged streams.
        """
        total = HEADER_SIZE + len(payload)
        if total > self._max_total:
            raise RecordTooLarge(f"record of {total} bytes exceeds the {self._max_total} bytes a WAL segment of "
                                 f"{self._size} bytes can hold; records never span segments")
        if not 0 < kind < 256:
            raise ValueError(f"record kind must be 1..255, got {kind}")
        if (node is not None or epoch is not None) and not self.merged:
            raise ValueError("node/epoch per record are only accepted by a merged-stream writer")
        nd = self.node_id if node is None else node
        ep = self.epoch if epoch is None else epoch
        with self._lock:
            self._check_usable()
            if self._pos - self._seg_start + total > self._size:
                self._switch()
            lam = lamport() if callable(lamport) else lamport
            glsn = pack_glsn(lam, nd)
            if glsn < self._last_glsn:
                raise ValueError(f"GLSN {lam}/{nd} is lower than the previous record's "
                                 f"{self._last_glsn >> 16}/{self._last_glsn & 0xFFFF}; the WAL must stay in "
                                 f"GLSN order (stamp the record under the WAL lock by passing the clock)")
            pos = self._pos
            rec = encode_record(kind=kind, payload=payload, lsn=pos, prev_lsn=self._last_lsn, lamport=lam, node=nd,
                                xid=xid, epoch=ep, durable_lsn=self._flushed)
            try:
                write_all(self._fd, rec, pos - self._seg_start)
            except OSError as e:
                self._failed = self._error("write", self._path, pos, e)
                raise self._failed from e
            self._last_lsn = pos
            self._last_glsn = glsn
            self._pos = align8(pos + total)
            self._tail = (self._fd, self._pos)
            self.records_appended += 1
            return pos, pos + total

    def _switch(self) -> None:
        """Close the current segment durably, then create and enter the next one (caller holds ``_lock``)."""
        with self._io_lock:
            try:
                _datasync(self._fd)
            except OSError as e:
                self._failed = self._error("fsync", self._path, self._pos, e)
                raise self._failed from e
            self.fsync_count += 1
            start = self._seg_start + self._size
            try:
                path = self._create(start, self._last_lsn)
                fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
            except OSError as e:
                self._failed = self._error("create", self.directory / segment_name(start), start, e)
                raise self._failed from e
            os.close(self._fd)
            self._fd, self._path, self._seg_start = fd, path, start
            self._pos = start + SEGMENT_HEADER_SIZE
            self._tail = (fd, self._pos)
            with self._cond:
                self._flushed = self._pos
                self._cond.notify_all()

    # --- durability -----------------------------------------------------------------------------------------

    def flush(self, up_to_lsn: int | None = None) -> int:
        """Make the stream durable at least up to ``up_to_lsn`` (default: everything appended); return the
        durable LSN.  Concurrent callers share fsyncs (group commit, see module docstring)."""
        target = self._tail[1] if up_to_lsn is None else up_to_lsn
        if self._flushed >= target:
            return self._flushed
        with self._cond:
            while True:
                if self._flushed >= target:
                    return self._flushed
                self._check_usable()
                if not self._leader:
                    self._leader = True
                    break
                self._contended = True
                self._cond.wait()  # a leader's fsync is running; it may cover us
        if self._contended:  # let followers woken by the last leader append first, so this fsync covers them too
            time.sleep(0)  # (a writer only ever flushed by one thread, as a node's loop, would only lose the GIL)
        synced = self._flushed
        try:
            with self._io_lock:
                fd, end = self._tail
                if target > end:
                    raise ValueError(f"cannot flush to {format_lsn(target)}: only {format_lsn(end)} was appended")
                try:
                    _datasync(fd)
                except OSError as e:
                    self._failed = self._error("fsync", self._path, end, e)
                    raise self._failed from e
                self.fsync_count += 1
                self.flush_count += 1
                synced = end
        finally:
            with self._cond:
                self._flushed = max(self._flushed, synced)
                self._leader = False
                self._cond.notify_all()
        return self._flushed

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise WalWriteError(f"WAL writer for {self.directory} stopped after an earlier failure: {self._failed} "
                                f"Restart the node (reopen the writer).", path=self._failed.path,
                                lsn=self._failed.lsn, errno=self._failed.errno)
        if self._closed:
            raise WalError(f"WAL writer for {self.directory} is closed")

    def _error(self, what: str, path: Path, lsn: int, e: OSError) -> WalWriteError:
        if e.errno == errno_mod.ENOSPC:
            advice = f"Free space on the file system holding {self.directory}, then restart the node."
        elif what == "fsync":
            advice = ("Do not retry the fsync (the kernel may have dropped the unwritten pages); check the "
                      "storage and restart the node so recovery re-reads the WAL from disk.")
        else:
            advice = "Check the storage (permissions, kernel log), then restart the node."
        return WalWriteError(
            f"could not {what} WAL segment {path} at LSN {format_lsn(lsn)}: {e.strerror or e}. The WAL is intact "
            f"and durable up to LSN {format_lsn(getattr(self, '_flushed', 0))}; later records are in doubt and "
            f"this writer accepts no more records. {advice}", path=path, lsn=lsn, errno=e.errno)

    # --- state ----------------------------------------------------------------------------------------------

    @property
    def end_lsn(self) -> int:
        """Where the next record goes (end of everything appended, 8-aligned)."""
        return self._tail[1]

    @property
    def flushed_lsn(self) -> int:
        return self._flushed

    @property
    def last_lsn(self) -> int:
        return self._last_lsn

    @property
    def last_glsn(self) -> int:
        """Packed GLSN of the last record (seed the node's Lamport clock above ``last_glsn >> 16``)."""
        return self._last_glsn

    @property
    def segment_size(self) -> int:
        return self._size

    @property
    def current_segment(self) -> Path:
        return self._path

    def close(self) -> None:
        """Flush (unless the writer failed) and release the file."""
        if self._closed:
            return
        try:
            if self._failed is None:
                self.flush()
        finally:
            self._closed = True
            os.close(self._fd)

    def __enter__(self) -> "WalWriter":
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
