"""Every node's Prometheus metrics and health endpoints, on real node processes (issue 22).

Checked: ``prometheus_client``'s own text-format parser reads every node's ``/metrics`` with the ``cluster`` and
``node`` labels on every sample; the commit, peer-message and WAL counters move under the bank load; the
survivors' ``/readiness`` answers 503 while a killed peer's recovery is unfinished and 200 once it is done (the
recovery is held open by the ``survivors.claim`` failpoint dropping the first claims, so the window is seconds
long, not a race); a node stopped with SIGSTOP past its lease answers ``/liveness`` with 503 (the probe is sent
while it is stopped and answered once it resumes, before it exits fenced); ``muheam top --format json`` gives
one sample per member.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from muheam.bench.workloads import bank
from muheam.client import NodeUnavailable, request
from muheam.engine import statefiles
from muheam.ops.procs import pid_alive
from tests.support.cluster import FULL, LocalCluster

pytestmark = pytest.mark.integration
Start = Callable[..., LocalCluster]


def get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(endpoint: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``{sample name: {labels: value}}`` as prometheus_client's parser reads the node's /metrics."""
    status, text = get(endpoint + "/metrics")
    assert status == 200
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("muheam_"), family.name
        for s in family.samples:
            assert {"cluster", "node"} <= set(s.labels), s
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def total(samples: dict[str, dict[Any, float]], name: str) -> float:
    return sum(samples.get(name, {}).values())


def metrics_endpoints(c: LocalCluster) -> dict[int, str]:
    return {int(n): str(v["metrics_endpoint"]) for n, v in c.info["config"]["nodes"].items()}


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


