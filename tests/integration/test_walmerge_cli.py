"""``muheam walmerge`` on a real node's WAL: merge + verify clean, then a flipped byte is located."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from tests.support.cluster import LocalCluster, run_cli

pytestmark = pytest.mark.integration


def test_walmerge_cli_merges_verifies_and_locates_damage(local_cluster: Callable[..., LocalCluster],
                                                        tmp_path: Path) -> None:
    c = local_cluster(1)
    c.cli("table", "create", "t", "v:int64")
    for k in range(5):
        c.cli("put", "t", str(k), f"v={k}")
    c.cli("node", "stop", "--node-id", "1")
    shared = Path(c.info["config"]["shared_dir"])
    out = tmp_path / "merged"
    result = json.loads(run_cli("walmerge", "--shared-dir", str(shared), "--out", str(out), "--verify",
                                "--format", "json").stdout)
    assert result["verify"]["status"] == "clean"
    dump = json.loads(c.cli("waldump", "--node-id", "1", "--stats", "--format", "json").stdout)
    assert result["merge"]["records"] == dump["records"]
    assert sorted(p.name for p in out.iterdir()) == ["0000000000000000"]

    segment = sorted((shared / "wal" / "node-1").glob("0*"))[0]
    data = bytearray(segment.read_bytes())
    offset = 64 + 56 + 10  # inside the first record's payload, well before the end of the stream
    data[offset] ^= 0x01
    segment.write_bytes(bytes(data))
    proc = run_cli("walmerge", "--shared-dir", str(shared), "--verify", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert segment.name in proc.stdout and "offset" in proc.stdout
    usage = run_cli("walmerge", "--shared-dir", str(shared), check=False)
    assert usage.returncode == 2 and "--out" in usage.stderr


def test_walmerge_of_a_running_cluster_is_a_consistent_cut(local_cluster: Callable[..., LocalCluster],
                                                           tmp_path: Path) -> None:
    """With -c the running nodes come from etcd and the merge stops at the GLSN all their WALs have passed: the
    nodes keep writing (heartbeats, rows) meanwhile, yet --verify finds the output equal to the inputs up to the
    cut, every time (merging each WAL to its end used to miss a record of one node between two of another's)."""
    from walmerge import MERGED_NODE_ID, WalReader
    from walmerge.merge import detect_system_id

    c = local_cluster(3)
    c.cli("table", "create", "t", "v:int64")
    for k in range(12):
        c.cli("put", "t", str(k), f"v={k}", "--node-id", str(1 + k % 3))
    for i in range(3):
        out = tmp_path / f"merged-{i}"
        proc = c.cli("walmerge", "--out", str(out), "--verify", "--format", "json", check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        result = json.loads(proc.stdout)
        merge = result["merge"]
        assert result["verify"]["status"] == "clean"
        assert merge["running_nodes"] == [1, 2, 3] and merge["cut_glsn"] is not None
        assert 0 < merge["last_glsn"] <= merge["cut_glsn"]
        sid = detect_system_id(out)
        assert sid is not None
        got = list(WalReader(out, node_id=MERGED_NODE_ID, system_id=sid))
        assert len(got) == merge["records"] and max(r.glsn for r in got) <= merge["cut_glsn"]
    text = c.cli("walmerge", "--out", str(tmp_path / "merged-table"))
    assert "are running: merging up to GLSN" in text.stderr
