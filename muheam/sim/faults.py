"""The simulator's faults: what each kind does to the simulated cluster, and the departures they lead to.

Kept apart from ``muheam.sim.cluster`` (which steps the nodes' cores and checks the invariants) so that each
module reads on its own; ``Cluster`` mixes this class in.  Kinds (``FAULTS``):

* ``crash``: the node stops; a prefix of what it sent still arrives; etcd removes it after up to a lease.
* ``pause``: short (just slow) or past the lease: etcd removes it and it resumes as a zombie unless the survivors
  fenced it (``fix_fence``).
* ``reset`` / ``reorder`` / ``duplicate``: a peer connection loses what is in flight (the links resend it:
  ``fix_peer_links``), or a reconnect delivers out of order or twice.
* ``join``: a new incarnation joins (after the dead are recovered, as a restart waits for that).
* ``claim_fail``: the next etcd claim of a recovery fails (retried: ``fix_claim_retry``).
* ``cut``: a peer-only partition: every link between one member and the others stops delivering, for good, while
  its etcd lease stays fresh.  With ``fix_partition`` the members find the silence after twice the lease, keep
  the largest set that all hear each other (``muheam.cluster.partition.stay_side``, the real code) and remove and
  fence the rest, who are then recovered as after a crash; without it every round waits for the cut node.
* ``stop``: a clean stop (``muheam node stop``): the member stops processing membership events, claiming
  recoveries and starting transactions, finishes the commit it is in if it can within its shutdown time (up to a lease; then it
  gives up, as ``_finish_rounds`` does after its timeout), writes its outcomes (the ``xact`` file) and leaves; no recovery
  follows.  A node that joined meanwhile never got its last outcome rounds: with ``fix_learn_outcomes`` every
  member takes what it lacks from the file when the member leaves.  A joiner counts the stopping member in its
  view (so its sync waits until the member is gone); the simulator has no switch for that fix: its stopping
  member takes no new lock, so leaving it out of a joiner's view changes nothing it can observe.
"""

from __future__ import annotations

import random
from collections import deque

from muheam.cluster.partition import stay_side
from muheam.sim.model import Explored, Node, SimConfig, Switches

STOPPABLE = ("idle", "prep", "done-wait")
"""Client phases in which a node holds no lock: a stop then only has a commit to finish (a real node rolls back
what runs when it stops; the simulator stops only here, where nothing needs rolling back)."""


