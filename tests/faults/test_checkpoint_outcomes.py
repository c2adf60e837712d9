"""A checkpoint's redo pointer and outcomes some member has not heard (found by an adversarial review).

The window: a node's checkpoint moved its redo pointer past a COMMIT record whose outcome some member had not
heard yet (its ``done`` message in flight, or the member's link slow).  If the node then died, the recoverer read
the dead WAL only from that pointer: the COMMIT was not there, the XID was still ``prepared`` in the recoverer's
table and ``verdict.decide`` aborted it, although the dead node's own ``xact`` file (written by that checkpoint)
said committed.  If the recoverer was a member that *had* heard the outcome, the XID was neither in the WAL it
read nor prepared there, so nothing was announced and the member that missed the ``done`` kept it prepared for
ever.  The fix (``Engine.pointer_gate``, ``Sessions._gate_pointer``): the pointer is persisted only once every
member acknowledged an outcome round sent after every outcome logged before the checkpoint.

How the tests reach it with real processes:

* the node under test (node 1) runs through this module's wrapper (``python -m tests.faults.test_checkpoint_outcomes
  TRIGGER -- <tests.support.faults_node args>``): the peer traffic it sends to the chosen member goes through a
  ``TcpProxy`` the test can pause (``tests/support/faults_node.py``), and ``Engine.maybe_checkpoint`` also
  checkpoints when the file TRIGGER exists: the periodic checkpoint (every ``checkpoint_interval`` s or
  ``checkpoint_wal_bytes`` of WAL) firing at the moment the test chooses;
* failpoint ``sessions.commit_prepared`` (pause) holds node 1 after the prepare round, so the test can pause the
  proxy before the outcome goes out.

CI runs one case of each kind (a lazy outcome, a member that missed the outcome, the flusher thread);
``MUHEAM_FULL=1`` adds the controls and the whole-cluster restart.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from muheam import config as config_mod
from muheam.client import connect
from muheam.engine import statefiles
from muheam.ops.procs import write_pid
from tests.support.cluster import FULL, LocalCluster
from tests.support.faults import TcpProxy, wait_for

pytestmark = pytest.mark.integration
ONLY_FULL = pytest.mark.skipif(not FULL, reason="a control or a rarer case: MUHEAM_FULL=1")
Start = Callable[..., LocalCluster]
ROOT = Path(__file__).resolve().parents[2]


# -- the wrapper (run as a module in the node's process) ------------------------------------------------------------

def _wrapper_main(argv: list[str]) -> None:
    """``TRIGGER [faults_node args]``: ``Engine.maybe_checkpoint`` checkpoints at once while TRIGGER exists (and
    removes it): the periodic checkpoint firing at the moment the test chooses.  While ``TRIGGER.slowflush``
    exists, ``Engine.flush_wal`` (the flusher thread's fsync of commits) takes 3 s longer: a slow disk."""
    trigger, rest = Path(argv[0]), argv[1:]
    from muheam.engine import engine as engine_mod
    original = engine_mod.Engine.maybe_checkpoint

    def maybe_checkpoint(self: Any, now: float) -> bool:
        if trigger.exists():
            trigger.unlink()
            self.checkpoint()
            return True
        return bool(original(self, now))

    engine_mod.Engine.maybe_checkpoint = maybe_checkpoint  # type: ignore[method-assign]
    slow = trigger.with_name(trigger.name + ".slowflush")
    flush_wal = engine_mod.Engine.flush_wal

    def slow_flush_wal(self: Any, end: int) -> None:
        if slow.exists():  # a slow fsync (the flusher thread's; the loop goes on meanwhile)
            time.sleep(3.0)
        flush_wal(self, end)

    engine_mod.Engine.flush_wal = slow_flush_wal  # type: ignore[method-assign]
    from tests.support import faults_node
    faults_node.main(rest)


# -- helpers ----------------------------------------------------------------------------------------------------

def epochs(c: LocalCluster) -> dict[int, int]:
    return {int(m["node_id"]): int(m["epoch"]) for m in c.members()}


def client_eps(c: LocalCluster) -> dict[int, str]:
    return {int(m["node_id"]): str(m["client_endpoint"]) for m in c.members()}


def wait_recovered(c: LocalCluster, node: int, epoch: int, timeout: float) -> dict[str, Any]:
    from tests.faults.test_node_failure import wait_recovered as wr
    return wr(c, node, epoch, timeout)


class WrappedNode:
    """Node ``node`` restarted through the wrapper: its traffic to each member in ``cut_to`` goes through a
    pausable proxy, and a checkpoint can be triggered."""

    def __init__(self, c: LocalCluster, node: int, cut_to: tuple[int, ...], env: dict[str, str]) -> None:
        self.c, self.node = c, node
        cfg = config_mod.load(c.config)
        self.proxies = {m: TcpProxy(cfg.nodes[m].peer_endpoint) for m in cut_to}
        self.routes = {cfg.nodes[m].peer_endpoint: p.url("tcp") for m, p in self.proxies.items()}
        self.trigger = c.dir / f"checkpoint-now-{node}"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        self.c.cli("node", "stop", "--node-id", str(self.node), "--mode", "fast", timeout=60)
        args = [sys.executable, "-m", "tests.faults.test_checkpoint_outcomes", str(self.trigger)]
        for old, new in self.routes.items():
            args += ["--route", f"{old}={new}"]
        args += ["--", "node", "start", "--node-id", str(self.node), "-c", str(self.c.config), "--log-file",
                 str(self.c.dir / "log" / f"node-{self.node}.log")]
        env = {**os.environ, **self.env}
        proc = self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            start_new_session=True)
        write_pid(self.c.dir / "run" / f"node-{self.node}.pid", proc.pid)
        assert wait_for(lambda: any(int(m["node_id"]) == self.node and m["state"] == "running"
                                    and m.get("answering") and m["pid"] == proc.pid for m in self.c.members()),
                        60), self.c.log(self.node)[-3000:]
        return proc.pid

    def checkpoints(self) -> int:
        return self.c.log(self.node).count(f"node {self.node}: checkpoint at LSN")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def close(self) -> None:
        self.kill()
        for p in self.proxies.values():
            p.close()


