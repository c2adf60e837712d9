"""Whole-table redo at once (``muheam.engine.rebuild``), with numpy arrays and with the compiled kernel: every page
it rebuilds is byte for byte the page the page-by-page redo (and so the live engine) produced; what it cannot
take it leaves out, and a second run over the result changes nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from muheam.engine import statefiles, walrec
from muheam.engine.heapops import Table, catalog_tables
from muheam.engine import rebuild
from muheam.engine.rebuild import Rebuilt, rebuild_table
from muheam.engine.redo import HeapRun
from muheam.engine.replay import Replayer
from muheam.storage import RelationFile, mvcc, relation_path
from muheam.storage.layout import BLOCK_SIZE
from tests.unit.engine.test_redo import history  # noqa: F401 - the fixture: a base copy and a live run with prunes
from tests.unit.engine.test_redo import new_engine
from walmerge import WalReader


def _runs(shared: Path) -> dict[int, HeapRun]:
    recs = [r for r in WalReader(shared / "wal" / "node-1", node_id=1, system_id=0) if r.kind in walrec.HEAP_KINDS]
    by_table: dict[int, list] = {}
    for r in recs:
        by_table.setdefault(int.from_bytes(r.payload[:4], "little"), []).append(r)
    return {tid: HeapRun.of_records(rs, dirty_lsn=0) for tid, rs in by_table.items()}


@pytest.fixture(params=["arrays", "compiled"])
def compiled(request: pytest.FixtureRequest) -> bool:
    """Both ways of rebuilding; the compiled kernel must load (numba is a dependency)."""
    if request.param == "compiled":
        assert rebuild.load_kernel(), "the compiled page redo did not load; is MUHEAM_NO_JIT set?"
        return True
    return False


def _rebuild(target: Path, t: Table, run: HeapRun, compiled: bool) -> Rebuilt:
    f = RelationFile(relation_path(target, t.table_id))
    try:
        return rebuild_table(f, t, run, statefiles.catalog_path(target), compiled=compiled)
    finally:
        f.close()


def _replayed_changes(base: Path, shared: Path, target: Path) -> int:
    """(record, page) changes of the page-by-page redo of ``shared``'s WAL onto a copy of ``base``."""
    shutil.copytree(base, target)
    replay = Replayer(target)
    for rec in WalReader(shared / "wal" / "node-1", node_id=1, system_id=0):
        replay.apply(rec)
    return replay.finish().pages_changed


def _block(shared: Path, table_id: int, block: int) -> bytes:
    data = relation_path(shared, table_id).read_bytes()
    return data[block * BLOCK_SIZE:(block + 1) * BLOCK_SIZE]


def test_rebuilt_pages_equal_the_live_ones(history: tuple[Path, Path], tmp_path: Path,  # noqa: F811
                                          compiled: bool) -> None:
    shared, base = history
    target = tmp_path / "t"
    shutil.copytree(base, target)
    tables = {t.table_id: t for t in catalog_tables(shared)}
    runs = _runs(shared)
    assert set(runs) == set(tables)
    rebuilt_pages = excluded = changes = 0
    for tid, run in runs.items():
        r = _rebuild(target, tables[tid], run, compiled)
        for i, block in enumerate(r.blocks.tolist()):
            assert bytes(r.images[i]) == _block(shared, tid, block), f"table {tid} block {block}"
        assert r.changed.all()  # the base copy is empty: every page the history touched changed
        rebuilt_pages += len(r.blocks)
        excluded += len(r.excluded)
        changes += r.changes
    assert rebuilt_pages > 5 and excluded == 0  # buckets and overflow blocks, prunes included
    assert changes == _replayed_changes(base, shared, tmp_path / "replay")


def test_second_rebuild_changes_nothing(history: tuple[Path, Path], compiled: bool) -> None:  # noqa: F811
    shared, _ = history
    tables = {t.table_id: t for t in catalog_tables(shared)}
    for tid, run in _runs(shared).items():
        r = _rebuild(shared, tables[tid], run, compiled)
        assert not r.changed.any() and r.changes == 0
        for i, block in enumerate(r.blocks.tolist()):
            assert bytes(r.images[i]) == _block(shared, tid, block)


