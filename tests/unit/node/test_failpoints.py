"""Failpoints (``muheam.failpoints``) and fencing a dead peer's process (``muheam.fence.kill_incarnation``)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from muheam import failpoints
from muheam.errors import ConfigError
from muheam.node.fence import is_incarnation, kill_incarnation
from muheam.ops.procs import pid_alive


def test_unarmed_failpoints_do_nothing() -> None:
    failpoints.arm_from_env(1, {})
    assert failpoints.hit("ownership.export") is False


def test_entries_for_other_nodes_are_checked_but_not_armed() -> None:
    armed = failpoints.arm_from_env(2, {"MUHEAM_FAILPOINTS": "a.b@1=drop; c.d@2=2*drop ;e=pause(0.01)"})
    try:
        assert armed == ["c.d", "e"]
        assert [failpoints.hit("c.d") for _ in range(3)] == [True, True, False]
        assert failpoints.fired("c.d") == 2
        t0 = time.monotonic()
        assert failpoints.hit("e") is False and time.monotonic() - t0 >= 0.01
        assert failpoints.hit("a.b") is False
    finally:
        failpoints.disarm()


def test_a_fail_action_makes_the_caller_fail_its_step_a_counted_number_of_times() -> None:
    failpoints.arm_from_env(1, {"MUHEAM_FAILPOINTS": "w.x=1*fail"})
    try:
        assert [failpoints.hit("w.x") for _ in range(2)] == [True, False]
        assert failpoints.fired("w.x") == 1
    finally:
        failpoints.disarm()


@pytest.mark.parametrize("spec", ["x", "x=explode", "x@=drop", "X=drop", "x=pause(s)", "x=1*", "x=-1*drop"])
def test_malformed_specs_are_refused_by_name(spec: str) -> None:
    with pytest.raises(ConfigError, match="MUHEAM_FAILPOINTS: cannot read"):
        failpoints.parse(spec, 1)


def test_sigstop_action_stops_the_process_where_it_stands() -> None:
    code = ("from muheam import failpoints; failpoints.arm_from_env(1, {'MUHEAM_FAILPOINTS': 'p=sigstop'}); "
            "failpoints.hit('p'); print('resumed', flush=True)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        state = ""
        while time.monotonic() < deadline and state != "T":
            time.sleep(0.05)
            state = open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()[0]
        assert state == "T"
        proc.send_signal(signal.SIGCONT)
        out, _ = proc.communicate(timeout=30)
        assert out.strip() == "resumed"
    finally:
        proc.kill()
        proc.wait(10)


def test_kill_incarnation_checks_the_process_is_that_node() -> None:
    """Only the process that started node 7 (command line) no later than it joined (start time) is killed."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--node-id", "7"])
    try:
        deadline = time.monotonic() + 30  # until the child has exec'd (before, /proc shows our command line)
        while b"--node-id" not in open(f"/proc/{proc.pid}/cmdline", "rb").read() and time.monotonic() < deadline:
            time.sleep(0.01)
        joined = time.time() + 0.5
        assert is_incarnation(proc.pid, 7, joined)
        assert not is_incarnation(proc.pid, 8, joined)
        assert kill_incarnation(proc.pid, 7, joined - 3600) == "not-ours"  # started after that member joined
        assert kill_incarnation(proc.pid, 8, joined) == "not-ours"
        assert pid_alive(proc.pid)
        proc.send_signal(signal.SIGSTOP)  # a stopped process is killed all the same
        assert kill_incarnation(proc.pid, 7, joined) == "killed"
        assert not pid_alive(proc.pid)
        assert kill_incarnation(proc.pid, 7, joined) == "gone"
    finally:
        proc.kill()
        proc.wait(10)