def make_w(ep: str) -> None:
    """Table ``w`` (one chain) with key 0, made through ``ep``: the tests then commit key 1 on node 1."""
    with connect(ep, 30) as conn:
        conn.create_table("w", {"v": "int64"}, buckets=1)
        with conn.transaction() as tx:
            tx.insert("w", 0, {"v": 0})


def commit_in_thread(ep: str, table: str, key: int, timeout: float) -> tuple[threading.Thread, dict[str, Any]]:
    """Begin, insert ``key``, and COMMIT in a thread (the commit may block); the result dict gets ``xid`` and
    ``outcome`` ("committed" or the error)."""
    out: dict[str, Any] = {}
    conn = connect(ep, timeout)
    tx = conn.transaction().__enter__()
    tx.insert(table, key, {"v": key})
    out["xid"] = tx.xid

    def run() -> None:
        try:
            tx.commit()
            out["outcome"] = "committed"
        except Exception as e:  # noqa: BLE001 - reported by the test
            out["outcome"] = f"{type(e).__name__}: {e}"
        finally:
            conn.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def read_key(ep: str, table: str, key: int, timeout: float) -> str:
    """What a new transaction on ``ep`` reads for ``key``: the row, ``missing`` or the error."""
    try:
        with connect(ep, timeout) as conn, conn.transaction() as tx:
            row = tx.get(table, key)
        return "missing" if row is None else f"row {row}"
    except Exception as e:  # noqa: BLE001 - reported by the test
        return f"{type(e).__name__}: {str(e)[:160]}"


