"""Validating WAL reader, and ``truncate_at`` for an operator who accepts losing a damaged tail.

Every record is checked: length fits the segment, LSN field == its position, prev-LSN chain (also across
segments, through the segment header's ``prev_lsn``), GLSN node == node, GLSN and (node streams) epoch never
decrease, node field == the stream's node, zero padding, CRC-32C.  Every segment header is checked: magic,
version, CRC, system id, node, size, start LSN == file name.  Missing segments are reported by name.

Torn tail or corruption?  When a record at LSN ``X`` fails, the reader decides:

1. A later segment file exists -> ``WalCorruption``.  The writer fsyncs a segment completely before it
   creates the next one, so nothing in an earlier segment can be an unfinished write.
2. A CRC-valid record later in the same segment carries ``durable_lsn > X`` -> ``WalCorruption``.  That
   record was appended after the WAL had been fsynced past ``X``: the damaged bytes were durable.
3. A CRC-valid record follows and the damaged bytes before it hold no zero-filled sector (nor a zero header)
   -> ``WalCorruption``.  Segments are zero-filled before use and a crash leaves unwritten sectors as zeros,
   so non-zero garbage followed by good data is not a crash artefact.
4. Otherwise -> torn tail: the damage is after the last point the WAL proves durable and looks like an
   interrupted write (or nothing valid follows).  Reading stops cleanly; ``torn`` says where and what was
   dropped (including valid-looking records after the hole, which were never fsynced: out-of-order page
   write-back after a power loss produces exactly that).

Limit of rule 3: a damaged record whose payload itself contains 512 aligned zero bytes, in the region not yet
proven durable, is classified as torn.  Acknowledged commits are protected by rule 2 as soon as any later
record is appended after their flush.
"""

from __future__ import annotations

import mmap
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import numpy.typing as npt

from walmerge.errors import WalCorruption, WalError, WalMissingSegment, format_lsn
from walmerge.jit import scan_clean
from walmerge.record import Record, align8, record_from
from walmerge.scan import END, Expect, looks_torn, scan_headers, valid_records_after, validate
from walmerge.segment import (
    SEGMENT_HEADER_SIZE, SegmentHeader, decode_segment_header, fsync_dir, list_segments, segment_name,
    zero_tail,
)


@dataclass(frozen=True)
class TornTail:
    """Where a cleanly stopped read ended and what it dropped (not an error; worth a log line)."""

    lsn: int
    path: Path
    offset: int
    reason: str
    valid_records_dropped: int
    nonzero_bytes_dropped: int

    def __str__(self) -> str:
        return (f"torn WAL tail at LSN {format_lsn(self.lsn)} ({self.path.name} offset {self.offset}): "
                f"{self.reason}; dropped {self.nonzero_bytes_dropped} non-zero bytes, "
                f"{self.valid_records_dropped} unsynced valid-looking records")


@dataclass(frozen=True)
class ValidatedSegment:
    """The validated records of one segment: its bytes + numpy headers/offsets (the merge's input).  ``data`` is
    the file's bytes, or a read-only map of the file (``WalReader.segments(mapped=True)``)."""

    path: Path
    header: SegmentHeader
    data: bytes | memoryview
    offsets: npt.NDArray[np.int64]
    headers: npt.NDArray[np.void]

    def records(self) -> Iterator[Record]:
        for off in self.offsets.tolist():
            yield record_from(self.data, off)


@dataclass(frozen=True)
class SegmentBatch(ValidatedSegment):
    """A ``ValidatedSegment`` read into ``bytes`` (what ``WalReader.batches`` yields)."""

    data: bytes


@dataclass(frozen=True)
class LastRecord:
    lsn: int
    end_lsn: int
    glsn: int
    epoch: int


def read_segment(path: Path) -> memoryview:
    """A segment file's bytes, read into a numpy buffer: numpy asks the kernel for huge pages for large arrays,
    so a 16 MiB segment costs a handful of page faults instead of four thousand (``bytes`` of that size come
    from a fresh ``mmap`` on every read, and on a virtual machine each fault is several microseconds)."""
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        buf = np.empty(size, np.uint8)
        got = f.readinto(buf.data) or 0
        while got < size:
            more = f.readinto(buf.data[got:])
            if not more:
                break
            got += more
    buf.flags.writeable = False
    return buf.data[:got]


