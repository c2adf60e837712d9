"""Deterministic simulation of the lock manager: N nodes, an in-memory network, crashes, etcd-style membership.

Everything is driven by one seeded ``random.Random``: at each step one enabled action is picked at random
(deliver the head of some channel, let some node's client act, deliver the next membership event to some
node), which yields random delays while keeping every channel (ordered node pair) FIFO.  Crashes happen at
given steps: the node stops, messages to it are lost, a random prefix of what it had sent still arrives, and
after a random delay etcd appends its removal, which each survivor then sees in log order.  A crashed node may
come back as a new member (fresh id).

Each node runs a small client: acquire one or two resources (sorted, so no deadlock), hold them for a few of its
turns, write a new value when exclusive, release.  ``counter`` is the XID counter (value = next_xid, 8 bytes);
an exclusive holder takes a range of 1-3 XIDs.  Durable state (what recovery would rebuild from the shared
disk and the dead node's WAL) is modelled by ``truth``: a counter advance is durable when taken, a block value
when released.  A grant with ``valid=False`` "recovers" by reading ``truth``.

Checked after every step (``SimulationError`` otherwise): no two live owners of a resource in conflicting modes
(cached ownership counts), every valid grant sees exactly the latest durable (version, value), versions only
grow, XIDs are unique and ordered like the GLSNs of the grants that handed them out; at the end every live
node's client has finished (nothing starves or deadlocks within the step bound).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from locking.clock import LamportClock
from locking.effects import Granted, NeedsRecovery, ReleaseDemanded, Send
from locking.glsn import Glsn
from locking.manager import LockManager
from locking.messages import ZERO_VERSION, Mode, Version

COUNTER = b"counter"


class SimulationError(AssertionError):
    """An invariant failed; the message names the seed and step."""


@dataclass
class SimConfig:
    nodes: int = 3
    ops_per_node: int = 3
    blocks: int = 2
    crash_steps: tuple[int, ...] = ()
    restart: bool = False
    removal_delay: int = 20
    max_steps: int = 50_000
    inline_limit: int = 64
    wire: bool = True            # round-trip every message through to_wire()/from_wire()
    msgpack: bool = False        # ... and through msgpack


@dataclass
class SimResult:
    steps: int = 0
    messages: int = 0
    grants: int = 0
    cached_grants: int = 0
    invalid_grants: int = 0
    crashes: int = 0
    joins: int = 0
    xids: int = 0
    recoveries_flagged: int = 0


@dataclass
class _Client:
    ops_left: int
    want: list[tuple[bytes, Mode]] = field(default_factory=list)
    held: dict[bytes, Mode] = field(default_factory=dict)
    writes: dict[bytes, bytes] = field(default_factory=dict)
    hold_left: int = 0
    waiting: bytes | None = None
    in_op: bool = False


@dataclass
class _Node:
    mgr: LockManager
    client: _Client
    alive: bool = True
    cursor: int = 0              # next etcd event to deliver
    xid_seq: int = 0


class Simulation:
    def __init__(self, seed: int, config: SimConfig | None = None) -> None:
        self.seed = seed
        self.cfg = config or SimConfig()
        self.rng = random.Random(seed)
        self.resources = [COUNTER] + [b"blk%d" % i for i in range(self.cfg.blocks)]
        self.nodes: dict[int, _Node] = {}
        self.channels: dict[tuple[int, int], deque[tuple[int, object]]] = {}
        self.etcd_log: list[tuple[str, int]] = []
        self.last_glsn: dict[int, Glsn] = {}   # a crashed node's last Lamport time: its WAL tail
        self.etcd_members: set[int] = set(range(1, self.cfg.nodes + 1))
        self.truth_value: dict[bytes, bytes] = {r: b"" for r in self.resources}
        self.truth_version: dict[bytes, Version] = {r: ZERO_VERSION for r in self.resources}
        self.allocations: list[tuple[Glsn, int, int, int, int]] = []  # (glsn, node, seq, first, count)
        self.xids: set[int] = set()
        self.pending_removals: list[tuple[int, int]] = []  # (due step, node)
        self.pending_joins: list[int] = []                  # due steps
        self.result = SimResult()
        self.step = 0
        for node in sorted(self.etcd_members):
            self._make_node(node, sorted(self.etcd_members), bootstrap=True)

    # ---------------------------------------------------------------- running

    def run(self) -> SimResult:
        crash_at = sorted(self.cfg.crash_steps)
        while True:
            while crash_at and crash_at[0] <= self.step:
                crash_at.pop(0)
                self._crash()
            self._etcd_tick()
            actions = self._enabled()
            if not actions:
                if crash_at or self.pending_removals or self.pending_joins:
                    self.step += 1
                    continue
                break
            if self.step >= self.cfg.max_steps:
                self._fail(f"no quiescence after {self.step} steps: waiting {self._waiting()}")
            kind, arg = actions[self.rng.randrange(len(actions))]
            if kind == "deliver":
                self._deliver(arg)
            elif kind == "etcd":
                self._membership(arg)
            else:
                self._client_turn(arg)
            self.step += 1
            self._check_exclusion()
        self._check_end()
        self.result.steps = self.step
        self.result.cached_grants = sum(node.mgr.stats["cached_grants"] for node in self.nodes.values())
        return self.result

    def _enabled(self) -> list[tuple[str, object]]:
        acts: list[tuple[str, object]] = [("deliver", ch) for ch, q in self.channels.items() if q]
        for nid, node in self.nodes.items():
            if not node.alive:
                continue
            if node.cursor < len(self.etcd_log):
                acts.append(("etcd", nid))
            c = node.client
            if c.waiting is None and (c.in_op or c.ops_left > 0):
                acts.append(("client", nid))
        return acts

    # -------------------------------------------------------------- the world

    def _make_node(self, nid: int, view: list[int], bootstrap: bool) -> None:
        mgr = LockManager(LamportClock(nid), view, bootstrap=bootstrap, inline_limit=self.cfg.inline_limit)
        self.nodes[nid] = _Node(mgr, _Client(self.cfg.ops_per_node), cursor=len(self.etcd_log))
        self._pump(nid)

    def _crash(self) -> None:
        alive = sorted(n for n, node in self.nodes.items() if node.alive)
        if len(alive) < 2:
            return
        victim = alive[self.rng.randrange(len(alive))]
        self.nodes[victim].alive = False
        self.last_glsn[victim] = self.nodes[victim].mgr.clock.now()
        self.result.crashes += 1
        for (src, dst), q in self.channels.items():
            if dst == victim:
                q.clear()
            elif src == victim:
                keep = self.rng.randint(0, len(q))
                while len(q) > keep:
                    q.pop()
        self.pending_removals.append((self.step + self.rng.randint(0, self.cfg.removal_delay), victim))

    def _etcd_tick(self) -> None:
        for due, victim in list(self.pending_removals):
            if due <= self.step:
                self.pending_removals.remove((due, victim))
                self.etcd_members.discard(victim)
                self.etcd_log.append(("remove", victim))
                if self.cfg.restart:
                    self.pending_joins.append(self.step + self.rng.randint(0, self.cfg.removal_delay))
        for due in list(self.pending_joins):
            if due <= self.step:
                self.pending_joins.remove(due)
                nid = max(self.nodes) + 1
                self.etcd_members.add(nid)
                self.etcd_log.append(("add", nid))
                self.result.joins += 1
                self._make_node(nid, sorted(self.etcd_members), bootstrap=False)

    def _membership(self, nid: object) -> None:
        assert isinstance(nid, int)
        node = self.nodes[nid]
        what, other = self.etcd_log[node.cursor]
        node.cursor += 1
        if what == "add":
            node.mgr.member_added(other)
        else:
            node.mgr.member_removed(other, self.last_glsn[other])
        self._pump(nid)

    def _deliver(self, ch: object) -> None:
        assert isinstance(ch, tuple)
        src, dst = ch
        stamp, payload = self.channels[ch].popleft()
        mgr = self.nodes[dst].mgr
        if self.cfg.msgpack:
            import msgpack
            payload = msgpack.unpackb(payload)
        if self.cfg.wire:
            mgr.on_wire(src, stamp, payload)
        else:
            mgr.on_message(src, stamp, payload)  # type: ignore[arg-type]
        self._pump(dst)

    def _pump(self, nid: int) -> None:
        """Carry out the effects of ``nid``'s manager until it has nothing more to say."""
        node = self.nodes[nid]
        while True:
            effects = node.mgr.drain()
            if not effects:
                return
            for eff in effects:
                if isinstance(eff, Send):
                    self.result.messages += 1
                    if not self.nodes[eff.dest].alive:
                        continue
                    payload: object = eff.msg
                    if self.cfg.wire:
                        payload = eff.wire()
                    if self.cfg.msgpack:
                        import msgpack
                        payload = msgpack.packb(payload)
                    self.channels.setdefault((nid, eff.dest), deque()).append((eff.stamp, payload))
                elif isinstance(eff, Granted):
                    self._granted(nid, eff)
                elif isinstance(eff, ReleaseDemanded):
                    node.client.hold_left = min(node.client.hold_left, 1)
                elif isinstance(eff, NeedsRecovery):
                    self.result.recoveries_flagged += 1

    # ---------------------------------------------------------------- clients

    def _client_turn(self, nid: object) -> None:
        assert isinstance(nid, int)
        node = self.nodes[nid]
        c = node.client
        if not c.in_op:
            c.ops_left -= 1
            c.in_op = True
            picks = sorted(self.rng.sample(self.resources, self.rng.choice((1, 1, 2))))
            c.want = [(r, Mode.EXCLUSIVE if r == COUNTER or self.rng.random() < 0.6 else Mode.SHARED)
                      for r in picks]
            c.hold_left = self.rng.randint(0, 3)
            self._next_acquire(nid)
        elif c.hold_left > 0:
            c.hold_left -= 1
        else:
            for r in sorted(c.held):
                value = c.writes.pop(r, None)
                if value is not None and r != COUNTER:
                    self.truth_value[r] = value
                node.mgr.release(r, value)
                if c.held[r] is Mode.EXCLUSIVE:
                    version = node.mgr.known(r)[0]
                    if not version > self.truth_version[r]:
                        self._fail(f"node {nid} released {r!r} at {version}, not above {self.truth_version[r]}")
                    self.truth_version[r] = version
            c.held.clear()
            c.in_op = False
        self._pump(nid)

    def _next_acquire(self, nid: int) -> None:
        c = self.nodes[nid].client
        resource, mode = c.want.pop(0)
        c.waiting = resource
        self.nodes[nid].mgr.acquire(resource, mode)

    def _granted(self, nid: int, g: Granted) -> None:
        node = self.nodes[nid]
        c = node.client
        if c.waiting != g.resource:
            self._fail(f"node {nid} granted {g.resource!r} while waiting for {c.waiting!r}")
        c.waiting = None
        c.held[g.resource] = g.mode
        self.result.grants += 1
        if g.valid:
            if (g.version, g.value) != (self.truth_version[g.resource], self.truth_value[g.resource]):
                self._fail(f"node {nid} granted {g.resource!r} at {g.version}={g.value!r}, latest durable is "
                           f"{self.truth_version[g.resource]}={self.truth_value[g.resource]!r}")
            value = g.value
        else:
            self.result.invalid_grants += 1
            value = self.truth_value[g.resource]  # recovery: rebuilt from shared disk + WAL
        assert value is not None
        if g.mode is Mode.EXCLUSIVE:
            if g.resource == COUNTER:
                self._allocate(nid, g.glsn, value)
            else:
                size = self.rng.choice((8, 100))
                c.writes[g.resource] = (b"%d.%d." % (nid, self.step)).ljust(size, b"x")
        if c.want:
            self._next_acquire(nid)

    def _allocate(self, nid: int, glsn: Glsn, value: bytes) -> None:
        node = self.nodes[nid]
        first = int.from_bytes(value, "big") if value else 1
        count = self.rng.randint(1, 3)
        for xid in range(first, first + count):
            if xid in self.xids:
                self._fail(f"XID {xid} handed out twice (node {nid})")
            self.xids.add(xid)
        node.xid_seq += 1
        self.allocations.append((glsn, nid, node.xid_seq, first, count))
        self.result.xids += count
        new = (first + count).to_bytes(8, "big")
        self.truth_value[COUNTER] = new      # durable (WAL) before any XID is used
        node.client.writes[COUNTER] = new

    # ------------------------------------------------------------- invariants

    def _check_exclusion(self) -> None:
        for r in self.resources:
            owners = [(n, m) for n, node in self.nodes.items() if node.alive
                      for m in (node.mgr.owned(r),) if m is not None]
            if len(owners) > 1 and any(m is Mode.EXCLUSIVE for _, m in owners):
                self._fail(f"I2 violated on {r!r}: owners {owners}")

    def _check_end(self) -> None:
        waiting = self._waiting()
        if waiting:
            self._fail(f"requests never granted: {waiting}")
        ordered = sorted(self.allocations)
        for (g1, n1, _, f1, c1), (g2, n2, _, f2, _) in zip(ordered, ordered[1:]):
            if not f1 + c1 <= f2:
                self._fail(f"XIDs out of GLSN order: {g1}@{n1} got {f1}+{c1}, later {g2}@{n2} got {f2}")

    def _waiting(self) -> dict[int, list[bytes]]:
        out = {}
        for nid, node in self.nodes.items():
            if node.alive and (node.mgr.waiting() or node.client.in_op or node.client.ops_left):
                out[nid] = node.mgr.waiting()
        return out

    def _fail(self, why: str) -> None:
        raise SimulationError(f"seed={self.seed} step={self.step} config={self.cfg}: {why}")


def run(seed: int, config: SimConfig | None = None) -> SimResult:
    """Run one schedule; raises ``SimulationError`` if an invariant breaks."""
    return Simulation(seed, config).run()
