"""Cluster membership: who is in the cluster, under which epoch, and what happens when that changes.

One interface (``MembershipBackend``) and one module per backend, as Patroni does for its DCS; etcd
(``muheam.membership.etcd``) is the only backend today.  Nothing outside this package imports an etcd client.

Key layout under ``/muheam/<cluster>/``:

* ``cluster``          JSON identity (cluster id, shared dir, block size), created once by ``cluster init``
* ``state``            ``starting`` | ``running`` | ``stopping`` | ``stopped``
* ``epoch``            the cluster-wide incarnation counter, bumped atomically at every node start
* ``members/<id>``     JSON ``Member`` attached to that node's lease: it vanishes when the lease ends
* ``claims/<name>``    who recovers a dead node (on the claimant's lease); ``recovery/<id>`` its progress
* ``reach/<id>``       the peers a node hears (on its lease), published when that changes (``muheam.cluster.partition``)
* ``evictions/<id>``   why a member was removed by its peers (a peer-only partition)
"""

from __future__ import annotations

import dataclasses
import json
import logging
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

from muheam.errors import MuheamError
from muheam.states import ClusterState, NodeState

log = logging.getLogger("muheam.membership")

CLUSTER_STATES = tuple(ClusterState)
#: Member states.  ``stopping`` is written just before a graceful stop revokes the lease, which is how a
#: watcher tells ``left`` (graceful) from ``expired`` (lease ran out) when the key disappears.
MEMBER_STATES = (NodeState.STARTING, NodeState.RUNNING, NodeState.STOPPING)


@dataclass(frozen=True)
class Member:
    node_id: int
    host: str
    peer_endpoint: str
    client_endpoint: str
    epoch: int
    pid: int
    state: str
    """A ``NodeState`` value (``starting`` | ``running`` | ``stopping``); a recovery event's stand-in member
    carries the recovery state instead."""
    started_at: float
    lease_id: int = 0
    stop_mode: str = ""
    """A ``StopMode`` value once the node is stopping, else empty."""
    sql_endpoint: str = ""
    stamp: str = ""
    """Its process's ``procs.process_stamp`` (boot id and start in ticks after boot), which tells it from a later
    process with the same pid whatever the wall clock did; empty in records of versions before it."""
    revision: int = field(default=0, compare=False)

    def to_json(self) -> bytes:
        data = asdict(self)
        data.pop("revision")
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, revision: int = 0) -> "Member":
        data: dict[str, Any] = json.loads(raw)
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data and k != "revision"}
        return cls(**known, revision=revision)


@dataclass(frozen=True)
class MemberEvent:
    """``joined`` | ``updated`` | ``left`` (graceful) | ``expired`` (lease lost) at etcd revision ``revision``;
    also ``recovering`` | ``recovered`` for a dead node's recovery by the survivors (``info``: its record, with
    durations; ``member`` then carries only the node id and the recovered epoch)."""

    kind: str
    member: Member
    revision: int
    info: dict[str, Any] | None = None


def recovery_member(node_id: int, epoch: int, state: str) -> Member:
    """The stand-in member of a recovery event."""
    return Member(node_id=node_id, host="", peer_endpoint="", client_endpoint="", epoch=epoch, pid=0, state=state,
                  started_at=0.0)


class WatchCompacted(MuheamError):
    """The store compacted away the revision a watch was to start from: the events since then cannot be replayed.
    ``MemberWatch`` lists the members again and derives what was missed (``missed_events``)."""

    def __init__(self, start_revision: int, compacted_revision: int) -> None:
        super().__init__(f"watch from revision {start_revision}: etcd compacted its history up to revision "
                         f"{compacted_revision}")
        self.start_revision = start_revision
        self.compacted_revision = compacted_revision