class WalReader:
    """Read and verify one WAL stream directory.

    Iterate it (``for rec in reader``) or use ``batches()``.  Valid records are yielded before any
    ``WalCorruption`` is raised.  After a complete read: ``end_lsn`` is the LSN just past the valid stream
    (where the next record would go), ``last`` describes the last valid record, ``torn`` is set if the read
    stopped at a torn tail.  ``stop_lsn`` stops before the first record at or after it (nothing later is
    checked).  ``start_lsn`` must be a record start or a segment start; by default the first segment present.
    ``compiled``: check clean segments with the compiled walk (``walmerge.jit``; the bulk merge uses it, the
    nodes do not, to keep numba out of their start-up); the answers are the same.
    """

    def __init__(self, directory: str | os.PathLike[str], *, node_id: int, system_id: int,
                 start_lsn: int | None = None, stop_lsn: int | None = None, verify_crc: bool = True,
                 compiled: bool = False) -> None:
        self.directory = Path(directory)
        self.node_id = node_id
        self.system_id = system_id
        self.start_lsn = start_lsn
        self.stop_lsn = stop_lsn
        self.verify_crc = verify_crc
        self.compiled = compiled
        self.segment_size: int | None = None
        self.end_lsn: int | None = None
        self.last: LastRecord | None = None
        self.torn: TornTail | None = None
        self.records_read = 0

    def __iter__(self) -> Iterator[Record]:
        for batch in self.batches():
            yield from batch.records()

    def read_all(self) -> list[Record]:
        return list(self)

    def batches(self) -> Iterator[SegmentBatch]:
        for seg in self.segments():
            assert isinstance(seg, SegmentBatch)
            yield seg

    def segments(self, *, mapped: bool = False, arrays: bool = False) -> Iterator[ValidatedSegment]:
        """Like ``batches``; ``mapped``: map complete segment files read-only instead of reading them
        (``map_segment``), saving a copy of every byte.  Every check is the same.  The last segment of the
        stream, which a live writer may still be filling, and any file not of full segment size are read.
        ``arrays``: read them into numpy buffers (``read_segment``) rather than ``bytes``."""
        segs = list_segments(self.directory) if self.directory.is_dir() else []
        if not segs:
            self.end_lsn = self.start_lsn or 0
            return
        with open(segs[0][1], "rb") as f:
            first = decode_segment_header(f.read(SEGMENT_HEADER_SIZE), segs[0][1],
                                          node_id=self.node_id, system_id=self.system_id)
        size = self.segment_size = first.segment_size
        idx = 0
        if self.start_lsn is not None:
            want = self.start_lsn - self.start_lsn % size
            starts = [s for s, _ in segs]
            if want in starts:
                idx = starts.index(want)
            elif want == segs[-1][0] + size and self.start_lsn == want:
                self.end_lsn = want + SEGMENT_HEADER_SIZE
                return
            else:
                raise WalMissingSegment(path=self.directory / segment_name(want), lsn=self.start_lsn)
        expect = Expect(None, 0, 0)
        for i in range(idx, len(segs)):
            start, path = segs[i]
            if i > idx and start != segs[i - 1][0] + size:
                missing = segs[i - 1][0] + size
                assert self.end_lsn is not None
                raise WalMissingSegment(path=self.directory / segment_name(missing), lsn=self.end_lsn)
            if self.stop_lsn is not None and start + SEGMENT_HEADER_SIZE > self.stop_lsn and i > idx:
                return
            last_seg = i == len(segs) - 1
            mv = map_segment(path, size) if mapped and not last_seg else None
            data: bytes | memoryview = mv if mv is not None else read_segment(path) if arrays else path.read_bytes()
            hdr = decode_segment_header(data, path, node_id=self.node_id, system_id=self.system_id,
                                        segment_size=size)
            if not last_seg and len(data) != size:
                raise WalCorruption(f"segment file is {len(data)} bytes, expected {size} (truncated) and later "
                                    f"segments exist", path=path, offset=len(data), lsn=start + len(data))
            off0 = SEGMENT_HEADER_SIZE
            if i == idx and self.start_lsn is not None and self.start_lsn > start + SEGMENT_HEADER_SIZE:
                off0 = self.start_lsn - start
            elif expect.prev_lsn is None:
                expect = expect._replace(prev_lsn=hdr.prev_lsn)
            elif hdr.prev_lsn != expect.prev_lsn:
                prev_path = segs[i - 1][1]
                assert self.end_lsn is not None
                raise WalCorruption(
                    f"next segment {path.name} says the last record before it is at LSN "
                    f"{format_lsn(hdr.prev_lsn)}, but this segment's records end with LSN "
                    f"{format_lsn(expect.prev_lsn)}: records are missing", path=prev_path,
                    offset=self.end_lsn - segs[i - 1][0], lsn=self.end_lsn)
            if self.end_lsn is None or i > idx:
                self.end_lsn = start + off0
            stream_node = None if hdr.merged else self.node_id
            clean = scan_clean(data, start, off0, size, expect, stream_node=stream_node,
                               verify_crc=self.verify_crc) if self.compiled else None
            if clean is not None:
                scan, n_ok, why = clean, len(clean.offsets), ""
            else:
                scan = scan_headers(data, start, off0, size)
                n_ok, why = validate(data, scan, start, expect, stream_node=stream_node, verify_crc=self.verify_crc)
            damage: tuple[int, str] | None = None
            if n_ok < len(scan.offsets):
                damage = int(scan.offsets[n_ok]), why
            elif scan.stop_reason != END:
                damage = scan.stop, scan.stop_reason
            stopped = False
            if self.stop_lsn is not None:
                cut = int(np.searchsorted(scan.offsets + start, self.stop_lsn))
                if cut < n_ok or (damage is not None and start + damage[0] >= self.stop_lsn):
                    n_ok = min(n_ok, cut)
                    damage, stopped = None, True
            if n_ok:
                h = scan.headers[n_ok - 1]
                lsn = int(h["lsn"])
                end = lsn + int(h["total_len"])
                self.last = LastRecord(lsn, end, int(h["glsn"]), int(h["epoch"]))
                self.end_lsn = align8(end)
                expect = Expect(lsn, int(h["glsn"]), int(h["epoch"]))
                self.records_read += n_ok
                if isinstance(data, bytes):
                    yield SegmentBatch(path, hdr, data, scan.offsets[:n_ok], scan.headers[:n_ok])
                else:
                    yield ValidatedSegment(path, hdr, data, scan.offsets[:n_ok], scan.headers[:n_ok])
            if stopped:
                return
            if damage is not None:
                self._classify(data, path, start, size, damage[0], damage[1], last_seg)
                return

    def _classify(self, data: bytes | memoryview, path: Path, start: int, size: int, off: int, reason: str,
                  last_seg: bool) -> None:
        """Apply the torn-tail-or-corruption rules of the module docstring; raise or set ``self.torn``."""
        lsn = start + off
        if not last_seg:
            raise WalCorruption(f"{reason}; later segments exist, so this segment had been fsynced in full",
                                path=path, offset=off, lsn=lsn)
        after = valid_records_after(data, off + 8, start, size)
        for o, durable in after:
            if durable > lsn:
                raise WalCorruption(
                    f"{reason}; the valid record at offset {o} was appended after the WAL had been fsynced up to "
                    f"LSN {format_lsn(durable)}, so the damaged bytes were durable", path=path, offset=off, lsn=lsn)
        if after and not looks_torn(data, off, after[0][0]):
            raise WalCorruption(
                f"{reason}; a valid record follows at offset {after[0][0]} and the damaged bytes are not "
                f"zero-filled, so this is not an interrupted write", path=path, offset=off, lsn=lsn)
        nonzero = int(np.count_nonzero(np.frombuffer(data, np.uint8)[off:]))
        self.torn = TornTail(lsn, path, off, reason, len(after), nonzero)


