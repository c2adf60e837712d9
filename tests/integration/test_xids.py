"""Global XIDs with real processes: unique for the life of the cluster across kill -9 and restarts (I1)."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from typing import Callable

import pytest

from muheam.client import request
from muheam.errors import MuheamError
from muheam.ops.procs import wait_until
from tests.support.cluster import FULL, LocalCluster

pytestmark = pytest.mark.integration
Start = Callable[..., LocalCluster]


def expand(ranges: list[list[int]]) -> list[int]:
    return [x for first, count in ranges for x in range(first, first + count)]


def test_dead_holder_does_not_block_the_others_once_etcd_drops_it(local_cluster: Start) -> None:
    c = local_cluster(2, lease_ttl=2)
    eps = {m["node_id"]: m["client_endpoint"] for m in c.members()}
    mine = expand(request(eps[1], "xid", count=5)["ranges"])  # node 1 now caches the xid lock
    pid = c.node_pid(1)
    assert pid
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    theirs = expand(request(eps[2], "xid", count=5, timeout=15)["ranges"])
    assert time.monotonic() - t0 < 10
    assert min(theirs) > max(mine)
    status = request(eps[2], "status")
    assert status["counters"]["locks"].get("needs_recovery", 0) >= 1
    assert status["counters"]["xids"].get("floor_reads", 0) >= 1


def test_xids_stay_unique_while_nodes_are_killed_and_restarted(local_cluster: Start) -> None:
    c = local_cluster(3, lease_ttl=2)
    rounds = 12 if FULL else 3
    duration = 90.0 if FULL else 20.0
    eps = {m["node_id"]: m["client_endpoint"] for m in c.members()}
    got: list[int] = []
    per_node = {n: 0 for n in eps}
    failures = {n: 0 for n in eps}
    lock = threading.Lock()
    stop = threading.Event()

    def client(node_id: int, seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            try:
                reply = request(eps[node_id], "xid", count=rng.choice([1, 1, 1, 3, 10]), timeout=4)
            except MuheamError:
                failures[node_id] += 1
                time.sleep(0.05)
                continue
            with lock:
                got.extend(expand(reply["ranges"]))
                per_node[node_id] += 1

    threads = [threading.Thread(target=client, args=(n, 100 + n)) for n in eps]
    for t in threads:
        t.start()
    rng = random.Random(7)
    deadline = time.monotonic() + duration
    try:
        for _ in range(rounds):
            if time.monotonic() > deadline:
                break
            time.sleep(rng.uniform(0.5, 2.0))
            victim = rng.choice(sorted(eps))
            pid = c.node_pid(victim)
            assert pid
            os.kill(pid, signal.SIGKILL)
            time.sleep(rng.uniform(0.0, 1.0))
            c.cli("node", "start", "--node-id", str(victim), "--daemon", timeout=60)
        before = dict(per_node)
        # every node must make progress after the last restart (a client may first sit out one timeout)
        wait_until(lambda: all(per_node[n] > before[n] for n in eps), 30)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=20)
    assert len(got) == len(set(got)), "an XID was handed out twice"
    assert min(got) >= 3
    assert all(per_node[n] > before[n] for n in eps), (before, per_node, failures)
