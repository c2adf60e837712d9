"""Fault injection under the bank load (DESIGN.md section 9): etcd killed and restarted, a node cut off from etcd
only and from its peers only, and malformed peer and client messages on every port throughout.  (``kill -9``
rounds and ``SIGSTOP`` past the lease are in tests/faults/test_node_failure.py; a damaged WAL tail and a full WAL
file system in tests/faults/test_wal_faults.py.)

Every test runs, in each round, the bank workload (transfer clients and sum readers spread over the nodes) and one
acknowledged-insert writer per node, injects its fault while they run, and after the round checks: every bank sum
was 0, every acknowledged insert of every round so far is on every live node, every live node returns the same
digest of every table.  At the end the cluster is stopped (``--mode fast``) and ``walmerge.verify`` checks the
whole run's WAL with the recorded fences: no XID used twice, per-block GLSN order, waited-on outcomes first.  A
``Garbage`` thread sends malformed messages to every peer and client port all the while; the nodes must count
them and keep serving.

CI form: about four minutes on two shared cores.  ``MUHEAM_FULL=1`` runs more rounds of each fault.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import zmq

from muheam import config as config_mod
from muheam.client import connect
from muheam.config import NodeConfig
from muheam.engine import statefiles
from muheam.ops.procs import free_port, pid_alive, stop_pid, write_pid
from muheam.net import wire
from tests.support.keyed import peer_dealer
from tests.support.cluster import FULL, LocalCluster, run_cli
from tests.support.faults import (
    Acker, Garbage, Load, TcpProxy, check_round, final_verify, garbage_targets, setup_tables, wait_for, wait_pids_gone,
)
from tests.integration.test_cluster_recovery import endpoints
from tests.faults.test_node_failure import wait_recovered

pytestmark = pytest.mark.integration
Start = Callable[..., LocalCluster]
NODES = (1, 2, 3)
BASE = 10_000_000


def report(name: str, rounds: list[dict[str, Any]]) -> None:
    print(f"\n{name}: {json.dumps(rounds, default=str)}")


@contextmanager
def garbage(c: LocalCluster) -> Iterator[Garbage]:
    """Malformed messages on every configured peer and client port for the whole block."""
    g = Garbage(garbage_targets(c), period=1.0, seed=int(time.time()), cluster_dir=c.dir)
    g.start()
    try:
        yield g
    finally:
        g.stop()
    assert g.sent > 0, g.failures[:5]


def garbage_counted(c: LocalCluster) -> None:
    """Every live node has counted malformed peer and client messages (and answers: it keeps serving)."""
    def counted() -> bool:
        rows = [m for m in c.members() if m.get("answering")]
        def refused(port: dict[str, int]) -> int:  # under CURVE most garbage is refused at the handshake
            return port.get("malformed", 0) + port.get("handshake_failed", 0)
        return len(rows) == 3 and all(refused(r["counters"]["peer"]) > 0 and refused(r["counters"]["client"]) > 0
                                      for r in rows)
    assert wait_for(counted, 15, 0.5), [(m["node_id"], m.get("counters", {}).get("peer"),
                                        m.get("counters", {}).get("client")) for m in c.members()]


def acked_progress(load: Load, nodes: tuple[int, ...], timeout: float) -> int:
    """Wait until the writers on ``nodes`` got at least one more commit acknowledged; returns how long it took
    (ms), or fails."""
    before = load.acked_count(nodes)
    t0 = time.monotonic()
    assert wait_for(lambda: load.acked_count(nodes) > before, timeout, 0.05), \
        f"no commit acknowledged on nodes {nodes} within {timeout} s: {[a.messages[:3] for a in load.ackers]}"
    return round((time.monotonic() - t0) * 1000)


def cluster_up(c: LocalCluster, *extra: str, env: dict[str, str] | None = None) -> float:
    """``cluster up --dir`` (restarts the embedded etcd and whatever node is not running); returns seconds."""
    t0 = time.monotonic()
    proc = run_cli("cluster", "up", "--dir", str(c.dir), *extra, "--format", "json", timeout=180, check=False,
                   env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr + "".join(c.log(n)[-1500:] for n in NODES
                                                                     if (c.dir / "log" / f"node-{n}.log").exists())
    info = json.loads(proc.stdout)
    if not info.get("etcd"):
        info["etcd"] = c.info["etcd"]
    c.info = info
    return time.monotonic() - t0


def count(c: LocalCluster, node: int, text: str) -> int:
    return c.log(node).count(text)


# -- the survivors' decision, without processes: the fix this suite drove ------------------------------------------

def test_recoverer_announces_every_outcome_and_keeps_acknowledged_commits_whose_record_is_lost(tmp_path: Path) -> None:
    """The dead node's outcome round may have reached some members only (it died while sending), and its COMMIT
    record may be lost with a damaged tail although every member acknowledged the outcome.  The recoverer must
    announce every outcome of the dead node's transactions (not only the ones it lacked itself), and must record a
    commit the cluster knows of in the dead node's outcome file even without its WAL record (else a later
    whole-cluster recovery aborts an acknowledged transaction)."""
    from types import SimpleNamespace

    from muheam.recovery.deadwal import DeadWal
    from muheam.recovery.survivors import Survivors
    from muheam.cluster.txstate import TxTable

    table = TxTable(3)
    table.commit(10, 1000)   # found in the WAL; this node heard the outcome, another member may not have
    table.commit(11, 1100)   # acknowledged, but its COMMIT record was in the damaged tail
    announced: list[tuple[list[tuple[int, int]], list[int]]] = []
    logged_aborts: list[int] = []

    def finish(committed: list[tuple[int, int]], aborted: list[int], then: Callable[[], None]) -> None:
        announced.append((list(committed), list(aborted)))
        then()

    engine = SimpleNamespace(shared=tmp_path, reload_catalog=lambda: None, tables_by_id={},
                             cache=SimpleNamespace(sync=lambda: None),
                             log_decided=lambda xids, fence=None: logged_aborts.extend(xids))
    commits = SimpleNamespace(table=table, prepared_from={}, finish=finish)
    backend = SimpleNamespace(put_recovery=lambda *a: None, add_history=lambda *a: None)
    s = Survivors(1, "c", engine, SimpleNamespace(settle=lambda: None), commits, lambda: backend, SimpleNamespace(),  # type: ignore
                  lambda xids: None)
    # XIDs 10..14 are node 2's: 10 committed (record found), 11 committed (record lost), 12 rolled back by node 2
    # (ABORT found), 13 and 14 undecided (changes, no outcome)
    dead = DeadWal(2, 5, start_lsn=64, end_lsn=4096, last_glsn=5000, committed={10: 1000}, aborted={12},
                   started={10, 11, 12, 13, 14}, torn="torn WAL tail at ...")
    s.dead[2] = dead
    s._start(dead)
    (committed, aborted), = announced
    assert dict(committed) == {10: 1000, 11: 1100}, committed
    assert set(aborted) == {12, 13, 14}, aborted
    assert sorted(logged_aborts) == [13, 14]  # only the decisions taken now are logged
    c_file, a_file = statefiles.read_xact(tmp_path, 2)
    assert c_file == {10, 11} and a_file == {13, 14}, (c_file, a_file)
    assert 2 not in s.jobs and s.counters["recovered"] == 1


# -- 1. etcd killed and restarted -------------------------------------------------------------------------------

ETCD_ROUNDS = 4 if FULL else 2
RIDE_OUT_ROUNDS = 4 if FULL else 1  # one etcd restart in CI; the fenced variant above runs two


@pytest.mark.timeout(900 if FULL else 300)
def test_etcd_killed_every_node_self_fences_and_the_cluster_comes_back(local_cluster: Start) -> None:
    """TTL 2 s: no etcd restart fits in the fence margin (the nodes stop 1.5 s after their last renewal, an etcd
    restart takes longer here), so every node fences itself (I6: exit 3) while etcd is down.  ``cluster up``
    restarts etcd on the same ports and data directory, then the nodes: the first one replays the merged WAL
    (whole-cluster recovery).  Nothing acknowledged is lost."""
    c = local_cluster(3)
    ttl = int(c.info["config"]["lease_ttl"])
    eps = endpoints(c)
    setup_tables(eps[0])
    acked: dict[int, int] = {}
    rounds: list[dict[str, Any]] = []
    with garbage(c):
        for r in range(ETCD_ROUNDS):
            load = Load(eps, 14, seed=100 + r, base=BASE * (r + 1)).start()
            time.sleep(2)
            pids = {n: c.node_pid(n) for n in NODES}
            assert all(pids.values())
            fenced = {n: count(c, n, "SELF-FENCING") for n in NODES}
            redos = sum(count(c, n, "whole-cluster redo") for n in NODES)
            etcd_pid = c.etcd_pid
            os.kill(etcd_pid, signal.SIGKILL)
            t0 = time.monotonic()
            stop_pid(etcd_pid, signal.SIGKILL, 5)
            # etcd stays down until every node has stopped: none may go on once it cannot renew its lease
            assert wait_pids_gone([p for p in pids.values() if p], 15), "a node kept running without etcd"
            fenced_s = time.monotonic() - t0
            assert fenced_s < ttl + 1.5, f"nodes stopped {fenced_s:.2f} s after etcd died (TTL {ttl} s)"
            for n in NODES:
                text = c.log(n)
                assert text.count("SELF-FENCING") == fenced[n] + 1 and "exiting with code 3" in text, text[-2000:]
            up_s = cluster_up(c)
            assert endpoints(c) == eps
            assert sum(count(c, n, "whole-cluster redo") for n in NODES) > redos
            first_ack_ms = acked_progress(load, NODES, 20)
            res = load.finish()
            acked.update(load.acked)
            rounds.append({"round": r, "fenced_s": round(fenced_s, 2), "cluster_up_s": round(up_s, 2),
                           "first_ack_after_up_ms": first_ack_ms,
                           **check_round(c, acked, res, f"etcd round {r}")})
        garbage_counted(c)
    report("etcd killed, TTL 2", rounds)
    final_verify(c)


@pytest.mark.timeout(900 if FULL else 300)
def test_etcd_restart_within_the_fence_deadline_is_ridden_out(local_cluster: Start) -> None:
    """TTL 10 s (fence deadline 7.5 s after the last renewal, renewals every 2.5 s): etcd killed with ``kill -9``
    and restarted at once (``cluster up``, same ports and data directory) is back long before any node must fence.
    Commits go on while etcd is down (they never need it), and no node should stop or change epoch.

    A node that does fence anyway (the lease keeper retries a failed renewal only every TTL/4 and its gRPC channel
    may still be in reconnect backoff, so it can miss a window of several seconds; see the report) must still do
    it correctly: it stops, is recovered, comes back with ``cluster up``, and nothing is lost.  The test then ends
    as an expected failure naming the rounds where it happened."""
    c = local_cluster(3, lease_ttl=10)
    ttl = int(c.info["config"]["lease_ttl"])
    deadline_s = ttl - min(3.0, max(0.5, ttl / 4))  # fence deadline after the last renewal
    eps = endpoints(c)
    setup_tables(eps[0])
    acked: dict[int, int] = {}
    rounds: list[dict[str, Any]] = []
    needless: list[dict[str, Any]] = []
    with garbage(c):
        for r in range(RIDE_OUT_ROUNDS):
            load = Load(eps, 12, seed=200 + r, base=BASE * (r + 1)).start()
            time.sleep(2)
            pids = {n: c.node_pid(n) for n in NODES}
            epochs = {int(m["node_id"]): int(m["epoch"]) for m in c.members()}
            fenced = {n: count(c, n, "SELF-FENCING") for n in NODES}
            etcd_pid = c.etcd_pid
            os.kill(etcd_pid, signal.SIGKILL)
            t0 = time.monotonic()
            stop_pid(etcd_pid, signal.SIGKILL, 5)
            at_kill = load.acked_count()
            up_s = cluster_up(c)
            down_s = time.monotonic() - t0
            during = load.acked_count() - at_kill
            assert during > 0, "no commit was acknowledged while etcd was down"
            # every fence deadline set before the kill has passed by now: whoever is still up rode it out
            time.sleep(max(0.0, deadline_s + 0.5 - (time.monotonic() - t0)))
            stopped = [n for n in NODES if not pid_alive(pids[n] or 0)]
            for n in stopped:
                text = c.log(n)
                assert text.count("SELF-FENCING") == fenced[n] + 1, text[-2000:]
            if stopped:
                needless.append({"round": r, "fenced": stopped, "etcd_back_after_s": round(down_s, 2)})
                for n in stopped:
                    wait_recovered(c, n, epochs[n], 60)
                cluster_up(c)
            else:
                assert {int(m["node_id"]): int(m["epoch"]) for m in c.members()} == epochs
            res = load.finish()
            acked.update(load.acked)
            rounds.append({"round": r, "etcd_back_after_s": round(down_s, 2), "cluster_up_s": round(up_s, 2),
                           "acked_while_etcd_down": during, "fenced": stopped,
                           **check_round(c, acked, res, f"etcd round {r}")})
        garbage_counted(c)
    report("etcd killed, TTL 10", rounds)
    final_verify(c)
    if needless:
        pytest.xfail(f"nodes fenced themselves although etcd was back well inside their {deadline_s:g} s fence "
                     f"deadline: {needless} (lease keeper retry schedule / gRPC reconnect backoff; see the report)")


# -- 4. a node cut off from etcd only, then from its peers only ---------------------------------------------------

PARTITION_ROUNDS = 2 if FULL else 1


class ProxiedNode:
    """Node 3 with its etcd traffic and all its peer traffic (both directions) through the test's proxies."""

    def __init__(self, c: LocalCluster) -> None:
        self.c = c
        cfg = config_mod.load(c.config)
        self.real = f"tcp://127.0.0.1:{free_port()}"
        self.inbound = TcpProxy(self.real)  # what node 3 advertises; peers connect here
        cfg = replace(cfg, nodes={**cfg.nodes, 3: NodeConfig(3, self.inbound.url("tcp"),
                                                              f"tcp://127.0.0.1:{free_port()}")})
        c.config.write_text(cfg.to_toml())
        c.info["config"] = cfg.as_dict()
        self.cfg = cfg
        self.outbound = {n: TcpProxy(cfg.nodes[n].peer_endpoint) for n in (1, 2)}
        self.etcd = TcpProxy(cfg.etcd_endpoints[0])
        self.proc: subprocess.Popen[bytes] | None = None

    def peer_proxies(self) -> list[TcpProxy]:
        return [self.inbound, *self.outbound.values()]

    def start(self) -> int:
        args = [sys.executable, "-m", "tests.support.faults_node", "--bind", self.real]
        for n, p in self.outbound.items():
            args += ["--route", f"{self.cfg.nodes[n].peer_endpoint}={p.url('tcp')}"]
        args += ["--", "node", "start", "--node-id", "3", "-c", str(self.c.config), "--log-file",
                 str(self.c.dir / "log" / "node-3.log")]
        root = Path(__file__).resolve().parents[2]
        proc = self.proc = subprocess.Popen(args, cwd=root, env={**os.environ,
                                                                  "MUHEAM_ETCD_ENDPOINTS": self.etcd.url("http")},
                                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, start_new_session=True)
        write_pid(self.c.dir / "run" / "node-3.pid", proc.pid)
        assert wait_for(lambda: any(m["node_id"] == 3 and m["state"] == "running" and m.get("answering")
                                    and m["pid"] == proc.pid for m in self.c.members()), 60), self.c.log(3)[-2000:]
        return proc.pid

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for p in [*self.peer_proxies(), self.etcd]:
            p.close()


