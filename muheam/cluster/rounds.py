"""The commit rounds as a pure state machine, in the style of ``locking.manager`` (no sockets, clocks or time).

Inputs are method calls: local requests (``prepare``, ``finish``, ``sync``, ``publish``), membership events from
etcd (``member_added``, ``member_removed``) and peer messages (``on_message``/``on_wire``).  Outputs are frozen
effect records collected in an outbox and taken with ``drain()``: ``Send`` (a ``tx`` message for one member, in
drain order: the transport must keep that order per destination), ``RoundComplete``, ``OutcomesLearned`` and
``Synced``.  ``muheam.cluster.commits.CommitService`` binds it to the mesh; ``muheam.sim`` drives it directly.

Rules (``muheam.cluster.txstate`` says why they make snapshots safe):

* a round (``prep`` or ``done``) is sent to every member of the view at the moment it starts and completes
  exactly when each of them has acknowledged it or left the view; with no other member it completes at once;
* a receiver applies a round to its ``TxTable`` before it acknowledges it, so "round complete" means "every live
  member knows" (I5);
* a message for a node this view does not hold yet (its join has not reached us) is kept and sent when it joins,
  in order: a joiner may talk to us before etcd tells us about it;
* ``sync`` from a joiner is answered with our table only once the joiner is in our view: from then on every round
  we start includes it, and every round started before was applied to the table it receives, so it misses no
  outcome;
* ``prepared_from`` keeps, per peer, the XIDs it prepared and has not decided, which a survivor must decide if the
  peer dies.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Union

from muheam.cluster.txmessages import Ack, Done, Horizon, Prep, State, Sync, TxMessage, Waits, from_wire
from muheam.cluster.txstate import TxTable


@dataclass(frozen=True, slots=True)
class Send:
    """Transmit ``msg`` (kind ``tx``) to member ``dest``."""

    dest: int
    msg: TxMessage


@dataclass(frozen=True, slots=True)
class RoundComplete:
    """Every member of round ``round``'s view has acknowledged it or left."""

    round: int


@dataclass(frozen=True, slots=True)
class OutcomesLearned:
    """Outcomes of ``xids`` just arrived from a peer (empty after a sync: waiters should look again)."""

    xids: frozenset[int]


@dataclass(frozen=True, slots=True)
class Synced:
    """Every member of the initial view answered the join sync (or left): this node may begin transactions."""


Effect = Union[Send, RoundComplete, OutcomesLearned, Synced]


