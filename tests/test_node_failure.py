"""Node failure under the bank load: survivors recover a killed node's work, it rejoins, nothing is lost.

Every round kills one node with ``kill -9`` while transfer clients, readers and acknowledged-insert writers run
on every node.  Checked each round: the survivors publish ``recovering`` then ``recovered`` for the node; commits
keep landing on the survivors while it is dead; the node restarts under a new epoch; every acknowledged insert is
on every node; all nodes return the same checksum.  At the end: no bank sum was ever off, and the WAL of the whole
run passes ``verify`` with per-block order and waited-on outcomes (so no XID was used twice and no block had two
writers at once).  CI runs 10 rounds; ``MUHEAM_FULL=1`` runs 50.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from muheam import bank
from muheam.membership import connect as etcd_connect
from muheam.procs import stop_pid
from muheam.walcheck import Waits, block_of
from walmerge import verify
from tests.conftest import FULL, LocalCluster, run_cli
from tests.test_cluster_recovery import Acker, all_digests, endpoints

pytestmark = pytest.mark.integration
Start = Callable[..., LocalCluster]
ROUNDS = int(os.environ.get("FAULT_ROUNDS", 50 if FULL else 10))


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
    accounts = 30
    bank.create_accounts(eps[0], accounts)
    from muheam.client import connect
    with connect(eps[0]) as conn:
        conn.create_table("acks", {"v": "int64"}, buckets=64)
    rng = random.Random(7)
    per_round = 9.0
    result_box: dict[str, Any] = {}
    loader = threading.Thread(target=lambda: result_box.setdefault("bank", bank.run(
        eps, seconds=ROUNDS * per_round + 10, transfer_clients=3, readers=2, accounts=accounts, seed=3,
        timeout=3.0)), daemon=True)
    loader.start()
    stop = threading.Event()
    ackers = [Acker(ep, 10_000_000 * (i + 1), stop) for i, ep in enumerate(eps)]
    for a in ackers:
        a.start()
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
        assert acked_during > 0, f"round {r}: nothing committed on the survivors while node {victim} was dead"
        time.sleep(max(0.0, per_round - (time.monotonic() - killed_at)))
        acked = {k for a in ackers for k in a.acked}
        for ep in endpoints(c):
            from muheam.client import connect as client_connect
            with client_connect(ep, 30) as conn, conn.transaction() as tx:
                present = {k for k, _ in tx.scan("acks")}
            lost = acked - present
            assert not lost, f"round {r} ({rounds[-1]}): {ep} lost {len(lost)} acknowledged commits"
    stop.set()
    for a in ackers:
        a.join(30)
    loader.join(ROUNDS * per_round + 120)
    res = result_box["bank"]
    print(json.dumps(rounds))
    assert res.sum_violations == 0 and res.violations == [], res.to_dict()
    assert res.transfers > 0 and res.sums > 0, res.to_dict()
    digests = {ep: all_digests(ep) for ep in endpoints(c)}
    assert len({json.dumps(d, sort_keys=True) for d in digests.values()}) == 1, digests
    assert run_cli("cluster", "down", "--dir", str(c.dir), "--mode", "fast", timeout=120,
                   check=False).returncode == 0
    report = verify(Path(c.info["config"]["shared_dir"]), block_of=block_of, waits_of=Waits())
    assert report.exit_code == 0, [str(p) for p in report.problems[:10]] + report.unusable
