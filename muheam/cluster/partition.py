"""Peer-only partitions: silence between members, and which side leaves (pure: no sockets, files or etcd).

The lease is the failure detector for a node cut off from etcd, but a node cut off only from its peers keeps its
lease, and every lock and commit round waits for it until the cut heals.  So members also listen for each other:
every node sends a ``beat`` to each peer a few times a second (``BEAT_INTERVAL``), and a peer not heard from for
``silence_timeout`` (twice the lease TTL) is *silent*.  A node that finds a peer silent publishes what it hears (``reach/<id>`` in etcd,
on its lease) and, once the others had a moment to publish theirs, asks ``decide`` which side stays:

* an edge joins two members only if each hears the other (a one-way cut is a cut);
* the side that stays is the largest set of members that all hear each other (a clique: in a non-transitive
  cut, A-B and B-C but not A-C, a connected side could still not run a round), ties broken by the smallest
  sorted list of node ids, so every node computes the same answer from the same reports;
* a member with no report yet is taken to hear everyone (nothing says otherwise).

A member about to block its loop on long healthy work (staging a dead node's pages) says so first with a
``busy`` beat (``muheam.node.peerwatch``): it is heard until the time it named, so its silence meanwhile is not a cut.

The node then removes the losers in one etcd transaction guarded by the members' revisions (whoever decides
first wins; a decision from an older view fails and is re-read), revokes their leases, and the survivors recover
them as after a crash (each loser sees its own member key go and fences itself).
"""

from __future__ import annotations

from itertools import combinations
from typing import Iterable, Mapping

BEAT_INTERVAL = 0.25
"""Seconds between beats to each peer."""
SETTLE = 0.5
"""Seconds a node waits after publishing what it hears before it decides (the others publish meanwhile)."""
MAX_EXACT = 16
"""Up to this many members the stay-side is found exactly (every subset); above, greedily."""


def silence_timeout(lease_ttl: float) -> float:
    """A peer unheard for this long is silent: twice the lease, so that a node merely stalled (or dead) is found
    by its lease first, and short enough that the cluster serves again within 2 x TTL + 5 s of a peer cut."""
    return 2.0 * lease_ttl


def _mutual(reach: Mapping[int, Iterable[int]], live: set[int]) -> dict[int, set[int]]:
    hears = {n: (set(reach[n]) & live) if n in reach else set(live) for n in live}
    return {n: {m for m in hears[n] if m != n and n in hears[m]} for n in live}


def _key(side: Iterable[int]) -> tuple[int, list[int]]:
    ordered = sorted(side)
    return (-len(ordered), ordered)


def stay_side(reach: Mapping[int, Iterable[int]], live: Iterable[int]) -> frozenset[int]:
    """The members that stay: the largest set that all hear each other (ties: smallest sorted node ids)."""
    members = set(live)
    if not members:
        return frozenset()
    edges = _mutual(reach, members)
    ordered = sorted(members)
    if len(ordered) <= MAX_EXACT:
        for size in range(len(ordered), 0, -1):
            for side in combinations(ordered, size):  # lexicographic: the first clique found wins the tie
                if all(b in edges[a] for a, b in combinations(side, 2)):
                    return frozenset(side)
    best: frozenset[int] = frozenset()
    for start in ordered:  # greedy from each member, for clusters too large to enumerate
        grown = {start}
        for n in sorted(edges[start]):
            if all(n in edges[m] for m in grown):
                grown.add(n)
        if not best or _key(grown) < _key(best):
            best = frozenset(grown)
    return best


def losers(reach: Mapping[int, Iterable[int]], live: Iterable[int]) -> frozenset[int]:
    """The members that must leave."""
    members = frozenset(live)
    return members - stay_side(reach, members)


class Silence:
    """When each peer was last heard from (monotonic seconds), and which are silent."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.last: dict[int, float] = {}

    def watch(self, node: int, now: float) -> None:
        """Start listening for ``node`` (a new member is not silent before it had time to speak)."""
        self.last.setdefault(node, now)

    def forget(self, node: int) -> None:
        self.last.pop(node, None)

    def heard(self, node: int, now: float) -> None:
        if node in self.last:
            self.last[node] = now

    def silent(self, now: float) -> frozenset[int]:
        return frozenset(n for n, t in self.last.items() if now - t > self.timeout)

    def hears(self, now: float) -> frozenset[int]:
        return frozenset(n for n, t in self.last.items() if now - t <= self.timeout)
