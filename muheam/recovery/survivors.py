"""Survivor-driven recovery of a dead node (DESIGN.md section 8), run inside each survivor's event loop.

When node X's lease expires, every survivor, *before* its lock manager drops X:

1. notes X's checkpoint pointer; X fenced itself before its lease could run out, so X's WAL from there is final.
   It is read (``deadwal.load``) when first needed.  From then on any chain whose ownership comes back marked
   invalid is rebuilt at once (``Repair.chain``: the shared file plus X's records for that chain, then written
   through), so blocks X did not hold stay usable throughout and blocks it held are usable as soon as someone
   asks for them;
2. tries to claim X's recovery in etcd (``claims/recover-<X>-<epoch>``, on its own lease).  The winner, the
   *recoverer*, reads X's WAL and:
   a. publishes ``recovery/<X>`` = recovering; logs a FENCE record (X's epoch, X's WAL end) and an ABORT for
      every X transaction without an outcome (changes or running at its checkpoint, or prepared to us), then
      announces every outcome in one ``done`` round (commits found in X's WAL keep their COMMIT's GLSN as
      commit timestamp); waiters on X's transactions wake;
   b. rebuilds every page X's records touch at once (``muheam.recovery.staging``), then takes every chain they touch
      exclusively (each invalid grant writes the chain's rebuilt pages, or rebuilds it chain by chain if the
      file changed since; a valid one comes from whoever rebuilt it first) and writes it through;
   c. records X's outcomes in ``xact/node-<X>``, moves X's checkpoint pointer to X's WAL end (so X, restarting,
      redoes nothing it no longer owns), and publishes ``recovered`` with durations.
   If the recoverer dies, its claim vanishes with its lease; at that expiry every survivor tries again for
   every dead node still not recovered, and the new winner repeats the (idempotent) work.
"""

from __future__ import annotations

import contextlib
import logging
import time
from functools import partial
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ContextManager

from locking.messages import Mode
from muheam import failpoints
from muheam.recovery import deadwal
from muheam.recovery import staging
from muheam.engine import rebuild, replay, statefiles, walrec
from muheam.errors import EtcdUnavailable
from muheam.cluster.ownership import chain_resource
from muheam.cluster.verdict import decide

if TYPE_CHECKING:
    from muheam.cluster.commits import CommitService
    from muheam.engine import Engine
    from muheam.membership import Lease, MembershipBackend
    from muheam.cluster.ownership import Ownership

log = logging.getLogger("muheam.survivors")

SWEEP_WINDOW = 4
"""Chains the recoverer asks for at once."""
SWEEP_BUDGET = 0.05
"""Seconds one call of the sweep may spend on chains whose locks are granted at once (a sole survivor's are: it
has nobody to ask) before it leaves the rest to the loop's next turn (``resume``)."""
CLAIM_RETRY = 1.0
CLAIM_RETRY_MAX = 8.0
"""Seconds between claims of a dead node nobody has recovered yet (doubling up to the max while etcd fails)."""


@dataclass
class _Job:
    dead: deadwal.DeadWal
    started: float
    committed: list[tuple[int, int]] = field(default_factory=list)
    aborted: list[int] = field(default_factory=list)
    pending: int = 0
    todo: list[tuple[int, int]] = field(default_factory=list)
    decided_at: float = 0.0
    known_committed: list[int] = field(default_factory=list)
    staged_ms: float = 0.0
    staged_pages: int = 0
    wanted: int = 0
    """Chain locks the sweep may ask for now (``SWEEP_WINDOW`` in flight; one more for each that completes)."""
    sweeping: bool = False


