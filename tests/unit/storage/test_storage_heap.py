"""Heap relation files: bucket placement, overflow chains, lookups, full scans, I/O errors, write conflicts."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from muheam.storage import (BLOCK_SIZE, DuplicateKey, GlsnRegression, Heap, KeyNotFound, Page, PageCorrupt,
                            RelationFileError, RowConflict, Schema, Snapshot, bucket_block, bucket_of, buckets_of,
                            default_nbuckets, find_visible, relation_path, walk_chain)
from muheam.storage.layout import slots_per_page
from muheam.storage.page import KIND_BUCKET, KIND_OVERFLOW

SCHEMA = Schema("acct", {"bal": "int64", "who": "text(24)"})
COMMITTED = "committed"
_ids = itertools.count()


def committed(_: int) -> str:
    return COMMITTED


def writer(xid: int) -> Snapshot:
    return Snapshot(xid, xid + 1, frozenset({xid}), xid)


READ_ALL = Snapshot(1 << 40, 1 << 40)


def test_bucket_placement_is_stable_and_spread() -> None:
    # Fixed values: the hash is part of the on-disk format, changing it would strand every stored row.
    assert [bucket_of(k, 64) for k in (0, 1, 2, -1, 1 << 62)] == [0, 37, 10, 59, 5]
    assert [bucket_of(k, 1000) for k in (0, 1, 2, -1)] == [0, 789, 730, 67]
    assert buckets_of(np.array([0, 1, 2, -1, 1 << 62]), 64).tolist() == [0, 37, 10, 59, 5]
    assert bucket_block(12345, 64) == 1 + bucket_of(12345, 64)
    counts = np.bincount(buckets_of(np.arange(64_000), 64), minlength=64)
    assert counts.min() > 800 and counts.max() < 1200
    assert bucket_of(0, 1) == 0
    assert default_nbuckets(SCHEMA, 0) == 1
    assert default_nbuckets(SCHEMA, 10_000) == -(-20_000 // slots_per_page(SCHEMA.row_width))


def test_create_open_and_refusals(tmp_path: Path) -> None:
    path = relation_path(tmp_path, 42)
    assert path == tmp_path / "base" / "42"
    with Heap.create(path, SCHEMA, table_id=42, nbuckets=8) as heap:
        assert heap.file.nblocks() == 9 and os.path.getsize(path) == 9 * BLOCK_SIZE
    with pytest.raises(RelationFileError, match="already exists"):
        Heap.create(path, SCHEMA, table_id=42, nbuckets=8)
    with Heap.open(path, table_id=42) as heap:
        assert (heap.schema, heap.nbuckets, heap.table_id) == (SCHEMA, 8, 42)
    with pytest.raises(PageCorrupt, match="table id 42, not 7"):
        Heap.open(path, table_id=7)
    with pytest.raises(RelationFileError, match="does not exist"):
        Heap.open(relation_path(tmp_path, 43))
    with open(path, "r+b") as f:
        f.truncate(5 * BLOCK_SIZE)
    with pytest.raises(RelationFileError, match="truncated"):
        Heap.open(path)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=st.sets(st.integers(-(1 << 63), (1 << 63) - 1), min_size=1, max_size=400),
       nbuckets=st.integers(1, 6), width=st.sampled_from([1, 200, 1900]))
def test_many_keys_across_buckets_and_overflow_chains(tmp_path: Path, keys: set[int], nbuckets: int,
                                                      width: int) -> None:
    schema = Schema("wide", {"n": "int64", "t": f"text({width})"})
    path = tmp_path / f"rel-{next(_ids)}"
    with Heap.create(path, schema, table_id=1, nbuckets=nbuckets, fsync=False) as heap:
        for i, k in enumerate(sorted(keys)):
            heap.insert(k, {"n": i, "t": "x" * (i % (width + 1))}, writer(3), committed)
        ordered = sorted(keys)
        expected = {k: {"n": i, "t": "x" * (i % (width + 1))} for i, k in enumerate(ordered)}
        # Every key is found, and only by reading its own bucket's chain.
        for k, row in expected.items():
            assert heap.get(k, READ_ALL, committed) == row
            chain = list(heap.chain(k))
            assert chain[0].block == heap.bucket_block(k)
            assert any(p.find(k).size for p in chain)
        missing = next(k for k in range(len(keys) + 1) if k not in keys)
        assert heap.get(missing, READ_ALL, committed) is None
        # The full scan sees each row exactly once.
        seen = dict(heap.rows(READ_ALL, committed))
        assert seen == expected and sum(len(k) for k, _ in heap.scan(READ_ALL, committed)) == len(keys)
        # Structure: buckets first, overflow blocks after, every block on exactly one chain.
        kinds = [p.kind for p in heap.blocks()]
        assert kinds[:nbuckets] == [KIND_BUCKET] * nbuckets and set(kinds[nbuckets:]) <= {KIND_OVERFLOW}
        on_chains = [p.block for b in range(1, nbuckets + 1) for p in walk_chain(b, heap.read_page)]
        assert sorted(on_chains) == list(range(1, heap.file.nblocks()))
        per_page = slots_per_page(schema.row_width)
        if len(keys) > nbuckets * per_page:
            assert heap.file.nblocks() > nbuckets + 1
    with Heap.open(path) as again:      # and it all survives close/reopen
        assert dict(again.rows(READ_ALL, committed)) == expected


def test_lookup_cost_is_the_chain_not_the_table(tmp_path: Path) -> None:
    with Heap.create(tmp_path / "r", SCHEMA, table_id=1, nbuckets=64, fsync=False) as heap:
        for k in range(3000):
            heap.insert(k, {"bal": k, "who": ""}, writer(3), committed)
        reads: list[int] = []

        def counting_read(block: int) -> Page:
            reads.append(block)
            return heap.read_page(block)

        longest = max(len(list(heap.chain(k))) for k in range(0, 3000, 97))
        for k in range(0, 3000, 97):
            reads.clear()
            hit = find_visible(heap.bucket_block(k), k, READ_ALL, committed, counting_read)
            assert hit is not None and hit[0].version(hit[1]).row["bal"] == k
            assert 1 <= len(reads) <= longest <= 3


def test_update_delete_lock_and_their_conflicts(tmp_path: Path) -> None:
    status: dict[int, str] = {}
    st_fn = status.__getitem__
    with Heap.create(tmp_path / "r", SCHEMA, table_id=1, nbuckets=2, fsync=False) as heap:
        status[3] = "in_progress"
        heap.insert(1, {"bal": 10, "who": "a"}, writer(3), st_fn)
        status[4] = "in_progress"
        t4 = Snapshot(3, 5, frozenset({3, 4}), 4)
        with pytest.raises(RowConflict) as exc:          # 3's insert not yet committed: wait for it
            heap.insert(1, {"bal": 0, "who": ""}, t4, st_fn)
        assert (exc.value.blocker, exc.value.committed) == (3, False)
        with pytest.raises(KeyNotFound):
            heap.update(1, {"bal": 0, "who": ""}, t4, st_fn)
        status[3] = COMMITTED
        with pytest.raises(DuplicateKey):                # committed after t4's snapshot, still the same key
            heap.insert(1, {"bal": 0, "who": ""}, t4, st_fn)
        status[5] = "in_progress"
        t5 = Snapshot(4, 6, frozenset({4, 5}), 5)
        with pytest.raises(DuplicateKey, match="key 1 already exists"):
            heap.insert(1, {"bal": 0, "who": ""}, t5, st_fn)
        heap.lock_row(1, t5, st_fn)
        heap.lock_row(1, t5, st_fn)                      # re-locking our own lock changes nothing
        status[6] = "in_progress"
        t6 = Snapshot(4, 7, frozenset({4, 5, 6}), 6)
        with pytest.raises(RowConflict, match="wait for it") as exc:
            heap.update(1, {"bal": 11, "who": "b"}, t6, st_fn)
        assert (exc.value.blocker, exc.value.committed) == (5, False)
        new = heap.update(1, {"bal": 12, "who": "c"}, t5, st_fn)   # lock then update by the same transaction
        old = [v for v in heap.versions(1) if v.xmin == 3][0]
        assert old.ctid == new and old.xmax == 5 and not old.lock_only
        assert heap.get(1, t5, st_fn) == {"bal": 12, "who": "c"}
        assert heap.get(1, t6, st_fn) == {"bal": 10, "who": "a"}
        status[5] = COMMITTED
        with pytest.raises(RowConflict, match="roll back and retry") as exc:
            heap.delete(1, t6, st_fn)
        assert (exc.value.blocker, exc.value.committed) == (5, True)
        status[6] = "aborted"
        status[7] = "in_progress"
        t7 = Snapshot(7, 8, frozenset({7}), 7)
        heap.delete(1, t7, st_fn)
        assert heap.get(1, t7, st_fn) is None
        with pytest.raises(KeyNotFound):
            heap.delete(1, t7, st_fn)
        heap.insert(1, {"bal": 99, "who": "again"}, t7, st_fn)     # re-insert after our own delete
        assert heap.get(1, t7, st_fn) == {"bal": 99, "who": "again"}
        status[7] = COMMITTED
        assert heap.prune(8, st_fn) == 2
        assert [v.row["bal"] for v in heap.versions(1)] == [99]
        with pytest.raises(ValueError, match="XID"):
            heap.delete(1, Snapshot(8, 8), st_fn)


def test_insert_after_a_concurrent_commit_is_a_duplicate_unless_it_deleted(tmp_path: Path) -> None:
    """A key a transaction outside the snapshot inserted or updated is 23505, as PostgreSQL says; one it
    deleted is a serialization failure (PostgreSQL lets it through; a key keeps one version any snapshot sees)."""
    status: dict[int, str] = {3: COMMITTED}
    st_fn = status.__getitem__
    with Heap.create(tmp_path / "r", SCHEMA, table_id=1, nbuckets=2, fsync=False) as heap:
        heap.insert(1, {"bal": 1, "who": "a"}, writer(3), st_fn)
        heap.insert(2, {"bal": 2, "who": "b"}, writer(3), st_fn)
        status.update({4: "in_progress", 5: "in_progress", 6: "in_progress"})
        late = Snapshot(4, 7, frozenset({4, 5, 6}), 6)    # began while 4 and 5 ran
        heap.update(1, {"bal": 10, "who": "a"}, writer(4), st_fn)
        heap.delete(2, writer(5), st_fn)
        with pytest.raises(RowConflict, match="wait for it") as exc:
            heap.insert(1, {"bal": 0, "who": ""}, late, st_fn)
        assert exc.value.blocker == 4
        status.update({4: COMMITTED, 5: COMMITTED})
        with pytest.raises(DuplicateKey, match="key 1 already exists"):
            heap.insert(1, {"bal": 0, "who": ""}, late, st_fn)
        with pytest.raises(RowConflict, match="roll back and retry") as exc:
            heap.insert(2, {"bal": 0, "who": ""}, late, st_fn)
        assert (exc.value.blocker, exc.value.committed) == (5, True)
        status[8] = "in_progress"
        heap.insert(2, {"bal": 20, "who": "c"}, writer(8), st_fn)   # a snapshot that sees the delete may insert
        assert heap.get(2, writer(8), st_fn) == {"bal": 20, "who": "c"}


def test_full_chain_is_pruned_before_growing(tmp_path: Path) -> None:
    schema = Schema("w", {"t": "text(1900)"})
    status = {3: COMMITTED, 4: COMMITTED}
    with Heap.create(tmp_path / "r", schema, table_id=1, nbuckets=1, fsync=False) as heap:
        for k in range(4):
            heap.insert(k, {"t": "a"}, writer(3), status.__getitem__)
        for k in range(4):
            heap.delete(k, writer(4), status.__getitem__)
        assert heap.file.nblocks() == 2
        status[5] = "in_progress"
        heap.insert(10, {"t": "b"}, writer(5), status.__getitem__, oldest_xmin=5)
        assert heap.file.nblocks() == 2            # reused a pruned slot instead of adding a block
        heap.insert(11, {"t": "b"}, writer(5), status.__getitem__, oldest_xmin=5)
        assert heap.file.nblocks() == 2


def test_changes_stamp_the_glsn_and_never_go_back(tmp_path: Path) -> None:
    with Heap.create(tmp_path / "r", SCHEMA, table_id=1, nbuckets=1, fsync=False) as heap:
        heap.insert(1, {"bal": 1, "who": ""}, writer(3), committed, glsn=(5 << 16) | 1)
        assert heap.read_page(1).glsn == (5 << 16) | 1
        heap.update(1, {"bal": 2, "who": ""}, writer(4), committed, glsn=(6 << 16) | 2)
        assert heap.read_page(1).glsn == (6 << 16) | 2
        with pytest.raises(GlsnRegression, match="block 1"):
            heap.delete(1, writer(5), committed, glsn=(6 << 16) | 1)
        assert heap.get(1, READ_ALL, committed) == {"bal": 2, "who": ""}   # the refused change was not written


def test_corrupt_or_broken_blocks_are_reported_with_their_number(tmp_path: Path) -> None:
    path = tmp_path / "r"
    with Heap.create(path, SCHEMA, table_id=1, nbuckets=2, fsync=False) as heap:
        for k in range(300):
            heap.insert(k, {"bal": k, "who": ""}, writer(3), committed)
        victim = heap.bucket_block(7)
    with open(path, "r+b") as f:
        f.seek(victim * BLOCK_SIZE + 1000)
        b = f.read(1)
        f.seek(victim * BLOCK_SIZE + 1000)
        f.write(bytes([b[0] ^ 0x40]))
    with Heap.open(path) as heap:
        with pytest.raises(PageCorrupt, match=f"block {victim}: checksum mismatch") as exc:
            heap.get(7, READ_ALL, committed)
        assert exc.value.block == victim and exc.value.path == path
        with pytest.raises(PageCorrupt):
            list(heap.rows(READ_ALL, committed))
    # A chain that loops back is caught instead of spinning forever.
    with Heap.open(path) as heap:
        other = 3 - victim
        chain = list(walk_chain(other, heap.read_page))
        assert len(chain) >= 2
        chain[-1].header["next_block"] = chain[-1].block      # a self-loop the setter would refuse
        heap.write_page(chain[-1])
        with pytest.raises(PageCorrupt, match="loops"):
            list(heap.chain(next(k for k in range(300) if heap.bucket_block(k) == other)))


def test_relation_file_io(tmp_path: Path) -> None:
    from muheam.storage import RelationFile
    with RelationFile.create(tmp_path / "x" / "f") as f:
        assert f.nblocks() == 0
        f.write_block(2, b"\1" * BLOCK_SIZE)             # writing past the end leaves a zero hole
        assert f.nblocks() == 3 and f.read_block(1) == bytes(BLOCK_SIZE)
        f.fsync()
        with pytest.raises(RelationFileError, match="beyond the end"):
            f.read_block(3)
        with pytest.raises(ValueError):
            f.write_block(0, b"short")
    with pytest.raises(RelationFileError, match="closed"):
        f.read_block(0)



def test_preallocate_reserves_space_and_changes_no_byte(tmp_path: Path) -> None:
    """What the recoverer does before writing a dead node's appended blocks: disk space for them, while the
    file's size and every byte in it stay as they were (another node may be reading or writing them)."""
    import sys

    from muheam.storage import RelationFile
    with RelationFile.create(tmp_path / "f") as f:
        f.write_block(0, b"\1" * BLOCK_SIZE)
        f.write_block(3, b"\2" * BLOCK_SIZE)  # blocks 1 and 2: a hole
        before = (tmp_path / "f").read_bytes()
        allocated = os.fstat(f._fd()).st_blocks
        ok = f.preallocate(1, 64)
        assert (tmp_path / "f").read_bytes() == before and f.nblocks() == 4
        if sys.platform == "linux":
            assert ok and os.fstat(f._fd()).st_blocks * 512 >= allocated * 512 + 60 * BLOCK_SIZE
        assert not f.preallocate(5, 5)
        f.write_block(40, b"\3" * BLOCK_SIZE)
        assert f.nblocks() == 41 and f.read_block(40) == b"\3" * BLOCK_SIZE and f.read_block(39) == bytes(BLOCK_SIZE)
