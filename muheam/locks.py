"""The lock manager at the edge: ``locking.LockManager`` wired to the ZeroMQ mesh and the etcd member view.

The pure manager knows members by one integer that must never be reused.  A MUHEAM node keeps its node id across
restarts but gets a fresh, cluster-unique **epoch** each time, so the manager's member id is the epoch; this module
translates between the two.  The manager stamps its own messages from the node's one Lamport clock (through an
``IncarnationClock`` view whose tie-breaker is the epoch), so lock traffic and all other traffic share one clock.

Callers ask with ``acquire(resource, mode, on_grant)``; ``on_grant(Granted)`` runs in the event loop.  Handlers
registered with ``on_demand(prefix, fn)`` run when another node asks for a lock held here (release-on-demand hook:
flush WAL, ship a block image), and ``on_recovery(prefix, fn)`` when a dead member may have held a resource.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from typing import Any, Callable

from locking.clock import LamportClock
from locking.effects import Granted, NeedsRecovery, ReleaseDemanded, Send
from locking.manager import LockManager
from locking.messages import Mode
from muheam import wire
from muheam.transport import Mesh

log = logging.getLogger("muheam.locks")

GrantCallback = Callable[[Granted], None]


class IncarnationClock(LamportClock):
    """The node's clock seen by the lock manager: same time, but the epoch as GLSN tie-breaker."""

    def __init__(self, base: LamportClock, epoch: int) -> None:  # noqa: D107 - no dataclass init on purpose
        self._base = base
        self.node_id = epoch

    @property
    def time(self) -> int:
        return self._base.time

    @time.setter
    def time(self, value: int) -> None:
        self._base.time = value


class LockService:
    KIND = "lock"

    def __init__(self, mesh: Mesh, clock: LamportClock, epoch: int, peers: dict[int, int]) -> None:
        """``peers``: node id -> epoch of the other live members when this node joined."""
        self.mesh = mesh
        self.epoch = epoch
        self.node_of: dict[int, int] = {e: n for n, e in peers.items()}
        self.node_of[epoch] = mesh.node_id
        self.manager = LockManager(IncarnationClock(clock, epoch), sorted(self.node_of), bootstrap=not peers)
        self.waiters: dict[bytes, deque[GrantCallback]] = {}
        self.demand_hooks: list[tuple[bytes, Callable[[bytes], None]]] = []
        self.recovery_hooks: list[tuple[bytes, Callable[[NeedsRecovery], None]]] = []
        self.counters: Counter[str] = Counter()
        mesh.on(self.KIND, self._on_message, clocked=False)
        self.flush()

    # membership ---------------------------------------------------------------------------------------------
    def member_added(self, node_id: int, epoch: int) -> None:
        self.node_of[epoch] = node_id
        self.manager.member_added(epoch)
        self.flush()

    def member_removed(self, node_id: int, epoch: int) -> None:
        self.manager.member_removed(epoch)
        self.flush()

    # requests -----------------------------------------------------------------------------------------------
    def acquire(self, resource: bytes, mode: Mode, on_grant: GrantCallback) -> None:
        self.waiters.setdefault(resource, deque()).append(on_grant)
        self.manager.acquire(resource, mode)
        self.flush()

    def release(self, resource: bytes, value: bytes | None = None) -> None:
        self.manager.release(resource, value)
        self.flush()

    def on_demand(self, prefix: bytes, fn: Callable[[bytes], None]) -> None:
        self.demand_hooks.append((prefix, fn))

    def on_recovery(self, prefix: bytes, fn: Callable[[NeedsRecovery], None]) -> None:
        self.recovery_hooks.append((prefix, fn))

    # plumbing -----------------------------------------------------------------------------------------------
    def _on_message(self, msg: wire.PeerMessage) -> None:
        self.manager.on_wire(msg.epoch, msg.stamp, msg.body)
        self.flush()

    def flush(self) -> None:
        """Act on everything the manager produced; loops because grant callbacks may acquire or release."""
        while True:
            effects = self.manager.drain()
            if not effects:
                return
            for effect in effects:
                if isinstance(effect, Send):
                    node_id = self.node_of.get(effect.dest)
                    if node_id is None or not self.mesh.send_stamped(node_id, self.KIND, effect.wire(), effect.stamp):
                        self.counters["send_failed"] += 1
                    else:
                        self.counters["sent"] += 1
                elif isinstance(effect, Granted):
                    queue = self.waiters.get(effect.resource)
                    if queue:
                        queue.popleft()(effect)
                    else:
                        log.warning("grant of %r with nobody waiting; releasing", effect.resource)
                        self.manager.release(effect.resource)
                elif isinstance(effect, ReleaseDemanded):
                    self._hook(self.demand_hooks, effect.resource, effect.resource)
                elif isinstance(effect, NeedsRecovery):
                    self.counters["needs_recovery"] += 1
                    self._hook(self.recovery_hooks, effect.resource, effect)

    @staticmethod
    def _hook(hooks: list[tuple[bytes, Callable[[Any], None]]], resource: bytes, arg: Any) -> None:
        for prefix, fn in hooks:
            if resource.startswith(prefix):
                fn(arg)
                return

    def stats(self) -> dict[str, int]:
        return {**self.manager.stats, **self.counters}
