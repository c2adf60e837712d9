"""Shared fixtures: real etcd servers and real local clusters on free loopback ports in temporary directories.

Everything a test starts is stopped by pid when the test ends, and a session finaliser kills any process still
running from a test directory, so nothing outlives the test session.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from muheam.ops.etcd_server import EtcdServer
from muheam.ops.procs import free_port, pid_alive, read_pid, stop_pid

MUHEAM = [sys.executable, "-m", "muheam"]
FULL = os.environ.get("MUHEAM_FULL") == "1"
_started_dirs: list[Path] = []


def run_cli(*args: str, timeout: float = 60, check: bool = True, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    merged = {**os.environ, **(env or {})}
    proc = subprocess.run([*MUHEAM, *args], capture_output=True, text=True, timeout=timeout, env=merged)
    if check and proc.returncode != 0:
        raise AssertionError(f"muheam {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


class LocalCluster:
    """A cluster started with the real CLI (`muheam cluster up`)."""

    def __init__(self, directory: Path, info: dict[str, Any]) -> None:
        self.dir = directory
        self.info = info
        self.config = Path(info["config_file"])

    @property
    def etcd_endpoint(self) -> str:
        return str(self.info["config"]["etcd_endpoints"][0])

    @property
    def etcd_pid(self) -> int:
        return int(self.info["etcd"][0]["pid"])

    def node_pid(self, node_id: int) -> int | None:
        return read_pid(self.dir / "run" / f"node-{node_id}.pid")

    @property
    def client_key(self) -> str | None:
        """The admin client key file ``cluster up`` made (None with ``security = "none"``)."""
        key = self.info.get("client_key_file")
        return str(key) if key else None

    def cli(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        if self.client_key and "env" not in kw:  # this cluster's key, whatever MUHEAM_CLIENT_KEY says
            kw["env"] = {"MUHEAM_CLIENT_KEY": self.client_key}
        return run_cli(*args, "-c", str(self.config), **kw)

    def members(self) -> list[dict[str, Any]]:
        """The members in etcd (``muheam list`` also shows configured nodes that are not members, as stopped)."""
        return [r for r in json.loads(self.cli("list", "--format", "json").stdout) if r.get("member", True)]

    def log(self, node_id: int) -> str:
        return (self.dir / "log" / f"node-{node_id}.log").read_text(errors="replace")

    def down(self) -> None:
        run_cli("cluster", "down", "--dir", str(self.dir), "--mode", "immediate", check=False, timeout=90)
        kill_leftovers(self.dir)


def kill_leftovers(directory: Path) -> None:
    """Kill, by pid, every process whose command line mentions ``directory`` (node daemons, etcd)."""
    needle = str(directory)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            pid = int(entry.name)
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass
            stop_pid(pid, signal.SIGKILL, 5)


@pytest.fixture
def local_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., LocalCluster]]:
    """Start clusters with ``cluster up`` (CURVE on, keys made at init, unless ``security="none"``).  The first
    cluster's client key becomes ``MUHEAM_CLIENT_KEY`` for the test (its ``connect(endpoint)`` calls and the
    processes it starts find it as a user's program would); ``LocalCluster.cli`` passes each cluster its own."""
    clusters: list[LocalCluster] = []

    def start(nodes: int = 3, lease_ttl: int = 2, name: str = "cluster", security: str = "curve") -> LocalCluster:
        directory = tmp_path / name
        _started_dirs.append(directory)
        proc = run_cli("cluster", "up", "--nodes", str(nodes), "--dir", str(directory), "--lease-ttl",
                       str(lease_ttl), "--security", security, "--format", "json", timeout=120, check=False)
        if proc.returncode != 0:
            kill_leftovers(directory)
            raise AssertionError(f"cluster up failed:\n{proc.stdout}\n{proc.stderr}")
        c = LocalCluster(directory, json.loads(proc.stdout))
        if not clusters:
            if c.client_key:
                monkeypatch.setenv("MUHEAM_CLIENT_KEY", c.client_key)
            else:
                monkeypatch.delenv("MUHEAM_CLIENT_KEY", raising=False)
        clusters.append(c)
        return c

    yield start
    for c in clusters:
        c.down()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    directory = tmp_path / "etcd"
    _started_dirs.append(directory)
    server = EtcdServer(directory / "data", f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}")
    server.start()
    yield server
    pid = server.pid
    if pid is not None:
        os.kill(pid, signal.SIGCONT)
    server.stop()
    kill_leftovers(directory)


def pytest_configure(config: pytest.Config) -> None:
    """A SIGTERM (a CI timeout, ``kill``) ends the session like Ctrl-C, so fixtures and ``pytest_sessionfinish``
    still stop every node and etcd the tests started."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for directory in _started_dirs:
        kill_leftovers(directory)


def snapshot_tree(root: Path, live_wal: bool = False) -> dict[str, tuple[int, int]]:
    """Names, sizes and mtimes of every file under ``root``: to prove a refused command changed nothing.

    ``live_wal``: nodes of the cluster are running, and an idle node logs a heartbeat every 0.25 s, so WAL segment
    files are compared by name and size only (a segment's size is fixed; a new segment would still show)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.stat().st_size,
                                       0 if live_wal and p.relative_to(root).parts[:1] == ("wal",) else
                                       p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


__all__ = ["LocalCluster", "run_cli", "snapshot_tree", "kill_leftovers", "FULL", "pid_alive"]