def outcome_round_held_then_checkpoint_then_kill(c: LocalCluster, wn: WrappedNode, ep: str, key: int,
                                                 client_timeout: float, checkpoint: bool = True) -> dict[str, Any]:
    """Commit ``key`` on the wrapped node; while the failpoint holds it after the prepare round, pause its
    proxies (its outcome will not reach those members) and arm the checkpoint trigger; once the checkpoint is
    logged, kill -9 the node.  Returns the client's view."""
    before = wn.checkpoints()
    t, out = commit_in_thread(ep, "w", key, client_timeout)
    assert wait_for(lambda: "failpoint sessions.commit_prepared" in c.log(wn.node), 10, 0.02), \
        c.log(wn.node)[-2000:]
    for p in wn.proxies.values():
        p.pause()
    if checkpoint:
        wn.trigger.touch()
        assert wait_for(lambda: wn.checkpoints() > before, 10, 0.02), c.log(wn.node)[-2000:]
    else:  # the control: the same hold of the outcome, no checkpoint before the kill
        time.sleep(2.0)
    if client_timeout < 5:
        t.join(client_timeout + 2)
    wn.kill()
    t.join(client_timeout + 5)
    return out


# -- the tests --------------------------------------------------------------------------------------------------

@pytest.mark.timeout(240)
@pytest.mark.parametrize("checkpoint", [True, pytest.param(False, marks=ONLY_FULL)],
                         ids=["checkpoint-before-kill", "control-no-checkpoint"])
def test_a_lazily_acknowledged_commit_survives_a_checkpoint_before_its_node_dies(local_cluster: Start,
                                                                         checkpoint: bool) -> None:
    """2 nodes, ``lazy_outcome = true`` on node 1.  Node 1 commits T (the client hears "committed": every member
    acknowledged the prepare, the COMMIT is durable); the ``done`` to node 2 is held in the link; node 1's
    periodic checkpoint runs (redo pointer past T's COMMIT; ``xact/node-1`` says T committed); node 1 is killed.
    Node 2 recovers node 1: the pointer must not have passed T's COMMIT (node 2 never acknowledged a round after
    T's outcome), so node 2 reads it there and T stays committed (I7); before the fix T was aborted.  The control
    has the same schedule and no checkpoint before the kill."""
    c = local_cluster(2)
    eps = client_eps(c)
    make_w(eps[2])
    wn = WrappedNode(c, 1, (2,), {"MUHEAM_FAILPOINTS": "sessions.commit_prepared@1=1*pause(1.5)",
                                  "MUHEAM_LAZY_OUTCOME": "true"})
    try:
        wn.start()
        epoch = epochs(c)[1]
        out = outcome_round_held_then_checkpoint_then_kill(c, wn, eps[1], 1, 4.0, checkpoint)
        assert out.get("outcome") == "committed", out  # lazily, the client heard "committed" before the kill
        info = wait_recovered(c, 1, epoch, 30)
        seen = read_key(eps[2], "w", 1, 15)
        committed, aborted = statefiles.read_xact(Path(c.info["config"]["shared_dir"]), 1)
        assert seen.startswith("row"), (
            f"T (xid {out['xid']}) was acknowledged committed to its client, node 1's checkpoint recorded it "
            f"committed in xact/node-1 (committed: {out['xid'] in committed}, aborted: {out['xid'] in aborted}), "
            f"but after node 2 recovered node 1 ({ {k: info.get(k) for k in ('aborted', 'committed')} }) node 2 "
            f"reads key 1 as: {seen}")
    finally:
        wn.close()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("recoverer", [pytest.param(2, marks=ONLY_FULL), 3],
                         ids=["recovered-by-node-2-which-heard", "recovered-by-node-3-which-missed"])
