"""verify: clean inputs and merged output pass; a flipped byte anywhere in an input is reported with its file
and offset; a deleted segment is named; XID rules and the optional callbacks catch what they promise."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from walmerge import RecordKind, WalWriter
from walmerge.merge import merge
from walmerge.segment import SEGMENT_HEADER_SIZE, list_segments
from walmerge.verify import Status, verify

from tests.unit.walmerge.test_walmerge_merge import SYS, Spec, write_cluster

SEG = 4096


def cluster(root: Path, n: int = 150, seed: int = 0) -> None:
    rnd = random.Random(seed)
    specs: list[Spec] = [(rnd.randrange(3), rnd.random() < 0.2, rnd.randrange(20, 400), False) for _ in range(n)]
    write_cluster(root, specs, seg=SEG, seed=seed)


def test_clean_inputs_and_output(tmp_path: Path) -> None:
    cluster(tmp_path)
    merge(tmp_path, tmp_path / "out")
    report = verify(tmp_path, tmp_path / "out")
    assert report.status is Status.CLEAN, report.problems
    assert report.exit_code == 0
    assert {s.name for s in report.streams} == {"node-1", "node-2", "node-3", "merged"}
    assert verify(tmp_path).status is Status.CLEAN
    assert verify(output=tmp_path / "out").status is Status.CLEAN


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_flipped_byte_in_any_input_is_located(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cluster(root)
        node = data.draw(st.integers(1, 3))
        segs = list_segments(root / "wal" / f"node-{node}")
        seg_start, path = data.draw(st.sampled_from(segs))
        raw = bytearray(path.read_bytes())
        used = len(raw.rstrip(b"\0"))
        offset = data.draw(st.integers(0, max(0, used - 1)))
        raw[offset] ^= 1 << data.draw(st.integers(0, 7))
        path.write_bytes(bytes(raw))
        report = verify(root)
        assert report.status is not Status.CLEAN
        if report.status is Status.PROBLEMS:
            p = report.problems[0]
            assert p.file == path.name and p.stream == f"node-{node}"
            assert p.offset is not None and p.offset <= offset
            # the problem points at the damaged record (or the segment header)
            assert offset < SEGMENT_HEADER_SIZE or offset - p.offset < 460


def test_deleted_segment_is_named(tmp_path: Path) -> None:
    cluster(tmp_path, n=300)
    segs = list_segments(tmp_path / "wal" / "node-2")
    assert len(segs) >= 3
    victim = segs[1][1]
    victim.unlink()
    report = verify(tmp_path)
    assert report.status is Status.PROBLEMS and report.exit_code == 1
    assert any(f"first missing WAL segment is {victim.name}" in p.what and p.file == victim.name
               for p in report.problems)
    # the rest of the stream is still verified: records after the gap are counted
    info = next(s for s in report.streams if s.name == "node-2")
    assert info.records > 0


def test_unusable_inputs(tmp_path: Path) -> None:
    assert verify(tmp_path).status is Status.UNUSABLE
    assert verify(tmp_path).exit_code == 2
    cluster(tmp_path, n=10)
    assert verify(tmp_path, system_id=SYS + 1).status is Status.UNUSABLE


def test_output_that_does_not_match_inputs(tmp_path: Path) -> None:
    cluster(tmp_path)
    merge(tmp_path, tmp_path / "out", fences={1: [(1, 0)]})  # node 1 fenced away entirely
    assert verify(tmp_path, tmp_path / "out").status is Status.PROBLEMS
    assert verify(tmp_path, tmp_path / "out", fences={1: [(1, 0)]}).status is Status.CLEAN


def _xid_cluster(root: Path, rows: list[tuple[int, int, int]]) -> None:
    """rows: (node, kind, xid), written with one shared increasing clock."""
    writers = {k: WalWriter(root / "wal" / f"node-{k}", node_id=k, system_id=SYS, epoch=1, segment_size=SEG)
               for k in {r[0] for r in rows}}
    for t, (node, kind, xid) in enumerate(rows, start=1):
        writers[node].append(kind, b"x", lamport=t, xid=xid)
    for w in writers.values():
        w.close()


def test_xid_rules(tmp_path: Path) -> None:
    H, C, A = RecordKind.HEAP_INSERT, RecordKind.COMMIT, RecordKind.ABORT
    ok = tmp_path / "ok"
    _xid_cluster(ok, [(1, H, 10), (2, H, 20), (1, C, 10), (2, A, 20), (1, A, 20), (2, H, 21), (1, A, 21)])
    assert verify(ok).status is Status.CLEAN  # a survivor aborting another node's XID is fine
    twice = tmp_path / "twice"
    _xid_cluster(twice, [(1, H, 10), (2, H, 10), (1, C, 10)])
    assert any("from node 1 and node 2" in p.what for p in verify(twice).problems)
    reuse = tmp_path / "reuse"
    _xid_cluster(reuse, [(1, H, 10), (1, C, 10), (1, H, 10)])
    assert any("after its COMMIT/ABORT" in p.what for p in verify(reuse).problems)
    both = tmp_path / "both"
    _xid_cluster(both, [(1, H, 10), (1, C, 10), (2, A, 10)])
    assert any("two outcomes" in p.what for p in verify(both).problems)


def test_callbacks(tmp_path: Path) -> None:
    H, C = RecordKind.HEAP_INSERT, RecordKind.COMMIT
    _xid_cluster(tmp_path, [(1, H, 10), (2, H, 20), (1, C, 10), (2, C, 20)])
    merge(tmp_path, tmp_path / "out")
    # block: every record touches block "b" -> GLSNs increase -> clean
    assert verify(tmp_path, tmp_path / "out", block_of=lambda r: "b").status is Status.CLEAN
    # xid 20 waited on xid 10, whose commit comes before xid 20's commit -> fine
    waits = {20: [10]}
    assert verify(tmp_path, waits_of=lambda r: waits.get(r.xid, []) if r.kind == C else []).status is Status.CLEAN
    # xid 10 claims to have waited on 20, which commits later -> I4 violation
    bad = {10: [20]}
    rep = verify(tmp_path, tmp_path / "out", waits_of=lambda r: bad.get(r.xid, []) if r.kind == C else [])
    assert rep.status is Status.PROBLEMS and "waited on XID 20" in rep.problems[0].what
    rep = verify(tmp_path, begins_xid=lambda r: 7 if r.kind == H else None)
    assert any("begins twice" in p.what for p in rep.problems)