@pytest.mark.timeout(300)
def test_metrics_move_under_load_and_readiness_fails_during_recovery(local_cluster: Start,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # every node drops its first two claims of a dead peer's recovery: the recovery stays open a few seconds; node
    # 3 dies in a DROP TABLE, after the catalog's tombstone and before the WAL record (the recoverer logs it)
    monkeypatch.setenv("MUHEAM_FAILPOINTS", "survivors.claim=2*drop;engine.drop_unlogged@3=1*crash")
    c = local_cluster(3)
    mep = metrics_endpoints(c)
    eps = {int(n["node_id"]): str(n["client_endpoint"]) for n in c.info["nodes"]}
    for n, ep in mep.items():  # a node is running in etcd a moment before its loop publishes its first numbers
        wait_for(lambda: get(ep + "/readiness")[0] == 200, 30, f"node {n} ready")
        assert get(ep + "/liveness")[0] == 200
    before = {n: scrape(ep) for n, ep in mep.items()}
    for n, samples in before.items():
        assert samples["muheam_node_state"][(("cluster", "muheam"), ("node", str(n)), ("state", "running"))] == 1
    bank.create_accounts(eps[1], 40)
    res = bank.run([eps[n] for n in sorted(eps)], seconds=2, transfer_clients=3, readers=1, accounts=40,
                   mode="thread", seed=5)
    assert res.transfers > 0 and res.sum_violations == 0
    after = {n: scrape(ep) for n, ep in mep.items()}
    for n in mep:
        for name in ("muheam_commits_total", "muheam_peer_messages_sent_total", "muheam_wal_written_bytes_total",
                     "muheam_wal_fsyncs_total", "muheam_xid_allocations_total", "muheam_lamport_clock"):
            assert total(after[n], name) > total(before[n], name), (n, name)
        assert total(after[n], "muheam_lease_remaining_seconds") > 0
    assert sum(total(a, "muheam_chain_images_shipped_total") for a in after.values()) > 0

    request(eps[1], "create_table", name="doomed", columns={"v": "int64"}, timeout=10)
    doomed = next(t["table_id"] for t in request(eps[2], "tables", timeout=10) if t["name"] == "doomed")
    pid3 = c.node_pid(3) or 0
    with pytest.raises(NodeUnavailable):
        request(eps[3], "drop_table", name="doomed", timeout=10)
    wait_for(lambda: not pid_alive(pid3), 10, "node 3 killed itself at engine.drop_unlogged")
    wait_for(lambda: get(mep[1] + "/readiness")[0] == 503, 30, "node 1 not ready while node 3 is unrecovered")
    status, body = get(mep[1] + "/readiness")
    assert status == 503 and "recovering" in body, body
    assert get(mep[1] + "/liveness")[0] == 200  # alive all along: only not ready
    wait_for(lambda: all(get(mep[n] + "/readiness")[0] == 200 for n in (1, 2)), 90, "survivors ready again")
    recovered = sum(total(scrape(mep[n]), "muheam_recovery_duration_seconds_count") for n in (1, 2))
    assert recovered == 1
    shared = Path(c.info["config"]["shared_dir"])
    assert doomed in statefiles.read_catalog(shared).dropped
    wait_for(lambda: statefiles.read_catalog(shared).unlogged_drops == [], 30, "node 3's drop logged by its recoverer")
    assert all("doomed" not in [t["name"] for t in request(eps[n], "tables", timeout=10)] for n in (1, 2))
    logged = [json.loads(line) for n in (1, 2) for line in c.cli("waldump", "--node-id", str(n), "--kind",
                                                                 "CATALOG_DROP_TABLE", "--format",
                                                                 "json").stdout.splitlines()]
    assert len(logged) == 1, logged  # by node 3's recoverer

    top = c.cli("top", "--format", "json", "--interval", "0.5")
    samples = json.loads(top.stdout)
    assert sorted(s["node_id"] for s in samples if s["state"] == "running") == [1, 2]
    assert {s["node_id"]: s["state"] for s in samples}[3] == "stopped"
    assert all(s["commits_per_s"] is not None and s["lease_ttl_left_s"] > 0 for s in samples if s["node_id"] != 3)

    # the operator's view: the dead node listed as stopped, the history, a live reload, a removal, a bench
    rows = {r["node_id"]: r for r in json.loads(c.cli("list", "--format", "json").stdout)}
    assert rows[3]["state"] == "stopped" and rows[3]["member"] is False
    assert rows[1]["member"] and rows[1]["chains_owned"] is not None and rows[1]["lag"] is not None
    history = json.loads(c.cli("history", "--format", "json").stdout)
    kinds = [(e["kind"], e["node_id"]) for e in history]
    assert [("joined", 1), ("joined", 2), ("joined", 3)] == [k for k in kinds if k[0] == "joined"][:3]
    assert ("expired", 3) in kinds and ("recovered", 3) in kinds
    assert next(e for e in history if e["kind"] == "recovered")["duration_ms"] >= 0
    c.config.write_text(c.config.read_text().replace('lease_ttl = 2', 'lease_ttl = 2\nlock_timeout = 7.5'))
    reloaded = json.loads(c.cli("reload", "--format", "json").stdout)
    assert [r["changed"] for r in reloaded] == [{"lock_timeout": [10.0, 7.5]}] * 2
    removed = c.cli("remove", "--node-id", "3", "--format", "json")
    assert json.loads(removed.stdout)["removed"] is True and "[nodes.3]" not in c.config.read_text()
    assert ("removed", 3) in [(e["kind"], e["node_id"]) for e in json.loads(c.cli("history", "--format",
                                                                                    "json").stdout)]
    if FULL:  # about ten more seconds of processes and load: MUHEAM_FULL=1 runs it (CI's time budget)
        bench = json.loads(c.cli("bench", "bank", "--seconds", "2", "--clients", "2", "--format", "json",
                                 timeout=120).stdout)
        assert bench["nodes"] == 2 and bench["sum_violations"] == 0 and bench["checksums_equal"] is True
        assert bench["accounts"] == 40 and bench["tps"] > 0  # the table the load above made, used as it is


@pytest.mark.timeout(120)
def test_liveness_fails_on_a_node_paused_past_its_lease(local_cluster: Start) -> None:
    # one node: no survivor kills it while it is stopped, so it resumes, answers the probe, then fences itself
    c = local_cluster(1, lease_ttl=2)
    url = metrics_endpoints(c)[1] + "/liveness"
    assert get(url)[0] == 200
    pid = c.node_pid(1)
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    answer: list[tuple[int, str]] = []
    try:
        time.sleep(4.0)  # past the TTL: its fence deadline and etcd's expiry of the lease have both passed
        probe = threading.Thread(target=lambda: answer.append(get(url, timeout=30)), daemon=True)
        probe.start()
        time.sleep(0.5)  # the probe connects and waits in the listen queue of the stopped process
    finally:
        os.kill(pid, signal.SIGCONT)
    probe.join(40)
    assert answer, "no answer to the liveness probe"
    status, body = answer[0]
    assert status == 503, body
    reasons = json.loads(body)["reasons"]
    assert any("lease" in r or "fenced" in r for r in reasons), reasons
