"""The catalog operations of the client port: ``create_table``, ``drop_table`` and ``tables`` (what
``muheam table``, the SQL port's CREATE and DROP TABLE and every client's table lookups call).

A create or a drop takes the ``catalog`` lock (and whatever else the engine asks for) through the node's block
ownership and runs again once it is granted.  Neither is transactional (``Engine.create_table``,
``Engine.drop_table``): the table exists, or is gone, for every transaction at once.
"""

from __future__ import annotations

from typing import Any, Callable

from muheam.cluster.ownership import Ownership
from muheam.engine import Engine
from muheam.engine.errors import NeedOwnership, NoSuchTable
from muheam.errors import MuheamError
from muheam.net.clientport import ClientPort, Deferred, RequestError, int_arg


def sql_description(sql: Any, columns: dict[str, Any]) -> dict[str, Any] | None:
    """``create_table``'s ``sql`` (the SQL port's key column name and declared types), checked to be exactly that
    shape: it is written into ``global/catalog`` and the WAL, which every node and replica reads, so a map that
    does not read back (a non-string key) or a deeply nested one would break them all."""
    if sql is None:
        return None
    names = [str(c) for c in columns]
    if not isinstance(sql, dict) or set(sql) != {"key", "columns", "sql_types"}:
        raise RequestError("bad_request", "create_table's sql must be {key, columns, sql_types}")
    key, cols, types = sql["key"], sql["columns"], sql["sql_types"]
    if not isinstance(key, str) or not 0 < len(key) <= 63 or key in names:
        raise RequestError("bad_request", "create_table's sql.key must be the key column's name (1 to 63 "
                                          "characters, not one of the columns)")
    if cols != names:
        raise RequestError("bad_request", "create_table's sql.columns must list the columns in order")
    if not isinstance(types, dict) or not set(types) <= {key, *names} or \
            not all(isinstance(v, str) and 0 < len(v) <= 64 for v in types.values()):
        raise RequestError("bad_request", "create_table's sql.sql_types must map columns to type names "
                                          "(at most 64 characters)")
    return {"key": key, "columns": list(names), "sql_types": {str(k): str(v) for k, v in types.items()}}


class CatalogOps:
    """Registers ``create_table``, ``drop_table`` and ``tables`` on the client port."""

    def __init__(self, engine: Engine, ownership: Ownership, fence_check: Callable[[], None],
                 port: ClientPort) -> None:
        self.engine, self.ownership, self.fence_check = engine, ownership, fence_check
        for op in ("create_table", "drop_table", "tables"):
            port.register(op, getattr(self, "op_" + op))

    def op_create_table(self, req: dict[str, Any]) -> Any:
        self.fence_check()
        name, columns = req.get("name"), req.get("columns")
        if not isinstance(name, str) or not isinstance(columns, dict):
            raise RequestError("bad_request", "create_table needs name (str) and columns ({column: type})")
        expected = int_arg(req, "expected_rows", 0, 0, 1 << 63, "a non-negative integer")
        buckets = int_arg(req, "buckets", 0, 0, 1 << 63, "a non-negative integer")
        sql = sql_description(req.get("sql"), columns)

        def create() -> dict[str, Any]:
            t = self.engine.create_table(name, columns, expected_rows=expected, buckets=buckets, sql=sql)
            return {"table_id": t.table_id, "name": t.name, "columns": t.schema.to_dict()["columns"]}

        return self._catalog_change(create)

    def op_drop_table(self, req: dict[str, Any]) -> Any:
        """``{"name", "if_exists", "table_id"}``: drop the table for the whole cluster (not transactional, see
        ``Engine.drop_table``); with ``table_id`` only if ``name`` is still that table.  The reply says whether
        there was one."""
        self.fence_check()
        name, if_exists, table_id = req.get("name"), req.get("if_exists", False), req.get("table_id")
        if not isinstance(name, str) or not isinstance(if_exists, bool) or \
                not (table_id is None or (type(table_id) is int and table_id > 0)):
            raise RequestError("bad_request", "drop_table needs name (str), if_exists (bool, optional) and "
                                              "table_id (a table id, optional)")

        def drop() -> dict[str, Any]:
            try:
                t = self.engine.drop_table(name, table_id)
            except NoSuchTable:
                if if_exists:
                    return {"name": name, "dropped": False}
                raise
            return {"table_id": t.table_id, "name": t.name, "dropped": True}

        return self._catalog_change(drop)

    def _catalog_change(self, change: Callable[[], dict[str, Any]]) -> Deferred:
        """Run a create or drop, again once the catalog lock (or a lock it needs) is granted; answers what
        ``change`` returns, or its error."""
        reply = Deferred()

        def attempt() -> None:
            try:
                result = change()
            except NeedOwnership as need:
                self.ownership.acquire(need.resource, need.mode, attempt)
                return
            except (MuheamError, ValueError, TypeError) as exc:
                reply.fail(type(exc).__name__, str(exc))  # (no row waits here: never a deadlock)
                return
            reply.resolve(result)

        attempt()
        return reply

    def op_tables(self, req: dict[str, Any]) -> Any:
        self.engine.reload_catalog()
        return [{"table_id": t.table_id, "name": t.name, "columns": t.schema.to_dict()["columns"],
                 "buckets": t.nbuckets, **({"sql": t.sql} if t.sql else {})} for t in self.engine.tables()]
