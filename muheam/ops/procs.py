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
    """Wall-clock start time of ``pid`` from /proc (None where /proc cannot tell).  Computed from the current
    clock (/proc/stat's btime is now minus the uptime), so it moves when the wall clock steps: compare it only
    with records that have nothing better (``process_stamp``)."""
    ticks = _start_ticks(pid)
    try:
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return None if ticks is None else btime + ticks / os.sysconf("SC_CLK_TCK")


def _start_ticks(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])  # field 22 of stat: starttime, in clock ticks after boot
    except (OSError, ValueError, IndexError):
        return None


def process_stamp(pid: int) -> str | None:
    """What tells process ``pid`` from any other that has or had the same pid: this boot's id and its start in
    clock ticks after boot (``BOOT_ID/TICKS``), as systemd and procps tell processes apart.  Neither moves when
    the wall clock steps (NTP's makestep, a VM resumed, ``date -s``), unlike a start time on the wall clock.
    Fixed at fork (and kept by exec), so right after ``Popen`` it is already the child's.  None where /proc cannot
    tell.  (/proc adds the reader's time-namespace boot offset to the ticks: readers in namespaces with different
    offsets disagree; none is used by the usual container runtimes.)"""
    ticks = _start_ticks(pid)
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    return None if ticks is None or not boot else f"{boot}/{ticks}"


def _argv(pid: int) -> list[str] | None:
    """Process ``pid``'s command line (None where /proc cannot tell)."""
    try:
        return [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
    except OSError:
        return None


def config_of(pid: int) -> Path | None:
    """The config file a ``muheam node start`` process was started with (``-c PATH``, ``--config PATH`` or
    ``--config=PATH`` after ``node start``, the last one given, as click takes it; relative to its working
    directory), or None where its command line names none or /proc cannot tell.  (Only after ``node start``:
    an interpreter's own ``-c`` comes before.)"""
    argv = _argv(pid)
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None
    if argv is None:
        return None
    start = next((i + 2 for i in range(len(argv) - 1) if argv[i:i + 2] == ["node", "start"]), None)
    found = None
    for i in range(start if start is not None else len(argv), len(argv)):
        arg = argv[i]
        value = argv[i + 1] if arg in ("-c", "--config") and i + 1 < len(argv) else \
            arg.removeprefix("--config=") if arg.startswith("--config=") else \
            arg[2:] if arg.startswith("-c") and len(arg) > 2 else None  # (``-cPATH``, as click takes it)
        found = value or found
    return (cwd / found).resolve() if found else None


def node_marks(node_id: int) -> list[str]:
    """What the command line of node ``node_id``'s process holds (``muheam node start --node-id N``)."""
    return ["--node-id", str(node_id)]


def is_process(pid: int, marks: Sequence[str], not_after: float | None = None, strict: bool = False,
               stamp: str = "") -> bool:
    """Whether ``pid`` is alive and still the process we started: its command line holds every one of ``marks``
    (consecutive arguments, e.g. ``["--node-id", "2"]``) and it is the process ``stamp`` (``process_stamp``,
    taken when it started) names, or, for records written without a stamp, it started no later than
    ``not_after`` (when its pid file or member record was written; a wall-clock comparison, which a forward
    step of the clock defeats).  A pid file outlives its process (a kill -9, a crash), and Linux hands the pid
    to a new process once the pid space wraps (32,768 pids by default: a test suite or a busy host gets there
    within the hour), so signalling the pid a file names, unchecked, can kill anyone's process.  ``strict``:
    where /proc cannot tell (no command line, no start), the answer is no (STONITH kills only what it
    recognises); else yes (a stop trusts the pid, as before the check)."""
    if not pid_alive(pid):
        return False
    argv = _argv(pid)
    if argv is None:
        return not strict
    joined = f"{marks[0]}={marks[1]}" if len(marks) == 2 and marks[0].startswith("--") else None
    if not any(argv[i:i + len(marks)] == list(marks) for i in range(len(argv))) and joined not in argv:
        return False  # (an option's value may also be given as ``--node-id=2``)
    if stamp:
        now = process_stamp(pid)
        return not strict if now is None else now == stamp
    if not_after is None:
        return True
    began = start_time(pid)
    return not strict if began is None else began <= not_after + 1.0


def is_node(pid: int, node_id: int, started_at: float, stamp: str, strict: bool = False) -> bool:
    """Whether ``pid`` is still the process of node ``node_id`` whose member record says it started at
    ``started_at`` with ``stamp`` (``is_process`` with the node's command line)."""
    return is_process(pid, node_marks(node_id), started_at, strict, stamp)


def pid_of(path: Path, marks: Sequence[str]) -> int | None:
    """The pid in the pid file ``path`` if that process still runs and is the one the file was written for
    (``is_process`` with the stamp written beside it, or the file's modification time where there is none),
    else None."""
    pid = read_pid(path)
    if pid is None:
        return None
    try:
        written = path.stat().st_mtime
    except OSError:
        return None
    return pid if is_process(pid, marks, written, stamp=_stamp_for(path, pid)) else None


def _stamp_file(path: Path) -> Path:
    return path.with_name(path.name + ".stamp")


def _stamp_for(path: Path, pid: int) -> str:
    """The stamp written beside pid file ``path`` for ``pid`` (``PID STAMP``), or "" if there is none for it."""
    try:
        fields = _stamp_file(path).read_text().split()
        return fields[1] if len(fields) == 2 and int(fields[0]) == pid else ""
    except (OSError, ValueError):
        return ""


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def write_pid(path: Path, pid: int | None = None) -> None:
    """Write the pid file (the pid alone, as every version reads it: a rollback's ``cluster down`` still finds
    its nodes) and, first, its stamp beside it (``PID STAMP`` in ``path.stamp``), each atomically; the stamp is
    what ``pid_of`` later checks the process by."""
    pid = pid or os.getpid()
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = process_stamp(pid)
    if stamp:
        _replace_text(_stamp_file(path), f"{pid} {stamp}\n")
    else:
        _stamp_file(path).unlink(missing_ok=True)
    _replace_text(path, f"{pid}\n")


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def remove_pid(path: Path) -> None:
    """Remove a pid file and its stamp."""
    path.unlink(missing_ok=True)
    _stamp_file(path).unlink(missing_ok=True)


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
