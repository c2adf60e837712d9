"""``muheam bench recovery``: kill one node of three under the bank load and time the survivors' recovery.

One run, real processes, embedded etcd, a temporary directory:

1. a 3-node cluster; bank accounts; node 2 writes ``wal_mb`` of filler rows (so there is WAL to redo) and then
   updates a probe row, so at the kill it holds that row's chain exclusively with changes the shared file lacks;
2. the bank load runs on every node; survivor commit counters are sampled every 50 ms;
3. ``kill -9`` node 2.  A probe client on node 1 keeps trying to update the probe row (1 s timeout per try).

Reported (JSON): ``ttl_ms`` (the lease TTL), ``detect_ms`` (kill -> the survivors saw the lease expire),
``blocks_available_ms`` (kill -> the first successful update of the probe row on a survivor: the dead node's
block is writable again; goal <= ttl_ms + 2000), ``redo_mb_per_s`` (the dead node's WAL since its checkpoint
divided by the time spent redoing it: the recoverer's read and index of it, ``read_ms``, plus every survivor's time
applying its records to the chains it rebuilt, ``apply_ms``; goal >= 100), ``recovery_ms`` (the recoverer's whole
job: the outcome round, ``outcomes_ms``, then taking every chain the dead node touched in turn through the lock
protocol, rebuilding and writing it through), ``recovery_mb_per_s`` (the same bytes over ``read_ms`` plus
``recovery_ms``: redo with every wait of the job included), ``tps_during_recovery_ratio`` (survivor commits per second from the detection to the end of
recovery over the same rate in the seconds before the kill; between the kill and the detection the commit and lock
rounds wait for the silent member, which ``stall_ms`` reports), ``sum_violations`` (must be 0), and
``repair_calls`` / ``repaired_chains`` (summed over the survivors: chains they looked at to rebuild, and rebuilt;
equal to ``chains`` when no chain is rebuilt twice or looked at for nothing), ``staged_chains`` (of those, written
from the recoverer's rebuild of every page at once, ``muheam.recovery.staging``), ``stage_ms`` (that rebuild's time, part of
``apply_ms``; ``compiled``: whether the recoverer ran that rebuild with the compiled kernel, which a node loads in
the background at start, or with numpy), ``apply_ms_by_node`` and ``recoverer``.  A survivor other than the recoverer that must rebuild a
chain first reads the dead node's WAL itself: that read counts in its ``apply_ms``.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from muheam.bench import BenchmarkFailed
from muheam.bench.harness import client_key_of
from muheam.bench.workloads import bank
from muheam.ops import cluster as cluster_mod
from muheam.client import ClientError, NodeUnavailable, connect, request
from muheam.membership import connect as etcd_connect
from muheam.ops.procs import stop_pid

VICTIM = 2
PROBE_TABLE = "probe"
FILLER_TABLE = "filler"


def _commits(endpoints: dict[int, str]) -> int:
    total = 0
    for node, ep in endpoints.items():
        if node != VICTIM:
            try:
                total += int(request(ep, "status", timeout=1.0)["counters"]["sessions"].get("commits", 0))
            except (NodeUnavailable, ClientError):
                pass
    return total


def _rate(points: list[tuple[float, int]]) -> float:
    """Commits per second between the first and the last sample."""
    if len(points) < 2 or points[-1][0] <= points[0][0]:
        return 0.0
    return (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])


def _fill(ep: str, wal_mb: float) -> None:
    row = {"pad": "x" * 200}
    n = int(wal_mb * 1e6 / 330)
    with connect(ep, 60) as conn:
        conn.create_table(FILLER_TABLE, {"pad": "text(200)"}, buckets=256)
        for start in range(0, n, 500):
            with conn.transaction() as tx:
                for k in range(start, min(n, start + 500)):
                    tx.insert(FILLER_TABLE, k, row)


def run(seconds_before: float = 4.0, wal_mb: float = 20.0, lease_ttl: int = 2) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="muheam-bench-recovery-") as tmp:
        directory = Path(tmp) / "cluster"
        try:
            info = cluster_mod.cluster_up(directory, 3, lease_ttl)
            with client_key_of(info):  # its clients use the cluster's own key, as a user's program would
                return _measure(directory, info, seconds_before, wal_mb, lease_ttl)
        finally:
            if (directory / cluster_mod.CONFIG_NAME).exists():
                cluster_mod.cluster_down(directory, "immediate")


def _measure(directory: Path, info: dict[str, Any], seconds_before: float, wal_mb: float,
             lease_ttl: int) -> dict[str, Any]:
    eps = {int(n["node_id"]): str(n["client_endpoint"]) for n in info["nodes"]}
    pids = {int(n["node_id"]): int(n["pid"]) for n in info["nodes"]}
    cfg = info["config"]
    accounts = 60
    bank.create_accounts(eps[1], accounts)
    with connect(eps[1]) as conn:
        conn.create_table(PROBE_TABLE, {"v": "int64"}, buckets=8)
        with conn.transaction() as tx:
            tx.insert(PROBE_TABLE, 0, {"v": 0})
    _fill(eps[VICTIM], wal_mb)
    with connect(eps[VICTIM]) as conn, conn.transaction() as tx:
        tx.add(PROBE_TABLE, 0, "v", 1)  # the victim now holds the probe's chain, changed after any write-through

    result_box: dict[str, Any] = {}
    total = seconds_before + lease_ttl + 8.0
    loader = threading.Thread(target=lambda: result_box.setdefault("bank", bank.run(
        [eps[1], eps[3]], seconds=total, transfer_clients=4, readers=1, accounts=accounts, seed=9, timeout=3.0)),
        daemon=True)
    loader.start()
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.monotonic(), _commits(eps)))
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    time.sleep(seconds_before)
    kill_wall, kill_at = time.time(), time.monotonic()
    os.kill(pids[VICTIM], signal.SIGKILL)
    stop_pid(pids[VICTIM], signal.SIGKILL, 5)

    available_at: float | None = None
    deadline = kill_at + lease_ttl + 60
    with connect(eps[1], 1.0) as conn:
        while available_at is None and time.monotonic() < deadline:
            try:
                with conn.transaction() as tx:
                    tx.add(PROBE_TABLE, 0, "v", 1)
                available_at = time.monotonic()
            except (ClientError, NodeUnavailable):
                conn.close()
                conn = connect(eps[1], 1.0)
    backend = etcd_connect(cfg["etcd_endpoints"])
    try:
        rec: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            rec = backend.get_recovery(cfg["cluster_name"], VICTIM)
            if rec and rec.get("state") == "recovered":
                break
            time.sleep(0.05)
    finally:
        backend.close()
    repair_us = 0  # every survivor's time rebuilding the dead node's chains (the recoverer's sweep and on demand)
    repairs = {"repair_calls": 0, "repaired_chains": 0, "staged_chains": 0}
    apply_by_node: dict[str, float] = {}
    for node, ep in eps.items():
        if node != VICTIM:
            counters = request(ep, "status", timeout=5.0)["counters"]["survivors"]
            repair_us += int(counters.get("repair_us", 0))
            apply_by_node[str(node)] = round(int(counters.get("repair_us", 0)) / 1000, 1)
            for k in repairs:
                repairs[k] += int(counters.get(k, 0))
    loader.join(total + 90)
    stop.set()
    sampler.join(5)
    if rec is None or rec.get("state") != "recovered":
        raise BenchmarkFailed(f"node {VICTIM} was not recovered within {lease_ttl + 60} s: {rec}")
    detected_at = kill_at + (float(rec["expired_at"]) - kill_wall)
    recovered_at = kill_at + (float(rec["finished_at"]) - kill_wall)
    before = [(t, c) for t, c in samples if kill_at - seconds_before + 1 <= t <= kill_at]
    # "while the dead node is being recovered": from the survivors' detection to the recoverer's end (between
    # the kill and the detection every protocol still waits for the silent member)
    during = [(t, c) for t, c in samples if detected_at - 0.05 <= t <= max(recovered_at, detected_at + 0.3) + 0.05]
    tps_before, tps_during = _rate(before), _rate(during)
    read_s = float(rec.get("read_ms", 0)) / 1000
    redo_s = read_s + repair_us / 1e6
    whole_s = read_s + float(rec.get("duration_ms", 0)) / 1000
    mb = int(rec.get("bytes", 0)) / 1e6
    res = result_box.get("bank")
    return {
        "ttl_ms": lease_ttl * 1000,
        "detect_ms": round((float(rec["expired_at"]) - kill_wall) * 1000, 1),
        "blocks_available_ms": None if available_at is None else round((available_at - kill_at) * 1000, 1),
        "redo_mb_per_s": round(mb / redo_s, 1) if redo_s > 0 else None,
        "recovery_mb_per_s": round(mb / whole_s, 1) if whole_s > 0 else None,
        "redo_mb": round(mb, 2),
        "recovery_ms": rec.get("duration_ms"),
        "read_ms": rec.get("read_ms"),
        "apply_ms": round(repair_us / 1000, 1),
        "apply_ms_by_node": apply_by_node,
        "stage_ms": rec.get("staged_ms"),
        "compiled": rec.get("compiled"),
        "recoverer": rec.get("by"),
        "outcomes_ms": rec.get("decided_ms"),
        "chains": rec.get("chains"),
        **repairs,
        "aborted": rec.get("aborted"),
        "stall_ms": round((detected_at - kill_at) * 1000, 1),
        "tps_before": round(tps_before, 1),
        "tps_during_recovery": round(tps_during, 1),
        "tps_during_recovery_ratio": round(tps_during / tps_before, 3) if tps_before else None,
        "sum_violations": None if res is None else res.sum_violations,
    }
