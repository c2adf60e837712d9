"""The checkpoint pointer's gate (``Engine.pointer_gate``, ``Sessions._gate_pointer``), from a failure-path review:
a clean stop of an idle node waited 2 s for a paused peer (the empty round is needed only with lazy outcomes),
a commit whose flush failed counted as announced, and a zombie could move the pointer file back; each is a test
here, with the checks that held (the pointer is published when the peer expires, joins, or is alone).  CI runs
the first three; ``MUHEAM_FULL=1`` all.

Real-process cases use ``tests.faults.test_checkpoint_outcomes.WrappedNode`` (a checkpoint forced when a trigger
file exists); unit cases drive ``Engine`` and a bare ``Sessions`` with a fake ``CommitService``.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest

from muheam.cluster.sessions import Sessions
from muheam.engine import Engine, EngineConfig, statefiles
from muheam.net.clientport import Deferred
from muheam.ops.procs import pid_alive, wait_until
from tests.faults.test_checkpoint_outcomes import WrappedNode, client_eps, make_w
from tests.support.cluster import FULL, LocalCluster
from tests.support.engines import shared_dir
from tests.support.faults import wait_for

Start = Callable[..., LocalCluster]
COLS = {"v": "int64"}
ONLY_FULL = pytest.mark.skipif(not FULL, reason="a check that held: MUHEAM_FULL=1")


def shared_of(c: LocalCluster) -> Path:
    return Path(c.info["config"]["shared_dir"])


def last_checkpoint_lsn(c: LocalCluster, node: int) -> int:
    found = re.findall(rf"node {node}: checkpoint at LSN (0x[0-9a-fA-F]+)", c.log(node))
    return int(found[-1], 16)


def timed_stop(pid: int, limit: float = 15.0) -> float:
    """SIGINT (what ``node stop --mode fast`` sends); seconds until the process is gone."""
    t0 = time.monotonic()
    os.kill(pid, signal.SIGINT)
    assert wait_until(lambda: not pid_alive(pid), limit), f"pid {pid} still there after {limit} s"
    return time.monotonic() - t0


# -- question 4: the clean-stop barrier ------------------------------------------------------------------------

@pytest.mark.timeout(180)
def test_fast_stop_of_an_idle_node_does_not_wait_for_a_paused_peer(local_cluster: Start) -> None:
    """2 idle nodes (TTL 6 s, so a 3 s SIGSTOP of node 2 is well inside its lease).  Node 1 is stopped (SIGINT)
    while node 2 is paused.  Nothing is in flight and outcome rounds are acknowledged, so no empty round is
    needed; the first version of the gate sent one at every clean stop and waited for node 2 until its 2 s
    deadline."""
    c = local_cluster(2, lease_ttl=6)
    p1, p2 = c.node_pid(1), c.node_pid(2)
    assert p1 and p2
    os.kill(p2, signal.SIGSTOP)
    try:
        took = timed_stop(p1)
    finally:
        os.kill(p2, signal.SIGCONT)
    assert took < 1.0, f"node 1 (idle) took {took:.2f} s to stop because node 2 was paused"


@pytest.mark.timeout(180)
@ONLY_FULL
def test_control_fast_stop_of_an_idle_node_with_peers_up_is_quick(local_cluster: Start) -> None:
    c = local_cluster(2, lease_ttl=6)
    p1 = c.node_pid(1)
    assert p1
    took = timed_stop(p1)
    assert took < 1.0, f"node 1 (idle) took {took:.2f} s to stop with every peer up"


@pytest.mark.timeout(180)
@ONLY_FULL
def test_fast_stop_right_after_a_peer_restarted_is_not_delayed(local_cluster: Start,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/integration/test_cluster.py::test_kill_expires_within_ttl_stop_leaves_fast... expects a node stopped
    right after a peer restarted to leave within 0.5 s.  Here the restarted node 2 is in etcd (running) but its
    loop starts 3 s later (failpoint ``node.started``: its warm-ups / a slow start).  Node 3 is then stopped."""
    c = local_cluster(3, lease_ttl=2)
    c.cli("node", "stop", "--node-id", "2", "--mode", "fast", timeout=60)
    monkeypatch.setenv("MUHEAM_FAILPOINTS", "node.started@2=1*pause(3)")
    c.cli("node", "start", "--node-id", "2", "--daemon", timeout=60)
    monkeypatch.delenv("MUHEAM_FAILPOINTS")
    p3 = c.node_pid(3)
    assert p3
    time.sleep(0.3)  # node 3 applies node 2's join
    took = timed_stop(p3)
    assert took < 1.0, f"node 3 (idle) took {took:.2f} s to stop while node 2's loop had not started"


