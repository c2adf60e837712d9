"""Engine: catalog, transactions, conflicts and waits, group commit, WAL damage at open, state-file checks."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

import pytest

from muheam.engine import (Deadlock, Engine, EngineConfig, NoSuchTable, SerializationFailure, StateFileCorrupt,
                           TableExists, TransactionError, WalDamaged)
from muheam.engine import statefiles
from muheam.engine.replay import wal_tail_glsn
from muheam.storage import DuplicateKey, KeyNotFound, RowConflict, RowValueError, SchemaError, ValueOutOfRange
from walmerge import RecordKind, WalReader, node_wal_dir, segment_name
from walmerge.record import HEADER_SIZE

COLS = {"balance": "int64", "name": "text(16)", "x": "float64"}


def cfg(**kw: object) -> EngineConfig:
    base: dict[str, object] = {"cache_pages": 16, "segment_size": 1 << 16}
    base.update(kw)
    return EngineConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def eng(shared: Path) -> Iterator[Engine]:
    e = Engine.open(shared, 1, config=cfg())
    yield e
    e.crash()


def row(b: int, name: str = "n", x: float = 0.5) -> dict[str, object]:
    return {"balance": b, "name": name, "x": x}


def test_catalog_create_list_lookup_and_recover(shared: Path) -> None:
    e = Engine.open(shared, 1, config=cfg())
    t = e.create_table("accounts", COLS, expected_rows=1000)
    e.create_table("other", {"v": "int64"})
    assert [x.name for x in e.tables()] == ["accounts", "other"]
    assert e.table("accounts") == t and e.table(t.table_id) == t
    with pytest.raises(TableExists, match="accounts"):
        e.create_table("accounts", COLS)
    with pytest.raises(NoSuchTable, match="nope"):
        e.table("nope")
    with pytest.raises(SchemaError):
        e.create_table("bad", {"a": "int32"})
    e.crash()
    statefiles.catalog_path(shared).unlink()     # the catalog comes back from the WAL alone
    e = Engine.open(shared, 1, config=cfg())
    assert [(x.table_id, x.name, x.schema, x.nbuckets) for x in e.tables()] == \
        [(t.table_id, "accounts", t.schema, t.nbuckets), (2, "other", e.table("other").schema, 1)]
    e.close()
    e = Engine.open(shared, 1, config=cfg())
    assert len(e.tables()) == 2
    e.close()


def test_crud_visibility_and_errors(eng: Engine) -> None:
    eng.create_table("a", COLS)
    t1 = eng.begin(10)
    t1.insert("a", 1, row(100, "one"))
    t1.insert("a", 2, row(200))
    with pytest.raises(DuplicateKey):
        t1.insert("a", 1, row(1))
    with pytest.raises(RowValueError):
        t1.insert("a", 3, {"balance": "x", "name": "n", "x": 1.0})
    with pytest.raises(KeyNotFound):
        t1.update("a", 99, {"balance": 1})
    t1.add("a", 1, "balance", 5)
    t1.add("a", 1, "x", 1.5)
    assert t1.get("a", 1) == {"balance": 105, "name": "one", "x": 2.0}
    with pytest.raises(RowValueError):
        t1.add("a", 1, "name", 1)
    t1.add("a", 2, "x", 1e308)
    with pytest.raises(ValueOutOfRange, match="overflow"):  # two finite doubles past the range: not inf stored
        t1.add("a", 2, "x", 1.7e308)
    t1.add("a", 2, "x", -1e308)
    assert t1.get("a", 2) == {"balance": 200, "name": "n", "x": (0.5 + 1e308) - 1e308}  # unchanged by the failures
    reader = eng.begin(11)                # snapshot while 10 runs: sees nothing of it
    assert reader.get("a", 1) is None
    assert t1.commit() == frozenset()
    assert reader.get("a", 1) is None      # repeatable read
    reader.commit()
    t2 = eng.begin(12)
    assert t2.get("a", 1) == {"balance": 105, "name": "one", "x": 2.0}
    t2.delete("a", 2)
    t2.update("a", 1, {"name": "uno"})
    assert sorted(t2.scan("a")) == [(1, {"balance": 105, "name": "uno", "x": 2.0})]
    t2.abort()
    t3 = eng.begin(13)
    assert sorted(k for k, _ in t3.scan("a")) == [1, 2]
    assert t3.get("a", 1)["name"] == "one"  # type: ignore[index]
    t3.commit()
    with pytest.raises(TransactionError, match="already committed"):
        t3.get("a", 1)
    with pytest.raises(TransactionError, match="already used"):
        eng.begin(13)


def test_row_conflict_wait_wake_serialization_and_deadlock(eng: Engine) -> None:
    eng.create_table("a", COLS)
    t = eng.begin(3)
    t.insert("a", 1, row(0))
    t.insert("a", 2, row(0))
    t.commit()
    woken: list[tuple[int, str, frozenset[int]]] = []
    eng.on_end = lambda x, outcome, w: woken.append((x, outcome, w))
    a, b = eng.begin(4), eng.begin(5)
    a.add("a", 1, "balance", 1)
    b.add("a", 2, "balance", 1)
    with pytest.raises(RowConflict) as ei:
        b.add("a", 1, "balance", 1)       # 5 waits for 4
    assert ei.value.blocker == 4 and not ei.value.committed
    with pytest.raises(Deadlock):
        a.add("a", 2, "balance", 1)       # 4 -> 5 -> 4
    assert a.abort() == frozenset({5})
    assert woken[-1] == (4, "aborted", frozenset({5}))
    b.add("a", 1, "balance", 1)           # the blocker aborted: retry succeeds
    c = eng.begin(6)
    with pytest.raises(RowConflict):
        c.delete("a", 1)
    assert b.commit() == frozenset({6})
    with pytest.raises(SerializationFailure, match="roll back|retry"):
        c.delete("a", 1)                  # first updater won
    c.abort()
    d = eng.begin(7)
    d.lock("a", 1)
    e = eng.begin(8)
    with pytest.raises(RowConflict):
        e.update("a", 1, {"balance": 9})
    d.commit()                            # a finished lock does not block
    e.update("a", 1, {"balance": 9})
    e.commit()
    f = eng.begin(9)
    assert f.get("a", 1) == row(9)
    assert f.get("a", 2) == row(1)
    f.commit()


def test_group_commit_batch_and_threads(eng: Engine) -> None:
    eng.create_table("a", COLS)
    txns = [eng.begin(x) for x in range(3, 53)]
    for i, t in enumerate(txns):
        t.insert("a", i, row(i))
    before = eng.wal.fsync_count
    eng.commit_batch(txns)
    assert eng.wal.fsync_count - before == 1
    n, xid = 200, iter(range(100, 100 + 400))
    lock = threading.Lock()
    before = eng.wal.fsync_count

    def worker(k0: int) -> None:
        for k in range(k0, k0 + n // 4):
            with lock:
                t = eng.begin(next(xid))
            t.insert("a", 1000 + k, row(k))
            t.commit()

    ths = [threading.Thread(target=worker, args=(i * n // 4,)) for i in range(4)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    assert eng.wal.fsync_count - before <= n
    t = eng.begin(999)
    assert sum(1 for _ in t.scan("a")) == 50 + n


def _commits(shared: Path, n: int) -> list[int]:
    e = Engine.open(shared, 1, config=cfg())
    e.create_table("a", COLS)
    for i in range(n):
        t = e.begin(3 + i)
        t.insert("a", i, row(i))
        t.commit()
    e.crash()
    recs = WalReader(node_wal_dir(shared, 1), node_id=1, system_id=0).read_all()
    return [r.lsn for r in recs if r.kind == RecordKind.COMMIT]


def _damage(shared: Path, lsn: int) -> tuple[int, Path]:
    """Flip a byte inside node 1's record at ``lsn``; returns its segment's start and file."""
    seg = lsn - lsn % (1 << 16)
    path = node_wal_dir(shared, 1) / segment_name(seg)
    data = bytearray(path.read_bytes())
    data[lsn - seg + 9] ^= 0xFF
    path.write_bytes(bytes(data))
    return seg, path


def test_corrupt_wal_refuses_then_accepts_data_loss(shared: Path) -> None:
    commits = _commits(shared, 40)
    bad = commits[20]
    seg, path = _damage(shared, bad)
    with pytest.raises(WalDamaged) as ei:
        Engine.open(shared, 1, config=cfg())
    assert ei.value.path == path and ei.value.offset == bad - seg
    assert str(path) in str(ei.value) and f"offset {bad - seg}" in str(ei.value)
    e = Engine.open(shared, 1, config=cfg(), accept_data_loss=True)
    assert e.recovery.data_loss and e.recovery.records_lost >= 19 and e.recovery.bytes_lost > 0
    t = e.begin(1000)
    assert sorted(k for k, _ in t.scan("a")) == list(range(20))
    t.commit()
    e.close()
    e = Engine.open(shared, 1, config=cfg())    # clean from now on
    assert e.recovery.data_loss is None
    e.close()


def test_damage_before_the_checkpoint_does_not_stop_the_node_and_is_reported(
        shared: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A record damaged before the node's last checkpoint is not needed by its crash recovery, but the WAL
    writer read the whole last segment to find its end and refused it: the node did not start, with or without
    accept_data_loss (which would have cut away the checkpoint and everything after it) -- a black-box test.
    Now the writer continues from the checkpoint, and the damage is reported for what it affects: merges and
    archive recovery through it."""
    commits = _commits(shared, 40)
    e = Engine.open(shared, 1, config=cfg())
    e.close()  # its shutdown checkpoint is past every commit
    bad = commits[20]
    seg, path = _damage(shared, bad)
    with caplog.at_level("WARNING"):
        e = Engine.open(shared, 1, config=cfg())
    t = e.begin(1000)
    assert sorted(k for k, _ in t.scan("a")) == list(range(40))  # nothing lost: the pages hold it
    t.insert("a", 99, row(99))
    t.commit()
    # the node's WAL tail, as a joining node or a merge sees it, is its newest record, not the last one before
    # the damage (a joining node took such a peer for a copy of the directory that does not move: a review)
    ptr = statefiles.read_checkpoint(shared, 1)
    assert ptr is not None
    newest = WalReader(node_wal_dir(shared, 1), node_id=1, system_id=0, start_lsn=ptr.redo_lsn).read_all()[-1]
    assert wal_tail_glsn(shared, 1, 0) == newest.glsn
    e.close()
    assert any("before its checkpoint" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records), \
        [r.getMessage() for r in caplog.records]


