"""Lease keeping and self-fencing (invariant I6).

The node renews its etcd lease every TTL/4.  A renewal request sent at monotonic time ``t0`` and answered with
TTL ``T`` proves the lease lives at least until ``t0 + T`` (etcd counts from when it received the request, which
is later).  The node's *fence deadline* is therefore ``t0 + T - margin``; when the deadline passes without a newer
renewal the node stops touching shared storage before etcd can possibly expire the lease and let survivors
recover it.  The deadline is read by whoever is about to act (``Fence.check``), so a stuck keeper thread cannot
delay fencing.

Self-fencing alone leaves one window: a node stopped *inside* a loop turn (SIGSTOP, a VM freeze, a long page
fault) after its last check resumes past its deadline and finishes that turn -- writing pages, a checkpoint, an
outcome file -- before it checks again.  So the survivors also fence a dead peer from outside before they touch
anything it held (STONITH): on the same host they SIGKILL its process (identified by pid, command line and process
stamp) and wait until it is gone; for a node on another host they run the configured ``fence_command``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from typing import Callable, Iterator

from muheam.errors import EtcdUnavailable, Fenced
from muheam.membership import Lease
from muheam.ops.procs import is_node, pid_alive, wait_until

log = logging.getLogger("muheam.fence")


def fence_margin(ttl: float) -> float:
    """Safety margin kept inside the TTL: a quarter of it, at least half a second, at most 3 s."""
    return min(3.0, max(0.5, ttl / 4))


class Fence:
    """The monotonic deadline until which this node may act on shared storage."""

    def __init__(self, ttl: float, granted_at: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.margin = fence_margin(ttl)
        self._clock = clock
        self.deadline = granted_at + ttl - self.margin
        self.reason: str | None = None
        self.last_renewed = granted_at

    def renewed(self, sent_at: float, granted_ttl: int) -> None:
        if self.reason is None:
            self.deadline = max(self.deadline, sent_at + granted_ttl - self.margin)
            self.last_renewed = sent_at

    def lost(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.deadline = min(self.deadline, self._clock())

    @property
    def fenced(self) -> bool:
        if self.reason is None and self._clock() >= self.deadline:
            self.reason = (
                f"could not renew the etcd lease for {self._clock() - self.last_renewed:.2f} s "
                f"(TTL {self.ttl:g} s, margin {self.margin:g} s)"
            )
        return self.reason is not None

    def check(self) -> None:
        """Call before any write to shared storage; raises ``Fenced`` once the deadline has passed."""
        if self.fenced:
            raise Fenced(f"self-fenced: {self.reason}")

    def remaining(self) -> float:
        return self.deadline - self._clock()


RETRY_AFTER_FAILURE = 0.25
"""Seconds between lease renewal attempts while etcd does not answer."""


STALL_CHECK = 0.1
"""Seconds between the keeper's looks at a stalled loop (it renews as soon as the loop turns again)."""


