"""The foundation with real etcd and real node processes: up, list, watch, kill, stop, restart, refusals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from muheam.ops.procs import free_port, pid_alive, wait_until, write_pid
from tests.support.cluster import MUHEAM, LocalCluster, run_cli, snapshot_tree
from tests.support.watching import Watcher

pytestmark = pytest.mark.integration
Start = Callable[..., LocalCluster]


def test_three_nodes_up_listed_running_with_distinct_epochs(local_cluster: Start) -> None:
    c = local_cluster(3)
    assert [n["node_id"] for n in c.info["nodes"]] == [1, 2, 3]
    members = c.members()
    assert [m["node_id"] for m in members] == [1, 2, 3]
    assert all(m["state"] == "running" and m["answering"] for m in members)
    assert len({m["epoch"] for m in members}) == 3
    for m in members:
        assert m["pid"] == c.node_pid(m["node_id"]) and pid_alive(m["pid"])
        assert m["peer_endpoint"].startswith("tcp://127.0.0.1:")
        assert m["client_endpoint"].startswith("tcp://127.0.0.1:")
    # every node connected to its two peers and merged their stamps into its Lamport clock
    assert all(m["lamport"] >= 2 for m in members)
    table = c.cli("list").stdout
    assert "Lamport" in table and "running" in table


def test_kill_expires_within_ttl_stop_leaves_fast_restart_gets_higher_epoch(local_cluster: Start) -> None:
    c = local_cluster(3, lease_ttl=2)
    with Watcher(c.config) as w:
        for n in (1, 2, 3):
            w.wait_for("member", n, 10)
        pid = c.node_pid(2)
        assert pid
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        at, record = w.wait_for("expired", 2, 10)
        assert at - t0 <= 2 + 1.0, f"expired after {at - t0:.2f} s"
        old_epoch = record["epoch"]

        c.cli("node", "start", "--node-id", "2", "--daemon")
        _, joined = w.wait_for("joined", 2, 10)
        assert joined["epoch"] > old_epoch

        pid = c.node_pid(3)
        assert pid
        t0 = time.monotonic()
        os.kill(pid, signal.SIGINT)  # what 'muheam node stop --mode fast' sends
        at, _ = w.wait_for("left", 3, 5)
        assert at - t0 <= 0.5, f"left after {at - t0:.2f} s"
        assert wait_until(lambda: not pid_alive(pid), 5)

        proc = c.cli("node", "stop", "--node-id", "1", "--mode", "smart")
        assert "stopped" in proc.stdout
        w.wait_for("left", 1, 5)
    assert [m["node_id"] for m in c.members()] == [2]


def test_duplicate_node_id_refused_and_nothing_changed(local_cluster: Start) -> None:
    c = local_cluster(2)
    shared = Path(c.info["config"]["shared_dir"])
    before = snapshot_tree(shared, live_wal=True)
    proc = c.cli("node", "start", "--node-id", "1", check=False, timeout=30)
    assert proc.returncode != 0
    assert "node id 1 is held by a live node" in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot_tree(shared, live_wal=True) == before
    assert [m["state"] for m in c.members()] == ["running", "running"]


def test_foreign_and_unrelated_directories_refused(local_cluster: Start, tmp_path: Path) -> None:
    a = local_cluster(1, name="a")
    b = local_cluster(1, name="b")
    b_shared = Path(b.info["config"]["shared_dir"])
    before = snapshot_tree(b_shared, live_wal=True)
    # a node of cluster a pointed at cluster b's shared directory
    a.cli("node", "stop", "--node-id", "1")
    proc = a.cli("node", "start", "--node-id", "1", "--shared-dir", str(b_shared), check=False, timeout=30)
    assert proc.returncode != 0 and "belongs to cluster id" in proc.stderr, proc.stderr
    # cluster init of a new name onto b's directory
    proc = a.cli("cluster", "init", "--cluster-name", "other", "--shared-dir", str(b_shared), check=False)
    assert proc.returncode != 0 and "belongs to another cluster" in proc.stderr, proc.stderr
    assert snapshot_tree(b_shared, live_wal=True) == before
    # cluster init onto a directory with unrelated files
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    before = snapshot_tree(junk)
    proc = a.cli("cluster", "init", "--cluster-name", "other", "--shared-dir", str(junk), check=False)
    assert proc.returncode != 0 and "not empty and holds no MUHEAM cluster" in proc.stderr, proc.stderr
    assert snapshot_tree(junk) == before


def test_a_copy_of_the_shared_directory_is_refused_while_the_cluster_runs_on_the_original(
        local_cluster: Start) -> None:
    """A copy (a backup taken while the cluster was stopped, ``cp -a``) names the same cluster id, so a node
    pointed at it joined the running cluster and served its stale rows: ``get`` through it said a key was
    missing that the others had (a black-box test found it).  A node that joins running peers now waits until
    the shared directory shows a running peer's WAL moving; a copy never does."""
    c = local_cluster(2)
    shared = Path(c.info["config"]["shared_dir"])
    c.cli("table", "create", "t", "v:int64")
    c.cli("node", "stop", "--node-id", "2")
    copy = shared.parent / "shared-copy"
    shutil.copytree(shared, copy, symlinks=True)
    c.cli("put", "t", "1", "v=1")  # in the original only
    proc = c.cli("node", "start", "--node-id", "2", "--shared-dir", str(copy), check=False, timeout=90)
    assert proc.returncode != 0, proc.stdout
    assert "does not show" in proc.stderr and str(copy) in proc.stderr and "Traceback" not in proc.stderr, \
        proc.stderr
    assert [m["node_id"] for m in c.members()] == [1]
    c.cli("node", "start", "--node-id", "2", "--daemon", timeout=60)  # the real directory is taken
    assert "1" in c.cli("get", "t", "1", "--node-id", "2", "--format", "json").stdout


