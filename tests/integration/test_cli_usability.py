"""Issue 17, items 8 and 9 against one real 2-node cluster: the WAL family and old spellings give the same
merge, a row-lock wait ends as LockTimeout (lock_timeout from the config), running nodes are named by
'walmerge --shared-dir --verify' and by 'cluster up --nodes 1', and get/scan JSON with negative keys and NaN."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import pytest

from muheam.client import LockTimeout, connect
from tests.support.cluster import LocalCluster, run_cli

pytestmark = pytest.mark.integration


@pytest.mark.timeout(240)
def test_cli_against_a_running_cluster(local_cluster: Callable[..., LocalCluster], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUHEAM_LOCK_TIMEOUT", "1")  # the nodes (started by cluster up) and the CLI read it
    c = local_cluster(2)
    shared = Path(c.info["config"]["shared_dir"])

    # get/scan: negative keys without '--', strict JSON, get --format json
    c.cli("table", "create", "t", "v:int64", "f:float64", "--format", "json")
    c.cli("put", "t", "-5", "v=-1", "f=nan")
    assert json.loads(c.cli("get", "t", "-5", "--format", "json").stdout) == {"key": -5, "v": -1, "f": "NaN"}
    assert json.loads(c.cli("scan", "t", "--format", "json").stdout) == [{"key": -5, "v": -1, "f": "NaN"}]
    assert c.cli("put", "t", "1", f"v={1 << 63}", check=False).returncode == 2

    # a row-lock wait is LockTimeout after lock_timeout, not "did not answer" from the client
    ep = c.info["nodes"][0]["client_endpoint"]
    with connect(ep) as a, connect(ep) as b:
        with a.transaction() as ta:
            ta.update("t", -5, {"v": 1})
            t0 = time.monotonic()
            with pytest.raises(LockTimeout):
                with b.transaction() as tb:
                    tb.update("t", -5, {"v": 2})
            assert time.monotonic() - t0 < 8

    # cluster up --nodes 1 while 2 run: node 2 is named
    up = run_cli("cluster", "up", "--nodes", "1", "--dir", str(c.dir), timeout=120)
    assert "beyond --nodes 1: 2" in up.stdout and "cluster down" in up.stdout
    up_json = json.loads(run_cli("cluster", "up", "--nodes", "1", "--dir", str(c.dir), "--format", "json").stdout)
    assert [n["node_id"] for n in up_json["other_running_nodes"]] == [2]

    # --shared-dir on a running cluster: the running nodes are named and the check is cut, no false mismatch
    proc = run_cli("walmerge", "--shared-dir", str(shared), "--out", str(tmp_path / "m1"), "--verify",
                   "--format", "json")
    assert "nodes 1, 2 are running on this host" in proc.stderr
    result = json.loads(proc.stdout)
    assert result["merge"]["running_nodes"] == [1, 2] and result["verify"]["status"] == "clean", result
    proc = run_cli("wal", "verify", "--shared-dir", str(shared))
    assert "running on this host" in proc.stderr and "verify: clean" in proc.stdout

    # the family and the old spellings: same merge once the cluster is stopped
    c.down()
    old = json.loads(run_cli("walmerge", "--shared-dir", str(shared), "--out", str(tmp_path / "old"),
                             "--format", "json").stdout)["merge"]
    new = json.loads(run_cli("wal", "merge", "--shared-dir", str(shared), "--out", str(tmp_path / "new"),
                             "--format", "json").stdout)["merge"]
    assert (old["records"], old["last_glsn"], old["running_nodes"]) == (new["records"], new["last_glsn"], [])
    assert sorted(p.read_bytes() for p in (tmp_path / "old").iterdir()) == \
        sorted(p.read_bytes() for p in (tmp_path / "new").iterdir())
    dump_old = run_cli("waldump", "-c", str(c.config), "--node-id", "1", "--stats").stdout
    assert dump_old == run_cli("wal", "dump", "-c", str(c.config), "--node-id", "1", "--stats").stdout
