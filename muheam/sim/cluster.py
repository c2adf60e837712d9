"""A simulated MUHEAM cluster: the pure cores of N nodes, a faulty network, etcd membership and a shared disk.

One seeded ``random.Random`` picks, at every step, one enabled action: deliver the next frame of some link, let a
node handle its next etcd event, let a node's client take its next turn, or (within the fault window) inject a
fault.  Faults: ``crash`` (the node stops; etcd removes it after a delay), ``pause`` (short: the node is just slow;
past the lease: etcd removes it and it resumes later as a zombie unless the survivors fenced it), ``reset`` (a
peer connection drops what is in flight), ``reorder`` (frames of a reconnect arrive out of order), ``duplicate``
(a resent frame arrives twice), ``join`` (a new incarnation joins) and ``claim_fail`` (the next etcd claim of a
recovery fails).

Each client runs transactions as a node does: an XID from the ``xid`` lock (value: next XID; an invalid or empty
grant takes the cluster floor of every node's durable ceiling), a snapshot (STS = a tick of the clock; it waits
for what was prepared then), changes to one or two chains under their exclusive lock (a chain's value is its
image: the GLSN of its last change and the XIDs whose versions it holds; a change is stamped with the clock after
some local WAL work, written through to the disk when the lock goes), sometimes a new block under the extension
lock ``ext`` (value: the relation size), then COMMIT: prepare round, COMMIT record (CTS), outcome round
(acknowledged; or, with ``SimConfig.lazy_outcome``, sent unacknowledged as the node's ``lazy_outcome`` does), ack;
a snapshot that waited for a commit at or above its STS is taken again.

Survivor recovery (``muheam.recovery.survivors`` in miniature): on a member's removal every survivor moves its
clock past the dead node's last WAL GLSN (``fix_clock_floor``) and passes that floor to its lock manager; the
first survivor to claim the dead node's recovery (an etcd claim, which may fail and is then retried:
``fix_claim_retry``) announces the outcomes in its WAL and aborts its other transactions in one outcome round;
invalid chain grants rebuild the image from the disk and the dead nodes' WALs; an invalid ``ext`` grant takes the
dead node's highest block and, with ``fix_ext_floor``, the lock's last released size.

Checked after every step (``Violation`` names seed, step and invariant): I1 XIDs unique; I2 no two live members own
a resource in conflicting modes, no change is stamped at or below its image's GLSN, the disk image never goes back
in GLSN, no block is allocated twice; I5 every commit acknowledged before a snapshot is visible to it; at the end
I7 every acknowledged commit is known committed on every live node and present in each chain it changed, and
progress: once the faults stop every client finishes within the step bound.
"""

from __future__ import annotations

import random
from collections import deque

from locking.clock import LamportClock
from locking.effects import Granted, NeedsRecovery, Send as LockSend
from locking.glsn import Glsn
from locking.manager import LockManager
from locking.messages import Mode
from muheam.cluster.rounds import CommitRounds, RoundComplete, Send as TxSend
from muheam.cluster.txstate import TxTable
from muheam.cluster.verdict import decide
from muheam.net.peerlink import Inbound
from muheam.sim.faults import Faults
from muheam.sim.model import EMPTY, FAULTS, Client, Explored, Image, Node, SimConfig, Switches, Violation

__all__ = ["EMPTY", "FAULTS", "Client", "Cluster", "Explored", "Image", "Node", "SimConfig", "Switches", "Violation",
           "run", "shrink"]

XID, EXT = b"xid", b"ext"


