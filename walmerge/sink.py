"""Writing a merged stream: re-serialise already-validated records into merged segments in bulk.

The sink takes records as numpy header arrays plus (buffer, offset) pairs, never as Python objects.  It places
them exactly like ``WalWriter`` would (8-aligned, never spanning segments, each segment opening with a 64-byte
header), so output LSNs depend only on the order and sizes of the records: a batch merge and a follow-mode
merge of the same input give the same LSNs.  New ``lsn``/``prev_lsn``/``durable_lsn`` fields are set on the
header arrays and folded into the old CRCs (``fold_crcs``): the payload is never re-read, and a record that
arrived damaged stays detectably damaged instead of being laundered by a fresh CRC.

Copying: record bytes move with one ``memoryview`` slice assignment per *run* (records adjacent both in the
source buffer and in the output), not per record.  Measured here, that beats a numpy word gather
(``np.repeat`` + ``np.take`` over u64 words) by about five times on realistically interleaved input, because
the gather builds and reads an index word for every 8 data bytes; see ``muheam/bench/walmerge.py``.

Two ways to publish segments:

* bulk (``incremental=False``, the batch merge): a segment is built in memory and written once, to
  ``<name>.tmp``, fsynced, renamed.  A segment with its final name is therefore complete, so every record can
  claim ``durable_lsn`` = its own LSN (the reader then calls any later damage corruption, never a torn tail).
* incremental (follow mode): the segment file is created zero-filled first (like ``WalWriter``) and records are
  ``pwrite``-appended on ``flush``; ``durable_lsn`` is the stream position fsynced before the record was added.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import numpy.typing as npt

from walmerge.errors import RecordTooLarge
from walmerge.crcfast import fold_fields
from walmerge.record import HEADER_DTYPE, HEADER_SIZE
from walmerge.segment import (
    FLAG_MERGED, FORMAT_VERSION, MERGED_NODE_ID, SEGMENT_HEADER_SIZE, SegmentHeader, check_segment_size,
    create_segment_file, encode_segment_header, fsync_dir, segment_name, write_all,
)

Buf = bytes | bytearray | memoryview
_HEADER_WORDS = np.arange(HEADER_SIZE // 8, dtype=np.int64)


class MergedSink:
    """Appends records to a merged stream directory, starting at ``start_lsn`` (a record boundary).

    ``prev_lsn`` is the LSN of the last record before ``start_lsn`` (0 for a new stream).  For a stream that
    already has segments, the segment holding ``start_lsn`` must exist (incremental mode) and is continued.
    """

    def __init__(self, directory: Path, *, system_id: int, segment_size: int, epoch: int = 0,
                 start_lsn: int | None = None, prev_lsn: int = 0, incremental: bool = False,
                 fsync: bool = True) -> None:
        check_segment_size(segment_size)
        self.directory = directory
        self.system_id = system_id
        self.size = segment_size
        self.epoch = epoch
        self.incremental = incremental
        self.fsync = fsync
        self.segments: list[str] = []
        self.bytes_written = 0
        self.records = 0
        self._buf = bytearray(segment_size)
        self._mv = memoryview(self._buf)
        self._u64 = np.frombuffer(self._buf, dtype="<u8")
        self._last_lsn = prev_lsn
        self._fd: int | None = None
        directory.mkdir(parents=True, exist_ok=True)
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
        holds record ``i`` at byte offset ``src_off[i]`` with zero padding up to the next 8-byte boundary.
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
        views = [memoryview(b) for b in buffers]
        i = 0
        while i < n:
            room = self.size - self._pos
            j = int(np.searchsorted(end_unaligned, cum[i] + room, side="right"))
            if j == i:
                self._seal()
                continue
            rel = cum[i:j] - cum[i]
            dst = self._pos + rel
            lsns = (dst + self._seg_start).astype(np.uint64)
            out_lsn[i:j] = lsns
            self._copy(views, src[i:j], src_off[i:j], aligned[i:j], total[i:j], dst)
            self._put_headers(headers[i:j], lsns, dst)
            self._pos += int(cum[j] - cum[i])
            self._last_lsn = int(lsns[-1])
            i = j
        self.records += n
        return out_lsn

    def _copy(self, views: list[memoryview], src: npt.NDArray[np.int32], off: npt.NDArray[np.int64],
              aligned: npt.NDArray[np.int64], total: npt.NDArray[np.int64], dst: npt.NDArray[np.int64]) -> None:
        """Copy record bytes run by run (a run: consecutive in the source buffer and in the output)."""
        n = len(src)
        brk = np.ones(n, dtype=bool)
        if n > 1:
            brk[1:] = (src[1:] != src[:-1]) | (off[1:] != off[:-1] + aligned[:-1])
        starts = np.flatnonzero(brk)
        ends = np.empty_like(starts)
        ends[:-1] = starts[1:]
        ends[-1] = n
        last = ends - 1
        # runs are copied with their records' zero padding (validated by the reader); a source buffer that ends
        # inside the last padding (a torn tail cut there) gets the missing zeros written explicitly
        src_len = np.fromiter((len(v) for v in views), dtype=np.int64, count=len(views))
        o0 = off[starts]
        want = off[last] + aligned[last] - o0
        have = np.minimum(want, src_len[src[starts]] - o0)
        d0 = dst[starts]
        # runs are back to back in the output: one join (a C loop of memcpy) builds the whole region
        joined = b"".join([views[s][o: o + ln] for s, o, ln in zip(src[starts].tolist(), o0.tolist(),
                                                                     have.tolist())])
        a0 = int(d0[0])
        self._mv[a0: a0 + len(joined)] = joined
        if len(joined) != int(want.sum()):  # a clipped padding shifted what follows: place runs one by one
            mv = self._mv
            for s, o, d, ln, w in zip(src[starts].tolist(), o0.tolist(), d0.tolist(), have.tolist(), want.tolist()):
                mv[d: d + ln] = views[s][o: o + ln]
                mv[d + ln: d + w] = bytes(w - ln)

    def _put_headers(self, old: npt.NDArray[np.void], lsns: npt.NDArray[np.uint64],
                     dst: npt.NDArray[np.int64]) -> None:
        new = old.copy()
        new["lsn"] = lsns
        new["prev_lsn"][0] = self._last_lsn
        new["prev_lsn"][1:] = lsns[:-1]
        if self.incremental:
            new["durable_lsn"] = self._durable
        else:
            new["durable_lsn"] = lsns
        new["crc"] = fold_fields(old["crc"], old, new)
        words = np.ascontiguousarray(new).view("<u8").reshape(-1, HEADER_SIZE // 8)
        self._u64[(dst // 8)[:, None] + _HEADER_WORDS] = words

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
            self.segments.append(path.name)
        self._fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))

    def flush(self) -> int:
        """Incremental mode: write and (if ``fsync``) sync what was appended; return the durable LSN."""
        if not self.incremental:
            return self._seg_start + self._written
        assert self._fd is not None
        if self._pos > self._written:
            write_all(self._fd, self._mv[self._written: self._pos], self._written)
            self.bytes_written += self._pos - self._written
            self._written = self._pos
            if self.fsync:
                os.fdatasync(self._fd)
        self._durable = self._seg_start + self._written
        return self._durable

    def _seal(self) -> None:
        """The current segment is full: publish it and start the next one."""
        if self.incremental:
            self.flush()
            assert self._fd is not None
            os.close(self._fd)
            self._fd = None
        else:
            self._write_bulk()
        self._seg_start += self.size
        self._seg_prev = self._last_lsn
        self._pos = self._written = SEGMENT_HEADER_SIZE
        if self.incremental:
            self._open_incremental(existing=False)
            self._durable = self._seg_start + SEGMENT_HEADER_SIZE

    def _write_bulk(self) -> None:
        self._mv[self._pos:] = bytes(self.size - self._pos)
        self._mv[:SEGMENT_HEADER_SIZE] = self._header()
        name = segment_name(self._seg_start)
        tmp = self.directory / (name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            write_all(fd, self._mv, 0)
            if self.fsync:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.directory / name)
        self.segments.append(name)
        self.bytes_written += self.size

    def close(self) -> None:
        """Publish the last (partial) segment.  A stream with no record still gets its first segment."""
        if self.incremental:
            self.flush()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        elif self._pos > SEGMENT_HEADER_SIZE or not self.segments:
            self._write_bulk()
        if self.fsync:
            fsync_dir(self.directory)


def empty_headers() -> npt.NDArray[np.void]:
    return np.zeros(0, dtype=HEADER_DTYPE)