def map_segment(path: Path, size: int) -> memoryview | None:
    """``path`` mapped read-only (and its pages mapped in at once) if the file is exactly ``size`` bytes, else
    None (then read it).  Segment files are created at full size and never truncated (``truncate_at`` zeroes and
    moves them), so a map of a full-size file cannot run past its end and fault.  The map is unmapped when the
    last reference to the view (or to a numpy array over it) goes away."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        if os.fstat(fd).st_size != size:
            return None
        m = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0), prot=mmap.PROT_READ)
    except OSError:
        return None
    finally:
        os.close(fd)
    return memoryview(m)


def read_wal(directory: str | os.PathLike[str], *, node_id: int, system_id: int) -> list[Record]:
    """All valid records of a stream (small streams and tests; use ``WalReader`` to stream)."""
    return WalReader(directory, node_id=node_id, system_id=system_id).read_all()


@dataclass(frozen=True)
class TruncateReport:
    """What ``truncate_at`` threw away, for the operator's log."""

    lsn: int
    records_discarded: int
    bytes_discarded: int
    segments_removed: list[str]
    saved_to: Path | None

    def __str__(self) -> str:
        return (f"WAL truncated at LSN {format_lsn(self.lsn)}: discarded {self.records_discarded} valid records "
                f"and {self.bytes_discarded} bytes of stream, removed segments {self.segments_removed or 'none'}; "
                f"copies kept in {self.saved_to}")