def test_a_daemon_node_runs_with_the_flags_it_was_started_with(local_cluster: Start) -> None:
    """``node start --daemon --lease-ttl 5`` started its node process with the config file alone: it ran with
    the file's TTL (and with ``--shared-dir`` against the file's directory), silently (a black-box test)."""
    c = local_cluster(2)
    c.cli("node", "stop", "--node-id", "2")
    c.cli("node", "start", "--node-id", "2", "--daemon", "--lease-ttl", "5", timeout=60)
    # (logged just after the member shows running, which is when the start returns)
    assert wait_until(lambda: "(TTL 5 s)" in c.log(2).rsplit("node 2 stopping", 1)[-1], 10), c.log(2)[-2000:]


def test_cluster_down_stops_a_node_started_in_the_foreground(local_cluster: Start) -> None:
    """A node started with ``node start`` in the foreground writes no pid file, and ``cluster down`` stopped
    only the nodes it had pid files for, then etcd: the foreground node lost etcd and fenced itself (exit 3)."""
    c = local_cluster(2)
    c.cli("node", "stop", "--node-id", "2")
    env = {**os.environ, "MUHEAM_CLIENT_KEY": c.client_key or ""}
    node = subprocess.Popen([sys.executable, "-m", "muheam", "node", "start", "--node-id", "2", "-c", str(c.config),
                             "--log-file", str(c.dir / "log" / "fg-2.log")], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: any(m["node_id"] == 2 and m["state"] == "running" for m in c.members()), 60)
        proc = run_cli("cluster", "down", "--dir", str(c.dir), "--format", "json", timeout=120)
        assert 2 in json.loads(proc.stdout)["stopped_nodes"], proc.stdout
        assert node.wait(30) == 0, "the foreground node did not stop cleanly"
    finally:
        if node.poll() is None:
            node.kill()
            node.wait(10)


def test_reload_finds_the_client_key_through_its_config_from_anywhere(local_cluster: Start) -> None:
    """``muheam reload -c CONFIG`` asked the nodes without the config's client key (it found one only through a
    ./muheam.toml), so from any other directory a CURVE node refused it; ``get``, ``table list`` worked."""
    c = local_cluster(1)
    proc = run_cli("reload", "-c", str(c.config), env={"MUHEAM_CLIENT_KEY": ""}, check=False)
    assert proc.returncode == 0 and "node 1:" in proc.stdout, proc.stderr


def test_unreachable_etcd_refused_clearly(local_cluster: Start) -> None:
    c = local_cluster(1)
    shared = Path(c.info["config"]["shared_dir"])
    before = snapshot_tree(shared, live_wal=True)
    dead = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    proc = c.cli("node", "start", "--node-id", "1", "--etcd", dead, check=False, timeout=60)
    assert proc.returncode == 1
    assert "unreachable" in proc.stderr and dead in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - t0 < 30
    proc = c.cli("cluster", "init", "--etcd", dead, "--cluster-name", "x", "--shared-dir", str(shared / "new"),
                 check=False, timeout=60)
    assert proc.returncode == 1 and "unreachable" in proc.stderr
    assert snapshot_tree(shared, live_wal=True) == before


