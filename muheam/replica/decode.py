"""Logical decoding of the merged stream: records in, committed transactions out, in commit order (pure).

What the WAL already carries is enough, so no ``wal_level = logical`` switch was needed: heap records are
physical but name the row's key and carry the *whole* new row (``engine.walrec``: HEAP_INSERT, HEAP_UPDATE), a
delete names its key, the header names the transaction, CATALOG_CREATE carries the table's name and columns,
CATALOG_DROP its id and name, and COMMIT carries its time.  After a drop the table's changes are left out, also
those of a transaction that made them before the drop and commits after it (the cluster drops them with the
table).  The decoder keeps each transaction's changes until its outcome: COMMIT emits them as one
``Txn``, ABORT drops them (a dead node's undecided transactions get an ABORT from its recoverer, so nothing an
uncommitted transaction did ever reaches a replica).  HEAP_LOCK, HEAP_PRUNE, CHECKPOINT, HEARTBEAT and FENCE
change no row.

**Commit order.**  The merged stream is in GLSN order, and a transaction's commit timestamp is the GLSN of its
COMMIT record (``cluster.txstate``): emitting at each COMMIT gives exactly the cluster's visibility order, so a
replica that applies ``Txn``s in this order, each atomically, only ever shows states a cluster snapshot could
have shown (I4: a commit follows every commit it waited on).

**Positions.**  A ``Txn`` has ``commit_lsn`` (where its COMMIT record is), ``end_lsn`` (the end of that record)
and ``restart_lsn``: the earliest stream position a decoder must start from to rebuild every transaction that
commits after this one (the first record of the oldest transaction still open, or ``end_lsn``), PostgreSQL's
``restart_lsn`` against ``confirmed_flush_lsn``.  A replica that stored (``commit_lsn``, ``restart_lsn``) of its
last applied transaction resumes by decoding from ``restart_lsn`` and skipping every commit at or below
``commit_lsn`` (``Decoder(skip_through=...)``); a transaction committed after it cannot have started before
``restart_lsn``, one that committed before it is skipped whole.

**After an initial copy** (``muheam.replica.copy``) decoding starts at the copy's stream position ``L0``, in the
middle of the stream, and ``Decoder(copy_sts=...)`` also skips every COMMIT whose GLSN (its commit timestamp) is
below the copy snapshot's timestamp: that transaction is visible to the copy snapshot, so its rows are in the copy.
The stream is in GLSN order, so these are exactly the commits before the first one at or above ``copy_sts``.  A
transaction whose first records lie before ``L0`` is seen in part (its later changes, its COMMIT or ABORT): it is
either one of these skipped commits or aborted (the copy waited until every transaction that had written before
``L0`` ended), so its missing changes are never needed; the decoder keeps a partial transaction like any other and
drops it at its COMMIT or ABORT.  Every ``restart_lsn`` is then at or after ``L0``, and resuming at ``L0`` is always
correct.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from muheam.engine import walrec
from muheam.storage.schema import Schema
from walmerge.record import align8

_HEADER = struct.Struct("<IBBHQQQQQII")
INSERT, UPDATE, DELETE = "insert", "update", "delete"
UNKNOWN = "unknown"
"""A change of a table the decoder does not know (``key`` holds the record's LSN)."""


class DecodeError(ValueError):
    """A record the decoder cannot read (unknown table, bad payload): the stream and the catalog disagree."""


@dataclass(frozen=True, slots=True)
class TableDef:
    """A table as the cluster created it: id, name (lower-case SQL identifier), ordered (column, type) pairs."""

    table_id: int
    name: str
    columns: tuple[tuple[str, str], ...]
    lsn: int = 0

    @property
    def schema(self) -> Schema:
        return Schema(self.name, self.columns)

    def to_dict(self) -> dict[str, Any]:
        return {"table_id": self.table_id, "name": self.name, "columns": [list(c) for c in self.columns]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TableDef":
        return cls(int(d["table_id"]), str(d["name"]), tuple((str(c), str(t)) for c, t in d["columns"]))


@dataclass(frozen=True, slots=True)
class Change:
    """One row change: ``insert``/``update`` carry the whole new row, ``delete`` only the key."""

    op: str
    table_id: int
    key: int
    row: dict[str, Any] | None = None


@dataclass(slots=True)
class Txn:
    """A committed transaction, its changes in the order it made them."""

    xid: int
    node: int
    commit_lsn: int
    end_lsn: int
    restart_lsn: int
    commit_glsn: int
    commit_time_us: int | None
    changes: list[Change] = field(default_factory=list)
    received_at: float = 0.0
    """Wall-clock time the replicator received the COMMIT (set by the replicator, for ``write_lag``)."""

    def keys(self) -> set[tuple[int, int]]:
        return {(c.table_id, c.key) for c in self.changes}


@dataclass(frozen=True, slots=True)
class DroppedTable:
    """A DROP TABLE, in its place in the stream."""

    table_id: int
    name: str
    lsn: int = 0


Event = TableDef | DroppedTable | Txn


class Decoder:
    """Feed ``(lsn, record bytes)`` in stream order; get ``TableDef``s and ``Txn``s in stream (= commit) order.

    ``tables``: definitions already known (a resumed replica reads them back from its own registry, since the
    catalog records may lie before its ``restart_lsn``).  ``skip_through``: commits at or below this LSN are
    dropped (already applied).  ``copy_sts``: commits whose GLSN is below it are dropped (their rows are in the
    replica's initial copy; 0: no copy).
    """

    def __init__(self, tables: Iterable[TableDef] = (), skip_through: int = -1, copy_sts: int = 0) -> None:
        self.tables: dict[int, TableDef] = {t.table_id: t for t in tables}
        self.dropped: set[int] = set()
        self._schemas: dict[int, Schema] = {t.table_id: t.schema for t in self.tables.values()}
        self.skip_through = skip_through
        self.copy_sts = copy_sts
        self.pending: dict[int, list[Change]] = {}
        self.first_lsn: dict[int, int] = {}
        self.committed = 0
        self.aborted = 0
        self.skipped = 0
        self.in_copy = 0
        """Commits dropped because the initial copy holds them (counted apart from ``skipped``)."""

    def feed(self, records: Iterable[tuple[int, bytes]]) -> Iterator[Event]:
        for lsn, data in records:
            ev = self.record(lsn, data)
            if ev is not None:
                yield ev

    def record(self, lsn: int, data: bytes) -> Event | None:
        total, kind, _f, node, _lsn, _prev, glsn, xid, _dur, _epoch, _crc = _HEADER.unpack_from(data)
        payload = data[_HEADER.size:total]
        if kind == walrec.CATALOG_CREATE:
            ct = walrec.decode_create_table(payload)
            sch = Schema.from_dict(ct.schema)
            tdef = TableDef(ct.table_id, sch.name, sch.columns, lsn)
            if self.tables.get(ct.table_id) == tdef or (ct.table_id in self.tables and lsn <= self.skip_through):
                return None
            self.tables[ct.table_id] = tdef
            self._schemas[ct.table_id] = sch
            return tdef
        if kind == walrec.CATALOG_DROP:
            dt = walrec.decode_drop_table(payload)
            if dt.table_id in self.dropped:
                return None  # logged twice (a recoverer logged a drop its dead node had logged too)
            self.dropped.add(dt.table_id)
            known = self.tables.pop(dt.table_id, None)
            self._schemas.pop(dt.table_id, None)
            return DroppedTable(dt.table_id, known.name if known is not None else dt.name, lsn)
        if kind in (walrec.HEAP_INSERT, walrec.HEAP_UPDATE, walrec.HEAP_DELETE):
            if walrec.heap_table_id(payload) in self.dropped:
                return None
            change = self._change(kind, payload, lsn)
            changes = self.pending.get(xid)
            if changes is None:
                self.pending[xid] = changes = []
                self.first_lsn[xid] = lsn
            changes.append(change)
            return None
        if kind == walrec.COMMIT:
            changes = self.pending.pop(xid, [])
            self.first_lsn.pop(xid, None)
            end = lsn + align8(total)
            if lsn <= self.skip_through:
                self.skipped += 1
                return None
            if glsn < self.copy_sts:
                self.in_copy += 1
                return None
            if self.dropped:
                changes = [c for c in changes if c.table_id not in self.dropped]
            for c in changes:
                if c.op == UNKNOWN:
                    raise DecodeError(f"record at LSN {c.key:#x} changes table {c.table_id}, which no catalog "
                                      "record in the stream (nor the replica's registry) defines")
            self.committed += 1
            restart = min(self.first_lsn.values(), default=end)
            return Txn(xid, node, lsn, end, min(restart, end), glsn, walrec.decode_commit_time(payload), changes)
        if kind == walrec.ABORT:
            if self.pending.pop(xid, None) is not None:
                self.aborted += 1
            self.first_lsn.pop(xid, None)
        return None

    def _change(self, kind: int, payload: bytes, lsn: int) -> Change:
        table_id = walrec.heap_table_id(payload)
        schema = self._schemas.get(table_id)
        if schema is None:
            # an error at its COMMIT unless a drop of the table comes first: a resumed replica reads again the
            # changes of a table it has dropped already (they lie between its restart_lsn and the drop)
            return Change(UNKNOWN, table_id, lsn)
        if kind == walrec.HEAP_INSERT:
            ins = walrec.decode_insert(payload)
            return Change(INSERT, table_id, ins.key, schema.from_record(ins.row))
        if kind == walrec.HEAP_UPDATE:
            upd = walrec.decode_update(payload)
            return Change(UPDATE, table_id, upd.key, schema.from_record(upd.row))
        return Change(DELETE, table_id, walrec.decode_delete(payload).key)


__all__ = ["Change", "DecodeError", "Decoder", "DroppedTable", "Event", "TableDef", "Txn", "INSERT", "UPDATE", "DELETE"]
