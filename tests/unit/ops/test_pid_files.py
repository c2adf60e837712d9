"""A pid file outlives its process (kill -9, a crash), and Linux gives the pid to a new process once the pid
space wraps (32,768 by default; a CI run gets there): ``muheam cluster down`` and the embedded etcd's stop
signalled whatever process had the pid then, and ``cluster up`` took a stranger for its running etcd.  (Found
while looking for why a test's etcd stopped listening seconds after it started in CI; that was not shown to be
the cause.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from muheam.ops import cluster as cluster_mod
from muheam.ops.etcd_server import EtcdServer
from muheam.membership import Member
from muheam.node import startup
from muheam.node.fence import is_incarnation
from muheam.errors import ClusterStateError
from muheam.ops.procs import (config_of, is_process, pid_alive, pid_of, process_stamp, read_pid, remove_pid, stop_pid, wait_until,
                              write_pid)


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    """A process with ``args`` on its command line, once it shows them (between fork and exec /proc still
    shows the parent's command line: a check right after ``Popen`` failed in CI)."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *args])
    cmdline = Path(f"/proc/{p.pid}/cmdline")
    assert wait_until(lambda: b"time.sleep(60)" in cmdline.read_bytes(), 10)
    return p


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        stop_pid(p.pid, 9, 5)
        p.wait(5)


def test_a_pid_file_names_its_process_only_while_that_process_is_the_one_it_was_written_for(
        tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    node = _spawn("--node-id", "2")
    procs.append(node)
    path = tmp_path / "node-2.pid"
    write_pid(path, node.pid)
    assert pid_of(path, ["--node-id", "2"]) == node.pid
    assert pid_of(path, ["--node-id", "3"]) is None  # another node's command line
    stranger = _spawn()  # any other process
    procs.append(stranger)
    write_pid(path, stranger.pid)
    assert pid_of(path, ["--node-id", "2"]) is None
    # the right command line, but another process than the file was written for: a reused pid (its stamp is
    # that of a process started five seconds earlier; two processes started back to back share a tick)
    old = tmp_path / "old.pid"
    write_pid(old, node.pid)
    assert read_pid(old) == node.pid and old.read_text() == f"{node.pid}\n"  # as every version reads it
    boot, ticks = str(process_stamp(node.pid)).split("/")
    Path(f"{old}.stamp").write_text(f"{node.pid} {boot}/{int(ticks) - 500}\n")
    assert pid_of(old, ["--node-id", "2"]) is None
    # the same without a stamp (as versions before it wrote): started after the file was written
    Path(f"{old}.stamp").unlink()
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert pid_of(old, ["--node-id", "2"]) is None
    # a stamp left beside it for another pid is not this process's
    Path(f"{old}.stamp").write_text(f"{stranger.pid} {process_stamp(stranger.pid)}\n")
    assert pid_of(old, ["--node-id", "2"]) is None
    remove_pid(old)
    assert not old.exists() and not Path(f"{old}.stamp").exists()
    assert not is_process(node.pid, ["--node-id", "2"], not_after=time.time() - 3600)
    assert is_process(node.pid, ["--node-id", "2"], not_after=time.time())
    other = _spawn("--node-id=3")  # the option's other spelling
    procs.append(other)
    assert is_process(other.pid, ["--node-id", "3"]) and not is_process(other.pid, ["--node-id", "2"])


def test_cluster_down_leaves_alone_a_process_that_took_a_dead_nodes_pid(
        tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    cfg = cluster_mod.load_or_create(tmp_path, 2, 2, "none")
    stranger = _spawn()
    procs.append(stranger)
    write_pid(cluster_mod.pid_file(cfg, 1), stranger.pid)  # node 1 died long ago; its pid went to someone else
    assert cluster_mod.running_pid(cfg, 1) is None
    cluster_mod.cluster_down(tmp_path, "immediate")
    assert pid_alive(stranger.pid), "cluster down killed a process that was not its node"


def test_the_embedded_etcd_is_not_taken_for_running_by_a_stranger_with_its_old_pid(
        tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    server = EtcdServer(tmp_path / "etcd" / "data", "http://127.0.0.1:1", "http://127.0.0.1:2")
    stranger = _spawn()
    procs.append(stranger)
    write_pid(server.pid_file, stranger.pid)
    assert server.pid is None  # start() would otherwise "reuse" it, and stop() kill it
    assert server.stop() is False and pid_alive(stranger.pid)


def test_a_forward_step_of_the_wall_clock_does_not_make_a_running_node_a_stranger(
        tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    """The wall clock steps (NTP's makestep, a VM resumed, ``date -s``); /proc's start times are computed from
    the current clock, so after a forward step of a minute every process looks a minute younger than the files
    and records written about it.  Compared by wall clock, ``cluster down`` then stopped nothing, ``node stop``
    said the node was not running and ``cluster up`` started a second etcd.  (The step is simulated by dating
    the file back: the same difference the comparison sees.)"""
    node = _spawn("--node-id", "2")
    procs.append(node)
    path = tmp_path / "node-2.pid"
    write_pid(path, node.pid)
    os.utime(path, (time.time() - 60, time.time() - 60))
    assert pid_of(path, ["--node-id", "2"]) == node.pid
    stamp = process_stamp(node.pid)
    assert stamp is not None
    assert is_process(node.pid, ["--node-id", "2"], not_after=time.time() - 60, stamp=stamp)
    assert is_incarnation(node.pid, 2, time.time() - 60, stamp)
    # a reused pid still is not the process: its stamp differs, whatever the clock says
    stranger = _spawn("--node-id", "2")
    procs.append(stranger)
    boot, ticks = str(process_stamp(stranger.pid)).split("/")
    before = f"{boot}/{int(ticks) - 500}"  # the process that had the pid five seconds before this one
    write_pid(path, stranger.pid)
    Path(f"{path}.stamp").write_text(f"{stranger.pid} {before}\n")
    assert pid_of(path, ["--node-id", "2"]) is None
    assert not is_incarnation(stranger.pid, 2, time.time() + 60, before)
    # a pid file an older version wrote (the pid alone, no stamp beside it) is judged by its time as before
    remove_pid(path)
    path.write_text(f"{node.pid}\n")
    assert pid_of(path, ["--node-id", "2"]) == node.pid


def test_a_dead_nodes_member_whose_pid_went_to_another_process_is_waited_out_not_taken_for_live(
        tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    """A node restarted after a crash waits for its dead predecessor's lease to expire; it judged the
    predecessor alive by its pid alone, so once another process had that pid it refused to start ("held by a
    live node") instead of waiting the lease out."""
    cfg = cluster_mod.load_or_create(tmp_path, 1, 2, "none")
    stranger = _spawn("--node-id", "1")
    procs.append(stranger)
    dead = Member(node_id=1, host=cfg.node(1).host, peer_endpoint="", client_endpoint="", epoch=3,
                  pid=stranger.pid, state="running", started_at=time.time() - 60, stamp="not-its-stamp")

    class Leases:
        """Membership whose member entry goes once its lease runs out (the third listing)."""

        listings = 0

        def members(self, cluster: str) -> tuple[list[Member], int]:
            self.listings += 1
            return ([dead] if self.listings < 3 else []), self.listings

    backend = Leases()
    startup.refuse_duplicate(cfg, 1, backend)  # type: ignore[arg-type]
    assert backend.listings == 3


def test_a_node_of_another_cluster_in_the_same_run_dir_is_neither_stopped_nor_taken_for_ours(
        tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    """Two clusters given one run_dir share the pid file's name: the second's ``cluster up`` said its node 1 was
    already running (the first's), and its ``cluster down`` stopped the first cluster's node (a black-box
    test).  The node's command line names its config file: only a node of this config is ours."""
    cfg = cluster_mod.load_or_create(tmp_path / "mine", 1, 2, "none")
    theirs = tmp_path / "theirs" / "muheam.toml"
    other = _spawn("node", "start", "--node-id", "1", "-c", str(theirs))
    procs.append(other)
    write_pid(cluster_mod.pid_file(cfg, 1), other.pid)
    assert config_of(other.pid) == theirs.resolve()
    assert cluster_mod.running_pid(cfg, 1) is None
    with pytest.raises(ClusterStateError, match="give each cluster its own run_dir"):
        cluster_mod.start_node_daemon(cfg, 1, None)  # type: ignore[arg-type]
    cluster_mod.cluster_down(tmp_path / "mine", "immediate")
    assert pid_alive(other.pid), "cluster down stopped another cluster's node"
    ours = _spawn("node", "start", "--node-id", "1", "--config=" + str(cfg.source))
    procs.append(ours)
    write_pid(cluster_mod.pid_file(cfg, 1), ours.pid)
    assert cluster_mod.running_pid(cfg, 1) == ours.pid