class Survivors:
    def __init__(self, node_id: int, cluster: str, engine: "Engine", ownership: "Ownership",
                 commits: "CommitService", backend: Callable[[], "MembershipBackend"], lease: "Lease",
                 on_outcome: Callable[[set[int]], None], system_id: int = 0,
                 observe: Callable[[int], None] = lambda lamport: None) -> None:
        """``observe``: moves the node's Lamport clock to at least a time (past a dead node's records)."""
        self.node_id = node_id
        self.cluster = cluster
        self.engine = engine
        self.ownership = ownership
        self.commits = commits
        self.backend = backend
        self.lease = lease
        self.on_outcome = on_outcome
        self.on_recovered: Callable[[int], None] = lambda _node: None
        """Called with a dead node's id once its recovery ended (here, or the ``recovered`` event, or found so when
        claiming): its outcome file is complete (a joiner it never answered reads it then)."""
        self.system_id = system_id
        self.observe = observe
        self.dead: dict[int, deadwal.DeadWal] = {}
        self.expired_at: dict[int, float] = {}
        self.prepared: dict[int, set[int]] = {}
        self.jobs: dict[int, _Job] = {}
        self.counters: dict[str, int] = {"recovered": 0, "repaired_chains": 0, "repair_changes": 0, "repair_us": 0,
                                         "repair_calls": 0, "staged_pages": 0, "staged_chains": 0, "recovery_us": 0}
        self.staging: staging.Staging | None = None
        """The recoverer's rebuild of every page the dead nodes touched (``muheam.recovery.staging``), during its sweep."""
        self._written: set[tuple[int, int]] = set()
        self.long_work: Callable[[], ContextManager[None]] = contextlib.nullcontext
        """Wraps the work whose length grows with the dead node's WAL (reading it, staging its pages): the node
        sets it to pause its loop watch (``node.fence.LoopWatch``), so that a long recovery turn costs what it did
        before the watch (the peers' silence timeout), not the recoverer's lease."""
        self._next_claim = 0.0
        self._claim_backoff = CLAIM_RETRY
        ownership.repair = self

    # -- membership events (called by the node loop) -----------------------------------------------------------
    def expired(self, node: int, epoch: int) -> int:
        """``node`` lost its lease: note where its redo starts (before the lock manager lets anyone take what it
        held, and before a recoverer moves the pointer).  Its WAL is read when first needed: by the recoverer
        once it wins the claim, by another survivor the first time it must rebuild one of its chains (most never
        do), so the survivors do not all read the same WAL at the same moment."""
        self.expired_at[node] = time.time()
        self.prepared[node] = set(self.commits.prepared_from.get(node, ()))
        self.dead[node] = deadwal.DeadWal(node, epoch, start_lsn=deadwal.checkpoint_lsn(self.engine.shared, node),
                                          loaded=False)
        # the dead node's clock may have run far ahead of ours (local work sends no message): everything logged
        # or granted on its behalf from now on, and every change to a page rebuilt from its WAL, must sort after
        # its last record (else a rebuilt page refuses our older GLSN and its rows stay blocked).  Returned as
        # the lock manager's floor; the clock observes it at once
        floor = replay.wal_tail_glsn(self.engine.shared, node, self.system_id)
        self.observe(floor >> 16)
        return floor

    def _loaded(self, dead: deadwal.DeadWal) -> deadwal.DeadWal:
        """``dead`` with its WAL read (a dead node's WAL stays final: it fenced itself before its lease ran out,
        and ``deadwal.load`` stops at a later incarnation's records and at a recoverer's fence)."""
        if dead.loaded:
            return dead
        t0 = time.monotonic()
        self.engine.reload_catalog()  # tables the dead node created and we never used: its chains need them
        with self.long_work():
            full = deadwal.load(self.engine.shared, dead.node, dead.epoch, self.system_id,
                                self.engine.tables_by_id.get, start_lsn=dead.start_lsn)
        full.read_ms = (time.monotonic() - t0) * 1000
        self.observe(full.last_glsn >> 16)
        if self.dead.get(dead.node) is dead:
            self.dead[dead.node] = full
        log.info("read %d bytes of node %d's WAL (epoch %d) in %.3f s (%d records, %d undecided transactions)",
                 full.bytes_read, dead.node, dead.epoch, time.monotonic() - t0, full.nrecords,
                 len(full.undecided()))
        return full

    def _deads(self) -> list[deadwal.DeadWal]:
        """Every dead node not yet recovered that left records to redo (read now if not yet)."""
        return [d for d in (self._loaded(d) for d in list(self.dead.values())) if d.nrecords]

    def recovered(self, node: int, epoch: int) -> None:
        dead = self.dead.get(node)
        if dead is not None and dead.epoch <= epoch and node not in self.jobs:
            del self.dead[node]
        if node not in self.jobs:
            self.on_recovered(node)

    def tick(self, now: float) -> None:
        """Periodic (the node loop, a few times a second): while a dead node is neither recovered nor being
        recovered here, try to claim it again.  A claim that failed on an etcd error, or whose holder died
        without its expiry reaching us, would otherwise leave the node unrecovered for ever (its chains marked,
        its prepared transactions undecided).  Backs off while etcd fails, so a loop turn rarely waits on it."""
        if now < self._next_claim or not any(node not in self.jobs for node in self.dead):
            return
        failed = self.claim_all()
        self._claim_backoff = min(CLAIM_RETRY_MAX, self._claim_backoff * 2) if failed else CLAIM_RETRY
        self._next_claim = now + self._claim_backoff

    def claim_all(self) -> bool:
        """Try to become the recoverer of every dead node nobody has finished (after any expiry, and from
        ``tick`` until it is recovered).  Returns whether etcd failed us for some node."""
        failed = False
        for node, dead in sorted(self.dead.items()):
            if node in self.jobs:
                continue
            try:
                if failpoints.hit("survivors.claim"):
                    raise EtcdUnavailable("failpoint survivors.claim")
                backend = self.backend()
                done = backend.get_recovery(self.cluster, node)
                if done and done.get("state") == "recovered" and int(done.get("epoch", 0)) >= dead.epoch:
                    del self.dead[node]
                    self.on_recovered(node)
                    continue
                holder = backend.claim(self.cluster, f"recover-{node}-{dead.epoch}",
                                       {"by": self.node_id, "at": time.time()}, self.lease)
            except EtcdUnavailable as e:
                log.warning("cannot claim the recovery of node %d now (%s); retrying", node, e)
                failed = True
                continue
            if holder is None:
                self._start(self._loaded(dead))
        return failed

    # -- Repair (called by Ownership on invalid grants) --------------------------------------------------------
    def chain(self, table_id: int, head: int) -> int:
        if not self.dead:
            return 0
        t0 = time.perf_counter()
        deads = self._deads()
        if not deads:
            return 0
        t = self.engine.tables_by_id.get(table_id)
        if t is None:
            return 0
        cache = self.engine.cache
        self.counters["repair_calls"] += 1
        written = None
        if self.staging is not None and self.staging.key == staging.key_of(deads):
            written = staging.write_chain(self.staging, cache, t, head)
        if written is not None:  # the rebuilt pages are in the shared file already
            changed = written
            self.counters["staged_chains"] += 1
            self._written.add((table_id, head))
        else:
            changed = deadwal.redo_chain(cache, t, head, deads)
            if changed:
                # the rebuilt pages go to the shared file now: identical on every node that rebuilds them, and
                # nobody else can hold the chain exclusively meanwhile
                cache.export(table_id, cache.chain_blocks(table_id, head, t.nbuckets))
        self._spent(deads, time.perf_counter() - t0)
        if changed:
            self.counters["repaired_chains"] += 1
            self.counters["repair_changes"] += changed
        return changed

    def _spent(self, deads: list[deadwal.DeadWal], seconds: float) -> None:
        """Time spent redoing, per dead node (shared evenly when several died together)."""
        self.counters["repair_us"] += int(seconds * 1e6)
        for d in deads:
            d.redo_ms += seconds * 1000 / len(deads)

    def extend(self, table_id: int) -> None:
        top = max((d.max_block.get(table_id, -1) for d in self._deads()), default=-1)
        if table_id not in self.engine.tables_by_id:
            return  # dropped (reading a dead node's WAL re-reads the catalog): its relation is gone
        self.engine.cache.grow(table_id, top + 1)  # grow never shrinks

    # -- the recoverer ---------------------------------------------------------------------------------------
    def _publish(self, dead: deadwal.DeadWal, state: str, **extra: Any) -> None:
        info = {"node_id": dead.node, "epoch": dead.epoch, "state": state, "by": self.node_id,
                "expired_at": self.expired_at.get(dead.node), **extra}
        try:
            self.backend().put_recovery(self.cluster, dead.node, info)
            # the history (muheam history): the expiry as the recoverer saw it, then the recovery's end
            kind = "expired" if state == "recovering" else state
            self.backend().add_history(self.cluster, {
                "kind": kind, "node_id": dead.node, "epoch": dead.epoch, "by": self.node_id,
                "at": info["expired_at"] if kind == "expired" and info.get("expired_at") else time.time(),
                **({k: extra[k] for k in ("duration_ms", "chains", "records", "aborted") if k in extra})})
        except EtcdUnavailable as e:
            log.warning("could not publish the recovery state of node %d (%s)", dead.node, e)

    def _start(self, dead: deadwal.DeadWal) -> None:
        dead.find_chains()
        job = _Job(dead, time.monotonic())
        self.jobs[dead.node] = job
        self._publish(dead, "recovering", started_at=time.time())
        log.info("recovering node %d (epoch %d): WAL %s..%#x", dead.node, dead.epoch, dead.start_lsn, dead.end_lsn)
        undecided = dead.undecided() | self.prepared.get(dead.node, set())
        verdict = decide(dead.committed, dead.aborted, dead.started, undecided, self.commits.table)
        job.committed = list(verdict.committed)
        job.known_committed = list(verdict.known_committed)
        if job.known_committed:
            # a COMMIT the cluster acknowledged (its outcome round reached every member) but that X's WAL no
            # longer holds: the record was in a damaged or torn tail.  The outcome is certain; it must outlive the
            # members' memory, so it goes into X's outcome file with the others (a later whole-cluster recovery
            # reads it)
            log.warning("node %d's WAL lacks the COMMIT of %d transaction(s) the cluster knows committed (%s); "
                        "its tail was damaged (%s): they stay committed", dead.node, len(job.known_committed),
                        job.known_committed[:10], dead.damage or dead.torn or "no damage reported")
        # an ABORT in some WAL for each, even if X announced the abort before it died (its engine had failed and
        # logged nothing): the merged history must show the end of every transaction others may have waited on
        job.aborted = list(verdict.aborted)
        self.engine.log_decided(job.aborted, walrec.Fence(dead.node, dead.epoch, dead.end_lsn, dead.last_glsn))
        statefiles.add_fence(self.engine.shared, dead.node, dead.epoch, dead.last_glsn, dead.end_lsn)
        self.ownership.settle()  # a CREATE or DROP TABLE it made but died before logging
        announce_committed, announce_aborted = list(verdict.announce_committed), list(verdict.announce_aborted)
        self.commits.finish(announce_committed, announce_aborted, lambda: self._decided(job))
        self.on_outcome({x for x, _ in announce_committed} | set(announce_aborted))

    def _decided(self, job: _Job) -> None:
        job.decided_at = time.monotonic()
        job.todo = sorted(job.dead.chains, reverse=True)
        job.pending = len(job.todo)
        if not job.todo:
            self._finish(job)
            return
        deads = self._deads()
        if deads:  # every page the sweep will need, rebuilt at once (each grant then writes its chain's pages)
            with self.long_work():
                failpoints.hit("survivors.stage")  # tests: a staging longer than the peers' silence timeout
                self.staging = staging.stage(self.engine.cache, self.engine.tables_by_id.get, deads)
            job.staged_ms, job.staged_pages = self.staging.ms, self.staging.pages
            self._spent(deads, self.staging.ms / 1000)
            self.counters["staged_pages"] += self.staging.pages
            log.info("rebuilt %d pages of the chains of node(s) %s in %.0f ms", self.staging.pages,
                     sorted(d.node for d in deads), self.staging.ms)
        for _ in range(SWEEP_WINDOW):
            self._next_chain(job)

    def _next_chain(self, job: _Job) -> None:
        """Take the next chain of the sweep.  A few at a time: each grant redoes one chain inside the event loop,
        and the loop must keep serving (and acknowledging the other survivors' commit rounds) in between."""
        job.wanted += 1
        self._sweep(job)

    def _sweep(self, job: _Job) -> None:
        """Ask for chains while the sweep may.  A grant can come at once, inside ``acquire`` (a sole survivor
        asks nobody): its callback only counts one more wanted and this loop takes the next chain.  Taking it
        from the callback made one nested call per chain, and a sole survivor of a node that held a few hundred
        chains died of a RecursionError mid-recovery.  Past ``SWEEP_BUDGET`` the rest waits for the next turn."""
        if job.sweeping:
            return
        job.sweeping = True
        deadline = time.monotonic() + SWEEP_BUDGET
        try:
            while job.todo and job.wanted > 0:
                if time.monotonic() >= deadline:
                    return  # ``resume``, called every loop turn, goes on
                table_id, head = job.todo.pop()
                resource = chain_resource(table_id, head)
                if self.ownership.held.get(resource) is Mode.EXCLUSIVE:
                    self._chain_done(job, table_id, head, more=False)
                    continue
                job.wanted -= 1
                self.ownership.acquire(resource, Mode.EXCLUSIVE, partial(self._chain_done, job, table_id, head))
        finally:
            job.sweeping = False

    @property
    def backlog(self) -> bool:
        """A sweep left chains it may ask for now to the next turn (its budget ran out)."""
        return any(job.todo and job.wanted > 0 for job in self.jobs.values())

    def resume(self) -> None:
        """Go on with sweeps that ran out of budget (the node loop calls it every turn while ``backlog``)."""
        for job in list(self.jobs.values()):
            if job.todo and job.wanted > 0:
                self._sweep(job)

    def _chain_done(self, job: _Job, table_id: int, head: int, more: bool = True) -> None:
        t = self.engine.tables_by_id.get(table_id)
        if (table_id, head) in self._written:  # just written whole from the staging, and held since
            self._written.discard((table_id, head))
        elif t is not None:
            cache = self.engine.cache
            cache.export(table_id, cache.chain_blocks(table_id, head, t.nbuckets))
        job.pending -= 1
        if job.pending == 0:
            self._finish(job)
        elif more:
            self._next_chain(job)

    def _finish(self, job: _Job) -> None:
        dead, shared = job.dead, self.engine.shared
        self.engine.cache.sync()
        committed, aborted = statefiles.read_xact(shared, dead.node)
        committed |= set(dead.committed) | set(job.known_committed)
        aborted |= set(job.aborted)
        statefiles.write_xact(shared, dead.node, committed, aborted - committed)
        statefiles.write_checkpoint(shared, dead.node, statefiles.CheckpointPointer(dead.end_lsn, dead.last_glsn))
        now = time.monotonic()
        duration_ms = (now - job.started) * 1000
        self._publish(dead, "recovered", finished_at=time.time(), duration_ms=round(duration_ms, 1),
                      decided_ms=round((job.decided_at - job.started) * 1000, 1), chains=len(dead.chains),
                      records=dead.nrecords, aborted=len(job.aborted), committed=len(job.committed),
                      bytes=dead.bytes_read, read_ms=round(dead.read_ms, 1), redo_ms=round(dead.redo_ms, 1),
                      staged_ms=round(job.staged_ms, 1), staged_pages=job.staged_pages, compiled=rebuild.compiled(),
                      end_lsn=dead.end_lsn,
                      fence_glsn=dead.last_glsn, damage=dead.damage or None, torn=dead.torn or None,
                      known_committed=len(job.known_committed))
        del self.jobs[dead.node]
        self.dead.pop(dead.node, None)
        self.on_recovered(dead.node)
        if not self.jobs:
            self.staging = None
            self._written.clear()
        self.counters["recovered"] += 1
        self.counters["recovery_us"] += int(duration_ms * 1000)
        log.info("recovered node %d (epoch %d) in %.0f ms: %d chains, %d records, %d aborted, %d committed",
                 dead.node, dead.epoch, duration_ms, len(dead.chains), dead.nrecords, len(job.aborted),
                 len(job.committed))

    def stats(self) -> dict[str, int]:
        return {**self.counters, "dead": len(self.dead), "recovering": len(self.jobs)}