def missed_events(known: Mapping[int, Member], current: Sequence[Member], revision: int) -> list[MemberEvent]:
    """The member events a watcher missed, as the difference between the members it knew and a fresh listing
    taken at ``revision`` (all events carry that revision); in node order, a node's departure before its return.

    Used when the history the watch would have replayed was compacted.  A member that is gone, or is back under a
    new epoch, departed meanwhile, and the deleted key no longer tells a graceful stop from a lost lease: it is
    reported ``expired``, never ``left``.  The two mistakes are not alike: a crash taken for ``left`` would leave
    the dead node's chains and undecided transactions unrecovered (and the node, restarting, would wait for that
    recovery until it gives up), while a clean stop taken for ``expired`` only makes the survivors recover a node
    whose WAL ends in its shutdown checkpoint -- nothing to redo, nothing undecided, its pointer moved to the end
    where it already was -- which is harmless, and repeatable.  A member that joined and went within the gap is
    invisible here: this node never connected to it, so it holds nothing of ours; if it crashed, only survivors
    that saw it recover it, and its restart otherwise waits and then names the problem."""
    now = {m.node_id: m for m in current}
    out: list[MemberEvent] = []
    for node in sorted(known.keys() | now.keys()):
        old, new = known.get(node), now.get(node)
        if old is not None and (new is None or new.epoch != old.epoch):
            out.append(MemberEvent("expired", dataclasses.replace(old, revision=revision), revision))
        if new is not None and (old is None or new.epoch != old.epoch):
            out.append(MemberEvent("joined", new, revision))
        elif new is not None and old != new:
            out.append(MemberEvent("updated", new, revision))
    return out


class MemberWatch:
    """Member events from a listing on, resumable after losing the store and after a compaction of its history.

    The watch resumes from the last revision seen + 1, so etcd replays what happened meanwhile -- unless etcd
    compacted that revision away, when resuming would fail again at every try.  Then the members are listed
    again, the difference against what this watcher knew (the first listing plus every event since) comes out as
    the events missed (``missed_events``), and the watch goes on from the new listing's revision + 1."""

    def __init__(self, cluster: str, members: Iterable[Member], revision: int) -> None:
        self.cluster = cluster
        self.known: dict[int, Member] = {m.node_id: m for m in members}
        self.revision = revision
        """The last revision whose events were all passed on: the watch resumes from the next one."""
        self.resyncs = 0

    def events(self, backend: "MembershipBackend", poll: float = 0.2) -> Iterator[MemberEvent | None]:
        """Events (None every ``poll`` seconds while idle).  Raises ``EtcdUnavailable`` when the store is lost:
        call again, with the same or a new backend, to resume."""
        while True:
            try:
                for event in backend.watch_members(self.cluster, self.revision + 1, poll):
                    if event is not None:
                        self._note(event)
                        self.revision = event.revision
                    yield event
            except WatchCompacted as exc:
                members, revision = backend.members(self.cluster)
                missed = missed_events(self.known, members, revision)
                self.resyncs += 1
                log.warning("%s; listed the members again at revision %d: %s", exc, revision,
                            ", ".join(f"node {e.member.node_id} {e.kind}" for e in missed) or "nothing missed")
                for event in missed:
                    self._note(event)
                    yield event
                self.revision = revision  # only once every missed event is out: a resume mid-way lists again

    def _note(self, event: MemberEvent) -> None:
        member = event.member
        if event.kind in ("joined", "updated"):
            self.known[member.node_id] = member
        elif event.kind in ("left", "expired"):
            held = self.known.get(member.node_id)
            if held is not None and held.epoch <= member.epoch:
                del self.known[member.node_id]


class Lease(ABC):
    id: int
    ttl: int

    @abstractmethod
    def refresh(self) -> int:
        """Renew once; return the TTL etcd granted (0: the lease is gone).  Raise EtcdUnavailable on failure."""

    @abstractmethod
    def revoke(self) -> None:
        """End the lease now so that watchers learn at once."""