class LoopWatch:
    """When the node's event loop last began a turn: the lease keeper renews only while the loop turns.

    The lease says "this node is alive" to the cluster, and a node whose loop is stuck is not: it answers no
    peer, runs no round, and its peers find it silent after 2 x TTL.  If the keeper thread renewed on, the
    partition decision that follows could not tell the stuck node from a cut-off one (its last report, from
    before the stall, says it hears everyone), and in a 2-node tie the healthy peer was the one removed.  So
    after ``limit`` seconds without a turn (half the TTL) the keeper stops renewing: the lease runs out within
    about 1.5 x TTL of the stall, before the peers' silence timeout, the survivors fence and recover the node,
    and if the loop wakes first past its fence deadline it fences itself.  A loop that turns again before the
    deadline (less the keeper's next look, ``STALL_CHECK``, and one renewal's round trip) renews again and
    loses nothing.  Not armed until the first turn (startup may take long); paused while the node stops (its
    shutdown steps run outside the loop and keep the lease to the end); left armed when an exception leaves the
    loop (the lease runs out, and the others recover a node that serves nobody)."""

    def __init__(self, limit: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._at: float | None = None

    def turn(self) -> None:
        self._at = self._clock()

    def pause(self) -> None:
        self._at = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Not watched meanwhile (work that is slow but healthy, e.g. staging a dead node's pages), then watched
        again as if the loop had just turned; a watch that was not armed stays so."""
        armed = self._at is not None
        self._at = None
        try:
            yield
        finally:
            if armed:
                self.turn()

    def stalled_for(self) -> float:
        """Seconds since the last turn beyond ``limit``, or 0 while the loop turns (or is not watched)."""
        at = self._at
        if at is None:
            return 0.0
        return max(0.0, self._clock() - at - self.limit)


class LeaseKeeper(threading.Thread):
    """Renews the lease in the background and feeds the ``Fence``; never fences by itself beyond recording why.
    With a ``LoopWatch``, renews only while the node's loop turns."""

    def __init__(self, lease: Lease, fence: Fence, watch: LoopWatch | None = None) -> None:
        super().__init__(name="lease-keeper", daemon=True)
        self.lease = lease
        self.fence = fence
        self.watch = watch
        self.interval = max(0.1, lease.ttl / 4)
        self._halt = threading.Event()  # (not ``_stop``: that name is Thread's own, used by ``join``)
        self.withheld = 0
        """Renewals not sent because the loop had stalled."""

    def _loop_stalled(self) -> bool:
        if self.watch is None or not self.watch.stalled_for():
            if self.withheld:
                log.warning("the event loop turns again; renewing lease %x again (%.2f s left before "
                            "self-fencing)", self.lease.id, self.fence.remaining())
                self.withheld = 0
            return False
        if not self.withheld:
            log.warning("the event loop has not turned for %.2f s; not renewing lease %x, so that the cluster "
                        "removes this node rather than a healthy peer (it self-fences in %.2f s unless the loop "
                        "turns before)", self.watch.limit + self.watch.stalled_for(), self.lease.id,
                        self.fence.remaining())
        self.withheld += 1
        return True

    def run(self) -> None:
        while not self._halt.is_set() and not self.fence.fenced:
            if self._loop_stalled():
                self._halt.wait(max(0.0, min(STALL_CHECK, self.fence.remaining())))
                continue
            sent = time.monotonic()
            try:
                granted = self.lease.refresh()
            except EtcdUnavailable as exc:
                log.warning("lease %x renewal failed: %s; %.2f s left before self-fencing",
                            self.lease.id, exc, self.fence.remaining())
                granted = -1
            if granted == 0:
                self.fence.lost(f"etcd reports lease {self.lease.id:x} gone (expired or revoked)")
            elif granted > 0:
                self.fence.renewed(sent, granted)
            if self.fence.fenced:
                return
            # after a failure retry soon: waiting a whole interval can put the last try on the fence deadline
            # although etcd came back long before it
            pause = self.interval if granted > 0 else min(self.interval, RETRY_AFTER_FAILURE)
            self._halt.wait(max(0.0, min(pause - (time.monotonic() - sent), self.fence.remaining())))

    def stop(self) -> None:
        self._halt.set()


# -- fencing a dead peer (STONITH) -----------------------------------------------------------------------------

PEER_KILL_WAIT = 10.0
"""Seconds a survivor waits for a killed peer process to be gone before it goes on regardless (and says so)."""


def is_incarnation(pid: int, node_id: int, started_at: float, stamp: str = "") -> bool:
    """Whether ``pid`` is still the process of node ``node_id`` that joined at ``started_at`` with the process
    stamp ``stamp``: its command line starts that node, and it is that process (a reused pid belongs to another
    one; members written without a stamp: it started no later than it joined)."""
    return is_node(pid, node_id, started_at, stamp, strict=True)


def kill_incarnation(pid: int, node_id: int, started_at: float, stamp: str = "",
                     wait: float = PEER_KILL_WAIT) -> str:
    """SIGKILL node ``node_id``'s process ``pid`` on this host and wait until it is gone.  Returns what happened:
    ``gone`` (no such process any more), ``killed`` (it was there and is gone now), ``not-ours`` (the pid belongs
    to another process now), ``still-there`` (it did not go within ``wait``: stuck in the kernel)."""
    if not pid_alive(pid):
        return "gone"
    if not is_incarnation(pid, node_id, started_at, stamp):
        return "not-ours"
    try:
        os.kill(pid, signal.SIGKILL)  # a SIGSTOPped process dies too; nothing it does in user space runs again
    except ProcessLookupError:
        return "gone"
    return "killed" if wait_until(lambda: not pid_alive(pid), wait, interval=0.005) else "still-there"


def run_fence_command(command: str, node_id: int, host: str, pid: int, epoch: int, timeout: float = 60.0) -> bool:
    """Run the operator's fence agent for a node on another host (as Pacemaker's: power it off, cut its storage
    path); it learns the node from ``MUHEAM_FENCE_*`` variables and must exit 0 only once the node cannot write."""
    env = {**os.environ, "MUHEAM_FENCE_NODE_ID": str(node_id), "MUHEAM_FENCE_HOST": host,
           "MUHEAM_FENCE_PID": str(pid), "MUHEAM_FENCE_EPOCH": str(epoch)}
    try:
        proc = subprocess.run(command, shell=True, env=env, timeout=timeout, capture_output=True, text=True)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.critical("fence command for node %d failed to run: %s", node_id, exc)
        return False
    if proc.returncode != 0:
        log.critical("fence command for node %d exited %d: %s", node_id, proc.returncode,
                     (proc.stderr or proc.stdout).strip()[-500:])
    return proc.returncode == 0
