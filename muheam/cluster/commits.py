"""Cluster-wide commit state at the edge: the prepare and outcome rounds, join sync and the pruning horizon.

The rules are in ``muheam.cluster.txstate``; this module moves them over the mesh (message kind ``tx``, clocked, so
every message merges the Lamport clock, which is what orders commit timestamps after acknowledgements):

* ``["prep", round, [xid...]]`` -> the receiver marks the XIDs prepared and answers ``["ack", round]``;
* ``["done", round, [[xid, cts]...], [aborted xid...]]`` -> the receiver records the outcomes, wakes whatever
  waited for them, and answers ``["ack", round]``;
* ``["sync"]`` (a joining node) -> ``["state", {...}]``: the peer's transaction table, sent only once the peer
  counts the joiner among the members its rounds wait for, so the joiner misses no outcome;
* ``["hz", glsn]``: the oldest snapshot timestamp the sender may still use (pruning horizon gossip);
* ``["wfg", [[waiter, blocker]...]]``: the sender's row waits older than the deadlock timeout.

A round completes when every member it was sent to (and that is still a member) has acknowledged it.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from muheam import failpoints
from muheam.net import wire
from muheam.net.mesh import Mesh
from muheam.cluster.txstate import TxTable

log = logging.getLogger("muheam.commits")

KIND = "tx"
MAX_ITEMS = 1_000_000


@dataclass
class _Round:
    waiting: set[int]
    then: Callable[[], None]
    items: int = 0
    outcomes: list[int] = field(default_factory=list)


class CommitService:
    def __init__(self, mesh: Mesh, table: TxTable, members: Callable[[], Iterable[int]],
                 on_outcome: Callable[[set[int]], None]) -> None:
        """``members()``: node ids of the other live members; ``on_outcome(xids)``: outcomes just learned."""
        self.mesh = mesh
        self.table = table
        self.members = members
        self.on_outcome = on_outcome
        self.rounds: dict[int, _Round] = {}
        self.next_round = 1
        self.syncing: set[int] = set()
        self.sync_waiters: list[Callable[[], None]] = []
        self.deferred: dict[int, list[Any]] = {}
        self.pending_sync: set[int] = set()
        self.horizons: dict[int, int] = {}
        self.waits: dict[int, list[tuple[int, int]]] = {}
        self.counters: Counter[str] = Counter()
        self.prepared_from: dict[int, set[int]] = {}  # XIDs a peer prepared and has not decided (for recovery)
        mesh.on(KIND, self._on_message)

    # -- join ------------------------------------------------------------------------------------------------
    def sync(self, peers: Iterable[int]) -> None:
        """Ask every member of the initial view for its table; ``ready`` once all answered (or left)."""
        self.syncing = set(peers)
        for peer in self.syncing:
            self._send(peer, ["sync"])

    @property
    def ready(self) -> bool:
        return not self.syncing

    def when_ready(self, then: Callable[[], None]) -> None:
        if self.ready:
            then()
        else:
            self.sync_waiters.append(then)

    def _synced(self, peer: int) -> None:
        self.syncing.discard(peer)
        if self.ready:
            waiters, self.sync_waiters = self.sync_waiters, []
            for then in waiters:
                then()

    # -- membership ------------------------------------------------------------------------------------------
    def member_added(self, node: int) -> None:
        for body in self.deferred.pop(node, []):
            self._send(node, body)
        if node in self.pending_sync:
            self.pending_sync.discard(node)
            self._send(node, ["state", self.table.export()])

    def member_removed(self, node: int) -> None:
        self.deferred.pop(node, None)
        self.prepared_from.pop(node, None)
        self.pending_sync.discard(node)
        self.horizons.pop(node, None)
        self.waits.pop(node, None)
        self._synced(node)
        for rid in list(self.rounds):
            self._acked(rid, node)

    # -- rounds ----------------------------------------------------------------------------------------------
    def _round(self, body: list[Any], then: Callable[[], None]) -> None:
        rid = self.next_round
        self.next_round += 1
        members = set(self.members())
        self.rounds[rid] = _Round(set(members), then)
        for node in members:
            self._send(node, [body[0], rid, *body[1:]])
        self.counters[f"{body[0]}_rounds"] += 1
        if not members:
            self._complete(rid)

    def prepare(self, xids: list[int], then: Callable[[], None]) -> None:
        """Mark ``xids`` prepared here and on every member; ``then()`` once all acknowledged."""
        self.table.prepare(xids)
        self._round(["prep", xids], then)

    def finish(self, committed: list[tuple[int, int]], aborted: list[int], then: Callable[[], None]) -> None:
        """Record outcomes here, tell every member, ``then()`` once all acknowledged (I5)."""
        for xid, cts in committed:
            self.table.commit(xid, cts)
        for xid in aborted:
            self.table.abort(xid)
        self._round(["done", [list(c) for c in committed], aborted], then)

    def _acked(self, rid: int, node: int) -> None:
        rnd = self.rounds.get(rid)
        if rnd is not None:
            rnd.waiting.discard(node)
            if not rnd.waiting:
                self._complete(rid)

    def _complete(self, rid: int) -> None:
        rnd = self.rounds.pop(rid)
        rnd.then()

    # -- gossip ----------------------------------------------------------------------------------------------
    def publish(self, horizon: int, waits: list[tuple[int, int]], waits_changed: bool) -> None:
        """Periodic: our pruning horizon, and our long row waits when they changed."""
        if failpoints.hit("commits.gossip"):
            return
        for node in self.members():
            self._send(node, ["hz", horizon])
            if waits_changed:
                self._send(node, ["wfg", [list(w) for w in waits]])

    def horizon(self, local: int) -> int:
        """The oldest snapshot timestamp any live member may use (0, pruning nothing, until all reported)."""
        low = local
        for node in self.members():
            low = min(low, self.horizons.get(node, 0))
        return low

    def stats(self) -> dict[str, int]:
        """Counters, plus what is still open: rounds waiting for acknowledgements, XIDs prepared here or by a
        peer whose outcome this node has not heard (both drain to zero once the cluster is idle)."""
        return {**self.counters, "rounds_open": len(self.rounds), "prepared_now": len(self.table.prepared)}

    def remote_waits(self) -> list[tuple[int, int]]:
        return [w for node in self.members() for w in self.waits.get(node, [])]

    # -- wire ------------------------------------------------------------------------------------------------
    def _send(self, node: int, body: list[Any]) -> None:
        if node not in self.mesh.peers:  # its join has not reached us yet: hold the message until it does
            self.deferred.setdefault(node, []).append(body)
            return
        self.mesh.send(node, KIND, body)

    def _on_message(self, msg: wire.PeerMessage) -> None:
        body = msg.body
        if not isinstance(body, list) or not body or not isinstance(body[0], str):
            raise ValueError("tx message must be [op, ...]")
        op, sender = body[0], msg.sender
        if op == "ack" and len(body) == 2 and isinstance(body[1], int):
            self._acked(body[1], sender)
        elif op == "prep" and len(body) == 3 and _xids(body[2]):
            self.table.prepare(body[2])
            self.prepared_from.setdefault(sender, set()).update(body[2])
            self._send(sender, ["ack", body[1]])
        elif op == "done" and len(body) == 4 and _pairs(body[2]) and _xids(body[3]):
            ended: set[int] = set()
            for xid, cts in body[2]:
                self.table.commit(xid, cts)
                ended.add(xid)
            for xid in body[3]:
                self.table.abort(xid)
                ended.add(xid)
            mine = self.prepared_from.get(sender)
            if mine:
                mine -= ended
            self._send(sender, ["ack", body[1]])
            self.on_outcome(ended)
        elif op == "sync" and len(body) == 1:
            if sender in self.mesh.peers:
                self._send(sender, ["state", self.table.export()])
            else:  # answer once our rounds count the joiner, or it could miss an outcome
                self.pending_sync.add(sender)
        elif op == "state" and len(body) == 2 and isinstance(body[1], dict):
            self.table.merge(body[1])
            self._synced(sender)
            self.on_outcome(set())
        elif op == "hz" and len(body) == 2 and isinstance(body[1], int):
            self.horizons[sender] = body[1]
        elif op == "wfg" and len(body) == 2 and _pairs(body[1]):
            self.waits[sender] = [(int(a), int(b)) for a, b in body[1]]
        else:
            raise ValueError(f"malformed tx message {op!r}")
        self.counters[f"recv_{op}"] += 1


def _xids(items: Any) -> bool:
    return (isinstance(items, list) and len(items) <= MAX_ITEMS
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in items))


def _pairs(items: Any) -> bool:
    return (isinstance(items, list) and len(items) <= MAX_ITEMS
            and all(isinstance(p, list) and len(p) == 2 and _xids(p) for p in items))
