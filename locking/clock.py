"""Lamport's logical clock: the source of every GLSN.

Rules (DESIGN.md section 3): sending a message advances the clock by one and stamps the message; receiving a
message sets the clock to ``max(local, stamp) + 1``.  Hence if event ``a`` happened before ``b`` then
``L(a) < L(b)``, which is what lets the cluster order XIDs, lock requests and WAL records without a leader.
"""

from __future__ import annotations

from dataclasses import dataclass

from locking.glsn import Glsn


@dataclass
class LamportClock:
    """A node's Lamport clock.  Not thread-safe: one owner (the node's event loop) drives it."""

    node_id: int
    time: int = 0

    def tick(self) -> Glsn:
        """A local event (a WAL record, a lock request): advance and return its GLSN."""
        self.time += 1
        return Glsn(self.time, self.node_id)

    def send(self) -> int:
        """Stamp an outgoing message; the stamp is the new clock value."""
        self.time += 1
        return self.time

    def receive(self, stamp: int) -> int:
        """Merge the stamp of an incoming message; return the new clock value."""
        if stamp < 0:
            raise ValueError(f"Lamport stamp must be >= 0, got {stamp}")
        self.time = max(self.time, stamp) + 1
        return self.time

    def observe(self, stamp: int) -> None:
        """Advance to at least ``stamp`` without counting an event (e.g. after reading a persisted high mark)."""
        if stamp > self.time:
            self.time = stamp

    def now(self) -> Glsn:
        """The GLSN of the last event, without advancing."""
        return Glsn(self.time, self.node_id)
