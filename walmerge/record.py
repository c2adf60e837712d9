"""WAL record: a fixed 56-byte little-endian header followed by an opaque payload.

Byte layout of the header (all integers little-endian; every 8-byte field is 8-byte aligned, so a numpy
structured view of many headers needs no unaligned access)::

    off size field        type  meaning
    0   4    total_len    u32   header + payload bytes (alignment padding after the record not counted)
    4   1    kind         u8    RecordKind
    5   1    flags        u8    reserved, written as 0
    6   2    node         u16   origin node id (kept unchanged in the merged stream)
    8   8    lsn          u64   byte position of this record in its stream (its own address)
    16  8    prev_lsn     u64   LSN of the previous record of the stream (0 = none)
    24  8    glsn         u64   GLSN packed as (lamport << 16) | node; node == the node field
    32  8    xid          u64   transaction id (0 = not in a transaction)
    40  8    durable_lsn  u64   stream position known fsynced when this record was appended (see reader)
    48  4    epoch        u32   incarnation of the origin node (fencing)
    52  4    crc          u32   CRC-32C of payload || header[0:52]
    56  ...  payload      bytes

A record occupies ``align8(total_len)`` bytes; the padding is zero.  The CRC covers the payload first and the
header (without the CRC field) last, like PostgreSQL's ``xl_crc``.  Putting the header last means a change to
header fields can be folded into the CRC in O(header) time without re-reading the payload (CRC-32C is linear):
see ``fold_crc`` and the vectorised ``fold_crcs`` the merge uses when it re-serialises records with new LSNs.
"""

from __future__ import annotations

import enum
import functools
import struct
from typing import Callable, NamedTuple

import google_crc32c
import numpy as np
import numpy.typing as npt

from walmerge.errors import RecordTooLarge
from walmerge.lsn import MAX_LAMPORT as MAX_LAMPORT  # the GLSN packing lives in walmerge.lsn; re-exported here
from walmerge.lsn import MAX_NODE_ID as MAX_NODE_ID
from walmerge.lsn import NODE_BITS as NODE_BITS
from walmerge.lsn import format_glsn as format_glsn
from walmerge.lsn import pack_glsn as pack_glsn
from walmerge.lsn import unpack_glsn as unpack_glsn

HEADER_SIZE = 56
CRC_OFFSET = 52
ALIGN = 8

_HEADER = struct.Struct("<IBBHQQQQQII")
assert _HEADER.size == HEADER_SIZE
_HEADER_NO_CRC = struct.Struct("<IBBHQQQQQI")

HEADER_DTYPE = np.dtype(
    [
        ("total_len", "<u4"), ("kind", "u1"), ("flags", "u1"), ("node", "<u2"),
        ("lsn", "<u8"), ("prev_lsn", "<u8"), ("glsn", "<u8"), ("xid", "<u8"),
        ("durable_lsn", "<u8"), ("epoch", "<u4"), ("crc", "<u4"),
    ]
)
"""numpy view of one header; ``itemsize == HEADER_SIZE`` and offsets match the table above."""
assert HEADER_DTYPE.itemsize == HEADER_SIZE


class RecordKind(enum.IntEnum):
    """What a record means.  Payload formats belong to the storage layer (``muheam``); the numbers live here.

    Ranges leave room: 1-15 heap, 16-31 catalog, 32-47 transaction outcome, 48-63 cluster/control,
    64-79 page images.  0 is never a valid kind (a zero header marks unwritten space).
    """

    HEAP_INSERT = 1
    HEAP_UPDATE = 2
    HEAP_DELETE = 3
    HEAP_LOCK = 4
    HEAP_PRUNE = 5
    CATALOG_CREATE_TABLE = 16
    CATALOG_DROP_TABLE = 17
    COMMIT = 32
    ABORT = 33
    CHECKPOINT = 48
    HEARTBEAT = 49
    """Watermark: the node has generated nothing below this GLSN (keeps the follow-mode merge moving)."""
    XID_RANGE = 50
    FENCE = 51
    FULL_PAGE_IMAGE = 64


