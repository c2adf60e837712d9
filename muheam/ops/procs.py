"""Processes and ports at the edge: pid files, liveness checks, bounded waits, free loopback ports."""

from __future__ import annotations

import errno
import os
import random
import signal
import socket
import time
from pathlib import Path
from typing import Callable, Sequence

from muheam.errors import ConfigError
from muheam.states import StopMode


STOP_SIGNALS = {signal.SIGTERM: StopMode.SMART, signal.SIGINT: StopMode.FAST, signal.SIGQUIT: StopMode.IMMEDIATE}
"""The signal a node agent takes as each stop mode, as with ``pg_ctl``."""
SIGNAL_FOR_MODE = {mode: sig for sig, mode in STOP_SIGNALS.items()}

_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


PORT_RANGE_ENV = "MUHEAM_PORT_RANGE"
"""``LOW-HIGH``: ``free_port`` picks from ``LOW`` to ``HIGH - 1`` only.  Local clusters that run side by side (the test
suite's two workers) each get their own range: a cluster that restarts a node on the ports in its config must not
find one taken by another cluster's ``cluster up`` meanwhile."""


def port_range() -> tuple[int, int]:
    """Where ``free_port`` picks: ``MUHEAM_PORT_RANGE``, or from 10000 (1024 if the ephemeral range starts lower)
    up to the kernel's ephemeral range."""
    spec = os.environ.get(PORT_RANGE_ENV, "").strip()
    if spec:
        try:
            low, high = (int(x) for x in spec.split("-"))
        except ValueError:
            low = high = 0
        if not 1024 <= low < high <= 65536:
            raise ConfigError(f"{PORT_RANGE_ENV}={spec!r}: write LOW-HIGH with 1024 <= LOW < HIGH <= 65536, "
                              f"e.g. 10000-20000")
        return low, high
    low, _ = _ephemeral_range()
    floor = 10000 if low > 12000 else 1024
    return floor, max(floor + 1000, low)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free on ``host`` now and lies outside the kernel's ephemeral range (or in
    ``MUHEAM_PORT_RANGE``).

    Ports the kernel hands out with ``bind(0)`` come from the same range as the source ports of outgoing
    connections, so a port found that way can be taken by some client before our server binds it.  Ports below
    the ephemeral range are only ever taken by servers that ask for them by number.
    """
    floor, top = port_range()
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(floor, top)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie we could reap."""
    if pid <= 0:
        return False
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True


def start_time(pid: int) -> float | None:
    """Wall-clock start time of ``pid`` from /proc (None where /proc cannot tell)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat: starttime, in clock ticks after boot
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def node_marks(node_id: int) -> list[str]:
    """What the command line of node ``node_id``'s process holds (``muheam node start --node-id N``)."""
    return ["--node-id", str(node_id)]


def is_process(pid: int, marks: Sequence[str], not_after: float | None = None, strict: bool = False) -> bool:
    """Whether ``pid`` is alive and still the process we started: its command line holds every one of ``marks``
    (consecutive arguments, e.g. ``["--node-id", "2"]``) and, given ``not_after`` (when its pid file was
    written), it started no later than that.  A pid file outlives its process (a kill -9, a crash), and Linux
    hands the pid to a new process once the pid space wraps (32,768 pids by default: a test suite or a busy host
    gets there within the hour), so signalling the pid a file names, unchecked, can kill anyone's process.
    ``strict``: where /proc cannot tell (no command line, no start time), the answer is no (STONITH kills only
    what it recognises); else yes (a stop trusts the pid, as before the check)."""
    if not pid_alive(pid):
        return False
    try:
        argv = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
    except OSError:
        return not strict
    joined = f"{marks[0]}={marks[1]}" if len(marks) == 2 and marks[0].startswith("--") else None
    if not any(argv[i:i + len(marks)] == list(marks) for i in range(len(argv))) and joined not in argv:
        return False  # (an option's value may also be given as ``--node-id=2``)
    if not_after is None:
        return True
    began = start_time(pid)
    return not strict if began is None else began <= not_after + 1.0


def pid_of(path: Path, marks: Sequence[str]) -> int | None:
    """The pid in the pid file ``path`` if that process still runs and is the one the file was written for
    (``is_process`` with the file's modification time), else None."""
    pid = read_pid(path)
    if pid is None:
        return None
    try:
        written = path.stat().st_mtime
    except OSError:
        return None
    return pid if is_process(pid, marks, written) else None


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def write_pid(path: Path, pid: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{pid or os.getpid()}\n")
    os.replace(tmp, path)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def stop_pid(pid: int, sig: int = signal.SIGTERM, timeout: float = 10.0) -> bool:
    """Send ``sig`` and wait for the process to go; SIGKILL it if it outlives ``timeout``.  True if it was alive."""
    if not pid_alive(pid):
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    if not wait_until(lambda: not pid_alive(pid), timeout):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_until(lambda: not pid_alive(pid), 5.0)
    return True


def tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
