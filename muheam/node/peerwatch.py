"""Beats between members and the end of a peer-only partition: the node loop's binding of ``muheam.cluster.partition``.

Runs in the node's event loop: ``tick`` sends a beat to every peer, publishes what this node hears when that
changes, and, while some peer is silent, asks etcd for every member's report and removes the side that must
leave (``partition.losers``) in one guarded transaction.  etcd calls block the loop for at most the backend's
timeout and are made only while a peer is silent or when what this node hears changes.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable

from muheam.cluster import partition
from muheam.errors import EtcdUnavailable
from muheam.states import NodeState

if TYPE_CHECKING:
    from muheam.membership import Lease, MembershipBackend
    from muheam.net.mesh import Mesh
    from muheam.net import wire

log = logging.getLogger("muheam.peerwatch")

KIND = "beat"
DECIDE_EVERY = 1.0
"""Seconds between decisions while a peer stays silent (a failed or empty one is tried again)."""
BUSY = "busy"
MAX_BUSY = 60.0
"""The longest silence a peer may announce (``busy``); a longer announcement is capped to it."""


class PeerWatch:
    def __init__(self, node_id: int, cluster: str, mesh: "Mesh", backend: Callable[[], "MembershipBackend"],
                 lease: "Lease", lease_ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.node_id = node_id
        self.cluster = cluster
        self.mesh = mesh
        self.backend = backend
        self.lease = lease
        self.clock = clock
        self.silence = partition.Silence(partition.silence_timeout(lease_ttl))
        self.published: frozenset[int] | None = None
        self.published_at = 0.0
        self.next_beat = 0.0
        self.deaf_since: float | None = None
        """When the current long work began (``busy``); ``listening`` credits its length to every peer."""
        self.deaf_depth = 0
        self.next_decision = 0.0
        self.counters: dict[str, int] = {"beats_sent": 0, "beats_heard": 0, "reach_published": 0, "decisions": 0,
                                         "evicted": 0, "busy_heard": 0, "beats_malformed": 0}
        mesh.on(KIND, self._on_beat)

    def watch(self, node: int) -> None:
        self.silence.watch(node, self.clock())

    def forget(self, node: int) -> None:
        self.silence.forget(node)

    def _on_beat(self, msg: "wire.PeerMessage") -> None:
        """A beat: the sender lives.  A ``[busy, ms]`` beat also says it will be silent for up to ``ms`` while
        it does long healthy work (``busy``): it counts as heard until then, and its next plain beat ends that."""
        self.counters["beats_heard"] += 1
        now = self.clock()
        body = msg.body
        if body is not None:
            ms = body[1] if isinstance(body, list) and len(body) == 2 and body[0] == BUSY else None
            if not isinstance(ms, int) or isinstance(ms, bool) or ms < 0:
                self.counters["beats_malformed"] += 1  # still a sign of life; the rest is ignored
            else:
                self.counters["busy_heard"] += 1
                now += min(ms / 1000, MAX_BUSY)
        self.silence.heard(msg.sender, now)

    def busy(self, seconds: float) -> None:
        """Tell every peer this loop will not turn for up to ``seconds`` (long healthy work, e.g. staging a dead
        node's pages, while its lease is kept): they do not take its silence for a cut and remove a survivor.
        Sent at once, past the turn's cork; a peer of an older version takes it for a plain beat."""
        if self.deaf_since is None:
            self.deaf_since = self.clock()
        self.deaf_depth += 1
        body = [BUSY, int(min(seconds, MAX_BUSY) * 1000)]
        try:
            for peer in list(self.silence.last):
                if self.mesh.send(peer, KIND, body):
                    self.counters["beats_sent"] += 1
                self.mesh.flush_to(peer)
        except BaseException:
            # the caller's work does not start, and nobody will call ``listening`` for it: left counted, every
            # later ``listening`` stopped one short and no later work was taken off the peers' silence (a review)
            self.listening()
            raise

    def listening(self) -> None:
        """The loop turns again after the long work ``busy`` announced: every peer's silence is counted without
        the work's length.  Their beats of the meantime are still unread (the work may have run inside a turn,
        after the mesh was read), and this node must not report them silent, nor publish that it hears nobody,
        for what was its own deafness; but a peer silent before the work stays as silent as it was (counting
        every peer as heard at the work's end made a node that did long work often, e.g. for large SQL
        statements, never find a dead peer silent)."""
        self.deaf_depth = max(0, self.deaf_depth - 1)
        if self.deaf_depth or self.deaf_since is None:
            return
        gap, self.deaf_since = max(0.0, self.clock() - self.deaf_since), None
        for peer, last in list(self.silence.last.items()):
            self.silence.heard(peer, last + gap)

    def tick(self, now: float) -> None:
        if now >= self.next_beat:
            self.next_beat = now + partition.BEAT_INTERVAL
            for peer in list(self.silence.last):
                if self.mesh.send(peer, KIND, None):
                    self.counters["beats_sent"] += 1
        hears = self.silence.hears(now)
        silent = self.silence.silent(now)
        if hears != self.published:
            try:
                self.backend().put_reach(self.cluster, self.node_id, sorted(hears), self.lease)
            except EtcdUnavailable as e:
                log.warning("could not publish the peers this node hears (%s)", e)
                return
            if silent:
                log.warning("node %d hears no beat from node(s) %s for %.1f s; it hears %s", self.node_id,
                            sorted(silent), self.silence.timeout, sorted(hears))
            self.published, self.published_at = hears, now
            self.counters["reach_published"] += 1
        if silent and now - self.published_at >= partition.SETTLE and now >= self.next_decision:
            self.next_decision = now + DECIDE_EVERY
            self._decide()

    def _decide(self) -> None:
        """Remove the side of the partition that must leave, if the reports say there is one."""
        self.counters["decisions"] += 1
        try:
            backend = self.backend()
            members, reach, _ = backend.reach_view(self.cluster)
            out = partition.losers(reach, {m.node_id for m in members})
            # a member that is stopping leaves by itself within seconds; removing it would skip its clean stop
            leaving = [m for m in members if m.node_id in out and m.state != NodeState.STOPPING]
            if not leaving:
                return
            # said before the transaction too: a node that removes itself is killed by the others (STONITH) as
            # soon as its member key is gone, often before it could log anything after
            log.warning("removing node(s) %s from the cluster: cut off from their peers (reports: %s)",
                        [m.node_id for m in leaving], {n: reach[n] for n in sorted(reach)})
            if backend.evict(self.cluster, leaving, members, self.node_id):
                self.counters["evicted"] += len(leaving)
                log.warning("removed node(s) %s from the cluster: cut off from their peers (reports: %s)",
                            [m.node_id for m in leaving], {n: reach[n] for n in sorted(reach)})
        except EtcdUnavailable as e:
            log.warning("could not decide which side of a peer partition leaves (%s); retrying", e)