def test_a_checkpoint_pointer_at_a_records_unaligned_end_reads_the_records_after_it(shared: Path) -> None:
    """Survivors and whole-cluster recovery set a node's pointer to the end of the last record they applied,
    which is not where the next record starts (records start 8-aligned).  A reader started there took the
    padding for damage once records followed (a zombie incarnation's, fenced): the node did not start (a
    review found it)."""
    _commits(shared, 6)
    recs = WalReader(node_wal_dir(shared, 1), node_id=1, system_id=0).read_all()
    first = next(r for r in recs[:-2] if (r.lsn + HEADER_SIZE + len(r.payload)) % 8)  # records follow it
    end = first.lsn + HEADER_SIZE + len(first.payload)
    statefiles.write_checkpoint(shared, 1, statefiles.CheckpointPointer(end, first.glsn))
    e = Engine.open(shared, 1, config=cfg())  # the records after the pointer are read, not taken for damage
    assert e.recovery.data_loss is None
    e.close()


def test_torn_tail_is_cut_and_logged(shared: Path, caplog: pytest.LogCaptureFixture) -> None:
    commits = _commits(shared, 10)
    last = commits[-1]
    seg = last - last % (1 << 16)
    path = node_wal_dir(shared, 1) / segment_name(seg)
    data = bytearray(path.read_bytes())
    data[last - seg + 20: last - seg + 40] = bytes(20)     # the last record half written
    path.write_bytes(bytes(data))
    e = Engine.open(shared, 1, config=cfg())
    assert e.recovery.torn_tail and "torn" in caplog.text
    t = e.begin(1000)
    assert sorted(k for k, _ in t.scan("a")) == list(range(9))
    e.close()