def test_survivors_agree_on_a_commit_whose_outcome_one_of_them_missed(local_cluster: Start,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        recoverer: int) -> None:
    """3 nodes, default (acknowledged) outcome round.  Node 1 commits T; its ``done`` reaches node 2 but is
    held on the link to node 3; node 1's periodic checkpoint moves its redo pointer past T's COMMIT; node 1 is
    killed (its client hears no answer).  Whoever recovers node 1, the survivors must end with one outcome for
    T and serve.  Before the fix: if node 2 recovered, T was neither in the WAL it read nor prepared there, so
    nothing about T was announced and node 3 kept T prepared for ever (every begin there waited, then
    LockTimeout); if node 3 recovered, it aborted T, which node 2 held committed.  The recoverer is chosen by making the other survivor's
    first claims fail (failpoint ``survivors.claim``)."""
    other = 5 - recoverer
    monkeypatch.setenv("MUHEAM_FAILPOINTS", f"survivors.claim@{other}=3*drop")
    c = local_cluster(3)
    monkeypatch.delenv("MUHEAM_FAILPOINTS")
    eps = client_eps(c)
    make_w(eps[2])
    wn = WrappedNode(c, 1, (3,), {"MUHEAM_FAILPOINTS": "sessions.commit_prepared@1=1*pause(1.5)"})
    try:
        wn.start()
        epoch = epochs(c)[1]
        out = outcome_round_held_then_checkpoint_then_kill(c, wn, eps[1], 1, 6.0)
        assert out.get("outcome") != "committed", out  # acknowledged mode: node 3 never acknowledged the outcome
        info = wait_recovered(c, 1, epoch, 30)
        assert int(info["by"]) == recoverer, info
        views = {n: read_key(eps[n], "w", 1, 15) for n in (2, 3)}
        time.sleep(2)
        again = read_key(eps[3], "w", 1, 15)  # not a passing delay: still the same much later
        committed, aborted = statefiles.read_xact(Path(c.info["config"]["shared_dir"]), 1)
        ok = len(set(views.values())) == 1 and not any("Error" in v or "Timeout" in v for v in views.values())
        assert ok, (f"T (xid {out['xid']}, client told: {out.get('outcome')}) after node {info.get('by')} "
                    f"recovered node 1: node 2 reads {views[2]!r}, node 3 reads {views[3]!r} (and again 2 s "
                    f"later: {again!r}); xact/node-1 has T committed: {out['xid'] in committed}, aborted: "
                    f"{out['xid'] in aborted}")
    finally:
        wn.close()


@pytest.mark.timeout(300)
@ONLY_FULL
def test_a_whole_cluster_restart_keeps_what_the_survivors_decided(local_cluster: Start) -> None:
    """2 nodes, default outcome round.  The same schedule as above (T's ``done`` held, a checkpoint, kill -9).
    Node 2 recovers node 1 and reads key 1; if it is free, node 2 commits its own insert of key 1.  After a
    whole-cluster stop and start every outcome comes from the ``xact`` files, and key 1 must read on every node
    exactly as it did after the recovery (before the fix the recoverer aborted T while ``xact/node-1`` kept it
    committed, and the restart showed two committed inserts of key 1)."""
    from tests.support.cluster import run_cli
    c = local_cluster(2)
    eps = client_eps(c)
    make_w(eps[2])
    wn = WrappedNode(c, 1, (2,), {"MUHEAM_FAILPOINTS": "sessions.commit_prepared@1=1*pause(1.5)"})
    try:
        wn.start()
        epoch = epochs(c)[1]
        out = outcome_round_held_then_checkpoint_then_kill(c, wn, eps[1], 1, 6.0)
        assert out.get("outcome") != "committed", out
        wait_recovered(c, 1, epoch, 30)
        with connect(eps[2], 30) as conn, conn.transaction() as tx:
            before = tx.get("w", 1)
            if before is None:
                tx.insert("w", 1, {"v": 2})  # committed and acknowledged below
        want = [(1, before if before is not None else {"v": 2})]
        for p in wn.proxies.values():
            p.close()
        down = run_cli("cluster", "down", "--dir", str(c.dir), "--mode", "fast", timeout=90, check=False)
        assert down.returncode == 0, down.stdout + down.stderr
        up = run_cli("cluster", "up", "--dir", str(c.dir), "--format", "json", timeout=180, check=False)
        assert up.returncode == 0, up.stdout + up.stderr
        after = {}
        for n, ep in sorted(client_eps(c).items()):
            with connect(ep, 30) as conn, conn.transaction() as tx:
                after[n] = [(k, r) for k, r in tx.scan("w") if k == 1]
        assert all(rows == want for rows in after.values()), (
            f"after node 2 recovered node 1, key 1 read {before} (T, xid {out['xid']}); after a whole-cluster "
            f"restart it reads {after}")
    finally:
        wn.close()