@pytest.fixture(scope="module")
def no_prune(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Inserts, updates, deletes and row locks, and no prune (nothing is ever old enough to reclaim): every
    page is rebuilt as arrays, none one operation at a time."""
    root = tmp_path_factory.mktemp("inserts")
    e, shared = new_engine(root, 32)
    e.create_table("t", {"pad": "text(100)", "n": "int64"}, buckets=4)
    e.checkpoint()
    e.prune_rule = lambda: (0, lambda xid: mvcc.IN_PROGRESS)  # nothing dead, no lock stale: no prune
    base = root / "base"
    shutil.copytree(shared, base)
    for xid in range(101, 161):
        txn = e.begin(xid)
        for k in range(20):
            txn.insert("t", xid * 100 + k, {"pad": "x" * (k * 5), "n": k})
        if xid > 101:
            txn.update("t", (xid - 1) * 100, {"pad": "u", "n": -1})
            txn.lock("t", (xid - 1) * 100 + 1)
            txn.delete("t", (xid - 1) * 100 + 2)
        e.commit(txn)
    e.checkpoint()
    e.close()
    return shared, base


def test_without_prunes_every_page_is_rebuilt_at_once(no_prune: tuple[Path, Path], tmp_path: Path,
                                                      compiled: bool) -> None:
    shared, base = no_prune
    target = tmp_path / "t"
    shutil.copytree(base, target)
    (t,) = catalog_tables(shared)
    (run,) = _runs(shared).values()
    assert walrec.HEAP_PRUNE not in run.kind and {walrec.HEAP_UPDATE, walrec.HEAP_LOCK, walrec.HEAP_DELETE} <= set(
        run.kind.tolist())
    r = _rebuild(target, t, run, compiled)
    assert len(r.excluded) == 0 and len(r.blocks) > 4 * 2  # overflow blocks too
    assert (r.base[r.blocks > t.nbuckets] == -1).all()     # appended blocks were not in the base copy
    for i, block in enumerate(r.blocks.tolist()):
        assert bytes(r.images[i]) == _block(shared, t.table_id, block)
    assert r.changes == _replayed_changes(base, shared, tmp_path / "replay")


def test_a_damaged_page_is_left_to_the_page_by_page_redo(no_prune: tuple[Path, Path], tmp_path: Path,
                                                         compiled: bool) -> None:
    shared, base = no_prune
    target = tmp_path / "t"
    shutil.copytree(shared, target)
    (t,) = catalog_tables(shared)
    path = relation_path(target, t.table_id)
    data = bytearray(path.read_bytes())
    data[2 * BLOCK_SIZE + 100] ^= 0xFF  # block 2: checksum mismatch
    path.write_bytes(bytes(data))
    (run,) = _runs(shared).values()
    r = _rebuild(target, t, run, compiled)
    assert r.is_excluded(2) and r.row(2) == -1
    assert r.row(1) >= 0 and not r.changed.any()
    assert np.array_equal(np.sort(np.r_[r.blocks, r.excluded]), np.unique(np.r_[r.blocks, r.excluded]))


def test_staging_writes_a_chain_only_while_the_file_holds_what_it_was_built_from(
        no_prune: tuple[Path, Path], tmp_path: Path) -> None:
    """``staging.write_chain`` writes a chain's rebuilt pages (the live ones, byte for byte) and refuses -- leaving
    the chain to the page-by-page redo -- a chain whose page in the file changed since the rebuild."""
    from types import SimpleNamespace

    from muheam.recovery import staging
    from muheam.engine.buffer import BufferCache

    shared, base = no_prune
    target = tmp_path / "t"
    shutil.copytree(base, target)
    (t,) = catalog_tables(shared)
    (run,) = _runs(shared).values()
    cache = BufferCache(target, 64, wal_flush=lambda lsn: lsn, flushed_lsn=lambda: 1 << 62)
    cache.attach(t.table_id, t.schema)
    dead = SimpleNamespace(node=1, epoch=1, nrecords=len(run), run=run)
    st = staging.stage(cache, {t.table_id: t}.get, [dead])  # type: ignore[list-item]
    assert st.pages > t.nbuckets and st.key == staging.key_of([dead])  # type: ignore[list-item]
    assert staging.write_chain(st, cache, t, 1) is not None
    for block in cache.chain_blocks(t.table_id, 1, t.nbuckets):
        assert _block(target, t.table_id, block) == _block(shared, t.table_id, block)
    path = relation_path(target, t.table_id)
    data = bytearray(path.read_bytes())
    data[2 * BLOCK_SIZE + 16] ^= 1  # bucket block 2's GLSN: somebody wrote the page since
    path.write_bytes(bytes(data))
    before = path.read_bytes()
    assert staging.write_chain(st, cache, t, 2) is None
    assert path.read_bytes() == before
    cache.close()


def test_an_operation_the_page_refuses_leaves_the_page_out(no_prune: tuple[Path, Path], tmp_path: Path,
                                                            compiled: bool) -> None:
    """An insert into a slot already in use (the first insert of the history, again with a later GLSN): its page
    is left out for the page-by-page redo to report, and the other pages are rebuilt as without it."""
    shared, base = no_prune
    target = tmp_path / "t"
    shutil.copytree(base, target)
    (t,) = catalog_tables(shared)
    recs = [r for r in WalReader(shared / "wal" / "node-1", node_id=1, system_id=0) if r.kind in walrec.HEAP_KINDS]
    first = next(r for r in recs if r.kind == walrec.HEAP_INSERT)
    again = first._replace(glsn=max(r.glsn for r in recs) + 1)
    r = _rebuild(target, t, HeapRun.of_records([*recs, again], dirty_lsn=0), compiled)
    block = int.from_bytes(first.payload[4:8], "little")
    assert r.is_excluded(block) and r.row(block) == -1 and len(r.excluded) == 1
    for i, b in enumerate(r.blocks.tolist()):
        assert bytes(r.images[i]) == _block(shared, t.table_id, b)


def test_warm_up_rebuilds_every_page_both_ways() -> None:
    """What a node runs at start so that its first rebuild of a dead peer does not pay the first calls of the
    code it goes through: an insert, an update onto a new overflow block and a lock, every page rebuilt (none
    left out), with numpy arrays and with the compiled kernel."""
    from muheam.engine import _rebuild_kernel

    assert rebuild.warm_up() == 2
    assert rebuild.load_kernel()
    assert rebuild.warm_up(_rebuild_kernel) == 2


def test_a_chains_records_by_scan_equal_those_by_the_block_index(no_prune: tuple[Path, Path]) -> None:
    """A survivor finds a dead node's records for its first chains by scanning, later through a block index:
    both follow the blocks the node appended to the chain (here every overflow block: the base copy has only
    the buckets) and pick the same records, and the blocks are the chain the live engine ended with."""
    from muheam.recovery import deadwal
    from muheam.storage import Page, walk_chain

    shared, base = no_prune
    (t,) = catalog_tables(shared)
    dead = deadwal.load(shared, 1, 1 << 30, 0, {t.table_id: t}.get, start_lsn=None)
    assert dead.run is not None
    heap = RelationFile(relation_path(shared, t.table_id))
    try:
        for head in range(1, t.nbuckets + 1):
            by_scan, by_index = {head}, {head}
            dead._scans = 0
            scanned = dead.chain_records(t.table_id, by_scan)
            dead._scans = deadwal.SCAN_CHAINS
            indexed = dead.chain_records(t.table_id, by_index)
            assert by_scan == by_index and np.array_equal(scanned, indexed) and len(scanned)
            live = {p.block for p in walk_chain(head, lambda b: Page.decode(heap.read_block(b), t.schema, block=b))}
            assert by_scan == live and len(live) > 1
    finally:
        heap.close()