class CommitRounds:
    """One node's side of the prepare / outcome / sync / horizon / wait-for-graph exchanges."""

    def __init__(self, members: Iterable[int], table: TxTable) -> None:
        """``members``: the other live members of the initial view."""
        self.table = table
        self.members: set[int] = set(members)
        self.rounds: dict[int, set[int]] = {}          # round -> members that have not acknowledged yet
        self.next_round = 1
        self.syncing: set[int] = set()
        self.sync_lost: set[int] = set()
        """Members of the join's view that left before answering and whose outcomes were not learned: until
        they are (``departed_known``), this joiner is not ready (see ``member_removed``)."""
        self.deferred: dict[int, list[TxMessage]] = {}
        self.pending_sync: set[int] = set()
        self.horizons: dict[int, int] = {}
        self.waits: dict[int, list[tuple[int, int]]] = {}
        self.prepared_from: dict[int, set[int]] = {}
        self.counters: Counter[str] = Counter()
        self.outbox: list[Effect] = []

    # -- local requests ---------------------------------------------------------------------------------------
    def sync(self, peers: Iterable[int]) -> None:
        """Join: ask every member of the initial view for its table; ``Synced`` once all answered or left."""
        self.syncing = set(peers)
        for peer in sorted(self.syncing):
            self._send(peer, Sync())
        if not self.syncing:
            self.outbox.append(Synced())

    @property
    def ready(self) -> bool:
        return not self.syncing and not self.sync_lost

    def prepare(self, xids: Iterable[int]) -> int:
        """Mark ``xids`` prepared here and on every member; returns the round id (``RoundComplete`` follows)."""
        xs = tuple(xids)
        self.table.prepare(xs)
        return self._round(lambda rid: Prep(rid, xs))

    def finish(self, committed: Iterable[tuple[int, int]], aborted: Iterable[int], acked: bool = True) -> int:
        """Record outcomes here and tell every member; returns the round id.  ``acked=False``: the members do
        not acknowledge (round id 0, no ``RoundComplete``): a commit needs only that every member knew it
        *prepared*, since a snapshot that waits for it and then finds its CTS not below its own STS is taken
        again (``Sessions``' begin; docs/architecture.md, "Cheaper commit rounds")."""
        done, gone = tuple((int(x), int(c)) for x, c in committed), tuple(aborted)
        for xid, cts in done:
            self.table.commit(xid, cts)
        for xid in gone:
            self.table.abort(xid)
        if not acked:
            msg = Done(0, done, gone)
            for node in sorted(self.members):
                self._send(node, msg)
            self.counters["done_unacked"] += 1
            return 0
        return self._round(lambda rid: Done(rid, done, gone))

    def publish(self, horizon: int, waits: list[tuple[int, int]], waits_changed: bool) -> None:
        """Gossip our pruning horizon, and our long row waits when they changed, to every member."""
        for node in sorted(self.members):
            self._send(node, Horizon(horizon))
            if waits_changed:
                self._send(node, Waits(tuple(waits)))

    # -- membership -------------------------------------------------------------------------------------------
    def member_added(self, node: int) -> None:
        self.members.add(node)
        for msg in self.deferred.pop(node, []):
            self._send(node, msg)
        if node in self.pending_sync:
            self.pending_sync.discard(node)
            self._send(node, State.of(self.table.export()))

    def member_removed(self, node: int, outcomes_known: bool = False) -> None:
        """``node`` left the view.  ``outcomes_known``: its outcomes are learned already (a clean stop's outcome
        file, read before this call).  A joiner that still waited for ``node``'s answer and does not know its
        outcomes stays not ready until ``departed_known(node)``: ``node`` may have acknowledged a commit that only
        it knew (a commit needs every member's prepare acknowledgement, and this joiner was not yet one), and a
        snapshot taken now would not see it (I5).  The node's recovery learns those outcomes."""
        if node in self.syncing and not outcomes_known:
            self.sync_lost.add(node)
        self.members.discard(node)
        self.deferred.pop(node, None)
        self.prepared_from.pop(node, None)
        self.pending_sync.discard(node)
        self.horizons.pop(node, None)
        self.waits.pop(node, None)
        self._synced(node)
        for rid in sorted(self.rounds):
            self._acked(rid, node)

    def departed_known(self, node: int) -> None:
        """``node``'s outcomes are in the table (its recovery announced them, or its outcome file was read)."""
        if node in self.sync_lost:
            self.sync_lost.discard(node)
            if self.ready:
                self.outbox.append(Synced())

    # -- peer messages ----------------------------------------------------------------------------------------
    def on_wire(self, sender: int, body: object) -> None:
        """Decode (``ValueError`` on a malformed body, before any state changes) and apply."""
        self.on_message(sender, from_wire(body))

    def on_message(self, sender: int, msg: TxMessage) -> None:
        if isinstance(msg, Ack):
            self._acked(msg.round, sender)
            op = "ack"
        elif isinstance(msg, Prep):
            self.table.prepare(msg.xids)
            self.prepared_from.setdefault(sender, set()).update(msg.xids)
            self._send(sender, Ack(msg.round))
            op = "prep"
        elif isinstance(msg, Done):
            ended: set[int] = set()
            for xid, cts in msg.committed:
                self.table.commit(xid, cts)
                ended.add(xid)
            for xid in msg.aborted:
                self.table.abort(xid)
                ended.add(xid)
            mine = self.prepared_from.get(sender)
            if mine:
                mine -= ended
            if msg.round:  # round 0: the sender waits for nobody
                self._send(sender, Ack(msg.round))
            self.outbox.append(OutcomesLearned(frozenset(ended)))
            op = "done"
        elif isinstance(msg, Sync):
            if sender in self.members:
                self._send(sender, State.of(self.table.export()))
            else:  # answer once our rounds count the joiner, or it could miss an outcome
                self.pending_sync.add(sender)
            op = "sync"
        elif isinstance(msg, State):
            self.table.merge(msg.table())
            self._synced(sender)
            self.outbox.append(OutcomesLearned(frozenset()))
            op = "state"
        elif isinstance(msg, Horizon):
            self.horizons[sender] = msg.glsn
            op = "hz"
        else:
            self.waits[sender] = list(msg.pairs)
            op = "wfg"
        self.counters[f"recv_{op}"] += 1

    # -- queries ----------------------------------------------------------------------------------------------
    def drain(self) -> list[Effect]:
        out, self.outbox = self.outbox, []
        return out

    def horizon(self, local: int) -> int:
        """The oldest snapshot timestamp any live member may use (0, pruning nothing, until all reported)."""
        low = local
        for node in self.members:
            low = min(low, self.horizons.get(node, 0))
        return low

    def remote_waits(self) -> list[tuple[int, int]]:
        return [w for node in sorted(self.members) for w in self.waits.get(node, [])]

    # -- internals --------------------------------------------------------------------------------------------
    def _round(self, make: Callable[[int], Union[Prep, Done]]) -> int:
        rid = self.next_round
        self.next_round += 1
        msg = make(rid)
        self.rounds[rid] = set(self.members)
        for node in sorted(self.members):
            self._send(node, msg)
        self.counters["prep_rounds" if isinstance(msg, Prep) else "done_rounds"] += 1
        if not self.members:
            self._complete(rid)
        return rid

    def _acked(self, rid: int, node: int) -> None:
        waiting = self.rounds.get(rid)
        if waiting is not None:
            waiting.discard(node)
            if not waiting:
                self._complete(rid)

    def _complete(self, rid: int) -> None:
        del self.rounds[rid]
        self.outbox.append(RoundComplete(rid))

    def _synced(self, peer: int) -> None:
        if peer in self.syncing:
            self.syncing.discard(peer)
            if self.ready:
                self.outbox.append(Synced())

    def _send(self, node: int, msg: TxMessage) -> None:
        if node not in self.members:  # its join has not reached us yet: hold the message until it does
            self.deferred.setdefault(node, []).append(msg)
            return
        self.outbox.append(Send(node, msg))