class Faults:
    """Fault injection for ``Cluster`` (which provides these attributes and ``_make``)."""

    seed: int
    cfg: SimConfig
    sw: Switches
    rng: random.Random
    step: int
    out: Explored
    nodes: dict[int, Node]
    chan: dict[tuple[int, int], deque[tuple[int, str, int, object]]]
    etcd: list[tuple[str, int]]
    members: set[int]
    recovered: set[int]
    claims: dict[int, int]
    claim_failures: int
    fault_at: list[int]
    timers: list[tuple[int, str, int]]
    cut: set[tuple[int, int]]
    xact: dict[int, tuple[dict[int, int], set[int]]]

    def _make(self, nid: int, view: list[int], bootstrap: bool) -> None:
        raise NotImplementedError

    def _act_fault(self, _: object) -> None:
        kind = self.rng.choice(self.cfg.fault_kinds)
        self.fault_at.pop(0)
        live = sorted(n for n, node in self.nodes.items()
                      if node.running and n in self.members and not node.stopping)
        if kind in ("crash", "pause", "cut", "stop") and len(live) < 2:
            return
        self.out.faults[kind] += 1
        if kind == "crash":
            victim = self.nodes[self.rng.choice(live)]
            victim.alive = False
            for (src, dst), q in self.chan.items():
                if dst == victim.nid:
                    q.clear()
                elif src == victim.nid:           # a prefix of what it sent still arrives
                    for _ in range(self.rng.randint(0, len(q))):
                        q.pop()
            self.timers.append((self.step + self.rng.randint(1, self.cfg.lease), "remove", victim.nid))
        elif kind == "pause":
            victim = self.nodes[self.rng.choice(live)]
            long = self.rng.random() < 0.6
            span = self.rng.randint(self.cfg.lease + 5, 3 * self.cfg.lease) if long else \
                self.rng.randint(1, self.cfg.lease - 1)
            victim.paused_until = self.step + span
            self.timers.append((self.step + span, "resume", victim.nid))
            if long:
                self.timers.append((self.step + self.cfg.lease, "remove", victim.nid))
        elif kind in ("reset", "reorder", "duplicate"):
            pairs = [ch for ch in self.chan if self.nodes[ch[0]].alive and self.nodes[ch[1]].alive]
            if pairs:
                self._link_fault(kind, self.rng.choice(pairs))
        elif kind == "join":
            self._join()
        elif kind == "cut":
            cut_off = self.rng.choice(live)
            for other in self.members - {cut_off}:
                self.cut |= {(cut_off, other), (other, cut_off)}
            if self.sw.fix_partition:
                self.timers.append((self.step + 2 * self.cfg.lease, "partition", cut_off))
        elif kind == "stop":
            ready = [n for n in live if self.nodes[n].client.phase in STOPPABLE]
            if not ready:
                self.out.faults[kind] -= 1
                return
            node = self.nodes[self.rng.choice(ready)]
            node.stopping = True
            node.client.txns = 0
            # its shutdown (last rounds, checkpoint, lease revoke) takes a while; what has not finished by then is
            # given up, as ``_finish_rounds`` does after its timeout
            self.timers.append((self.step + self.rng.randint(1, self.cfg.lease), "stop-timeout", node.nid))
        else:
            self.claim_failures += 1

    def _join(self) -> None:
        removed = {n for n in self.nodes if n not in self.members}
        if removed - self.recovered:      # a restart waits for the recovery of the dead (its pointer moves)
            self.fault_at.insert(0, self.step + 1)
            self.out.faults["join"] -= 1
            return
        nid = max(self.nodes) + 1
        self.members.add(nid)
        self.etcd.append(("add", nid))
        self._make(nid, sorted(self.members - {nid}), bootstrap=False)  # a stopping member counts (I6)
        # the recoverers' sweeps wrote the dead nodes' chains and appended blocks to the disk: model that by
        # letting the joiner see their (final) WALs, as the disk would show their effects
        self.nodes[nid].dead_known = removed

    def _link_fault(self, kind: str, ch: tuple[int, int]) -> None:
        q = self.chan[ch]
        if kind == "reset":                        # the connection's buffers are lost, both ways
            for c in (ch, (ch[1], ch[0])):
                if c in self.chan:
                    self.chan[c].clear()
                    if self.sw.fix_peer_links:    # the link resends every unacknowledged frame
                        self.chan[c].extend(self.nodes[c[0]].sent.get(c[1], []))
        elif not self.sw.fix_peer_links:
            return                                 # raw ZeroMQ neither reorders nor duplicates
        elif kind == "reorder" and len(q) > 1:
            items = list(q)
            self.rng.shuffle(items)
            q.clear()
            q.extend(items)
        elif kind == "duplicate" and q:
            q.insert(self.rng.randrange(len(q) + 1), q[self.rng.randrange(len(q))])

    def _partition(self) -> None:
        """The peer watch's decision (``muheam.node.peerwatch``): every member reports whom it hears; the largest
        mutually hearing set stays; the rest are removed in one etcd transaction and fenced (each loser also
        sees its own key go and fences itself), then recovered by the survivors as after a crash."""
        live = {n for n in self.members if self.nodes[n].alive}
        reach = {n: {m for m in live if (m, n) not in self.cut} for n in live}
        for loser in sorted(live - stay_side(reach, live)):
            self.members.discard(loser)
            self.etcd.append(("remove", loser))
            self.nodes[loser].alive = False

    def _leave_ready(self, node: Node) -> bool:
        return node.stopping and node.nid in self.members and node.stop_timed_out

    def _act_leave(self, nid: object) -> None:
        """A stopping member's last step (``NodeAgent._shutdown``): what it did not commit is aborted, its outcomes
        go to its ``xact`` file (a commit whose COMMIT record is in its WAL counts as committed, acknowledged or
        not), its lease is revoked."""
        assert isinstance(nid, int)
        node = self.nodes[nid]
        mine = {x for kind, _, x, _ in node.wal if kind == "xid"}
        committed = {x: c for x, c in node.rounds.table.committed.items() if x in mine}
        self.xact[nid] = (committed, mine - set(committed))
        node.alive = False
        self.members.discard(nid)
        self.claims[nid] = nid
        self.recovered.add(nid)
        self.etcd.append(("leave", nid))

    def _learn_departed(self, node: Node, gone: int) -> bool:
        """A cleanly stopped member's outcome file, read by ``node`` before it drops ``gone``: whether it was."""
        if self.sw.fix_learn_outcomes and gone in self.xact:
            committed, aborted = self.xact[gone]
            node.rounds.table.learn_departed(committed, aborted, node.clock.tick().pack())
            return True
        return False

    def _sync_loss_recovered(self, node: Node, dead: int) -> None:
        """``dead``'s recovery ended: ``node`` (a joiner it never answered) reads its outcome file and is ready
        once nothing else holds its join (``NodeAgent``'s ``recovered`` event; issue 17)."""
        if dead in node.rounds.sync_lost and dead in self.xact:
            committed, aborted = self.xact[dead]
            node.rounds.table.learn_departed(committed, aborted, node.clock.tick().pack())
            node.rounds.departed_known(dead)
