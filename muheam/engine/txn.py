"""A transaction handle of the single-node engine, and the row change behind ``add``.

The handle only forwards to its ``Engine`` (which owns every lock, page and WAL record); it lives here so the
engine module stays about the engine.
"""

from __future__ import annotations

import math

from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import numpy as np

from muheam.storage import RowValueError, Snapshot, TupleId, ValueOutOfRange, mvcc
from muheam.storage.schema import Row

if TYPE_CHECKING:
    from muheam.engine.engine import Engine
    from muheam.engine.heapops import Table


class Transaction:
    """One transaction of this engine; the XID and snapshot come from the caller."""

    __slots__ = ("engine", "xid", "snapshot", "wrote", "state", "commit_glsn")

    def __init__(self, engine: "Engine", xid: int, snapshot: Snapshot) -> None:
        self.engine = engine
        self.xid = xid
        self.snapshot = snapshot
        self.wrote = False
        self.state: mvcc.XidStatus = mvcc.IN_PROGRESS
        self.commit_glsn = 0

    def get(self, table: str | int, key: int) -> Row | None:
        return self.engine._get(self, table, key)

    def insert(self, table: str | int, key: int, row: Mapping[str, Any]) -> TupleId:
        return self.engine._write(self, table, key, "insert", dict(row))

    def update(self, table: str | int, key: int, changes: Mapping[str, Any]) -> TupleId:
        return self.engine._write(self, table, key, "update", dict(changes))

    def add(self, table: str | int, key: int, column: str, delta: int | float,
            bounds: tuple[int, int] | None = None) -> TupleId:
        """``column += delta``; ``bounds``: the inclusive range the new value must stay in (an SQL ``integer``
        column is an int64 in the engine), else ``ValueOutOfRange`` and nothing changes."""
        return self.engine._write(self, table, key, "add", (column, delta, bounds))

    def delete(self, table: str | int, key: int) -> TupleId:
        return self.engine._write(self, table, key, "delete", None)

    def lock(self, table: str | int, key: int) -> TupleId:
        """SELECT ... FOR UPDATE on one row (exclusive row lock until the transaction ends)."""
        return self.engine._write(self, table, key, "lock", None)

    def scan(self, table: str | int) -> Iterator[tuple[int, Row]]:
        t = self.engine.table(table)
        for keys, recs in self.engine.scan_arrays(self, table):
            for k, r in zip(keys.tolist(), recs):
                yield k, t.schema.from_record(r)

    def commit(self) -> frozenset[int]:
        return self.engine.commit(self)

    def abort(self) -> frozenset[int]:
        return self.engine.abort(self)


def adder(t: "Table", column: str, delta: int | float,
          bounds: tuple[int, int] | None = None) -> Callable[[Row], Row]:
    """The change ``add(column, delta)`` makes to a row, after checking the column can take it."""
    if column not in t.schema.column_names:
        raise RowValueError(f"table {t.name!r} has no column {column!r}; columns: {list(t.schema.column_names)}",
                            table=t.name, column=column)
    kind = dict(t.schema.columns)[column]
    if kind == "int64" and (isinstance(delta, bool) or not isinstance(delta, (int, np.integer))):
        raise RowValueError(f"table {t.name!r}, column {column!r}: add needs an integer delta for int64, got "
                            f"{delta!r}", table=t.name, column=column)
    if kind.startswith("text"):
        raise RowValueError(f"table {t.name!r}, column {column!r}: cannot add to a text column", table=t.name,
                            column=column)

    def change(old: Row) -> Row:
        v = old[column]
        assert not isinstance(v, str)
        new = v + delta
        if isinstance(new, float) and math.isinf(new) and not math.isinf(v) and not math.isinf(delta):
            # two finite doubles summed past the range: an error, as PostgreSQL's float8pl, not an infinity stored
            raise ValueOutOfRange(f"table {t.name!r}, column {column!r}: value out of range: overflow ({v!r} + "
                                  f"{delta!r})", table=t.name, column=column)
        if bounds is not None and not bounds[0] <= new <= bounds[1]:
            raise ValueOutOfRange(f"table {t.name!r}, column {column!r}: {new} is outside {bounds[0]}..{bounds[1]}",
                                  table=t.name, column=column)
        old[column] = new
        return old

    return change