def test_etcd_paused_past_ttl_every_node_self_fences(local_cluster: Start) -> None:
    c = local_cluster(3, lease_ttl=2)
    # node 3 again in the foreground, a child of this test, so its exit code can be read
    c.cli("node", "stop", "--node-id", "3")
    log = c.dir / "log" / "node-3.log"
    started_before = log.read_text(errors="replace").count("node 3 running: epoch")
    fg = subprocess.Popen([*MUHEAM, "node", "start", "--node-id", "3", "-c", str(c.config), "--log-file", str(log)],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # started, not merely a member: a node still starting that loses etcd fails its start (exit 1); its
        # last start-up line follows the etcd put that marks it running
        assert wait_until(lambda: [m["state"] for m in c.members()] == ["running"] * 3
                          and log.read_text(errors="replace").count("node 3 running: epoch") > started_before, 30)
        pids = {1: c.node_pid(1), 2: c.node_pid(2), 3: fg.pid}
        os.kill(c.etcd_pid, signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            assert fg.wait(timeout=10) == 3
            fenced_after = time.monotonic() - t0
            # the lease could expire no sooner than TTL after the last renewal, itself before the pause
            assert fenced_after < 2.0, f"fenced {fenced_after:.2f} s after the pause"
            for n in (1, 2):
                pid = pids[n]
                assert pid and wait_until(lambda: not pid_alive(pid), 5)
        finally:
            os.kill(c.etcd_pid, signal.SIGCONT)
    finally:
        if fg.poll() is None:
            fg.kill()
            fg.wait()
    for n in (1, 2, 3):
        text = c.log(n)
        assert "SELF-FENCING" in text and "exiting with code 3" in text, text[-2000:]
    proc = run_cli("cluster", "up", "--dir", str(c.dir), "--format", "json", timeout=60)
    assert proc.returncode == 0
    assert wait_until(lambda: sorted(m["node_id"] for m in c.members()) == [1, 2, 3], 15)


def test_watch_resumes_after_losing_etcd_without_missing_or_repeating(local_cluster: Start) -> None:
    c = local_cluster(2, lease_ttl=2)
    etcd_cmd = (Path("/proc") / str(c.etcd_pid) / "cmdline").read_bytes().split(b"\0")[:-1]
    with Watcher(c.config) as w:
        w.wait_for("member", 1, 10)
        w.wait_for("member", 2, 10)
        os.kill(c.etcd_pid, signal.SIGTERM)  # etcd goes away; the nodes fence themselves and exit
        for n in (1, 2):
            pid = c.node_pid(n)
            assert pid and wait_until(lambda: not pid_alive(pid), 10)
        assert wait_until(lambda: not pid_alive(c.etcd_pid), 10)
        log = open(c.dir / "etcd" / "etcd.log", "ab")
        etcd = subprocess.Popen([a.decode() for a in etcd_cmd], stdout=log, stderr=log, start_new_session=True)
        try:
            write_pid(c.dir / "etcd" / "etcd.pid", etcd.pid)
            # the fenced nodes' leases survive the etcd restart and then expire: the watcher must see both
            w.wait_for("expired", 1, 15)
            w.wait_for("expired", 2, 15)
            c.cli("node", "start", "--node-id", "1", "--daemon")
            w.wait_for("joined", 1, 15)
            time.sleep(0.5)
        finally:
            log.close()
        err = w.stop()
        while not w.lines.empty():
            w.seen.append(w.lines.get()[1])
    assert "resuming from revision" in err
    events = [r for r in w.seen if r["event"] != "member"]
    revisions = [r["revision"] for r in events]
    assert revisions == sorted(set(revisions)), f"repeated or out of order: {revisions}"
    assert [(r["event"], r["node_id"]) for r in events if r["event"] != "updated"] == [
        ("expired", 1), ("expired", 2), ("joined", 1)] or [
        (r["event"], r["node_id"]) for r in events if r["event"] != "updated"] == [
        ("expired", 2), ("expired", 1), ("joined", 1)]


def test_operator_scripts_start_and_stop_a_cluster(tmp_path: Path) -> None:
    env = {**os.environ, "MUHEAM": f"{MUHEAM[0]} -m muheam"}
    root = Path(__file__).resolve().parents[2] / "scripts"
    directory = tmp_path / "scripted"
    try:
        up = subprocess.run([str(root / "start_cluster"), str(directory), "2"], env=env, capture_output=True,
                            text=True, timeout=120)
        assert up.returncode == 0, up.stderr
        cfg = str(directory / "muheam.toml")
        stop = subprocess.run([str(root / "stop_node"), "-c", cfg, "--node-id", "2"], env=env, capture_output=True,
                              text=True, timeout=60)
        assert stop.returncode == 0 and "node 2 stopped" in stop.stdout
        start = subprocess.run([str(root / "start_node"), "-c", cfg, "--node-id", "2"], env=env, capture_output=True,
                               text=True, timeout=60)
        assert start.returncode == 0 and "node 2 started" in start.stdout, start.stderr
        down = subprocess.run([str(root / "stop_cluster"), str(directory)], env=env, capture_output=True, text=True,
                              timeout=120)
        assert down.returncode == 0 and "stopped nodes [1, 2]" in down.stdout
    finally:
        from tests.support.cluster import kill_leftovers

        kill_leftovers(directory)


def test_bench_membership_prints_its_json() -> None:
    import json

    proc = run_cli("bench", "membership", "--json", "--kills", "1", "--stops", "1", timeout=120)
    result = json.loads(proc.stdout)
    assert set(result) >= {"ttl_ms", "detect_kill_ms", "detect_stop_ms"}
    assert result["ttl_ms"] == 2000
    # a stop is announced by revoking the lease; a kill can only be noticed when the lease runs out
    assert 0 < result["detect_stop_ms"] < result["detect_kill_ms"]


def test_bench_recovery_prints_its_json_on_a_curve_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """As a user runs it: a fresh shell with no client key, the benchmark's own CURVE cluster (it failed at its
    first request once CURVE became the default)."""
    import json

    monkeypatch.delenv("MUHEAM_CLIENT_KEY", raising=False)
    monkeypatch.delenv("MUHEAM_CONFIG", raising=False)
    proc = run_cli("bench", "recovery", "--format", "json", "--wal-mb", "1", "--seconds-before", "1", timeout=240,
                   check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["sum_violations"] == 0
    assert result["ttl_ms"] == 2000 and 0 < result["detect_ms"] < result["blocks_available_ms"]
    assert result["recovery_ms"] >= 0 and result["recoverer"] in (1, 3)


def test_bench_xid_measures_a_curve_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its load processes speak to the nodes over raw sockets: under CURVE they need the cluster's key too (they
    once got no answer and the benchmark printed 0 XIDs/s as if that were a measurement)."""
    import json

    monkeypatch.delenv("MUHEAM_CLIENT_KEY", raising=False)
    monkeypatch.delenv("MUHEAM_CONFIG", raising=False)
    proc = run_cli("bench", "xid", "--format", "json", "--nodes", "2", "--seconds", "1", timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["xids_per_s"] > 0 and result["allocations_per_s"] > 0
    assert result["xids_per_s"] >= result["allocations_per_s"]  # 16 XIDs asked per request


def test_a_stop_signal_sent_as_the_node_shows_running_is_not_lost(local_cluster: Start,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``cluster up`` returns once etcd shows the node running, a moment before the node's loop starts (failpoint
    ``node.started``: 3 s there).  A ``node stop`` sent in that moment stops it in the asked mode, cleanly: the
    signal was once lost there (a SIGINT the parent ignored stays ignored across exec) and the stop waited out its
    whole timeout."""
    monkeypatch.setenv("MUHEAM_FAILPOINTS", "node.started=pause(3)")
    c = local_cluster(1)
    pid = c.node_pid(1)
    assert pid is not None and wait_until(lambda: "node 1 running" in c.log(1), 10)
    assert "stopping" not in c.log(1)
    t0 = time.monotonic()
    proc = c.cli("node", "stop", "--node-id", "1", "--timeout", "30", check=False, timeout=60)
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    assert not pid_alive(pid)
    text = c.log(1)
    assert "node 1 stopping (fast)" in text and "node 1 stopped (fast)" in text, text[-2000:]
    assert took < 20, f"the stop took {took:.1f} s: it waited for its timeout"
