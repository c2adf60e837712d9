"""The engine's catalog: creating and dropping tables, and learning of the creates and drops of other nodes.

A mixin of ``Engine`` (the attributes declared below are the engine's own), split out of ``engine.py`` so that the
order creates and drops share (the catalog file first with an unlogged mark, then the WAL record, then the mark
cleared) reads in one place.  Why that order: docs/architecture.md, "DROP TABLE".
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping

from muheam import failpoints
from muheam.engine import statefiles, walrec
from muheam.engine.buffer import BufferCache
from muheam.engine.errors import CatalogWriteFailed, NoSuchTable, TableExists
from muheam.engine.heapops import Table, usable_tables
from muheam.storage import Heap, Schema, SchemaError
from muheam.storage.heap import default_nbuckets, relation_path
from muheam.storage.schema import check_name
from walmerge import WalWriter

log = logging.getLogger("muheam.engine")

CREATE_MAX_BUCKETS = 1 << 14
"""The most hash chains a new table gets (the storage format allows ``MAX_BUCKETS``): a create writes every
bucket page at once, in the node's event loop, and 16,384 pages (128 MiB) already take about a second there; a
client asking for 2^24 stalled the loop for minutes, and its peers took the node for cut off.  More rows than
that was sized for make longer chains, not an error."""


class Catalog:
    """``Engine``'s tables (``tables_by_name``, ``tables_by_id``, the ``dropped`` ids) and what changes them."""

    shared: Path
    node_id: int
    cache: BufferCache
    owner: Any
    catalog_stale: bool
    tables_by_name: dict[str, Table]
    tables_by_id: dict[int, Table]
    dropped: set[int]
    long_work: Callable[[], ContextManager[None]]
    _lock: threading.RLock

    def _writer(self) -> WalWriter:
        raise NotImplementedError

    def _log(self, kind: int, payload: bytes, xid: int) -> tuple[int, int]:
        raise NotImplementedError

    def _durable(self, end: int) -> None:
        raise NotImplementedError

    def create_table(self, name: str, columns: Mapping[str, str], *, expected_rows: int = 0,
                     buckets: int = 0, sql: Mapping[str, Any] | None = None) -> Table:
        """Create a table (in the catalog and the WAL, durably, when this returns); raises ``TableExists``,
        ``SchemaError``, ``CatalogWriteFailed`` (then nothing was created).

        ``buckets`` (0: sized from ``expected_rows``) sets the number of hash chains.  In a cluster a chain is
        the unit of block ownership, so hot rows spread over many chains move between nodes independently.

        The order is the drop's (``drop_table``): the relation file, then the catalog entry marked unlogged (from
        then on the id is taken for every node, so no other node can create a table with it), then the
        ``CATALOG_CREATE`` record, then the mark cleared.  A marked table is not used by anyone (no heap record
        of it may precede its creation in the stream); a creator that dies before clearing the mark leaves it
        to the next holder of the catalog lock, which logs the record (``settle``)."""
        with self._lock:
            check_name(name, "table")
            self._writer()
            catalog = self._catalog_exclusive()
            if name in self.tables_by_name:
                raise TableExists(f"table {name!r} already exists (id {self.tables_by_name[name].table_id}); "
                                  f"pick another name")
            if any(e["schema"].get("name") == name for e in catalog.marked_entries()):
                raise TableExists(f"table {name!r} is created but not usable yet ({statefiles.catalog_path(self.shared)}"
                                  f" could not be updated); it becomes usable when the catalog can be written")
            schema = Schema(name, columns)
            if not 0 <= buckets <= CREATE_MAX_BUCKETS:
                raise SchemaError(f"buckets must be between 1 and {CREATE_MAX_BUCKETS} (0: sized from "
                                  f"expected_rows), got {buckets}")
            nbuckets = buckets or min(CREATE_MAX_BUCKETS, default_nbuckets(schema, expected_rows))
            table_id = max(max(self.tables_by_id.keys() | self.dropped, default=0), catalog.max_table_id) + 1
            t = Table(table_id, name, schema, nbuckets, dict(sql) if sql else None)
            try:
                # a file of this id can only be left by a create killed before its catalog write (the id was not
                # taken): never the new table's
                self.cache.remove(table_id)
                self.add_table(t)
                self._write_catalog_file(lambda: statefiles.merge_catalog(self.shared, [t.catalog_entry()],
                                                                          self.dropped, creating=table_id))
            except (OSError, CatalogWriteFailed) as e:
                self._unregister(t.table_id)
                if isinstance(e, CatalogWriteFailed):
                    raise
                raise CatalogWriteFailed(f"node {self.node_id} could not create the relation file of {name!r} "
                                         f"({e}); nothing was created: free space and try again") from e
            failpoints.hit("engine.create_unlogged")  # the id is taken, the table not in any WAL yet
            if not self._log_create(t):
                # logged, but still marked: nobody else may use it yet, so neither may we (our rows would be
                # lost to survivors that cannot see the table if we died); the next settle makes it usable
                self._unregister(t.table_id)
                raise CatalogWriteFailed(f"table {name!r} is created but {statefiles.catalog_path(self.shared)} "
                                         f"could not be updated to make it usable; it becomes usable when the "
                                         f"catalog can be written (the next CREATE or DROP TABLE, or a node start)")
            return t

    def drop_table(self, name: str, table_id: int | None = None) -> Table:
        """Drop a table (durable, in the catalog and the WAL, when this returns); raises ``NoSuchTable`` (also when
        ``table_id`` is given and ``name`` is another table now: a drop decided earlier never hits a newer one).

        Not transactional, like ``create_table``: the table is gone for every transaction at once, and changes
        to it by transactions that are still running go with it even if they commit later.  In a cluster the
        node takes the catalog lock exclusively first; every other node must hold it (shared) to run a row
        operation and re-reads ``global/catalog`` whenever it gets it back, so once this returns no node
        touches the table again.

        The tombstone in ``global/catalog`` comes first: from then on the table is gone for the cluster.  The
        ``CATALOG_DROP`` record follows for the WAL's readers (replicas, archive recovery), before the lock can
        go to anyone; a node that dies between the two leaves the drop marked unlogged, and the next holder of
        the catalog lock logs it (``settle``) before any create or drop of its own, so the stream never shows a
        table of that name created before the old one is dropped.  The other order would let a dead node's drop
        take effect only when it restarts, after the others had gone on writing the table."""
        with self._lock:
            self._writer()
            self._catalog_exclusive()
            t = self.tables_by_name.get(name)
            if t is None or (table_id is not None and t.table_id != table_id):
                raise NoSuchTable(f"table {name!r} does not exist; existing tables: {sorted(self.tables_by_name)}")
            self._write_catalog_file(lambda: statefiles.merge_catalog(
                self.shared, [], self.dropped | {t.table_id}, dropping=(t.table_id, self.node_id, t.name)))
            self.forget_table(t.table_id)  # gone for the cluster from here on
            failpoints.hit("engine.drop_unlogged")  # the table is gone for the cluster, its WAL record not written
            self._log_change(walrec.CATALOG_DROP, walrec.encode_drop_table(t.table_id, t.name), t.table_id)
            return t

    def _catalog_exclusive(self) -> statefiles.CatalogFile:
        """Hold the catalog lock exclusively (a cluster; raises ``NeedOwnership`` first if not), with the catalog
        read afresh and every create or drop a dead node left unlogged logged now; returns the catalog as it is
        then."""
        if self.owner is not None:
            self.owner.catalog()
        catalog = statefiles.read_catalog(self.shared)
        self.reload_catalog(catalog)  # (also alone: the directory may have other writers, e.g. a restore's replay)
        if not catalog.unlogged_drops and not catalog.unlogged_creates:
            return catalog
        for table_id, dropper, name in catalog.unlogged_drops:
            log.warning("node %d: logging the drop of table %r (id %d) that node %d made but did not log (it "
                        "stopped in between)", self.node_id, name, table_id, dropper)
            self._log_change(walrec.CATALOG_DROP, walrec.encode_drop_table(table_id, name), table_id)
        for entry in catalog.marked_entries():
            t = Table.from_entry(entry["table_id"], entry["nbuckets"], entry["schema"], entry.get("sql"))
            log.warning("node %d: logging the creation of table %r (id %d) that another node made but did not log "
                        "(it stopped in between)", self.node_id, t.name, t.table_id)
            if self._log_create(t) and t.table_id not in self.tables_by_id:
                self.add_table(t)
        return statefiles.read_catalog(self.shared)  # the marks that could not be cleared are still there

    def settle(self) -> list[int]:
        """Log the creates and drops dead nodes left unlogged, under the catalog lock; returns their table ids.
        The node calls it when it starts and when it recovers a dead node."""
        with self._lock:
            catalog = statefiles.read_catalog(self.shared)
            pending = [table_id for table_id, _, _ in catalog.unlogged_drops] + sorted(catalog.unlogged_creates)
            if pending:
                self._writer()
                self._catalog_exclusive()
            return pending

    def _log_create(self, t: Table) -> bool:
        return self._log_change(walrec.CATALOG_CREATE,
                                walrec.encode_create_table(t.table_id, t.nbuckets, t.schema.to_dict(), t.sql),
                                t.table_id)

    def _log_change(self, kind: int, payload: bytes, table_id: int) -> bool:
        """Write a catalog record durably (a failure stops the engine; the mark stays for the next holder of the
        catalog lock), then clear its unlogged mark; False if that failed (only logged here: the record is
        durable, and writing it once more later is harmless, as every reader ignores a second create or drop
        of one id).  The caller holds the catalog lock."""
        _, end = self._log(kind, payload, 0)
        self._durable(end)
        try:
            self._write_catalog_file(lambda: statefiles.change_logged(self.shared, table_id))
        except CatalogWriteFailed as e:
            log.warning("node %d: %s; table %d stays marked unlogged and its record is written again later",
                        self.node_id, e, table_id)
            return False
        return True

    def _write_catalog_file(self, write: Callable[[], None]) -> None:
        """``global/catalog`` is rewritten; a failure (a full file system) is the caller's error, not a reason to
        stop the engine: nothing changed unless the rename happened."""
        try:
            write()
        except OSError as e:
            raise CatalogWriteFailed(f"node {self.node_id} could not write {statefiles.catalog_path(self.shared)} "
                                     f"({e}); nothing was created or dropped: free space and try again") from e

    def _unregister(self, table_id: int) -> None:
        """Out of the catalog maps, with its cached pages and its file: a table dropped, or one whose creation
        failed (nobody else knows its id yet)."""
        t = self.tables_by_id.pop(table_id, None)
        if t is not None and self.tables_by_name.get(t.name) is t:
            del self.tables_by_name[t.name]
        self.cache.remove(table_id)

    def forget_table(self, table_id: int) -> None:
        """A dropped table is gone here too (whoever learns of the drop first removes its file)."""
        self.dropped.add(table_id)
        self._unregister(table_id)

    def add_table(self, t: Table) -> None:
        """Register a catalog entry, creating (or re-creating, if unusable) its relation file."""
        path = relation_path(self.shared, t.table_id)
        try:
            Heap.open(path, table_id=t.table_id).close()
        except Exception as e:
            if path.exists():
                log.warning("node %d: relation file %s of table %r is unusable (%s); re-creating it empty, redo "
                            "refills it", self.node_id, path, t.name, e)
                path.unlink()
            with self.long_work():  # 0.2 s for the largest table on an idle machine, seconds on a loaded one
                failpoints.hit("engine.create_file")  # tests: a relation file that takes long to write
                Heap.create(path, t.schema, table_id=t.table_id, nbuckets=t.nbuckets).close()
        self.cache.attach(t.table_id, t.schema)
        self.tables_by_name[t.name] = t
        self.tables_by_id[t.table_id] = t

    def write_catalog(self) -> None:
        """Rewrite ``global/catalog`` as the union of the file and this node's tables (in a cluster only the
        holder of the catalog lock creates tables, so the union loses nobody's table)."""
        statefiles.merge_catalog(self.shared, [t.catalog_entry() for t in self.tables_by_id.values()],
                                 self.dropped)

    def reload_catalog(self, catalog: statefiles.CatalogFile | None = None) -> int:
        """Learn tables other nodes created or dropped (from ``global/catalog``, or the read ``catalog``); returns
        how many were new.  Tables and tombstones come from one read: a drop between two reads could bring a
        table back."""
        catalog = catalog or statefiles.read_catalog(self.shared)
        for table_id in catalog.dropped - self.dropped:
            self.forget_table(table_id)
        new = [t for t in usable_tables(catalog) if t.table_id not in self.tables_by_id and t.table_id not in self.dropped]
        for t in new:
            self.add_table(t)
        return len(new)

    def tables(self) -> list[Table]:
        return sorted(self.tables_by_id.values(), key=lambda t: t.table_id)

    def op_table(self, table: str | int | Table) -> Table:
        """The table a row operation works on.  In a cluster the node must hold the catalog lock (shared is
        enough): a DROP TABLE takes it exclusively, and a node gets it back only with a fresh look at the catalog
        (``Ownership``), so no operation starts on a table dropped anywhere before it."""
        if self.owner is not None:
            self.owner.catalog(write=False)
            if self.catalog_stale:  # the last grant of the catalog lock could not read the file
                self.reload_catalog()
                self.catalog_stale = False
        if not isinstance(table, Table):
            return self.table(table)
        if table.table_id in self.dropped:
            raise NoSuchTable(f"table {table.name!r} was dropped")
        return table

    def table(self, name_or_id: str | int) -> Table:
        t = (self.tables_by_name.get(name_or_id) if isinstance(name_or_id, str)
             else self.tables_by_id.get(name_or_id))
        if t is None and self.owner is not None and self.reload_catalog():
            return self.table(name_or_id)  # created on another node since we last looked
        if t is None and name_or_id in self.dropped:
            raise NoSuchTable(f"table id {name_or_id} was dropped")
        if t is None:
            raise NoSuchTable(f"no table {name_or_id!r}; existing tables: {sorted(self.tables_by_name)}")
        return t