@pytest.mark.timeout(240)
def test_flush_thread_checkpoint_during_commit_fsync_then_crash(local_cluster: Start) -> None:
    """2 nodes, ``wal_flush_thread = true`` on node 1.  T's COMMIT is appended and handed to the flusher, whose
    fsync is slow (3 s); meanwhile the loop's periodic checkpoint runs: it flushes the WAL itself, lists T among
    the running transactions, writes T committed into ``xact/node-1`` ("committing transactions count as
    committed") and moves the redo pointer past T's COMMIT.  Node 1 is killed before the flusher returns (the
    client hears nothing).  The recoverer reads T as started (the checkpoint's running list) and prepared, finds
    no COMMIT from the pointer on, and aborted T, while xact/node-1 (and so every later whole-cluster recovery)
    said committed: the survivors' decision and the durable outcome disagreed (before the fix: now the pointer
    waits until T's outcome is sent and a later round acknowledged)."""
    c = local_cluster(2)
    eps = client_eps(c)
    make_w(eps[2])
    wn = WrappedNode(c, 1, (), {"MUHEAM_FAILPOINTS": "sessions.commit_prepared@1=1*pause(1.0)",
                                "MUHEAM_WAL_FLUSH_THREAD": "true"})
    try:
        wn.start()
        epoch = epochs(c)[1]
        slow = wn.trigger.with_name(wn.trigger.name + ".slowflush")
        slow.touch()
        out = outcome_round_held_then_checkpoint_then_kill(c, wn, eps[1], 1, 6.0)
        assert out.get("outcome") != "committed", out
        wait_recovered(c, 1, epoch, 30)
        seen = read_key(eps[2], "w", 1, 15)
        committed, aborted = statefiles.read_xact(Path(c.info["config"]["shared_dir"]), 1)
        xid = out["xid"]
        assert seen.startswith("row") == (xid in committed), (
            f"T (xid {xid}): node 2 reads key 1 as {seen!r} after recovering node 1, but xact/node-1 says "
            f"committed: {xid in committed}, aborted: {xid in aborted}")
    finally:
        wn.close()


@pytest.mark.timeout(240)
@ONLY_FULL
def test_crash_after_prepare_round_before_commit_record_is_aborted_everywhere(local_cluster: Start,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Node 2 crashes (failpoint ``sessions.commit_prepared`` crash) with T prepared on
    every member and no COMMIT logged.  Both survivors must decide T aborted (not wait for it for ever), its
    client must not have heard "committed", and key 1 must be free on both."""
    monkeypatch.setenv("MUHEAM_FAILPOINTS", "sessions.commit_prepared@2=1*crash")
    c = local_cluster(3)
    monkeypatch.delenv("MUHEAM_FAILPOINTS")
    eps = client_eps(c)
    with connect(eps[1], 30) as conn:
        conn.create_table("w", {"v": "int64"}, buckets=1)
        with conn.transaction() as tx:  # read-only commit: no prepare round, the failpoint does not fire
            tx.get("w", 0)
    epoch = epochs(c)[2]
    t, out = commit_in_thread(eps[2], "w", 1, 10)
    t.join(15)
    assert out.get("outcome") != "committed", out
    wait_recovered(c, 2, epoch, 30)
    views = {n: read_key(eps[n], "w", 1, 15) for n in (1, 3)}
    assert views == {1: "missing", 3: "missing"}, views
    with connect(eps[3], 30) as conn, conn.transaction() as tx:
        tx.insert("w", 1, {"v": 3})
    assert read_key(eps[1], "w", 1, 15) == "row {'v': 3}"


if __name__ == "__main__":
    _wrapper_main(sys.argv[1:])