class Cluster(Faults):
    def __init__(self, seed: int, cfg: SimConfig) -> None:
        self.seed, self.cfg, self.sw = seed, cfg, cfg.switches
        self.rng = random.Random(seed)
        self.chains = [b"blk%d" % i for i in range(cfg.chains)]
        self.nodes: dict[int, Node] = {}
        self.chan: dict[tuple[int, int], deque[tuple[int, str, int, object]]] = {}
        self.etcd: list[tuple[str, int]] = []
        self.members: set[int] = set(range(1, cfg.nodes + 1))
        self.disk: dict[bytes, Image] = {c: EMPTY for c in self.chains}
        self.ceiling: dict[int, int] = {}
        self.xids: set[int] = set()
        self.blocks: dict[int, int] = {}
        self.acked: dict[int, tuple[int, tuple[bytes, ...]]] = {}      # xid -> (step, chains)
        self.claims: dict[int, int] = {}
        self.recovered: set[int] = set()
        self._prepared_by: dict[int, set[int]] = {}                   # dead node -> XIDs it prepared to us
        self.claim_failures = 0
        self.cut: set[tuple[int, int]] = set()                          # (src, dst) links that deliver nothing
        self.xact: dict[int, tuple[dict[int, int], set[int]]] = {}     # outcome files (xact/node-N)
        self._verdicts: dict[int, tuple[dict[int, int], set[int]]] = {}  # announced, written once recovered
        self.timers: list[tuple[int, str, int]] = []                    # (step, what, node)
        self.fault_at = sorted(self.rng.randrange(cfg.fault_window) for _ in range(cfg.faults))
        self.step = 0
        self.out = Explored(schedules=1)
        for nid in sorted(self.members):
            self._make(nid, sorted(self.members - {nid}), bootstrap=True)

    # ------------------------------------------------------------------------------------------------ driving
    def run(self) -> Explored:
        while True:
            self._timers()
            acts = self._enabled()
            if not acts:
                if self.timers or self.fault_at:  # nothing to do until the next timer or fault: skip to it
                    due = [t for t, _, _ in self.timers] + self.fault_at[:1]
                    self.step = max(self.step + 1, min(due))
                    continue
                break
            if self.step >= self.cfg.max_steps:
                self._fail(f"progress: no quiescence after {self.step} steps; unfinished {self._unfinished()}")
            kind, arg = acts[self.rng.randrange(len(acts))]
            getattr(self, "_act_" + kind)(arg)
            self.step += 1
            self._check_exclusion()
        unfinished = self._unfinished()
        if unfinished:
            self._fail(f"progress: clients never finished once faults stopped: {unfinished}")
        self._check_end()
        self.out.steps = self.step
        return self.out

    def _enabled(self) -> list[tuple[str, object]]:
        acts: list[tuple[str, object]] = [("deliver", ch) for ch, q in self.chan.items()
                                          if q and self.nodes[ch[1]].running and ch not in self.cut]
        for nid, node in self.nodes.items():
            if not node.running:
                continue
            if self._leave_ready(node):
                acts.append(("leave", nid))
            if node.stopping:                     # only the mesh and its last commit until it leaves
                pass
            elif node.cursor < len(self.etcd):
                acts.append(("etcd", nid))
            if node.to_claim and nid in self.members and not node.stopping:
                acts.append(("claim", nid))
            if self._client_ready(node):
                acts.append(("client", nid))
        if self.fault_at and self.fault_at[0] <= self.step:
            acts.append(("fault", None))
        return acts

    def _timers(self) -> None:
        for due, what, nid in sorted(self.timers):
            if due > self.step:
                continue
            self.timers.remove((due, what, nid))
            node = self.nodes[nid]
            if what == "remove" and nid in self.members:
                self.members.discard(nid)
                self.etcd.append(("remove", nid))
                if node.paused_until is not None and self.sw.fix_fence:
                    node.alive = False            # STONITH before anyone reads its WAL or takes its chains
            elif what == "partition" and nid in self.members:
                self._partition()
            elif what == "stop-timeout":
                node.stop_timed_out = True
            elif what == "resume" and node.alive and node.paused_until is not None:
                node.paused_until = None
                if nid not in self.members:       # a zombie: finishes its loop turn, then fences itself
                    for chain, image in node.client.images.items():
                        self._write_disk(nid, chain, image)
                    node.alive = False

    def _make(self, nid: int, view: list[int], bootstrap: bool) -> None:
        clock = LamportClock(nid)
        if not bootstrap:  # a restarted node seeds its clock from every WAL tail
            clock.observe(max((n.clock.time for n in self.nodes.values()), default=0))
        table = TxTable(3)
        for committed, aborted in self.xact.values():  # every node's outcome file, as NodeAgent.start loads them
            table.load(committed, aborted)
        node = Node(nid, clock, LockManager(clock, view, bootstrap=bootstrap), CommitRounds(view, table),
                    Client(self.cfg.txns), cursor=len(self.etcd))
        self.nodes[nid] = node
        if not bootstrap:
            node.rounds.sync(view)
        self._pump(node)

    # ------------------------------------------------------------------------------------------------ network
    def _post(self, src: Node, dest: int, kind: str, stamp: int, payload: object) -> None:
        self.out.frames += 1
        if not self.nodes[dest].alive:
            return
        seq = src.seq_out.get(dest, 0) + 1
        src.seq_out[dest] = seq
        frame = (seq, kind, stamp, payload)
        src.sent.setdefault(dest, []).append(frame)
        self.chan.setdefault((src.nid, dest), deque()).append(frame)

    def _act_deliver(self, ch: object) -> None:
        assert isinstance(ch, tuple)
        src, dst = ch
        seq, kind, stamp, payload = self.chan[ch].popleft()
        node = self.nodes[dst]
        if src not in self.members and src in node.dead_known:
            return                                # a removed incarnation's frames are dropped (stale epoch)
        if self.sw.fix_peer_links:
            inbound = node.inbound.setdefault(src, Inbound())
            items = inbound.accept(seq, (kind, stamp, payload), 0.0)
            sent = self.nodes[src].sent.get(dst, [])
            while sent and sent[0][0] <= inbound.delivered:  # cumulative ack: the sender forgets them
                sent.pop(0)
        else:
            items = [(kind, stamp, payload)]
        for kind, stamp, payload in items:
            if kind == "lock":
                node.locks.on_wire(src, stamp, payload)
            else:
                node.clock.receive(stamp)
                node.rounds.on_wire(src, payload)
        self._pump(node)

    def _pump(self, node: Node) -> None:
        while True:
            lock_fx, tx_fx = node.locks.drain(), node.rounds.drain()
            if not lock_fx and not tx_fx:
                return
            for eff in lock_fx:
                if isinstance(eff, LockSend):
                    self._post(node, eff.dest, "lock", eff.stamp, eff.wire())
                elif isinstance(eff, Granted):
                    self._granted(node, eff)
                elif isinstance(eff, NeedsRecovery):
                    pass
            for tx in tx_fx:
                if isinstance(tx, TxSend):
                    self._post(node, tx.dest, "tx", node.clock.send(), tx.msg.to_wire())
                elif isinstance(tx, RoundComplete):
                    self._round_done(node, node.callbacks.pop(tx.round, ""))

    # ------------------------------------------------------------------------------------------- membership
    def _act_etcd(self, nid: object) -> None:
        assert isinstance(nid, int)
        node = self.nodes[nid]
        what, other = self.etcd[node.cursor]
        node.cursor += 1
        if other == nid:
            return
        if what == "add":
            node.locks.member_added(other)
            node.rounds.member_added(other)
        else:
            dead = self.nodes[other]
            node.dead_known.add(other)
            floor = Glsn(max((g for _, g, _, _ in dead.wal), default=0) >> 16, other)
            if self.sw.fix_clock_floor:
                node.clock.observe(floor.lamport)
                node.locks.member_removed(other, floor)
            else:
                node.locks.member_removed(other)
            known = not self.sw.fix_sync_loss  # without the fix a joiner is ready once its sync peers are gone
            if what == "leave":
                known |= self._learn_departed(node, other)  # before its rounds stop counting
            prepared = set(node.rounds.prepared_from.get(other, ()))
            node.rounds.member_removed(other, outcomes_known=known)
            if other in self.recovered:  # its recovery ended before this node saw it go: the outcome file is there
                self._sync_loss_recovered(node, other)
            for d, claimer in list(self.claims.items()):  # a recoverer that died: its claim went with its lease
                if claimer == other and d not in self.recovered:
                    del self.claims[d]
            node.to_claim.extend(d for d in node.dead_known if d not in self.claims and d not in node.to_claim)
            self._prepared_by[other] = self._prepared_by.get(other, set()) | prepared
        self._pump(node)

    def _act_claim(self, nid: object) -> None:
        """Claim a dead node's recovery; the winner decides its transactions in one outcome round."""
        assert isinstance(nid, int)
        node = self.nodes[nid]
        dead = node.to_claim.pop(0)
        if dead in self.claims:
            return
        if self.claim_failures:
            self.claim_failures -= 1
            if self.sw.fix_claim_retry:
                node.to_claim.append(dead)
            return
        self.claims[dead] = nid
        self.out.recoveries += 1
        wal = self.nodes[dead].wal
        committed = {x: g for kind, g, x, _ in wal if kind == "commit"}
        started = {x for kind, _, x, _ in wal if kind in ("xid", "chg")}
        verdict = decide(committed, set(), started, started | self._prepared_by.get(dead, set()), node.rounds.table)
        node.callbacks[node.rounds.finish(verdict.announce_committed, verdict.announce_aborted)] = f"recovered:{dead}"
        self._verdicts[dead] = ({x: g for x, g in verdict.announce_committed}, set(verdict.announce_aborted))
        self._pump(node)

    # ------------------------------------------------------------------------------------------------ clients
    def _client_ready(self, node: Node) -> bool:
        c = node.client
        if c.phase == "idle":
            return c.txns > 0 and node.rounds.ready
        if c.phase == "snap":
            return all(node.rounds.table.decided(x) for x in c.waits)
        return c.phase in ("hold", "write-next", "ext-hold")

    def _act_client(self, nid: object) -> None:
        assert isinstance(nid, int)
        node = self.nodes[nid]
        c = node.client
        if c.phase == "idle":
            c.txns -= 1
            c.phase = "xid"
            node.locks.acquire(XID, Mode.EXCLUSIVE)
        elif c.phase == "snap":
            table = node.rounds.table
            if any(table.committed.get(x, -1) >= c.sts for x in c.waits) and self.sw.fix_retake:
                c.sts = node.clock.tick().pack()  # as SnapshotWaits._retake: a commit it waited for is at/above it
                c.waits = node.rounds.table.snapshot(c.xid, c.sts)[1]
                self._pump(node)
                return
            self._check_snapshot(node)
            c.todo = sorted(self.rng.sample(self.chains, min(len(self.chains), self.rng.choice((1, 1, 2)))))
            c.wrote = []
            c.phase = "write-next"
        elif c.phase == "write-next":
            if c.todo:
                c.phase = "write"
                node.locks.acquire(c.todo[0], Mode.EXCLUSIVE)
            elif self.rng.random() < 0.4:
                c.phase = "ext"
                node.locks.acquire(EXT, Mode.EXCLUSIVE)
            else:
                c.phase = "prep"
                node.callbacks[node.rounds.prepare([c.xid])] = "prep"
        elif c.hold > 0:
            c.hold -= 1
        elif c.phase == "ext-hold":
            self._extend(node)
        elif c.phase == "hold":                    # release the chain: WAL first, then write-through (I3)
            chain = c.todo.pop(0)
            image = c.images.pop(chain)
            self._write_disk(nid, chain, image)
            node.locks.release(chain, image.encode())
            c.phase = "write-next"
        self._pump(node)

    def _granted(self, node: Node, g: Granted) -> None:
        c = node.client
        if g.resource == XID:
            known = int.from_bytes(g.value, "big") if g.valid and g.value else 0
            if not g.valid or not known:
                known = max(known, max(self.ceiling.values(), default=0) + 1, 3)
            xid = known
            if xid in self.xids:
                self._fail(f"I1: XID {xid} handed out twice (node {node.nid})")
            self.xids.add(xid)
            self.ceiling[node.nid] = max(self.ceiling.get(node.nid, 0), xid)  # durable before use
            c.xid = xid
            node.wal.append(("xid", node.clock.tick().pack(), xid, None))
            node.locks.release(XID, (xid + 1).to_bytes(8, "big"))
            c.sts = node.clock.tick().pack()
            snapshot, waits = node.rounds.table.snapshot(xid, c.sts)
            c.waits, c.acked_then = waits, frozenset(self.acked)
            c.phase = "snap"
        elif g.resource == EXT:
            size = int.from_bytes(g.value, "big") if g.valid and g.value else node.size
            c.grant_size = size
            if not g.valid:
                self.out.invalid_grants += 1
                dead_max = max((b + 1 for n in node.dead_known for k, _, _, b in self.nodes[n].wal
                                if k == "blk" and isinstance(b, int)), default=0)
                size = max(node.size, dead_max)
                if self.sw.fix_ext_floor and g.value:
                    size = max(size, int.from_bytes(g.value, "big"))
                c.grant_size = size
            c.hold, c.phase = self.rng.randint(0, 2), "ext-hold"
        else:
            self._change(node, g)

    def _extend(self, node: Node) -> None:
        """Allocate the next block of the relation under the extension lock, log it, release the new size."""
        c = node.client
        block = c.grant_size
        if block in self.blocks:
            self._fail(f"I2: block {block} allocated twice (node {self.blocks[block]} and node {node.nid})")
        self.blocks[block] = node.nid
        node.wal.append(("blk", node.clock.tick().pack(), c.xid, block))
        node.size = block + 1
        node.locks.release(EXT, node.size.to_bytes(8, "big"))
        c.phase = "write-next"

    def _change(self, node: Node, g: Granted) -> None:
        c = node.client
        image = Image.decode(g.value) if g.valid and g.value else self._rebuild(node, g.resource)
        if not g.valid:
            self.out.invalid_grants += 1
        for _ in range(self.rng.randint(1, 12)):  # local WAL work: the clock runs ahead with no message
            node.clock.tick()
        glsn = node.clock.tick().pack()
        if glsn <= image.glsn:
            self._fail(f"I2: node {node.nid} stamps a change of {g.resource!r} at {Glsn.unpack(glsn)}, "
                       f"not above its image's {Glsn.unpack(image.glsn)}")
        new = Image(glsn, image.xids | {c.xid})
        node.wal.append(("chg", glsn, c.xid, (g.resource, new)))
        c.images[g.resource] = new
        c.wrote.append(g.resource)
        c.hold, c.phase = self.rng.randint(0, 3), "hold"

    def _rebuild(self, node: Node, chain: bytes) -> Image:
        """The shared disk's image, redone with every dead node's newer changes of the chain."""
        best = self.disk[chain]
        for n in node.dead_known:
            for kind, glsn, _, what in self.nodes[n].wal:
                if kind == "chg" and isinstance(what, tuple) and what[0] == chain and glsn > best.glsn:
                    best = what[1]
        return best

    def _write_disk(self, nid: int, chain: bytes, image: Image) -> None:
        if image.glsn < self.disk[chain].glsn:
            self._fail(f"I2: node {nid} wrote {chain!r} at {Glsn.unpack(image.glsn)} over the newer "
                       f"{Glsn.unpack(self.disk[chain].glsn)} (image went back)")
        self.disk[chain] = image

    def _round_done(self, node: Node, what: str) -> None:
        c = node.client
        if what == "prep":
            cts = node.clock.tick().pack()
            node.wal.append(("commit", cts, c.xid, None))
            if self.cfg.lazy_outcome:  # as Sessions with lazy_outcome: nobody acknowledges the outcome
                node.rounds.finish([(c.xid, cts)], [], acked=False)
                self.acked[c.xid] = (self.step, tuple(c.wrote))
                self.out.commits_acked += 1
                c.phase = "idle"
            else:  # the default: the client hears "committed" once every member acknowledged the outcome
                node.callbacks[node.rounds.finish([(c.xid, cts)], [])] = "done"
                c.phase = "done-wait"
        elif what.startswith("recovered:"):  # the recoverer writes the dead node's outcome file, then says so
            dead = int(what.split(":")[1])
            self.xact[dead] = self._verdicts[dead]
            self.recovered.add(dead)
            for other in self.nodes.values():  # the 'recovered' event: a joiner that lost its sync peer reads it
                if other.alive and dead in other.rounds.sync_lost:
                    self._sync_loss_recovered(other, dead)
        elif what == "done":
            self.acked[c.xid] = (self.step, tuple(c.wrote))
            self.out.commits_acked += 1
            c.phase = "idle"

    # ---------------------------------------------------------------------------------------------- checking
    def _check_snapshot(self, node: Node) -> None:
        self.out.snapshots_checked += 1
        table = node.rounds.table
        for xid in node.client.acked_then:
            cts = table.committed.get(xid)
            if cts is None or cts >= node.client.sts:
                self._fail(f"I5: commit of XID {xid} acknowledged before node {node.nid}'s snapshot "
                           f"{Glsn.unpack(node.client.sts)} is not visible to it (cts {cts})")

    def _check_exclusion(self) -> None:
        live = [n for n in self.nodes.values() if n.alive and n.nid in self.members]
        for r in [XID, EXT, *self.chains]:
            owners = [(n.nid, m) for n in live for m in (n.locks.owned(r),) if m is not None]
            if len(owners) > 1 and any(m is Mode.EXCLUSIVE for _, m in owners):
                self._fail(f"I2: conflicting owners of {r!r}: {owners}")

    def _check_end(self) -> None:
        live = [n for n in self.nodes.values() if n.alive and n.nid in self.members]
        for dead in self.nodes.values():
            if dead.nid in self.members:
                continue
            for kind, _, xid, _ in dead.wal:
                for n in live:
                    if kind == "xid" and not n.rounds.table.decided(xid):
                        self._fail(f"progress: XID {xid} of removed node {dead.nid} never decided on node {n.nid} "
                                   "(its rows stay locked, snapshots wait)")
        for xid, (_, chains) in sorted(self.acked.items()):
            for n in self.nodes.values():
                if n.alive and n.nid in self.members and xid not in n.rounds.table.committed:
                    self._fail(f"I7: acknowledged XID {xid} not known committed on node {n.nid}")
            for chain in chains:
                if xid not in self.disk[chain].xids:
                    self._fail(f"I7: acknowledged XID {xid}'s change to {chain!r} is lost")

    def _unfinished(self) -> dict[int, str]:
        return {n.nid: n.client.phase for n in self.nodes.values()
                if n.running and n.nid in self.members and (n.client.txns or n.client.phase != "idle")}

    def _fail(self, why: str) -> None:
        raise Violation(f"seed={self.seed} step={self.step}: {why}")