def test_damaged_state_file_is_refused(shared: Path) -> None:
    Engine.open(shared, 1, config=cfg()).close()
    p = statefiles.checkpoint_path(shared, 1)
    data = bytearray(p.read_bytes())
    data[-1] ^= 1
    p.write_bytes(bytes(data))
    with pytest.raises(StateFileCorrupt, match="CRC"):
        Engine.open(shared, 1, config=cfg())


def test_a_failed_state_write_leaves_no_temporary_copy(shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk at the fsync of a state file: the error reaches the caller, the old file is whole, and the
    half-written temporary copy is gone (it used to stay in the shared directory for good)."""
    import errno
    import os

    Engine.open(shared, 1, config=cfg()).close()
    p = statefiles.checkpoint_path(shared, 1)
    before = p.read_bytes()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        statefiles.write_state(p, {"redo_lsn": 1, "glsn": 1})
    monkeypatch.undo()
    assert p.read_bytes() == before
    assert [f.name for f in p.parent.iterdir() if f.name.endswith(".tmp")] == []


def test_the_leftovers_of_killed_state_writers_are_swept_by_age(shared: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer killed between writing its temporary copy and renaming it leaves ``<file>.<pid>.tmp``.  A node
    opening its engine removes such copies once they are old (the pid may be a live writer on another machine,
    so a fresh one is left alone), and nothing else.  Age is by the file system's clock: this machine's running
    two hours ahead must not make a fresh copy look old (a review)."""
    import os
    import time

    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 7200)

    Engine.open(shared, 1, config=cfg()).close()
    old = [shared / "global" / "catalog.4242.tmp", shared / "xact" / "node-2.77.tmp"]
    fresh = shared / "global" / "checkpoint-node-2.99.tmp"
    other = shared / "global" / "notes.tmp"
    for f in [*old, fresh, other]:
        f.write_bytes(b"half")
    stale = real_time() - statefiles.STALE_TMP_S - 60
    for f in [*old, other]:
        os.utime(f, (stale, stale))
    Engine.open(shared, 1, config=cfg()).close()
    assert [f.exists() for f in old] == [False, False]
    assert fresh.exists() and other.exists()


