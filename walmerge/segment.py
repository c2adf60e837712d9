"""WAL segment files: fixed-size files named by their start LSN, each opening with a 64-byte header.

A stream is a directory (``<shared>/wal/node-<id>/``) of segment files.  The LSN is the byte position in the
stream, so segment ``k`` covers LSNs ``[k * size, (k + 1) * size)`` and is named by its start LSN as 16
uppercase hex digits (``0000000001000000``).  Records never span segments: when a record does not fit in what
is left of a segment, the rest stays zero and the record goes after the next segment's header.  That keeps
every segment self-contained (the numpy header scan works on one buffer) at the cost of a record-size limit of
``size - 64`` bytes.

Segment header (little-endian)::

    off size field          meaning
    0   8    magic          b"MUHEAMWL"
    8   2    version        FORMAT_VERSION (1)
    10  2    flags          bit 0: merged stream (records from many nodes)
    12  2    node           node id of the stream (MERGED_NODE_ID for a merged stream)
    14  2    header_size    64 (the first record starts here)
    16  4    segment_size   bytes, power of two, MIN..MAX_SEGMENT_SIZE
    20  4    reserved       0
    24  8    start_lsn      LSN of byte 0 of this file; must match the file name
    32  8    system_id      cluster identity; a foreign WAL is refused
    40  8    prev_lsn       LSN of the last record before this segment (0 = none): links segments
    48  4    epoch          incarnation of the writer that created the segment (diagnostics)
    52  8    reserved       0
    60  4    crc            CRC-32C of bytes 0..59

A new segment is built as ``<name>.tmp`` (header, zero fill, fsync) and renamed into place, then the
directory is fsynced: a segment file with its final name always has a complete header and full size.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from typing import NamedTuple

import google_crc32c

from walmerge.errors import WalCorruption, WalMismatch

MAGIC = b"MUHEAMWL"
FORMAT_VERSION = 1
SEGMENT_HEADER_SIZE = 64
DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
MIN_SEGMENT_SIZE = 4096
MAX_SEGMENT_SIZE = 1 << 30
FLAG_MERGED = 1
MERGED_NODE_ID = 0xFFFF

_SEG = struct.Struct("<8sHHHHIIQQQI8s")
assert _SEG.size == SEGMENT_HEADER_SIZE - 4
_NAME_RE = re.compile(r"^[0-9A-F]{16}$")
_ZERO_CHUNK = bytes(1 << 20)


class SegmentHeader(NamedTuple):
    version: int
    flags: int
    node: int
    segment_size: int
    start_lsn: int
    system_id: int
    prev_lsn: int
    epoch: int

    @property
    def merged(self) -> bool:
        return bool(self.flags & FLAG_MERGED)


def check_segment_size(size: int) -> None:
    if size & (size - 1) or not MIN_SEGMENT_SIZE <= size <= MAX_SEGMENT_SIZE:
        raise ValueError(
            f"WAL segment size must be a power of two between {MIN_SEGMENT_SIZE} and {MAX_SEGMENT_SIZE}, "
            f"got {size}"
        )


def segment_name(start_lsn: int) -> str:
    return f"{start_lsn:016X}"


def node_wal_dir(shared_root: str | os.PathLike[str], node_id: int) -> Path:
    """``<shared>/wal/node-<id>/`` (the layout of DESIGN.md section 6)."""
    return Path(shared_root) / "wal" / f"node-{node_id}"


def encode_segment_header(h: SegmentHeader) -> bytes:
    body = _SEG.pack(MAGIC, h.version, h.flags, h.node, SEGMENT_HEADER_SIZE, h.segment_size, 0,
                     h.start_lsn, h.system_id, h.prev_lsn, h.epoch, bytes(8))
    crc: int = google_crc32c.value(body)
    return body + crc.to_bytes(4, "little")


def decode_segment_header(
    buf: bytes | memoryview, path: Path, *, node_id: int, system_id: int, segment_size: int | None = None
) -> SegmentHeader:
    """Parse and check a segment header; raise ``WalMismatch`` (foreign file) or ``WalCorruption`` (damage)."""
    start = int(path.name, 16)
    if len(buf) < SEGMENT_HEADER_SIZE:
        raise WalCorruption(f"segment file is only {len(buf)} bytes, shorter than its header",
                            path=path, offset=0, lsn=start)
    (magic, version, flags, node, hsize, size, _r, start_lsn, sysid, prev, epoch, _r2) = _SEG.unpack_from(buf)
    if magic != MAGIC:
        raise WalMismatch(f"{path} is not a MUHEAM WAL segment (bad magic {magic!r}); remove foreign files "
                          f"from the WAL directory", path=path)
    crc = int.from_bytes(buf[SEGMENT_HEADER_SIZE - 4: SEGMENT_HEADER_SIZE], "little")
    if google_crc32c.value(bytes(buf[: SEGMENT_HEADER_SIZE - 4])) != crc:
        raise WalCorruption("segment header CRC mismatch", path=path, offset=0, lsn=start)
    if version != FORMAT_VERSION:
        raise WalMismatch(f"{path} has WAL format version {version}; this build reads version "
                          f"{FORMAT_VERSION}. Use a matching muheam version.", path=path)
    if sysid != system_id:
        raise WalMismatch(f"{path} belongs to cluster system id {sysid:#x}, expected {system_id:#x}: a WAL "
                          f"directory from another cluster is here. Move it away.", path=path)
    if node != node_id:
        raise WalMismatch(f"{path} was written by node {node}, but this is the WAL of node {node_id}. Check the "
                          f"directory and node id.", path=path)
    if hsize != SEGMENT_HEADER_SIZE:
        raise WalCorruption(f"segment header size {hsize}, expected {SEGMENT_HEADER_SIZE}",
                            path=path, offset=14, lsn=start)
    if segment_size is not None and size != segment_size:
        raise WalMismatch(f"{path} has segment size {size}, but the stream uses {segment_size}", path=path)
    if start_lsn != start:
        raise WalCorruption(f"segment header says start LSN {start_lsn:#x} but the file is named "
                            f"{path.name}", path=path, offset=24, lsn=start)
    try:
        check_segment_size(size)
    except ValueError as e:
        raise WalCorruption(str(e), path=path, offset=16, lsn=start) from None
    if start % size:
        raise WalCorruption(f"start LSN {start:#x} is not a multiple of the segment size {size}",
                            path=path, offset=24, lsn=start)
    return SegmentHeader(version, flags, node, size, start_lsn, sysid, prev, epoch)


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """Segment files in ``directory`` as ``(start_lsn, path)``, sorted; temp files and others are ignored."""
    out = []
    for entry in os.scandir(directory):
        if _NAME_RE.match(entry.name) and entry.is_file():
            out.append((int(entry.name, 16), Path(entry.path)))
    out.sort()
    return out


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """``pwrite`` until everything is written (regular files may take short writes on a nearly full disk)."""
    mv = memoryview(data)
    while mv:
        n = os.pwrite(fd, mv, offset)
        if n <= 0:
            raise OSError(28, "short write returned 0 bytes")
        mv = mv[n:]
        offset += n


def zero_fill(fd: int, start: int, stop: int) -> None:
    """Write real zeros (not a sparse hole) so later writes need no block allocation at commit time."""
    pos = start
    while pos < stop:
        n = min(len(_ZERO_CHUNK), stop - pos)
        write_all(fd, memoryview(_ZERO_CHUNK)[:n], pos)
        pos += n


def zero_tail(path: str | os.PathLike[str], start: int, stop: int) -> None:
    """Zero ``[start, stop)`` of an existing segment file and make it durable (cutting a stream back)."""
    fd = os.open(path, os.O_RDWR)
    try:
        zero_fill(fd, start, stop)
        os.fsync(fd)
    finally:
        os.close(fd)


def create_segment_file(directory: Path, header: SegmentHeader) -> Path:
    """Create a full-size, zero-filled, fsynced segment atomically (temp file + rename + directory fsync).

    Raises ``OSError``; the caller wraps it.  The temp file is removed on failure.
    """
    final = directory / segment_name(header.start_lsn)
    tmp = directory / (final.name + ".tmp")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        write_all(fd, encode_segment_header(header), 0)
        zero_fill(fd, SEGMENT_HEADER_SIZE, header.segment_size)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    os.close(fd)
    os.replace(tmp, final)
    fsync_dir(directory)
    return final
