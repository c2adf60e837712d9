"""Node failure under the bank load: survivors recover a killed node's work, it rejoins, nothing is lost.

Every round kills one node with ``kill -9`` while transfer clients, readers and acknowledged-insert writers run
on every node.  Checked each round: the survivors publish ``recovering`` then ``recovered`` for the node; commits
keep landing on the survivors while it is dead; the node restarts under a new epoch; every acknowledged insert is
on every node; all nodes return the same checksum.  At the end: no bank sum was ever off, and the WAL of the whole
run passes ``verify`` with per-block order and waited-on outcomes (so no XID was used twice and no block had two
writers at once).  CI runs 4 rounds; ``MUHEAM_FULL=1`` runs 50.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from muheam.client import connect
from muheam.engine import statefiles
from muheam.membership import connect as etcd_connect
from muheam.ops.procs import stop_pid
from muheam.ops.walcheck import Waits, block_of
from walmerge import WalReader, verify
from walmerge.merge import merge
from tests.support.cluster import FULL, LocalCluster, run_cli
from tests.support.faults import Load, all_digests, setup_tables
from tests.integration.test_cluster_recovery import endpoints

pytestmark = pytest.mark.integration
Start = Callable[..., LocalCluster]
ROUNDS = int(os.environ.get("FAULT_ROUNDS", 50 if FULL else 4))


def recovery_state(c: LocalCluster, node: int) -> dict[str, Any] | None:
    backend = etcd_connect([c.etcd_endpoint])
    try:
        cluster = str(c.info["config"]["cluster_name"])
        return backend.get_recovery(cluster, node)
    finally:
        backend.close()


def wait_recovered(c: LocalCluster, node: int, epoch: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = recovery_state(c, node)
        if info and info.get("state") == "recovered" and int(info["epoch"]) >= epoch:
            return info
        time.sleep(0.1)
    raise AssertionError(f"node {node} (epoch {epoch}) not recovered within {timeout} s: {recovery_state(c, node)}")


@pytest.mark.timeout(3000 if FULL else 600)
def test_kill_one_node_rounds_under_bank_load(local_cluster: Start) -> None:
    c = local_cluster(3)
    eps = endpoints(c)
    rng = random.Random(7)
    per_round = 9.0
    setup_tables(eps[0])
    load = Load(eps, ROUNDS * per_round + 10, seed=3, base=10_000_000).start()
    ackers = load.ackers
    time.sleep(2)
    rounds: list[dict[str, Any]] = []
    for r in range(ROUNDS):
        victim = rng.choice((1, 2, 3))
        survivors = [a for i, a in enumerate(ackers) if i + 1 != victim]
        members = {int(m["node_id"]): m for m in c.members()}
        epoch = int(members[victim]["epoch"])
        pid = c.node_pid(victim)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        stop_pid(pid, signal.SIGKILL, 5)
        killed_at = time.monotonic()
        acked_before = sum(len(a.acked) for a in survivors)
        info = wait_recovered(c, victim, epoch, 60)
        recovered_at = time.monotonic()
        acked_during = sum(len(a.acked) for a in survivors) - acked_before
        proc = run_cli("cluster", "up", "--dir", str(c.dir), "--format", "json", timeout=180, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr + c.log(victim)[-3000:]
        new_epoch = {int(m["node_id"]): int(m["epoch"]) for m in c.members()}[victim]
        assert new_epoch > epoch
        rounds.append({"victim": victim, "recovered_s": round(recovered_at - killed_at, 2),
                       "acked_on_survivors_meanwhile": acked_during, **{k: info.get(k) for k in
                                                                         ("duration_ms", "chains", "aborted")}})
        assert acked_during > 0, (f"round {r}: nothing committed on the survivors while node {victim} was dead "
                                  f"({rounds[-1]}; their clients were told {[a.messages[-3:] for a in survivors]})")
        time.sleep(max(0.0, per_round - (time.monotonic() - killed_at)))
        acked = set(load.acked)
        for ep in endpoints(c):
            with connect(ep, 30) as conn, conn.transaction() as tx:
                present = {k for k, _ in tx.scan("acks")}
            lost = acked - present
            assert not lost, f"round {r} ({rounds[-1]}): {ep} lost {len(lost)} acknowledged commits"
    res = load.finish()
    print(json.dumps(rounds))
    assert res.sum_violations == 0 and res.violations == [], res.to_dict()
    assert res.transfers > 0 and res.sums > 0, res.to_dict()
    digests = {ep: all_digests(ep) for ep in endpoints(c)}
    assert len({json.dumps(d, sort_keys=True) for d in digests.values()}) == 1, digests
    assert run_cli("cluster", "down", "--dir", str(c.dir), "--mode", "fast", timeout=120,
                   check=False).returncode == 0
    report = verify(Path(c.info["config"]["shared_dir"]), block_of=block_of, waits_of=Waits())
    assert report.exit_code == 0, [str(p) for p in report.problems[:10]] + report.unusable


@pytest.mark.timeout(300)
def test_paused_node_is_fenced_recovered_and_watched(local_cluster: Start) -> None:
    c = local_cluster(3)
    eps = endpoints(c)
    setup_tables(eps[0])
    load = Load(eps, 20, seed=4, base=10_000_000).start()
    ackers = load.ackers
    watch = subprocess.Popen([sys.executable, "-m", "muheam", "watch", "-c", str(c.config), "--format", "json",
                              "--count", "4", "--timeout", "60"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        victim = 2
        epoch = {int(m["node_id"]): int(m["epoch"]) for m in c.members()}[victim]
        pid = c.node_pid(victim)
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        info = wait_recovered(c, victim, epoch, 60)
        acked_before = sum(len(a.acked) for i, a in enumerate(ackers) if i + 1 != victim)
        time.sleep(1)
        assert sum(len(a.acked) for i, a in enumerate(ackers) if i + 1 != victim) > acked_before
        # the survivors fenced it before recovering it (STONITH): it is gone before anyone resumes it, so a
        # turn it was stopped in can never finish (tests/faults/test_hardening.py stops one mid-turn)
        gone = not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        assert gone, "the paused node was still there after the survivors recovered it"
        assert any(f"fenced node {victim} (epoch {epoch}, pid {pid} on this host) before recovering it: killed"
                   in c.log(n) for n in (1, 3) if n != victim)
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        # whatever the zombie wrote after the fence point is void for recovery and for the merge (I6)
        shared = Path(c.info["config"]["shared_dir"])
        fences = statefiles.read_fences(shared)
        assert (epoch, int(info["fence_glsn"])) in fences[victim]
        beyond = [r for r in WalReader(shared / "wal" / f"node-{victim}", node_id=victim, system_id=0)
                  if r.epoch == epoch and r.glsn > int(info["fence_glsn"])]
        summary = merge(shared, c.dir / "merged-check", fences=fences, fsync=False)
        assert summary.skipped_fenced == len(beyond)
        proc = run_cli("cluster", "up", "--dir", str(c.dir), "--format", "json", timeout=180, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        time.sleep(3)
    finally:
        res = load.finish()
        out, _ = watch.communicate(timeout=60)
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    mine = [e["event"] for e in events if e["node_id"] == victim and e["event"] in
            ("expired", "recovering", "recovered", "joined")]
    assert mine[:4] == ["expired", "recovering", "recovered", "joined"], mine
    rec = next(e for e in events if e["event"] == "recovered" and e["node_id"] == victim)
    assert rec["recovery"]["duration_ms"] >= 0 and rec["recovery"]["by"] in (1, 3)
    assert res.sum_violations == 0 and res.transfers > 0, res.to_dict()
    acked = set(load.acked)
    for ep in endpoints(c):
        with connect(ep, 30) as conn, conn.transaction() as tx:
            present = {k for k, _ in tx.scan("acks")}
        assert not (acked - present), f"{ep} lost {len(acked - present)} acknowledged commits"