def run(seed: int, cfg: SimConfig | None = None) -> Explored:
    """Run one schedule; raises ``Violation`` if an invariant breaks or progress stops."""
    return Cluster(seed, cfg or SimConfig()).run()


def shrink(seed: int, cfg: SimConfig) -> tuple[SimConfig, int, str]:
    """A failing schedule made short: fewer faults, transactions, chains and nodes while it still fails.  Returns
    the smallest failing config, the step the violation was found at and its message."""

    def fails(c: SimConfig) -> Violation | None:
        try:
            run(seed, c)
        except Violation as v:
            return v
        return None

    best = fails(cfg)
    assert best is not None, "shrink needs a failing schedule"
    changed = True
    while changed:
        changed = False
        for name, low in (("faults", 1), ("txns", 1), ("chains", 1), ("nodes", 2), ("fault_window", 10)):
            value = getattr(cfg, name)
            if value > low:
                smaller = _replace(cfg, **{name: max(low, value // 2 if name == "fault_window" else value - 1)})
                found = fails(smaller)
                if found is not None:
                    cfg, best, changed = smaller, found, True
    step = int(str(best).split("step=")[1].split(":")[0])
    return cfg, step, str(best)


def _replace(cfg: SimConfig, **kw: int) -> SimConfig:
    from dataclasses import replace
    return replace(cfg, **kw)  # type: ignore[arg-type]