class MembershipBackend(ABC):
    """What the node agent and the CLI need from the membership store."""

    endpoints: Sequence[str]

    @abstractmethod
    def ping(self) -> bool: ...

    @abstractmethod
    def close(self) -> None: ...

    # cluster registry ---------------------------------------------------------------------------------------
    @abstractmethod
    def get_cluster(self, cluster: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def register_cluster(self, cluster: str, identity: dict[str, Any]) -> dict[str, Any]:
        """Create the identity if absent; return what is registered (ours or the one already there)."""

    @abstractmethod
    def get_state(self, cluster: str) -> str | None: ...

    @abstractmethod
    def set_state(self, cluster: str, state: str) -> None: ...

    @abstractmethod
    def lock(self, cluster: str, name: str, ttl: int = 10) -> AbstractContextManager[None]:
        """A cluster-wide mutex (e.g. around writes of ``global/control``)."""

    # members ------------------------------------------------------------------------------------------------
    @abstractmethod
    def grant_lease(self, ttl: int) -> Lease: ...

    @abstractmethod
    def join(self, cluster: str, member: Member, lease: Lease) -> Member:
        """Bump the epoch and create ``members/<id>`` on ``lease`` in one transaction; raise NodeIdInUse."""

    @abstractmethod
    def update_member(self, cluster: str, member: Member, lease: Lease) -> None: ...

    @abstractmethod
    def members(self, cluster: str) -> tuple[list[Member], int]:
        """The live members and the etcd revision of that view."""

    @abstractmethod
    def lease_ttl_left(self, lease_id: int) -> int: ...

    @abstractmethod
    def claim(self, cluster: str, name: str, value: dict[str, Any], lease: Lease) -> dict[str, Any] | None:
        """Create ``claims/<name>`` on ``lease`` unless it exists: ``None`` if we won, else the holder's value.
        The claim vanishes with the lease, so a dead claimant's work can be taken over."""

    @abstractmethod
    def put_recovery(self, cluster: str, node_id: int, info: dict[str, Any]) -> None:
        """Publish the survivors' recovery state of ``node_id`` (``recovery/<id>``, watched as events)."""

    @abstractmethod
    def get_recovery(self, cluster: str, node_id: int) -> dict[str, Any] | None: ...

    # replicas (``muheam.replica``) -----------------------------------------------------------------------------
    @abstractmethod
    def put_replica(self, cluster: str, name: str, info: dict[str, Any]) -> None:
        """Publish a replicator's positions and lags (``replicas/<name>``; kept after it stops, with its time)."""

    @abstractmethod
    def replicas(self, cluster: str) -> dict[str, dict[str, Any]]:
        """Every replica's last report, by name."""
    # the cluster's history (``muheam history``) -----------------------------------------------------------------
    def add_history(self, cluster: str, event: dict[str, Any]) -> None:
        """Append ``event`` (``kind``: joined, left, expired, evicted, recovering, recovered, removed; ``node_id``,
        ``epoch``, ``at`` and details) to ``history/``; the oldest beyond ``HISTORY_KEEP`` are dropped.  A backend
        that keeps no history does nothing."""

    def history(self, cluster: str, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` history events, oldest first."""
        return []

    # peer-only partitions (``muheam.cluster.partition``) ------------------------------------------------------------
    @abstractmethod
    def put_reach(self, cluster: str, node_id: int, hears: Sequence[int], lease: Lease) -> None:
        """Publish the peers ``node_id`` hears now (``reach/<id>``, on its lease)."""

    @abstractmethod
    def reach_view(self, cluster: str) -> tuple[list[Member], dict[int, list[int]], int]:
        """The members, every published reach report and the revision, read at one revision."""

    @abstractmethod
    def evict(self, cluster: str, losers: Sequence[Member], view: Sequence[Member], by: int) -> bool:
        """Remove ``losers`` in one transaction that holds only if no member of ``view`` changed since it was
        read (else False: decide again), then revoke their leases; watchers see them ``expired``."""

    @abstractmethod
    def watch_members(self, cluster: str, start_revision: int, poll: float = 0.2) -> Iterator[MemberEvent | None]:
        """Member events from ``start_revision`` on; yields None every ``poll`` seconds while idle.
        Raises EtcdUnavailable when the watch breaks (the caller resumes from its last revision + 1), and
        WatchCompacted when ``start_revision`` was compacted away (``MemberWatch`` handles both)."""


HISTORY_KEEP = 1000
"""History events kept in etcd per cluster (the newest)."""


def history_key(cluster: str, event: dict[str, Any]) -> str:
    """Keys sort by time: ``history/<ns since the epoch, 20 digits>-<node>-<kind>``."""
    return f"/muheam/{cluster}/history/{int(float(event['at']) * 1e9):020d}-{event.get('node_id', 0)}-{event['kind']}"


def connect(endpoints: Sequence[str], timeout: float = 2.0) -> MembershipBackend:
    """The backend for ``endpoints`` (today always etcd)."""
    from muheam.membership.etcd import EtcdBackend

    return EtcdBackend(endpoints, timeout=timeout)


def current_members(endpoints: Sequence[str], cluster: str, timeout: float = 2.0) -> list[Member]:
    """The cluster's members now, over a connection of its own (for one-shot CLI checks); raises
    ``EtcdUnavailable``."""
    backend = connect(endpoints, timeout=timeout)
    try:
        return backend.members(cluster)[0]
    finally:
        backend.close()