def align8(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


class Record(NamedTuple):
    """One decoded record.  ``end_lsn`` is ``lsn + total_len`` (the next record starts at ``align8(end_lsn)``)."""

    lsn: int
    prev_lsn: int
    kind: int
    node: int
    glsn: int
    xid: int
    epoch: int
    durable_lsn: int
    flags: int
    payload: bytes

    @property
    def end_lsn(self) -> int:
        return self.lsn + HEADER_SIZE + len(self.payload)

    @property
    def lamport(self) -> int:
        return self.glsn >> NODE_BITS


def encode_record(
    *, kind: int, payload: bytes, lsn: int, prev_lsn: int, lamport: int, node: int, xid: int = 0,
    epoch: int = 0, durable_lsn: int = 0, flags: int = 0, max_total: int = 0xFFFFFFFF,
) -> bytes:
    """Serialise one record (header + payload, no padding) with its CRC."""
    if type(payload) is not bytes:
        payload = bytes(payload)
    total = HEADER_SIZE + len(payload)
    if total > max_total:
        raise RecordTooLarge(
            f"record of {total} bytes does not fit in a WAL segment (at most {max_total}); split the payload "
            f"or use a larger segment size"
        )
    head = _HEADER_NO_CRC.pack(
        total, kind, flags, node, lsn, prev_lsn, pack_glsn(lamport, node), xid, durable_lsn, epoch
    )
    crc: int = google_crc32c.extend(google_crc32c.value(payload), head)
    return head + crc.to_bytes(4, "little") + payload


class Header(NamedTuple):
    total_len: int
    kind: int
    flags: int
    node: int
    lsn: int
    prev_lsn: int
    glsn: int
    xid: int
    durable_lsn: int
    epoch: int
    crc: int


def decode_header(buf: bytes | bytearray | memoryview, offset: int = 0) -> Header:
    return Header(*_HEADER.unpack_from(buf, offset))


def compute_crc(buf: bytes | bytearray | memoryview, offset: int, total_len: int) -> int:
    """The CRC a record at ``buf[offset:offset+total_len]`` should carry."""
    # google_crc32c accepts only bytes, so this copies the record once (memcpy speed).
    rec = bytes(memoryview(buf)[offset: offset + total_len])
    crc = google_crc32c.value(rec[HEADER_SIZE:])
    return int(google_crc32c.extend(crc, rec[:CRC_OFFSET]))


def record_from(buf: bytes | bytearray | memoryview, offset: int) -> Record:
    """Decode the record at ``offset`` (no validation; the reader validates before it calls this)."""
    h = _HEADER.unpack_from(buf, offset)
    payload = bytes(memoryview(buf)[offset + HEADER_SIZE: offset + h[0]])
    return Record(h[4], h[5], h[1], h[3], h[6], h[7], h[9], h[8], h[2], payload)


# --- CRC folding --------------------------------------------------------------------------------------------
# For two messages of equal length, crc(a) ^ crc(b) == lin(a ^ b), where lin is the CRC with zero init and
# zero xorout.  Leading zero bytes do not change lin, so a delta confined to the trailing 52 header bytes costs
# lin52(delta) no matter how long the payload is.


@functools.cache
def _lin_table() -> npt.NDArray[np.uint32]:
    """``T[i, b]`` = lin of a 52-byte message that is zero except byte ``i`` == ``b``."""
    zero = bytes(CRC_OFFSET)
    base = google_crc32c.value(zero)
    bits = np.zeros((CRC_OFFSET, 8), dtype=np.uint32)
    for i in range(CRC_OFFSET):
        for bit in range(8):
            msg = bytearray(CRC_OFFSET)
            msg[i] = 1 << bit
            bits[i, bit] = google_crc32c.value(bytes(msg)) ^ base
    table = np.zeros((CRC_OFFSET, 256), dtype=np.uint32)
    values = np.arange(256)
    for bit in range(8):
        table ^= np.where((values >> bit) & 1, bits[:, bit:bit + 1], np.uint32(0)).astype(np.uint32)
    return table


def fold_crc(
    old_crc: int, old_head: bytes | bytearray | memoryview, new_head: bytes | bytearray | memoryview
) -> int:
    """CRC of a record whose first 52 header bytes changed from ``old_head`` to ``new_head``; payload untouched."""
    delta = np.frombuffer(bytes(old_head[:CRC_OFFSET]), np.uint8) ^ np.frombuffer(
        bytes(new_head[:CRC_OFFSET]), np.uint8
    )
    table = _lin_table()
    acc = np.bitwise_xor.reduce(table[np.arange(CRC_OFFSET), delta])
    return int(old_crc) ^ int(acc)


def fold_crcs(
    old_crcs: npt.NDArray[np.uint32], old_headers: npt.NDArray[np.void], new_headers: npt.NDArray[np.void]
) -> npt.NDArray[np.uint32]:
    """Vectorised ``fold_crc`` over arrays of ``HEADER_DTYPE`` headers (the merge's re-serialisation path)."""
    old_b = np.ascontiguousarray(old_headers).view(np.uint8).reshape(-1, HEADER_SIZE)[:, :CRC_OFFSET]
    new_b = np.ascontiguousarray(new_headers).view(np.uint8).reshape(-1, HEADER_SIZE)[:, :CRC_OFFSET]
    delta = old_b ^ new_b
    table = _lin_table()
    acc = np.zeros(len(delta), dtype=np.uint32)
    for i in range(CRC_OFFSET):
        col = delta[:, i]
        if col.any():
            acc ^= table[i, col]
    return (np.asarray(old_crcs, dtype=np.uint32) ^ acc).astype(np.uint32)


def rewrite_header(record: bytearray, **fields: int) -> None:
    """Change header fields of a serialised record in place and fold the change into its CRC.

    ``fields`` are ``HEADER_DTYPE`` names other than ``crc``/``total_len`` (e.g. ``lsn``, ``prev_lsn``,
    ``durable_lsn``).  Cost is independent of the payload size.
    """
    bad = set(fields) - (set(Header._fields) - {"crc", "total_len"})
    if bad:
        raise ValueError(f"cannot rewrite header fields {sorted(bad)}")
    old = bytes(record[:CRC_OFFSET])
    h = decode_header(record)._replace(**fields)
    _HEADER_NO_CRC.pack_into(record, 0, *h[:-1])
    new_crc = fold_crc(h.crc, old, memoryview(record)[:CRC_OFFSET])
    record[CRC_OFFSET:HEADER_SIZE] = new_crc.to_bytes(4, "little")


LamportSource = int | Callable[[], int]
