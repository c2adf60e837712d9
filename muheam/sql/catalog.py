"""The tables as the SQL port sees them (``Catalog``), kept per node and shared by its connections."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

from muheam.sql.execute import Gen, OpFailed, Operation, Result
from muheam.sql.expr import SqlError, TableInfo
from muheam.sql.plan import CreateTable


class Catalog:
    """Tables as SQL sees them.  The engine's catalog has the columns and, for a table made through SQL, its SQL
    description (the key column's name, ``id`` in ``CREATE TABLE t (id bigint PRIMARY KEY, ...)``, and the
    declared types), written with the table in one catalog entry and one WAL record.  A table made through the
    Python client has none and shows its key as ``key``.  (Tables made before the description moved into the
    catalog have it in ``global/sql_tables/<name>.json``, still read; keyed by name, that file could be taken by
    another table of the same name in a drop-and-create race.)  Tables are never altered; a DROP TABLE on any
    node makes this node's row operations on the old table id fail with 42P01, which ``revalidate`` turns into a
    fresh look at the tables that changed (and new plans, ``generation``).  DDL looks afresh first (``revalidate``): it is rare, and acting on a
    remembered table that another node dropped (and perhaps made again) would drop or refuse the wrong one."""

    def __init__(self, ops: Mapping[str, Operation], shared_dir: Path | None) -> None:
        self.ops = ops
        self.dir = shared_dir / "global" / "sql_tables" if shared_dir is not None else None
        self.tables: dict[str, TableInfo] = {}
        self.generation = 0
        """Moves on whenever a table this catalog knew is gone: plans made before then must be made again."""

    def forget(self, name: str) -> None:
        """Table ``name`` is gone (dropped here): plans made before may name it."""
        if self.tables.pop(name, None) is not None:
            self.generation += 1

    def revalidate(self) -> bool:
        """True (and a new generation) if a remembered table is gone or is another table now (dropped, and perhaps
        made again with other columns, on another node): those are looked up afresh; False if everything
        remembered is still true.  Called when a statement did not compile or a row operation found no table,
        and before DDL.  Costs one look at the node's catalog; the generation moves only on a real change, so a
        client repeating a failing statement makes no other session plan again."""
        current = {t["name"]: int(t["table_id"]) for t in self.ops["tables"]({})}
        stale = [name for name, info in self.tables.items() if current.get(name) != info.table_id]
        for name in stale:
            del self.tables[name]
        if stale:
            self.generation += 1
        return bool(stale)

    def known(self) -> dict[str, TableInfo]:
        """Every table of the node, as a copy (for a compile in another thread: ``muheam.sql.offloop``); made
        complete first, so that a large statement on a table no session of this node used yet is compiled there
        too (one look at the node's catalog, once per large text)."""
        self._refresh()
        return dict(self.tables)

    def lookup(self, name: str) -> TableInfo:
        info = self.tables.get(name)
        if info is None:
            self._refresh()
            info = self.tables.get(name)
        if info is None:
            raise SqlError("42P01", f'relation "{name}" does not exist',
                           f"tables: {', '.join(sorted(self.tables)) or 'none'}")
        return info

    def _refresh(self) -> None:
        for t in self.ops["tables"]({}):
            if t["name"] in self.tables:
                continue
            meta: dict[str, Any] = t.get("sql") or {}
            if not meta and self.dir is not None:  # made before the description lived in the catalog
                try:
                    meta = json.loads((self.dir / f"{t['name']}.json").read_text())
                except (OSError, ValueError):
                    meta = {}
            cols = t["columns"]  # [[name, type], ...] from the schema, in table order
            columns = {str(c[0]): str(c[1]) for c in cols} if isinstance(cols, list) else dict(cols)
            key = meta.get("key") if isinstance(meta, dict) else None
            if not isinstance(key, str) or key in columns or meta.get("columns") not in (None, list(columns)):
                key = "key"  # none, or metadata of another table of that name (an old file's race)
            types = meta.get("sql_types") if isinstance(meta, dict) else None
            if not isinstance(types, dict) or not all(isinstance(v, str) for v in types.values()):
                types = {}
            self.tables[t["name"]] = TableInfo(t["name"], key, columns, {str(k): v for k, v in types.items()},
                                               int(t["table_id"]))

    def create(self, plan: CreateTable) -> Gen:
        info = plan.info
        self.revalidate()
        try:
            self.lookup(info.name)
            if plan.if_not_exists:
                return Result("CREATE TABLE")
            raise SqlError("42P07", f'relation "{info.name}" already exists')
        except SqlError as exc:
            if exc.code != "42P01":
                raise
        made = yield ("create_table", {"name": info.name, "columns": dict(info.columns), "buckets": plan.buckets,
                                       "sql": {"key": info.key, "columns": list(info.columns),
                                               "sql_types": info.sql_types}})
        self.tables[info.name] = replace(info, table_id=int(made["table_id"]))
        return Result("CREATE TABLE")

    def drop(self, name: str, if_exists: bool, table_id: int | None = None) -> Gen:
        """DROP TABLE for the cluster (with ``table_id``: only if the name is still that table); the key column's
        name goes with it (a later table may reuse the name)."""
        try:
            gone = yield ("drop_table", {"name": name, "if_exists": if_exists,
                                         **({"table_id": table_id} if table_id else {})})
        except OpFailed as exc:
            if exc.code == "NoSuchTable":
                raise SqlError("42P01", f'table "{name}" does not exist') from None
            raise
        if gone.get("dropped"):
            if self.dir is not None:
                (self.dir / f"{name}.json").unlink(missing_ok=True)
            self.forget(name)
        return Result("DROP TABLE")
