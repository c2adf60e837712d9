"""Lease keeping and self-fencing (invariant I6).

The node renews its etcd lease every TTL/4.  A renewal request sent at monotonic time ``t0`` and answered with
TTL ``T`` proves the lease lives at least until ``t0 + T`` (etcd counts from when it received the request, which
is later).  The node's *fence deadline* is therefore ``t0 + T - margin``; when the deadline passes without a newer
renewal the node stops touching shared storage before etcd can possibly expire the lease and let survivors
recover it.  The deadline is read by whoever is about to act (``Fence.check``), so a stuck keeper thread cannot
delay fencing.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from muheam.errors import EtcdUnavailable, Fenced
from muheam.membership import Lease

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


class LeaseKeeper(threading.Thread):
    """Renews the lease in the background and feeds the ``Fence``; never fences by itself beyond recording why."""

    def __init__(self, lease: Lease, fence: Fence) -> None:
        super().__init__(name="lease-keeper", daemon=True)
        self.lease = lease
        self.fence = fence
        self.interval = max(0.1, lease.ttl / 4)
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.is_set() and not self.fence.fenced:
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
            self._stop.wait(max(0.0, min(pause - (time.monotonic() - sent), self.fence.remaining())))

    def stop(self) -> None:
        self._stop.set()
