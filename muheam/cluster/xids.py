"""Global XIDs: the ``xid`` lock resource, whose value block is ``next_xid``; a node takes ranges of it.

To allocate, a node takes the ``xid`` lock exclusively; the grant carries the highest ``next_xid`` any member
knows (acknowledgements carry each member's known version and the requester takes the newest).  It reserves
``[next_xid, next_xid + batch)``, makes its durable ceiling cover the range (``xidstore``), and releases the lock
with ``next_xid + batch`` as the new value.  Ownership caching means that while nobody else asks, the next range
costs no message at all.  When the grant is marked invalid (a holder died and nobody knows what it took) or no live
member knows the counter (a cluster start), ``next_xid`` is raised to the cluster floor read from every node's
ceiling file.

Batch size adapts: it doubles (up to ``max_batch``) when the grant was a cached re-grant (nobody else took the lock
since our last range), and falls back to ``min_batch`` when the lock had moved; with ``min_batch == max_batch == 1`` every XID is
one lock grant, handed out strictly in the order of the lock queue (GLSN order of the requests).
"""

from __future__ import annotations

import struct
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from locking.effects import Granted, NeedsRecovery
from locking.messages import Mode
from muheam.cluster.locks import LockService
from muheam.cluster.xidstore import XidCeiling, cluster_floor

RESOURCE = b"xid"
_U64 = struct.Struct("<Q")

Deliver = Callable[[list[tuple[int, int]], int], None]
"""Receives the ranges ``[(first, count), ...]`` and the microseconds the allocation waited for the lock."""


@dataclass
class _Want:
    count: int
    deliver: Deliver
    since: int


class XidService:
    def __init__(self, locks: LockService, shared: Path, node_id: int, before_write: Callable[[], None],
                 min_batch: int = 1, max_batch: int = 1 << 16) -> None:
        self.locks = locks
        self.shared = shared
        self.ceiling = XidCeiling(shared, node_id, before_write)
        self.min_batch = max(1, min_batch)
        self.max_batch = max(self.min_batch, max_batch)
        self.batch = self.min_batch
        self.pool: deque[list[int]] = deque()  # [next, end) ranges reserved by this node, in order
        self.wants: deque[_Want] = deque()
        self.acquiring = False
        self.last_entry: object = None
        self.counters: Counter[str] = Counter()
        locks.on_demand(RESOURCE, self._on_demand)
        locks.on_recovery(RESOURCE, self._on_recovery)

    def allocate(self, count: int, deliver: Deliver) -> None:
        """Hand ``count`` XIDs to ``deliver`` now if the pool has them, else after the next grant."""
        if count < 1:
            raise ValueError("count must be >= 1")
        self.wants.append(_Want(count, deliver, time.perf_counter_ns()))
        self._serve()
        if self.wants and not self.acquiring:
            self.acquiring = True
            self.locks.acquire(RESOURCE, Mode.EXCLUSIVE, self._granted)

    def available(self) -> int:
        return sum(end - nxt for nxt, end in self.pool)

    def _serve(self) -> None:
        while self.wants and self.available() >= self.wants[0].count:
            want = self.wants.popleft()
            ranges: list[tuple[int, int]] = []
            need = want.count
            while need:
                rng = self.pool[0]
                take = min(need, rng[1] - rng[0])
                ranges.append((rng[0], take))
                rng[0] += take
                need -= take
                if rng[0] == rng[1]:
                    self.pool.popleft()
            self.counters["allocations"] += 1
            self.counters["xids"] += want.count
            want.deliver(ranges, (time.perf_counter_ns() - want.since) // 1000)

    def _granted(self, grant: Granted) -> None:
        self.acquiring = False
        self.counters["grants"] += 1
        known = _U64.unpack(grant.value)[0] if grant.value and len(grant.value) == 8 else 0
        start = known
        if known == 0 or not grant.valid:
            # nobody alive knows the counter (cluster start) or a dead holder may have moved it
            start = max(start, cluster_floor(self.shared))
            self.counters["floor_reads"] += 1
        demand = sum(w.count for w in self.wants) - self.available()
        if grant.glsn == self.last_entry:
            # a cached re-grant: nobody else asked since our last range, so ask for more next time
            self.batch = min(self.max_batch, self.batch * 2)
            self.counters["cached_grants"] += 1
        else:
            self.batch = self.min_batch
        self.last_entry = grant.glsn
        end = start + max(self.batch, demand)
        self.ceiling.ensure(end)  # durable before any of the range is used (I1 across crashes)
        self.pool.append([start, end])
        self.locks.release(RESOURCE, _U64.pack(end))
        self._serve()
        if self.wants and not self.acquiring:
            self.acquiring = True
            self.locks.acquire(RESOURCE, Mode.EXCLUSIVE, self._granted)

    def _on_demand(self, resource: bytes) -> None:
        """Never fires in practice: the lock is released (cached) right after each grant, so a request from
        another node takes it at once without asking us to finish anything."""
        self.counters["demanded"] += 1

    def _on_recovery(self, event: NeedsRecovery) -> None:
        self.counters["recoveries"] += 1
