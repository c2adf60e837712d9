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
from locking.glsn import Glsn
from locking.manager import FROM_FILE, USE_LOCK, LockManager
from locking.messages import Mode
from muheam.net import wire
from muheam.net.mesh import Mesh

log = logging.getLogger("muheam.locks")

GrantCallback = Callable[[Granted], None]
IMAGE_LABEL = "image"
SMALL_VALUE = 64
"""Value blocks up to this many bytes (an extension lock's block count) are lock traffic, not images."""


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
    BATCH_KIND = "lockb"

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
        self.removal_hooks: list[Callable[[int], None]] = []
        self.counters: Counter[str] = Counter()
        mesh.on(self.KIND, self._on_message, clocked=False)
        mesh.on(self.BATCH_KIND, self._on_batch, clocked=False)
        self.flush()

    # membership ---------------------------------------------------------------------------------------------
    def member_added(self, node_id: int, epoch: int) -> None:
        self.node_of[epoch] = node_id
        self.manager.member_added(epoch)
        self.flush()

    def member_removed(self, node_id: int, epoch: int, floor_glsn: int = 0) -> None:
        """``floor_glsn``: the dead incarnation's last GLSN (its WAL's tail) when it crashed; the clock moves past
        it before anything is granted or logged on the dead member's behalf (a rebuilt page carries its GLSNs)."""
        self.manager.member_removed(epoch, Glsn.unpack(floor_glsn) if floor_glsn else None)
        self.flush()
        for hook in self.removal_hooks:
            hook(node_id)

    def read_source(self, resource: bytes) -> int:
        """``LockManager.read_source`` with the member as a node id (``FROM_FILE``/``USE_LOCK`` as they are)."""
        source = self.manager.read_source(resource)
        if source in (FROM_FILE, USE_LOCK):
            return source
        return self.node_of.get(source, USE_LOCK)

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
        """One lock message; the node loop calls ``flush`` once after draining the mesh."""
        self.manager.on_wire(msg.epoch, msg.stamp, msg.body)

    def _on_batch(self, msg: wire.PeerMessage) -> None:
        """Several lock messages from one sender in one frame, in their original (FIFO) order."""
        if not isinstance(msg.body, list) or not msg.body or len(msg.body) > 10_000:
            raise ValueError("lock batch must be a non-empty list of [stamp, message]")
        for item in msg.body:
            if not isinstance(item, list) or len(item) != 2:
                raise ValueError("lock batch item must be [stamp, message]")
            self.manager.on_wire(msg.epoch, item[0], item[1])

    def flush(self) -> None:
        """Act on everything the manager produced; loops because grant callbacks may acquire or release.

        Messages for one peer produced together go out as one frame (an ACK and a RELEASE to the same
        requester, say): fewer sends and receives on the critical path, same FIFO order.
        """
        while True:
            effects = self.manager.drain()
            if not effects:
                return
            outgoing: dict[int, list[Send]] = {}
            for effect in effects:
                if isinstance(effect, Send):
                    outgoing.setdefault(effect.dest, []).append(effect)
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
            for dest, sends in outgoing.items():
                self._send(dest, sends)

    def _send(self, dest: int, sends: list[Send]) -> None:
        node_id = self.node_of.get(dest)
        # the mesh counts a frame that carries a value block bigger than a counter (a chain's page images) as
        # "image", the rest as "lock": the benchmark separates moving data from agreeing on order
        label = IMAGE_LABEL if any(len(getattr(s.msg, "value", None) or b"") > SMALL_VALUE for s in sends) \
            else self.KIND
        if len(sends) == 1:
            ok = node_id is not None and self.mesh.send_stamped(node_id, self.KIND, sends[0].wire(), sends[0].stamp,
                                                                label)
        else:
            body = [[s.stamp, s.wire()] for s in sends]
            ok = node_id is not None and self.mesh.send_stamped(node_id, self.BATCH_KIND, body, sends[-1].stamp,
                                                                label)
        self.counters["send_failed" if not ok else "sent"] += len(sends)
        if ok:
            self.counters["frames"] += 1

    @staticmethod
    def _hook(hooks: list[tuple[bytes, Callable[[Any], None]]], resource: bytes, arg: Any) -> None:
        for prefix, fn in hooks:
            if resource.startswith(prefix):
                fn(arg)
                return

    def stats(self) -> dict[str, int]:
        return {**self.manager.stats, **self.counters}
