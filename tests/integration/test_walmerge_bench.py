"""The walmerge benchmark runs end to end at a small size and reports every figure (no timing asserts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from muheam.bench import walmerge as bench
from walmerge import MERGED_NODE_ID, WalReader
from walmerge.merge import merge
from walmerge.sink import MergedSink
from walmerge.verify import Status, verify


def test_bench_run_small(tmp_path: Path) -> None:
    out = bench.run(total_bytes=20 << 20, nodes=3, tmpdir=str(tmp_path), heapq_sample_bytes=8 << 20, repeat=1)
    for key in ("mb_per_s", "heapq_mb_per_s", "cp_mb_per_s", "ratio_vs_cp", "ratio_vs_heapq", "input_bytes",
                "records", "nodes", "heapq_sample_bytes"):
        assert key in out
    assert out["input_bytes"] >= 20 << 20 and out["nodes"] == 3 and out["records"] > 0
    assert list(tmp_path.iterdir()) == []  # cleaned up


def test_bench_input_verifies_and_incremental_sink_matches_bulk(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    bench.generate(root, 3 << 20, 3)
    summary = merge(root, tmp_path / "bulk", segment_size=1 << 20)
    assert verify(root, tmp_path / "bulk").status is Status.CLEAN
    # the incremental (follow-mode) sink writes the same files as the bulk one, appended or added record by record
    bulk = list(WalReader(tmp_path / "bulk", node_id=MERGED_NODE_ID, system_id=bench.SYSTEM_ID).batches())
    sink = MergedSink(tmp_path / "inc", system_id=bench.SYSTEM_ID, segment_size=1 << 20, incremental=True)
    for b in bulk:
        for i in range(0, len(b.offsets), 700):  # several appends and flushes per segment
            h = b.headers[i: i + 700]
            sink.append(h, np.zeros(len(h), dtype=np.int32), b.offsets[i: i + 700], [b.data])
            sink.flush()
    sink.close()
    inc = list(WalReader(tmp_path / "inc", node_id=MERGED_NODE_ID, system_id=bench.SYSTEM_ID))
    sink = MergedSink(tmp_path / "added", system_id=bench.SYSTEM_ID, segment_size=1 << 20, incremental=True)
    for b in bulk:
        for h, o in zip(b.headers, b.offsets.tolist()):
            sink.add(int(h["lsn"]), int(h["prev_lsn"]), bytes(b.data[o: o + int(h["total_len"])]))
        sink.flush()
    sink.close()
    for name in ("inc", "added"):
        files = sorted(p.name for p in (tmp_path / name).iterdir())
        assert files == sorted(p.name for p in (tmp_path / "bulk").iterdir())
        assert all((tmp_path / name / f).read_bytes() == (tmp_path / "bulk" / f).read_bytes() for f in files)
    assert len(inc) == summary.records
    want = [r for b in bulk for r in b.records()]
    assert [(r.lsn, r.prev_lsn, r.glsn, r.payload) for r in inc] == [(r.lsn, r.prev_lsn, r.glsn, r.payload)
                                                                     for r in want]
