"""Point-in-time recovery targets and refusals, on two engines writing two node WALs into one shared directory.

The engines share one Lamport counter, so their WALs interleave in GLSN order as a cluster's do; each node writes
its own table (no block ownership needed).  Every check opens the restored directory with a fresh engine.
"""

from __future__ import annotations

import itertools
import shutil
import time
from pathlib import Path

import pytest

from muheam.engine import Engine, EngineConfig, statefiles, walrec
from muheam.engine.replay import Target
from muheam.recovery.restore import RestoreError, restore
from walmerge import MERGED_NODE_ID, WalReader
from walmerge.merge import merge
from tests.support.cluster import snapshot_tree


def cfg() -> EngineConfig:
    return EngineConfig(cache_pages=16, segment_size=1 << 16)


class History:
    """Two nodes, 24 single-insert transactions alternating between them, a few deleted again."""

    def __init__(self, root: Path) -> None:
        self.shared = root / "shared"
        (self.shared / "global").mkdir(parents=True)
        (self.shared / "global" / "control").write_text("{}")
        self.base = root / "base"
        shutil.copytree(self.shared, self.base)
        counter = itertools.count(1)
        engines = {n: Engine.open(self.shared, n, lamport=lambda: next(counter), config=cfg()) for n in (1, 2)}
        for n in (1, 2):
            engines[1].create_table(f"t{n}", {"v": "int64"})
        engines[2].reload_catalog()
        self.commits: list[tuple[int, int, int]] = []  # (xid, node, key) in commit order
        xid = 100
        for i in range(24):
            n = 1 + i % 2
            xid += 1
            txn = engines[n].begin(xid)
            txn.insert(f"t{n}", i, {"v": i})
            if i == 7:
                txn.abort()
                self.aborted = xid
                continue
            engines[n].commit(txn)
            self.commits.append((xid, n, i))
            time.sleep(0.003)
        for e in engines.values():
            e.close()
        self.merged = root / "merged"
        merge(self.shared, self.merged)
        recs = list(WalReader(self.merged, node_id=MERGED_NODE_ID, system_id=0))
        self.commit_recs = [r for r in recs if r.kind == walrec.COMMIT]
        assert [r.xid for r in self.commit_recs] == [x for x, _, _ in self.commits]

    def restored(self, root: Path, target: Target) -> tuple[dict[str, object], set[int]]:
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(self.base, root)
        summary = restore(root, self.merged, target)
        keys: set[int] = set()
        e = Engine.open(root, 1, config=cfg())
        committed, aborted = statefiles.read_all_xact(root)  # every node's outcomes, as a cluster node loads them
        e.committed |= committed
        e.aborted |= aborted
        try:
            txn = e.begin(10_000)
            for n in (1, 2):
                keys |= {k for k, _ in txn.scan(f"t{n}")}
            txn.abort()
        finally:
            e.close()
        return summary, keys


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    return History(tmp_path_factory.mktemp("pitr"))


def test_until_xid_keeps_exactly_the_commits_up_to_it(history: History, tmp_path: Path) -> None:
    xid, _, _ = history.commits[10]
    summary, keys = history.restored(tmp_path / "r", Target(xid=xid))
    assert keys == {k for _, _, k in history.commits[:11]}
    assert summary["target_xid"] == xid


def test_until_glsn_and_until_time(history: History, tmp_path: Path) -> None:
    rec = history.commit_recs[5]
    _, keys = history.restored(tmp_path / "g", Target(glsn=rec.glsn))
    assert keys == {k for _, _, k in history.commits[:6]}
    t = walrec.decode_commit_time(history.commit_recs[14].payload)
    assert t is not None
    _, keys = history.restored(tmp_path / "t", Target(time_us=t))
    assert keys == {k for _, _, k in history.commits[:15]}


def test_whole_stream_and_new_work_stays_above_the_archive(history: History, tmp_path: Path) -> None:
    root = tmp_path / "all"
    summary, keys = history.restored(root, Target())
    assert keys == {k for _, _, k in history.commits}
    assert summary["aborted"] >= 1 and summary["committed"] == len(history.commits)
    e = Engine.open(root, 2, config=cfg())
    try:
        assert e.last_lamport >= max(r.glsn >> 16 for r in history.commit_recs)
    finally:
        e.close()


def test_refusals_change_nothing(history: History, tmp_path: Path) -> None:
    root = tmp_path / "x"
    shutil.copytree(history.base, root)
    before = snapshot_tree(root)
    with pytest.raises(RestoreError, match="no COMMIT"):
        restore(root, history.merged, Target(xid=999_999))
    with pytest.raises(RestoreError, match="aborted"):
        restore(root, history.merged, Target(xid=history.aborted))
    assert snapshot_tree(root) == before
    # a base copy newer than the target: the shared directory after all the work, target early on
    late = tmp_path / "late"
    shutil.copytree(history.shared, late)
    before = snapshot_tree(late)
    with pytest.raises(RestoreError, match="newer than the target"):
        restore(late, history.merged, Target(xid=history.commits[2][0]))
    assert snapshot_tree(late) == before
    with pytest.raises(RestoreError, match="not a MUHEAM shared directory"):
        restore(tmp_path / "nothing", history.merged, Target())


def test_base_newer_than_the_stream_end_is_refused_for_every_form(history: History, tmp_path: Path) -> None:
    """Issue 16, item 8: with no target, or one at or past the stream's end, the stop is the end of the stream,
    and a base copy newer than that end must be refused as one newer than a target is (it was replayed onto and
    left a cluster whose every write failed).  Newer by its checkpoint, or -- a copy taken while the cluster ran,
    before its next checkpoint -- by its WAL's tail."""
    last_xid = history.commit_recs[-1].xid
    last_glsn = max(r.glsn for r in WalReader(history.merged, node_id=MERGED_NODE_ID, system_id=0))
    forms = [Target(), Target(time_us=10**36), Target(glsn=last_glsn + (1_000_000 << 16)), Target(xid=last_xid)]
    late = tmp_path / "late"
    shutil.copytree(history.shared, late)
    counter = itertools.count((last_glsn >> 16) + 10)
    e = Engine.open(late, 1, lamport=lambda: next(counter), config=cfg())
    txn = e.begin(5000)
    txn.insert("t1", 1000, {"v": 1})
    e.commit(txn)
    e.close()
    hot = tmp_path / "hot"
    shutil.copytree(late, hot)
    for name in ("checkpoint-node-1", "checkpoint-node-2"):  # as if copied before node 1's next checkpoint
        shutil.copy2(history.shared / "global" / name, hot / "global" / name)
    for base, sign in ((late, "last checkpoint"), (hot, "WAL holds a record")):
        before = snapshot_tree(base)
        for target in forms:
            with pytest.raises(RestoreError, match=f"newer than the end of the merged stream.*{sign}"):
                restore(base, history.merged, target)
            assert snapshot_tree(base) == before, target
            assert not list(base.glob("pre-recovery-*"))
    # the same forms onto the base taken before the archive replay the whole stream
    for target in forms[1:]:
        _, keys = history.restored(tmp_path / "ok", target)
        assert keys == {k for _, _, k in history.commits}, target
