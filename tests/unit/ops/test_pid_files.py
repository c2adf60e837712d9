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
from muheam.ops.procs import is_process, pid_alive, pid_of, stop_pid, wait_until, write_pid


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
    # the right command line, but started after the file was written: a new process with a reused pid
    old = tmp_path / "old.pid"
    write_pid(old, 1)
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    write_pid(old, node.pid)
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert pid_of(old, ["--node-id", "2"]) is None
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