def _last_nonzero(data: bytes, start: int) -> int:
    nz = np.flatnonzero(np.frombuffer(data, np.uint8)[start:])
    return start + int(nz[-1]) + 1 if len(nz) else start


def truncate_at(directory: str | os.PathLike[str], lsn: int, *, node_id: int, system_id: int,
                keep_copies: bool = True) -> TruncateReport:
    """Discard the stream from ``lsn`` on (``WalCorruption.lsn``), so a node can start after damage.

    Every record before ``lsn`` must be valid and ``lsn`` must be a record boundary.  Discarded data is copied
    to ``<dir>/discarded-<lsn>-<time>/`` first (unless ``keep_copies`` is false); then the rest of the segment
    containing ``lsn`` is zeroed and later segments are moved away.  Only an operator decision should call this,
    and only while no writer has the directory open (the node is stopped).
    """
    directory = Path(directory)
    lsn = align8(lsn)
    segs = list_segments(directory)
    if not segs:
        raise WalError(f"no WAL segments in {directory}")
    with open(segs[0][1], "rb") as f:
        size = decode_segment_header(f.read(SEGMENT_HEADER_SIZE), segs[0][1], node_id=node_id,
                                     system_id=system_id).segment_size
    seg_start = lsn - lsn % size
    if lsn % size == 0:
        seg_start -= size
    elif lsn % size < SEGMENT_HEADER_SIZE:
        raise WalError(f"LSN {format_lsn(lsn)} points into a segment header, not at a record")
    by_start = dict(segs)
    if seg_start not in by_start and lsn % size != 0:
        raise WalMissingSegment(path=directory / segment_name(seg_start), lsn=lsn)
    if seg_start in by_start:
        reader = WalReader(directory, node_id=node_id, system_id=system_id, start_lsn=seg_start, stop_lsn=lsn)
        for _ in reader.batches():
            pass
        end = reader.end_lsn if reader.torn is None else reader.torn.lsn
        if lsn % size and end != lsn:
            raise WalError(f"LSN {format_lsn(lsn)} is not a record boundary (valid records end at "
                           f"{format_lsn(end or 0)}); use the LSN from the WalCorruption message")
    records = 0
    last_end = lsn
    removed = [p for s, p in segs if s >= lsn]
    partial = by_start.get(seg_start) if lsn % size else None
    if partial is not None:
        data = partial.read_bytes()
        off = lsn - seg_start
        records += len(valid_records_after(data, off, seg_start, size))
        last_end = max(last_end, seg_start + _last_nonzero(data, off))
    for p in removed:
        data = p.read_bytes()
        s = int(p.name, 16)
        records += len(valid_records_after(data, SEGMENT_HEADER_SIZE, s, size))
        last_end = max(last_end, s + _last_nonzero(data, SEGMENT_HEADER_SIZE))
    saved: Path | None = None
    if keep_copies and (removed or last_end > lsn):
        saved = directory / f"discarded-{lsn:016X}-{int(time.time())}"
        saved.mkdir(exist_ok=True)
        if partial is not None:
            shutil.copy2(partial, saved / partial.name)
        for p in removed:
            os.replace(p, saved / p.name)
        fsync_dir(saved)
    else:
        for p in removed:
            os.unlink(p)
    if partial is not None:
        zero_tail(partial, lsn - seg_start, size)
    fsync_dir(directory)
    return TruncateReport(lsn, records, last_end - lsn, [p.name for p in removed], saved)