# -- question 1: liveness of the gate --------------------------------------------------------------------------

@pytest.mark.timeout(180)
@ONLY_FULL
def test_only_member_publishes_its_pointer_at_once(local_cluster: Start) -> None:
    c = local_cluster(1)
    wn = WrappedNode(c, 1, (), {})
    try:
        wn.start()
        before = wn.checkpoints()
        wn.trigger.touch()
        assert wait_for(lambda: wn.checkpoints() > before, 10, 0.05)
        lsn = last_checkpoint_lsn(c, 1)
        assert wait_for(lambda: (statefiles.read_checkpoint(shared_of(c), 1) or
                                 statefiles.CheckpointPointer(0, 0)).redo_lsn == lsn, 2, 0.05)
    finally:
        wn.close()


@pytest.mark.timeout(180)
@ONLY_FULL
def test_pointer_waits_for_a_paused_peer_then_is_published_when_it_expires(local_cluster: Start) -> None:
    """Node 2 SIGSTOPped (TTL 2): node 1's checkpoint pointer waits (the barrier round needs node 2), and is
    published once node 2 expires and leaves the round."""
    c = local_cluster(2, lease_ttl=2)
    wn = WrappedNode(c, 1, (), {})
    try:
        wn.start()
        p2 = c.node_pid(2)
        assert p2
        before = wn.checkpoints()
        os.kill(p2, signal.SIGSTOP)
        wn.trigger.touch()
        assert wait_for(lambda: wn.checkpoints() > before, 10, 0.05)
        lsn = last_checkpoint_lsn(c, 1)
        time.sleep(0.5)
        held = statefiles.read_checkpoint(shared_of(c), 1)
        assert held is None or held.redo_lsn < lsn  # the gate holds it meanwhile
        assert wait_for(lambda: (statefiles.read_checkpoint(shared_of(c), 1) or
                                 statefiles.CheckpointPointer(0, 0)).redo_lsn == lsn, 20, 0.1), c.log(1)[-2000:]
    finally:
        p2 = c.node_pid(2)
        if p2 and pid_alive(p2):
            os.kill(p2, signal.SIGCONT)
        wn.close()


@pytest.mark.timeout(240)
@ONLY_FULL
def test_pointer_published_when_a_member_joins_while_the_barrier_is_open(local_cluster: Start) -> None:
    """Node 1's link to node 2 held (proxy paused) so its barrier round stays open; node 3 joins meanwhile
    (it is not in that round); the link resumes: the pointer is published, and a commit on node 1 afterwards
    is read on the joiner."""
    c = local_cluster(3, lease_ttl=4)
    c.cli("node", "stop", "--node-id", "3", "--mode", "fast", timeout=60)
    wn = WrappedNode(c, 1, (2,), {})
    try:
        wn.start()
        eps = client_eps(c)
        make_w(eps[1])
        before = wn.checkpoints()
        wn.proxies[2].pause()
        wn.trigger.touch()
        assert wait_for(lambda: wn.checkpoints() > before, 10, 0.05)
        lsn = last_checkpoint_lsn(c, 1)
        c.cli("node", "start", "--node-id", "3", "--daemon", timeout=60)
        held = statefiles.read_checkpoint(shared_of(c), 1)
        wn.proxies[2].resume()
        assert held is None or held.redo_lsn < lsn
        assert wait_for(lambda: (statefiles.read_checkpoint(shared_of(c), 1) or
                                 statefiles.CheckpointPointer(0, 0)).redo_lsn >= lsn, 15, 0.1), c.log(1)[-2000:]
    finally:
        wn.close()


# -- questions 2 and 3: unit cases -----------------------------------------------------------------------------

class FakeCommits:
    """Records ``finish`` calls; ``ack_all()`` completes the acknowledged ones (every member acknowledged)."""

    def __init__(self) -> None:
        self.sent: list[tuple[list[Any], list[int], bool]] = []
        self.pending: list[Callable[[], None]] = []

    def finish(self, committed: list[Any], aborted: list[int], then: Callable[[], None], acked: bool = True) -> None:
        self.sent.append((list(committed), list(aborted), acked))
        if acked:
            self.pending.append(then)
        else:
            then()

    def barrier(self, then: Callable[[], None]) -> None:  # (as CommitService's: an empty acknowledged round)
        self.finish([], [], then)

    def ack_all(self) -> None:
        done, self.pending = self.pending, []
        for then in done:
            then()