@pytest.mark.timeout(900 if FULL else 300)
def test_node_cut_off_from_etcd_only_then_from_its_peers_only(local_cluster: Start) -> None:
    """Node 3 reaches etcd and its peers only through TCP proxies in the test process (pausing one stops the
    bytes both ways, as a partition does; nothing is lost or reordered when it heals).

    etcd only: node 3 cannot renew its lease, fences itself (exit 3) before the lease can expire; its peers see
    the expiry, recover it and go on; after the cut heals it restarts under a new epoch.

    peers only: node 3 keeps its lease, but the members hear no beat from it: they decide in etcd which side
    leaves (``muheam.cluster.partition``), remove node 3, fence and recover it, and serve again within 2 x TTL + 5 s;
    the same for a one-way cut between nodes 3 and 2 only.  After the cut heals node 3 restarts under a new
    epoch.  Checked: nothing acknowledged is lost, every sum is 0, and the time until the survivors serve."""
    c = local_cluster(2)
    node = ProxiedNode(c)
    rounds: list[dict[str, Any]] = []
    try:
        node.start()
        eps = endpoints(c)
        assert len(eps) == 3
        setup_tables(eps[0])
        acked: dict[int, int] = {}
        with garbage(c):
            for r in range(PARTITION_ROUNDS):
                # etcd only
                load = Load(eps, 12, seed=500 + r, base=BASE * (2 * r + 1)).start()
                time.sleep(2)
                epoch = {int(m["node_id"]): int(m["epoch"]) for m in c.members()}[3]
                node.etcd.pause()
                t0 = time.monotonic()
                assert node.proc is not None
                code = node.proc.wait(15)
                fenced_s = time.monotonic() - t0
                assert code == 3, f"node 3 exited {code} when cut off from etcd:\n{c.log(3)[-2000:]}"
                assert fenced_s < 2.5, f"fenced {fenced_s:.2f} s after the cut (TTL 2 s)"
                info = wait_recovered(c, 3, epoch, 30)
                recovered_s = time.monotonic() - t0
                ack_ms = acked_progress(load, (1, 2), 15)
                node.etcd.drop_connections()
                node.etcd.resume()
                node.start()
                res = load.finish()
                acked.update(load.acked)
                rounds.append({"round": r, "cut": "etcd", "fenced_s": round(fenced_s, 2),
                               "recovered_s": round(recovered_s, 2), "survivors_ack_ms": ack_ms,
                               "recovery": {k: info.get(k) for k in ("aborted", "committed", "duration_ms")},
                               **check_round(c, acked, res, f"etcd cut round {r}")})

                # peers only: node 3 keeps its lease, but its peers stop hearing its beats; they remove it in one
                # etcd transaction, fence it, recover it, and serve again within 2 x TTL + 5 s.  Cut both ways
                # from both peers, then one way from node 2 only (a non-transitive cut: 1-2 and 1-3 still talk)
                for cut in ("both peers", "node 2 only"):
                    load = Load(eps, 14, seed=600 + r, base=BASE * (2 * r + 2) + (0 if cut == "both peers"
                                                                                 else BASE // 2)).start()
                    time.sleep(2)
                    pid = node.proc.pid
                    epoch = {int(m["node_id"]): int(m["epoch"]) for m in c.members()}[3]
                    proxies = node.peer_proxies() if cut == "both peers" else [node.outbound[2]]
                    t0 = time.monotonic()
                    for p in proxies:
                        p.pause()
                    info = wait_recovered(c, 3, epoch, 30)
                    recovered_s = time.monotonic() - t0
                    ack_ms = acked_progress(load, (1, 2), 15)
                    serving_s = recovered_s + ack_ms / 1000
                    assert serving_s <= 2 * 2 + 5, f"{cut}: serving again {serving_s:.1f} s after the cut"
                    assert node.proc.wait(15) is not None and not pid_alive(pid)
                    # whichever node decided first (node 3 itself may: it hears nobody) says so in its log
                    assert "node(s) [3] from the cluster: cut off from their peers" in c.log(1) + c.log(2) + c.log(3)
                    for p in proxies:
                        p.drop_connections()
                        p.resume()
                    node.start()
                    res = load.finish()
                    acked.update(load.acked)
                    rounds.append({"round": r, "cut": f"peers: {cut}", "recovered_s": round(recovered_s, 2),
                                   "serving_again_s": round(serving_s, 2),
                                   "recovery": {k: info.get(k) for k in ("aborted", "committed", "duration_ms")},
                                   **check_round(c, acked, res, f"peer cut ({cut}) round {r}")})
            garbage_counted(c)
        report("partitions", rounds)
        final_verify(c)
    finally:
        node.close()


# -- 5. a malformed peer message that reuses a live member's routing id --------------------------------------------

@pytest.mark.timeout(120)
def test_spoofed_routing_id_of_a_live_member_does_not_stall_the_cluster(local_cluster: Start) -> None:
    """Without CURVE, ROUTER_HANDOVER gives a live member's routing id (n<id>e<epoch>, public in etcd) to any
    connection that claims it (the links resend what the member's dropped connection lost).  Under CURVE (the
    default) a keyless connection fails its handshake, and a connection with another member's key (node 3) is
    let in but its frames claiming node 1 are dropped (``wrong_key``): a peer is its key, not its routing id, so
    nothing is taken over and the cluster keeps committing on every node."""
    c = local_cluster(3)
    eps = endpoints(c)
    with connect(eps[0], 30) as conn:
        conn.create_table("acks", {"v": "int64"}, buckets=64)
    members = {int(m["node_id"]): m for m in c.members()}
    stop = threading.Event()
    ackers = [Acker(ep, BASE * (i + 1), stop) for i, ep in enumerate(eps)]
    for a in ackers:
        a.start()
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        time.sleep(2)
        for i in range(10):  # keyless, then with node 3's own key: neither may pass for node 1
            s = ctx.socket(zmq.DEALER) if i % 2 == 0 else peer_dealer(ctx, c.dir, 3, 2)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.ROUTING_ID, f"n1e{members[1]['epoch']}".encode())
            s.connect(str(members[2]["peer_endpoint"]))
            s.send(b"not a peer message" if i % 2 == 0 else wire.encode_peer(
                1, int(members[1]["epoch"]), 5, "hello", {}, dest_epoch=int(members[2]["epoch"]), seq=1))
            time.sleep(0.2)
            s.close(0)
        before = [len(a.acked) for a in ackers]
        time.sleep(5)
        after = [len(a.acked) for a in ackers]
    finally:
        stop.set()
        for a in ackers:
            a.join(30)
        ctx.term()
    assert all(b > a for a, b in zip(before, after)), f"acknowledged commits per node in 5 s: " \
        f"{[b - a for a, b in zip(before, after)]}"
    peer = next(m for m in c.members() if m["node_id"] == 2)["counters"]["peer"]
    assert peer.get("wrong_key", 0) >= 1 and peer.get("handshake_failed", 0) >= 1, peer  # refused, counted
