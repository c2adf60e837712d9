"""A randomised nemesis (issue 16): under the bank load plus acknowledged inserts on every node, a seeded random
schedule of ``kill -9``, SIGSTOP/SIGCONT at random moments (short ones that the node rides out, and ones past
its lease after which the survivors fence and recover it), peer-link resets in front of node 3 and short etcd
pauses; then a whole-cluster crash and restart.  Checked at the end: every bank sum was 0, every acknowledged
insert is on every node, every node returns the same digest of every table, and the whole run's WAL verifies.

CI runs a short schedule (``NEMESIS_EVENTS``, 5 by default); ``MUHEAM_FULL=1`` runs 60 events.  The seed is
printed with the schedule, and ``NEMESIS_SEED=N`` replays one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from typing import Any, Callable

import pytest

from muheam.ops.procs import pid_alive
from tests.support.cluster import FULL, LocalCluster, run_cli
from tests.support.faults import Load, check_round, final_verify, setup_tables, wait_for
from tests.integration.test_cluster_recovery import endpoints, kill_all
from tests.faults.test_faults import ProxiedNode
from tests.faults.test_node_failure import wait_recovered

pytestmark = pytest.mark.integration
Start = Callable[..., LocalCluster]
EVENTS = int(os.environ.get("NEMESIS_EVENTS", 60 if FULL else 5))
SEED = int(os.environ.get("NEMESIS_SEED", random.SystemRandom().randrange(1 << 30)))
TTL = 2.0
KINDS = ("kill", "pause_short", "pause_past_lease", "reset_links", "etcd_pause")
SEGMENT_S = 12.0
BASE = 10_000_000


def member_epochs(c: LocalCluster) -> dict[int, int]:
    return {int(m["node_id"]): int(m["epoch"]) for m in c.members() if m.get("state") == "running"}


class Nemesis:
    """Runs the schedule against a 3-node cluster whose node 3 talks to its peers and etcd through proxies."""

    def __init__(self, c: LocalCluster, node3: ProxiedNode, rng: random.Random) -> None:
        self.c, self.node3, self.rng = c, node3, rng
        self.log: list[dict[str, Any]] = []

    def restart(self, node: int) -> None:
        if node == 3:
            self.node3.start()
            return
        run_cli("node", "start", "--node-id", str(node), "--daemon", "-c", str(self.c.config), timeout=120)
        assert wait_for(lambda: member_epochs(self.c).get(node) is not None, 60), f"node {node} did not rejoin"

    def pid(self, node: int) -> int:
        if node == 3:
            assert self.node3.proc is not None
            return self.node3.proc.pid
        pid = self.c.node_pid(node)
        assert pid is not None
        return pid

    def wait_gone_and_recovered(self, node: int, epoch: int, pid: int) -> float:
        t0 = time.monotonic()
        wait_recovered(self.c, node, epoch, 30)
        if node == 3 and self.node3.proc is not None:
            self.node3.proc.wait(15)
        assert wait_for(lambda: not pid_alive(pid), 15), f"node {node} (pid {pid}) still running after recovery"
        return time.monotonic() - t0

    def alive(self, node: int) -> bool:
        if node == 3:
            return self.node3.proc is not None and self.node3.proc.poll() is None
        pid = self.c.node_pid(node)
        return pid is not None and pid_alive(pid)

    def event(self, kind: str, epochs: dict[int, int]) -> dict[str, Any]:
        """Inject one fault; the node it takes down is recovered and restarted by ``heal``."""
        node = self.rng.choice((1, 2, 3))
        rec: dict[str, Any] = {"event": kind}
        if kind == "kill":
            os.kill(self.pid(node), signal.SIGKILL)
            rec.update(node=node)
        elif kind == "pause_short":  # well inside the fence margin: the node goes on where it stopped
            pid, pause = self.pid(node), self.rng.uniform(0.05, 1.0)
            os.kill(pid, signal.SIGSTOP)
            time.sleep(pause)
            os.kill(pid, signal.SIGCONT)
            rec.update(node=node, paused_s=round(pause, 2))
        elif kind == "pause_past_lease":  # the survivors fence it (SIGKILL) and recover it; a SIGCONT finds nothing
            pid = self.pid(node)
            os.kill(pid, signal.SIGSTOP)
            rec.update(node=node, recovered_s=round(self.wait_gone_and_recovered(node, epochs[node], pid), 2))
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        elif kind == "reset_links":  # node 3's peer connections closed under it, bytes in flight lost
            for _ in range(self.rng.randint(1, 3)):
                for p in self.node3.peer_proxies():
                    getattr(p, "reset", p.drop_connections)()
                time.sleep(self.rng.uniform(0.05, 0.5))
        elif kind == "etcd_pause":  # shorter than a lease renewal's timeout: nobody needs to fence
            pause = self.rng.uniform(0.05, 0.3)
            os.kill(self.c.etcd_pid, signal.SIGSTOP)
            time.sleep(pause)
            os.kill(self.c.etcd_pid, signal.SIGCONT)
            rec.update(paused_s=round(pause, 2))
        return rec

    def heal(self, epochs: dict[int, int], pids: dict[int, int]) -> list[int]:
        """Every node that is down now (the event's target, or one that fenced itself) is recovered by the
        survivors and restarted; returns them."""
        time.sleep(0.5)
        down = [n for n in (1, 2, 3) if not self.alive(n)]
        for n in down:
            self.wait_gone_and_recovered(n, epochs[n], pids[n])
            self.restart(n)
        # every node is a member again before the next event (a stall is what the fixes are about)
        assert wait_for(lambda: len(member_epochs(self.c)) == 3, 30), f"not healed: {self.c.members()}"
        return down

    def run(self, events: int, eps: list[str], acked: dict[int, int]) -> None:
        """The schedule in segments of one bank run each (the bank driver runs for a fixed time): a few events
        per segment, then the round's checks (sums 0, every acknowledged insert on every node, equal digests)."""
        done = 0
        segment = 0
        while done < events:
            load = Load(eps, SEGMENT_S, seed=SEED + segment, base=BASE * (segment + 1)).start()
            t0 = time.monotonic()
            while done < events and time.monotonic() - t0 < SEGMENT_S - 3:
                time.sleep(self.rng.uniform(0.5, 2.0))
                kind = self.rng.choice(KINDS)
                t1 = time.monotonic()
                epochs = member_epochs(self.c)
                pids = {n: self.pid(n) for n in (1, 2, 3)}
                rec = self.event(kind, epochs)
                rec["restarted"] = self.heal(epochs, pids)
                rec.update(at=done, took_s=round(time.monotonic() - t1, 2))
                self.log.append(rec)
                done += 1
            res = load.finish()
            acked.update(load.acked)
            self.log.append({"segment": segment, **check_round(self.c, acked, res, f"nemesis segment {segment} "
                                                                                   f"(seed {SEED})")})
            segment += 1


@pytest.mark.timeout(3600 if FULL else 600)
def test_nemesis(local_cluster: Start) -> None:
    rng = random.Random(SEED)
    c = local_cluster(2)
    node3 = ProxiedNode(c)
    nemesis = Nemesis(c, node3, rng)
    acked: dict[int, int] = {}
    try:
        node3.start()
        eps = endpoints(c)
        setup_tables(eps[0])
        try:
            nemesis.run(EVENTS, eps, acked)
        finally:
            print(f"\nnemesis seed {SEED}: {json.dumps(nemesis.log)}")
        kill_all(c)  # a whole-cluster crash; the first node to start recovers the whole cluster's WAL
        node3.close()
        proc = run_cli("cluster", "up", "--dir", str(c.dir), "--format", "json", timeout=180, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        load = Load(endpoints(c), 4, seed=SEED, base=BASE * 1000).start()
        res = load.finish()
        acked.update(load.acked)
        check_round(c, acked, res, f"nemesis after the whole-cluster restart (seed {SEED})")
        final_verify(c)
    finally:
        node3.close()