def test_redo_from_an_older_checkpoint_is_idempotent(shared: Path) -> None:
    """Records whose changes already reached the pages are skipped by the page-GLSN check."""
    e = Engine.open(shared, 1, config=cfg(cache_pages=4))
    e.create_table("a", COLS, expected_rows=300)
    old_ptr = statefiles.checkpoint_path(shared, 1).read_bytes()
    xid = 3
    for k in range(300):
        t = e.begin(xid)
        xid += 1
        t.insert("a", k, row(k))
        if k % 2:
            t.update("a", k, row(-k))
        t.commit()
    e.checkpoint()                        # every change is on the pages now
    for k in range(0, 300, 3):
        t = e.begin(xid)
        xid += 1
        t.delete("a", k)
        t.commit()
    e.crash()
    statefiles.checkpoint_path(shared, 1).write_bytes(old_ptr)   # redo everything since the first checkpoint
    e = Engine.open(shared, 1, config=cfg(cache_pages=4))
    assert e.recovery.records_replayed > 700
    t = e.begin(xid)
    want = {k: row(-k if k % 2 else k) for k in range(300) if k % 3}
    assert dict(t.scan("a")) == want
    t.commit()
    e.close()


def test_a_gated_checkpoint_leaves_the_redo_pointer_until_it_is_published(shared: Path) -> None:
    """With ``pointer_gate`` set (a cluster member), a checkpoint hands its redo pointer over instead of persisting
    it: a crash before ``publish_checkpoint`` redoes from the older pointer, COMMIT records behind the newer one
    included; an older pointer is never published over a newer one; ``close`` persists its own."""
    e = Engine.open(shared, 1, config=cfg())
    e.create_table("a", COLS)
    first = statefiles.read_checkpoint(shared, 1)
    handed: list[statefiles.CheckpointPointer] = []
    e.pointer_gate = handed.append
    t = e.begin(3)
    t.insert("a", 1, row(1))
    t.commit()
    lsn = e.checkpoint()
    assert [p.redo_lsn for p in handed] == [lsn]
    assert statefiles.read_checkpoint(shared, 1) == first      # not persisted yet
    e.crash()
    e = Engine.open(shared, 1, config=cfg())
    assert e.recovery.redo_start == (first.redo_lsn if first else None) and e.recovery.records_replayed >= 2
    assert e.local_status(3) == "committed"
    e.pointer_gate = handed.append
    e.checkpoint()
    newer = handed[1]
    assert newer.redo_lsn > handed[0].redo_lsn
    e.publish_checkpoint(newer)
    e.publish_checkpoint(handed[0])                           # late, older: ignored
    assert statefiles.read_checkpoint(shared, 1) == newer
    e.close()                                                 # the shutdown checkpoint is persisted at once
    assert statefiles.read_checkpoint(shared, 1).redo_lsn > newer.redo_lsn


def test_maybe_checkpoint_by_time_and_by_wal_volume(shared: Path) -> None:
    e = Engine.open(shared, 1, config=cfg(checkpoint_interval=10.0, checkpoint_wal_bytes=1 << 20))
    e.create_table("a", COLS)
    assert not e.maybe_checkpoint(100.0)
    assert not e.maybe_checkpoint(105.0)
    assert e.maybe_checkpoint(110.5)
    ptr = statefiles.read_checkpoint(shared, 1)
    assert ptr is not None and ptr.redo_lsn == e.wal.last_lsn
    e.config.checkpoint_wal_bytes = 2000
    t = e.begin(3)
    for k in range(40):
        t.insert("a", k, row(k))
    t.commit()
    assert e.maybe_checkpoint(111.0)
    e.close()