def bare_sessions(engine: Engine) -> Any:
    s: Any = object.__new__(Sessions)
    s.engine = engine
    s.committing, s.answering, s.pointer_waits = {}, {}, []
    s.counters = Counter()
    s.lazy_outcome = False
    s.after_commit = None
    s.cluster = SimpleNamespace(commits=FakeCommits())
    s.on_outcome = lambda ended: None
    engine.pointer_gate = s._gate_pointer
    return s


def test_a_commit_whose_flush_failed_keeps_the_pointer_before_it(tmp_path: Path) -> None:
    """Flusher thread: T's COMMIT is appended, its flush runs in the thread; a checkpoint (which flushes the WAL
    itself, so T's COMMIT is durable, and writes T committed into xact/node-1) hands its pointer to the gate with
    T under way.  The thread's fsync then fails: ``_durable(error)`` drops T from ``committing`` without sending
    any outcome; the gate takes that as "T's outcome was sent", starts the barrier round and, once acknowledged,
    persisted a pointer past T's COMMIT (``publish_checkpoint`` did not look at ``engine.failed``; now it
    persists nothing once the engine failed).  A recoverer would then not find T's COMMIT and abort T while
    xact/node-1 says committed."""
    shared = shared_dir(tmp_path)
    e = Engine.open(shared, 1, config=EngineConfig(cache_pages=16, segment_size=1 << 16))
    e.create_table("a", COLS)
    s = bare_sessions(e)
    t = e.begin(5)
    t.insert("a", 1, {"v": 1})
    tx = SimpleNamespace(txn=t, scope=None, released=False)
    reply = Deferred()
    end = e.log_commits([t])
    assert end
    s.committing[t.xid] = tx
    lsn = e.checkpoint()  # gated: waits for T
    assert statefiles.read_checkpoint(shared, 1).redo_lsn < lsn
    committed, _ = statefiles.read_xact(shared, 1)
    assert t.xid in committed  # the checkpoint recorded T committed
    # the flusher's fsync fails: the engine stops and the commit's answer is "outcome unknown"
    try:
        e._durable(1 << 62)
    except Exception:  # noqa: BLE001 - the failure is the point
        pass
    e._failed = e._failed or OSError("EIO")
    s._durable([(tx, reply)], OSError("EIO"))
    s._release_pointers()
    s.cluster.commits.ack_all()
    sent_outcomes = [x for committed_, _, _ in s.cluster.commits.sent for x, _ in committed_]
    ptr = statefiles.read_checkpoint(shared, 1).redo_lsn
    assert not (ptr >= lsn and t.xid not in sent_outcomes), (
        f"pointer persisted at {ptr:#x} (past T's COMMIT) although T's outcome was never sent "
        f"(outcomes sent: {s.cluster.commits.sent}) and the engine has failed ({e.failed})")


def test_publish_never_moves_the_file_backwards(tmp_path: Path) -> None:
    """``publish_checkpoint``'s "never older" test was against its own memory, not the file: a recoverer that
    moved this node's pointer to its WAL end (survivors._finish) was overwritten by a late publish from the
    fenced incarnation (a zombie whose barrier acknowledgements arrive after it was fenced)."""
    shared = shared_dir(tmp_path)
    e = Engine.open(shared, 1, config=EngineConfig(cache_pages=16, segment_size=1 << 16))
    e.create_table("a", COLS)
    handed: list[statefiles.CheckpointPointer] = []
    e.pointer_gate = handed.append
    e.checkpoint()
    end = e.wal.end_lsn
    statefiles.write_checkpoint(shared, 1, statefiles.CheckpointPointer(end + 4096, 0))  # the recoverer's
    e.publish_checkpoint(handed[0])
    assert statefiles.read_checkpoint(shared, 1).redo_lsn >= end, "the pointer moved backwards"


