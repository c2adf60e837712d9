"""WAL payload formats of the engine (the record header -- LSN, GLSN, XID, kind -- is ``walmerge``'s).

Heap records are *physical*: they name the exact (table, block, slot) a change went to and carry the row bytes,
so redo replays them onto a page image with the same ``Page`` code the engine used, without looking at
visibility, free space or hashing.  All integers little-endian (``struct``); row bytes are the schema's
``row_width`` raw bytes.  The XID of a change is the record header's ``xid``.

=================  ====  =====================================================================================
kind               num   payload
=================  ====  =====================================================================================
HEAP_INSERT          1   ``<IIHHIq`` table_id, block, slot, flags, link_from, key; then row bytes
HEAP_UPDATE          2   ``<IIHHIqIH2x`` table_id, new_block, new_slot, flags, link_from, key, old_block,
                         old_slot; then the new version's row bytes (old version gets xmax=xid, ctid=new)
HEAP_DELETE          3   ``<IIH2xq`` table_id, block, slot, key (sets xmax=xid)
HEAP_LOCK            4   same as HEAP_DELETE (sets xmax=xid, LOCK_ONLY)
HEAP_PRUNE           5   ``<IIHH`` table_id, block, nfreed, ncleared; then nfreed + ncleared ``<u2`` slots
CATALOG_CREATE      16   msgpack ``{"table_id", "nbuckets", "schema": Schema.to_dict()}``, and ``"sql"`` (the SQL
                         port's key column name and declared types) for a table made through SQL
CATALOG_DROP        17   msgpack ``{"table_id", "name"}``: the table is gone; every heap record of that table id,
                         before or after this one, is ignored by redo (ids are never reused)
COMMIT              32   ``<q`` commit time, microseconds since the Unix epoch (empty in old WAL); the header's
                         xid is the transaction.  Point-in-time recovery (``--until-time``) reads it
ABORT               33   empty (the header's xid is the transaction)
CHECKPOINT          48   ``<QI`` redo_lsn, nrunning; then nrunning ``<u8`` XIDs that were running
HEARTBEAT           49   empty: an idle node's stream moves on (follow-mode watermark); redo ignores it
FENCE               51   ``<IIQQ`` node, epoch, end_lsn, last_glsn: a survivor recovered that dead incarnation up to
                         there; anything it wrote later is ignored (I6)
=================  ====  =====================================================================================

``flags & NEW_PAGE``: the change went to a freshly allocated overflow block ``block`` that was linked after
block ``link_from`` (whose ``next_block`` redo sets too); redo initialises the block instead of reading it.
HEAP_LOCK (4) and HEAP_PRUNE (5) are not in ``walmerge.RecordKind`` yet: they use free numbers of its heap range.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

import msgpack
import numpy as np

from walmerge import RecordKind

HEAP_INSERT = int(RecordKind.HEAP_INSERT)
HEAP_UPDATE = int(RecordKind.HEAP_UPDATE)
HEAP_DELETE = int(RecordKind.HEAP_DELETE)
HEAP_LOCK = 4
HEAP_PRUNE = 5
CATALOG_CREATE = int(RecordKind.CATALOG_CREATE_TABLE)
CATALOG_DROP = int(RecordKind.CATALOG_DROP_TABLE)
COMMIT = int(RecordKind.COMMIT)
ABORT = int(RecordKind.ABORT)
CHECKPOINT = int(RecordKind.CHECKPOINT)
HEARTBEAT = int(RecordKind.HEARTBEAT)
FENCE = int(RecordKind.FENCE)


def heap_table_id(payload: bytes) -> int:
    """Every heap payload starts with the table id."""
    return int.from_bytes(payload[:4], "little")


HEAP_KINDS = frozenset({HEAP_INSERT, HEAP_UPDATE, HEAP_DELETE, HEAP_LOCK, HEAP_PRUNE})

NEW_PAGE = 0x1

_INSERT = struct.Struct("<IIHHIq")
_UPDATE = struct.Struct("<IIHHIqIH2x")
_DELETE = struct.Struct("<IIH2xq")
_PRUNE = struct.Struct("<IIHH")
_CHECKPOINT = struct.Struct("<QI")
_COMMIT = struct.Struct("<q")
_FENCE = struct.Struct("<IIQQ")


class Insert(NamedTuple):
    table_id: int
    block: int
    slot: int
    flags: int
    link_from: int
    key: int
    row: bytes


class Update(NamedTuple):
    table_id: int
    new_block: int
    new_slot: int
    flags: int
    link_from: int
    key: int
    old_block: int
    old_slot: int
    row: bytes


class Delete(NamedTuple):
    """HEAP_DELETE and HEAP_LOCK."""

    table_id: int
    block: int
    slot: int
    key: int


class Prune(NamedTuple):
    table_id: int
    block: int
    freed: tuple[int, ...]
    cleared: tuple[int, ...]


class Checkpoint(NamedTuple):
    redo_lsn: int
    running: tuple[int, ...]


class CreateTable(NamedTuple):
    table_id: int
    nbuckets: int
    schema: dict[str, Any]
    sql: dict[str, Any] | None = None
    """What the SQL port keeps with a table it made (the key column's name, the declared types)."""


def encode_insert(table_id: int, block: int, slot: int, flags: int, link_from: int, key: int, row: bytes) -> bytes:
    return _INSERT.pack(table_id, block, slot, flags, link_from, key) + row


def decode_insert(p: bytes) -> Insert:
    a, b, c, d, e, f = _INSERT.unpack_from(p)
    return Insert(a, b, c, d, e, f, p[_INSERT.size:])


def encode_update(table_id: int, new_block: int, new_slot: int, flags: int, link_from: int, key: int,
                  old_block: int, old_slot: int, row: bytes) -> bytes:
    return _UPDATE.pack(table_id, new_block, new_slot, flags, link_from, key, old_block, old_slot) + row


def decode_update(p: bytes) -> Update:
    a, b, c, d, e, f, g, h = _UPDATE.unpack_from(p)
    return Update(a, b, c, d, e, f, g, h, p[_UPDATE.size:])


def encode_delete(table_id: int, block: int, slot: int, key: int) -> bytes:
    return _DELETE.pack(table_id, block, slot, key)


def decode_delete(p: bytes) -> Delete:
    return Delete(*_DELETE.unpack(p))


def encode_prune(table_id: int, block: int, freed: tuple[int, ...], cleared: tuple[int, ...]) -> bytes:
    slots = np.asarray(freed + cleared, dtype="<u2").tobytes()
    return _PRUNE.pack(table_id, block, len(freed), len(cleared)) + slots


def decode_prune(p: bytes) -> Prune:
    table_id, block, nf, nc = _PRUNE.unpack_from(p)
    slots = np.frombuffer(p, dtype="<u2", offset=_PRUNE.size, count=nf + nc).tolist()
    return Prune(table_id, block, tuple(slots[:nf]), tuple(slots[nf:]))


def encode_commit(time_us: int) -> bytes:
    return _COMMIT.pack(time_us)


def decode_commit_time(p: bytes) -> int | None:
    """Commit time in microseconds since the epoch, or ``None`` for a COMMIT written without one."""
    return _COMMIT.unpack_from(p)[0] if len(p) >= _COMMIT.size else None


class Fence(NamedTuple):
    node: int
    epoch: int
    end_lsn: int
    last_glsn: int


def encode_fence(node: int, epoch: int, end_lsn: int, last_glsn: int) -> bytes:
    return _FENCE.pack(node, epoch, end_lsn, last_glsn)


def decode_fence(p: bytes) -> Fence:
    return Fence(*_FENCE.unpack_from(p))


def encode_checkpoint(redo_lsn: int, running: tuple[int, ...]) -> bytes:
    return _CHECKPOINT.pack(redo_lsn, len(running)) + np.asarray(sorted(running), dtype="<u8").tobytes()


def decode_checkpoint(p: bytes) -> Checkpoint:
    redo, n = _CHECKPOINT.unpack_from(p)
    xids = np.frombuffer(p, dtype="<u8", offset=_CHECKPOINT.size, count=n).tolist()
    return Checkpoint(redo, tuple(int(x) for x in xids))


def encode_create_table(table_id: int, nbuckets: int, schema: dict[str, Any],
                        sql: dict[str, Any] | None = None) -> bytes:
    d: dict[str, Any] = {"table_id": table_id, "nbuckets": nbuckets, "schema": schema}
    if sql:
        d["sql"] = sql
    out: bytes = msgpack.packb(d, use_bin_type=True)
    return out


def decode_create_table(p: bytes) -> CreateTable:
    d = msgpack.unpackb(p, raw=False)
    sql = d.get("sql")
    return CreateTable(int(d["table_id"]), int(d["nbuckets"]), dict(d["schema"]),
                       dict(sql) if isinstance(sql, dict) else None)


class DropTable(NamedTuple):
    table_id: int
    name: str


def encode_drop_table(table_id: int, name: str) -> bytes:
    out: bytes = msgpack.packb({"table_id": table_id, "name": name}, use_bin_type=True)
    return out


def decode_drop_table(p: bytes) -> DropTable:
    d = msgpack.unpackb(p, raw=False)
    return DropTable(int(d["table_id"]), str(d["name"]))
