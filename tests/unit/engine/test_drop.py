"""DROP TABLE in the engine: gone at once and for good (ids never reused), across restarts and crashes, in the
merged stream's replay, and when the dropping node dies between the catalog tombstone and its WAL record."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

from muheam.engine import Engine, EngineConfig, NoSuchTable, statefiles, walrec
from muheam.engine.errors import CatalogWriteFailed, TableExists
from muheam.engine.replay import Target
from muheam.recovery.restore import restore
from muheam.storage.heap import relation_path
from tests.support.engines import open_engines, shared_dir
from walmerge import MERGED_NODE_ID, WalReader, node_wal_dir
from walmerge.merge import merge


def cfg() -> EngineConfig:
    return EngineConfig(cache_pages=16, segment_size=1 << 16)


def fill(e: Engine, table: str, xid: int, keys: range) -> None:
    txn = e.begin(xid)
    for k in keys:
        txn.insert(table, k, {"v": k})
    e.commit(txn)


def keys(e: Engine, table: str, xid: int) -> set[int]:
    txn = e.begin(xid)
    try:
        return {k for k, _ in txn.scan(table)}
    finally:
        txn.abort()


def drops_logged(shared: Path, node: int) -> list[walrec.DropTable]:
    return [walrec.decode_drop_table(r.payload) for r in WalReader(node_wal_dir(shared, node), node_id=node,
                                                                     system_id=0) if r.kind == walrec.CATALOG_DROP]


def test_a_dropped_table_is_gone_at_once_and_after_a_crash(tmp_path: Path) -> None:
    e = Engine.open(tmp_path, 1, config=cfg())
    t = e.create_table("t", {"v": "int64"}, buckets=4)
    fill(e, "t", 100, range(200))          # more rows than the cache holds: dirty pages on disk and in the cache
    running = e.begin(101)
    running.insert("t", 1000, {"v": 1})     # a change by a transaction still running at the drop
    assert e.drop_table("t") == t
    assert not relation_path(tmp_path, t.table_id).exists()
    with pytest.raises(NoSuchTable):
        running.insert("t", 1001, {"v": 1})
    with pytest.raises(NoSuchTable):
        e.table("t")
    e.commit(running)                        # its change went with the table; the commit itself stands
    again = e.create_table("t", {"w": "text(8)"})
    assert again.table_id > t.table_id       # ids are never reused
    assert keys(e, "t", 102) == set()
    assert [d.table_id for d in drops_logged(tmp_path, 1)] == [t.table_id]
    e.crash()
    e = Engine.open(tmp_path, 1, config=cfg())  # redo skips the dropped table's records (its file is gone)
    try:
        assert [x.table_id for x in e.tables()] == [again.table_id]
        assert 101 in e.committed
        assert not relation_path(tmp_path, t.table_id).exists()
        assert statefiles.read_catalog(tmp_path).dropped == {t.table_id}
        assert e.create_table("u", {"v": "int64"}).table_id == again.table_id + 1
    finally:
        e.close()


def test_a_drop_the_catalog_has_but_the_wal_lacks_is_logged_by_the_next_catalog_change(tmp_path: Path) -> None:
    """The node died between the tombstone and the WAL record (failpoint ``engine.drop_unlogged``): the table is
    gone at once, and the record is written before the next create (here one of the same name, which must come
    after the drop in the stream) or by ``settle`` (a node calls it at start and after recovering one)."""
    e = Engine.open(tmp_path, 1, config=cfg())
    t = e.create_table("t", {"v": "int64"}, buckets=4)
    fill(e, "t", 100, range(50))
    statefiles.merge_catalog(tmp_path, [], [t.table_id], dropping=(t.table_id, 1, "t"))
    e.crash()
    assert statefiles.read_catalog(tmp_path).unlogged_drops == [(t.table_id, 1, "t")]
    e = Engine.open(tmp_path, 1, config=cfg())
    try:
        assert e.tables() == [] and drops_logged(tmp_path, 1) == []
        again = e.create_table("t", {"v": "int64"})
        assert [(d.table_id, d.name) for d in drops_logged(tmp_path, 1)] == [(t.table_id, "t")]
        kinds = [(r.kind, r.payload) for r in WalReader(node_wal_dir(tmp_path, 1), node_id=1, system_id=0)
                 if r.kind in (walrec.CATALOG_DROP, walrec.CATALOG_CREATE)]
        assert [k for k, _ in kinds][-2:] == [walrec.CATALOG_DROP, walrec.CATALOG_CREATE]
        assert walrec.decode_create_table(kinds[-1][1]).table_id == again.table_id
        assert statefiles.read_catalog(tmp_path).unlogged_drops == [] and e.settle() == []
        statefiles.merge_catalog(tmp_path, [], [again.table_id], dropping=(again.table_id, 2, "t"))
        assert e.settle() == [again.table_id]
        assert [d.table_id for d in drops_logged(tmp_path, 1)] == [t.table_id, again.table_id]
    finally:
        e.close()


def test_a_drop_whose_tombstone_cannot_be_written_does_not_happen(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    e = Engine.open(tmp_path, 1, config=cfg())
    try:
        t = e.create_table("t", {"v": "int64"})

        def full(*_a: object, **_k: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(statefiles, "merge_catalog", full)
        with pytest.raises(CatalogWriteFailed, match="nothing was created or dropped"):
            e.drop_table("t")
        monkeypatch.undo()
        assert e.table("t") == t and e.dropped == set() and drops_logged(tmp_path, 1) == []
        e.create_table("u", {"v": "int64"})  # the next catalog change does not drop it either
        assert statefiles.read_catalog(tmp_path).dropped == set()
    finally:
        e.close()


def test_a_wal_drop_the_catalog_lacks_is_redone(tmp_path: Path) -> None:
    """A catalog file restored from before the drop: the WAL record alone drops the table."""
    e = Engine.open(tmp_path, 1, config=cfg())
    e.create_table("t", {"v": "int64"})
    old = statefiles.catalog_path(tmp_path).read_bytes()
    e.drop_table("t")
    e.crash()  # redo starts before both records
    statefiles.catalog_path(tmp_path).write_bytes(old)
    e = Engine.open(tmp_path, 1, config=cfg())
    try:
        assert e.tables() == [] and e.dropped == {1}
    finally:
        e.close()
    assert statefiles.read_catalog(tmp_path).dropped == {1}  # written by the recovery's checkpoint


def test_replay_of_the_merged_stream_drops_the_table_and_ignores_its_late_changes(tmp_path: Path) -> None:
    """Node 2 changes the table after node 1 dropped it (it had not learnt of the drop: in a cluster the catalog
    lock prevents that, but a dead node's last records may still sort after the drop).  Each node writes its own
    tables (no block ownership here)."""
    shared = shared_dir(tmp_path)
    base = tmp_path / "base"
    shutil.copytree(shared, base)
    e1, e2 = open_engines(shared, cfg(), cfg())
    e1.create_table("gone", {"v": "int64"}, buckets=2)
    e1.create_table("kept", {"v": "int64"}, buckets=2)
    e1.create_table("mine", {"v": "int64"}, buckets=2)
    e2.reload_catalog()
    fill(e1, "kept", 101, range(10))
    late = e2.begin(102)
    late.insert("gone", 98, {"v": 98})
    e1.drop_table("gone")
    late.insert("gone", 99, {"v": 99})
    late.insert("mine", 99, {"v": 99})
    e2.commit(late)
    e1.close()
    e2.close()
    merged = tmp_path / "merged"
    merge(shared, merged)
    kinds = [r.kind for r in WalReader(merged, node_id=MERGED_NODE_ID, system_id=0)]
    assert walrec.CATALOG_DROP in kinds
    summary = restore(base, merged, Target())
    assert summary["tables_dropped"] == ["gone"]
    e = Engine.open(base, 1, config=cfg())
    committed, _ = statefiles.read_all_xact(base)
    e.committed |= committed
    try:
        assert [t.name for t in e.tables()] == ["kept", "mine"]
        assert keys(e, "kept", 10_000) == set(range(10))
        assert keys(e, "mine", 10_001) == {99}
        assert not relation_path(base, 1).exists()
    finally:
        e.close()


def test_a_dead_nodes_unlogged_drop_comes_before_a_new_table_of_that_name_in_the_merged_stream(
        tmp_path: Path) -> None:
    """Node 1 tombstoned ``t`` and died before its WAL record; node 2 gets the catalog lock first and makes a new
    ``t``.  Logged by node 1's recoverer only later, the drop came after the new CREATE in the stream, and a
    replica then wrote the new table's rows into the old one's PostgreSQL table (a review found it).  The holder
    of the catalog lock logs it before its own create."""
    a, b = two_engines(tmp_path)
    shared = a.shared
    t = a.create_table("t", {"v": "int64"}, buckets=2)
    statefiles.merge_catalog(shared, [], [t.table_id], dropping=(t.table_id, 1, "t"))  # drop_table's first step
    a.crash()
    b.reload_catalog()
    t2 = b.create_table("t", {"w": "int64"}, buckets=2)
    assert b.settle() == []
    b.close()
    merged = tmp_path / "merged"
    merge(shared, merged)
    order = [(r.kind, walrec.decode_create_table(r.payload).table_id if r.kind == walrec.CATALOG_CREATE
              else walrec.decode_drop_table(r.payload).table_id)
             for r in WalReader(merged, node_id=MERGED_NODE_ID, system_id=0)
             if r.kind in (walrec.CATALOG_CREATE, walrec.CATALOG_DROP)]
    assert order == [(walrec.CATALOG_CREATE, t.table_id), (walrec.CATALOG_DROP, t.table_id),
                     (walrec.CATALOG_CREATE, t2.table_id)]


def failing_catalog_writes(monkeypatch: pytest.MonkeyPatch, shared: Path, which: set[int]) -> None:
    """The n-th write of ``global/catalog`` from now (1-based) fails with ENOSPC for each n in ``which``."""
    real, n = statefiles.write_state, [0]

    def write(path: Path, value: dict[str, object]) -> None:
        if path == statefiles.catalog_path(shared):
            n[0] += 1
            if n[0] in which:
                raise OSError(errno.ENOSPC, "No space left on device")
        real(path, value)

    monkeypatch.setattr(statefiles, "write_state", write)


def two_engines(tmp_path: Path) -> tuple[Engine, Engine]:
    a, b = open_engines(shared_dir(tmp_path), cfg(), cfg())
    return a, b


def test_a_create_whose_catalog_write_fails_creates_nothing_and_takes_no_id(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a review: the table was left on its node, logged, with an id another node then took too."""
    a, b = two_engines(tmp_path)
    try:
        failing_catalog_writes(monkeypatch, a.shared, {1})
        with pytest.raises(CatalogWriteFailed, match="nothing was created"):
            a.create_table("t", {"v": "int64"})
        monkeypatch.undo()
        with pytest.raises(NoSuchTable):
            a.table("t")
        assert not relation_path(a.shared, 1).exists()
        assert [r.kind for r in WalReader(node_wal_dir(a.shared, 1), node_id=1, system_id=0)
                if r.kind == walrec.CATALOG_CREATE] == []
        assert a.create_table("t", {"v": "int64"}).table_id == 1  # the retry the message asks for works
        assert b.create_table("u", {"v": "int64"}).table_id == 2
    finally:
        a.close()
        b.close()


def test_a_created_table_whose_node_died_before_logging_it_is_used_by_nobody_until_settled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Node 1 wrote the catalog entry (marked unlogged) and died before its CATALOG_CREATE: its id is taken, but
    no node may write the table (a heap record would precede its creation in the stream) until the next holder
    of the catalog lock logs the record."""
    a, b = two_engines(tmp_path)
    monkeypatch.setattr(a, "_log_create", lambda t: True)  # dies right after the catalog write
    t = a.create_table("t", {"v": "int64"})
    monkeypatch.undo()
    a.crash()
    b.reload_catalog()
    with pytest.raises(NoSuchTable):
        b.table("t")
    assert b.create_table("u", {"v": "int64"}).table_id == t.table_id + 1  # logs t's creation first
    assert b.table("t").table_id == t.table_id
    creates = [walrec.decode_create_table(r.payload).table_id
               for r in WalReader(node_wal_dir(b.shared, 2), node_id=2, system_id=0) if r.kind == walrec.CATALOG_CREATE]
    assert creates == [t.table_id, t.table_id + 1]
    assert statefiles.read_catalog(b.shared).marked_entries() == [] and b.settle() == []
    b.close()


def test_a_drop_whose_mark_cannot_be_cleared_is_still_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a review: the drop raised after it was done, and its node went on using the table."""
    a, b = two_engines(tmp_path)
    try:
        t = a.create_table("t", {"v": "int64"})
        failing_catalog_writes(monkeypatch, a.shared, {2})  # 1: the tombstone, 2: clearing its mark
        assert a.drop_table("t") == t
        monkeypatch.undo()
        for e in (a, b):
            e.reload_catalog()
            with pytest.raises(NoSuchTable):
                e.table("t")
        assert statefiles.read_catalog(a.shared).unlogged_drops == [(t.table_id, 1, "t")]
        assert b.settle() == [t.table_id]  # logged once more: harmless
        assert len(drops_logged(a.shared, 1)) == 1 and len(drops_logged(a.shared, 2)) == 1
    finally:
        a.close()
        b.close()


def test_a_create_whose_mark_cannot_be_cleared_is_used_by_nobody_until_settled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Logged but still marked: its node must not write it either (survivors that cannot see the table would
    lose those rows if the node died), and its own restart does not bring it back before it is settled."""
    a, b = two_engines(tmp_path)
    failing_catalog_writes(monkeypatch, a.shared, {2})  # 1: the marked entry, 2: clearing the mark
    with pytest.raises(CatalogWriteFailed, match="becomes usable"):
        a.create_table("t", {"v": "int64"})
    monkeypatch.undo()
    with pytest.raises(NoSuchTable):
        a.table("t")
    a.crash()
    a = Engine.open(a.shared, 1, config=cfg())  # its WAL has the CATALOG_CREATE; the mark keeps it unused
    try:
        with pytest.raises(NoSuchTable):
            a.table("t")
        assert a.settle() == [1]
        assert a.table("t").table_id == 1
        b.reload_catalog()
        assert b.table("t").table_id == 1
    finally:
        a.close()
        b.close()


class Killed(BaseException):
    """The process dies right here (nothing after it runs)."""


def test_a_relation_file_left_by_a_create_killed_before_its_catalog_write_is_not_the_next_tables(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a review: the id stayed free, the next create took it and opened the orphan file, with the old
    table's schema and chains (every insert then failed with PageCorrupt)."""
    a, b = two_engines(tmp_path)

    def killed(*_a: object, **_k: object) -> None:
        raise Killed

    monkeypatch.setattr(statefiles, "merge_catalog", killed)
    with pytest.raises(Killed):
        a.create_table("old", {"v": "int64"}, buckets=8)
    monkeypatch.undo()
    a.crash()
    assert relation_path(b.shared, 1).exists()
    t = b.create_table("new", {"v": "int64", "w": "text(32)"}, buckets=2)
    assert t.table_id == 1
    tx = b.begin(100)
    for k in range(20):
        tx.insert("new", k, {"v": k, "w": "x"})
    b.commit(tx)
    assert keys(b, "new", 101) == set(range(20))
    b.close()


def test_a_name_whose_create_is_not_usable_yet_is_not_created_twice(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a review: with the mark of ``t`` not cleared (twice), a retried CREATE made a second ``t``."""
    a, b = two_engines(tmp_path)
    try:
        failing_catalog_writes(monkeypatch, a.shared, {2, 3})  # clearing the mark fails, in create and settle
        with pytest.raises(CatalogWriteFailed, match="becomes usable"):
            a.create_table("t", {"v": "int64"})
        with pytest.raises(TableExists, match="not usable yet"):
            a.create_table("t", {"v": "int64"})
        monkeypatch.undo()
        assert b.settle() == [1]
        assert b.table("t").table_id == 1 and [x.name for x in b.tables()] == ["t"]
    finally:
        a.close()
        b.close()


def test_a_tables_sql_description_lives_with_it_in_the_catalog_and_the_wal(tmp_path: Path) -> None:
    """The SQL port's key column name was a file keyed by the table's name, which a drop and create of that name
    on two nodes could give to the wrong table; it is part of the table's catalog entry and record now."""
    a, b = two_engines(tmp_path)
    desc = {"key": "id", "columns": ["v"], "sql_types": {"id": "int8", "v": "int4"}}
    t = a.create_table("t", {"v": "int64"}, sql=desc)
    b.reload_catalog()
    assert b.table("t").sql == desc
    a.drop_table("t")
    b.create_table("t", {"v": "int64"})  # a new t without a description: nothing of the old one's
    a.reload_catalog()
    assert a.table("t").sql is None and a.table("t").table_id != t.table_id
    a.close()
    b.crash()
    statefiles.catalog_path(a.shared).unlink()  # both tables' records come back from the WALs alone
    for e in (Engine.open(a.shared, 1, config=cfg()), Engine.open(a.shared, 2, config=cfg())):
        e.close()
    creates = [walrec.decode_create_table(r.payload) for r in WalReader(node_wal_dir(a.shared, 1), node_id=1,
                                                                         system_id=0) if r.kind == walrec.CATALOG_CREATE]
    assert creates[0].sql == desc