@pytest.mark.timeout(240)
@ONLY_FULL
def test_clean_stop_with_a_held_pointer_and_a_timed_out_barrier_restarts_without_waiting(local_cluster: Start) -> None:
    """Node 1's periodic checkpoint pointer is held (its link to node 2 paused), then node 1 is stopped cleanly
    while the link is still paused (its stop barrier times out).  The shutdown checkpoint must still be
    persisted at the WAL's last record, so the restart sees a clean stop (``await_own_recovery``: one record)
    and does not wait for a recovery nobody will run."""
    c = local_cluster(2, lease_ttl=4)
    wn = WrappedNode(c, 1, (2,), {})
    try:
        wn.start()
        before = wn.checkpoints()
        wn.proxies[2].pause()
        wn.trigger.touch()
        assert wait_for(lambda: wn.checkpoints() > before, 10, 0.05)
        assert wn.proc is not None
        took = timed_stop(wn.proc.pid)
        wn.proc.wait(5)
        wn.proxies[2].resume()
        assert 1.5 < took < 6, took  # the barrier's 2 s
        shared = shared_of(c)
        from walmerge import WalReader, node_wal_dir
        ptr = statefiles.read_checkpoint(shared, 1)
        assert ptr is not None
        reader = WalReader(node_wal_dir(shared, 1), node_id=1, system_id=EngineConfig().system_id,
                           start_lsn=ptr.redo_lsn, verify_crc=False)
        assert sum(len(b.headers) for b in reader.batches()) == 1
        t0 = time.monotonic()
        c.cli("node", "start", "--node-id", "1", "--daemon", timeout=90)
        assert time.monotonic() - t0 < 20
        assert "waiting for the survivors to recover its previous incarnation" not in c.log(1)
    finally:
        wn.close()


@pytest.mark.timeout(180)
@ONLY_FULL
def test_cluster_down_of_idle_nodes_does_not_wait_out_barriers(local_cluster: Start) -> None:
    """``cluster down`` signals every node at once.  Suspicion: a node whose barrier completes leaves (closes its
    mesh) without acknowledging a barrier a peer sent later, and that peer waits its whole 2 s.  (It does not:
    a peer's barrier precedes its acknowledgement of ours on its FIFO link.)"""
    c = local_cluster(3, lease_ttl=4)
    worst = 0.0
    for _ in range(3):
        pids = {n: c.node_pid(n) for n in (1, 2, 3)}
        t0 = time.monotonic()
        for pid in pids.values():
            assert pid
            os.kill(pid, signal.SIGINT)
        gone: dict[int, float] = {}
        deadline = time.monotonic() + 15
        while len(gone) < 3 and time.monotonic() < deadline:
            for n, pid in pids.items():
                if n not in gone and not pid_alive(pid):
                    gone[n] = time.monotonic() - t0
            time.sleep(0.01)
        worst = max(worst, *gone.values())
        from tests.support.cluster import run_cli
        r = run_cli("cluster", "up", "--dir", str(c.dir), "--nodes", "3", "--format", "json", timeout=120, check=False)
        assert r.returncode == 0, r.stderr[-2000:]
    assert worst < 1.0, f"an idle node took {worst:.2f} s to stop in a whole-cluster stop"


@pytest.mark.timeout(240)
@ONLY_FULL
def test_clean_stop_whose_barrier_times_out_keeps_a_lazy_commit(local_cluster: Start) -> None:
    """Lazy outcome on node 1; T's outcome to node 2 held on the link (paused after the prepare round); the
    client hears "committed"; node 1 is stopped cleanly with the link still paused: its barrier times out and
    the shutdown checkpoint moves the pointer past T's COMMIT.  Node 2 must still read T (it learns node 1's
    outcomes from xact/node-1 at the "left" event)."""
    from tests.faults.test_checkpoint_outcomes import commit_in_thread, read_key
    c = local_cluster(2, lease_ttl=4)
    eps = client_eps(c)
    make_w(eps[2])
    wn = WrappedNode(c, 1, (2,), {"MUHEAM_FAILPOINTS": "sessions.commit_prepared@1=1*pause(1.5)",
                                  "MUHEAM_LAZY_OUTCOME": "true"})
    try:
        wn.start()
        t, out = commit_in_thread(eps[1], "w", 1, 6.0)
        assert wait_for(lambda: "failpoint sessions.commit_prepared" in c.log(1), 10, 0.02)
        wn.proxies[2].pause()
        t.join(8)
        assert out.get("outcome") == "committed", out
        assert wn.proc is not None
        took = timed_stop(wn.proc.pid)
        wn.proc.wait(5)
        seen = read_key(eps[2], "w", 1, 15)
        assert seen.startswith("row"), (seen, took)
    finally:
        wn.close()
