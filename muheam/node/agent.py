"""The node agent: joins the cluster under a fresh epoch, keeps its lease, serves peers and clients.

Lifecycle: verify the shared directory belongs to the cluster registered in etcd -> refuse a node id that a live
lease holds -> bind the peer and client ports -> grant a lease and join (epoch bump + member key, one etcd
transaction) -> run the event loop until stopped or fenced.  The loop owns every ZeroMQ socket; the lease keeper
and the membership watcher are threads that only feed it.

Stop modes follow ``pg_ctl``: ``smart`` waits for clients to finish, ``fast`` aborts them, ``immediate`` quits
without a clean shutdown.  All three mark the member ``stopping`` and revoke the lease, so peers learn at once
(a crash is the only way to leave by lease expiry).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gc
import logging
import os
import queue
import signal
import socket
import threading
import time
from typing import Any, Iterator, Sequence

import zmq

from locking.clock import LamportClock
from muheam.node import workmem
from muheam.engine import rebuild
from muheam.ops import control
from muheam.config import Config
from muheam.engine import Engine, EngineConfig
from muheam.errors import ClusterStateError, EtcdUnavailable, Fenced, MuheamError, NodeIdInUse
from muheam.cluster.commits import CommitService
from muheam.engine import statefiles
from muheam.engine.errors import EngineStopped, StorageFailed
from muheam.engine.flusher import WalFlusher
from muheam.engine.replay import wal_tails_lamport
from muheam.node import benchops, departures, obsfeed, reload, replicas, startup
from muheam.node.peerwatch import PeerWatch
from muheam.ops.procs import process_stamp
from muheam.recovery.survivors import Survivors
from muheam.cluster.ownership import Ownership
from muheam.cluster.scopes import ScopeWaits
from muheam.cluster.reads import ConsistentReads
from muheam.cluster.sessions import Cluster, Sessions
from muheam.cluster.txstate import TxTable
from muheam.cluster.xidstore import cluster_floor
from walmerge import pack_glsn
from muheam import failpoints
from muheam.node.fence import Fence, LeaseKeeper, LoopWatch
from muheam.membership import MEMBER_STATES, Lease, Member, MemberEvent, MembershipBackend, MemberWatch, connect
from muheam.states import NodeState, StopMode
from muheam.ops.procs import STOP_SIGNALS
from muheam.cluster.locks import LockService
from muheam.net.clientport import ClientPort, Deferred, RequestError
from muheam.cluster.xids import XidService
from muheam.net.mesh import Mesh
from muheam.security.setup import NodeSecurity
from muheam.sql.server import SqlServer

log = logging.getLogger("muheam.node")

EXIT_FENCED = 3
HEARTBEAT_IDLE = 0.25
"""Seconds without a WAL record after which the node logs a HEARTBEAT (follow-mode merges wait for idle nodes)."""
LONG_WORK_BUSY = 30.0
"""Seconds of silence the node announces to its peers before healthy work that blocks its loop (``_long_work``:
reading and staging a dead node's WAL, seconds for the largest a checkpoint leaves, 256 MiB; writing a new table's
file, up to 128 MiB); the next beat after the work ends it.  Work that runs longer ends in the peers' partition
decision, as any silence."""


def _freeze_heap() -> None:
    """Take every object alive now (modules, and numba's once its kernels are loaded: about 110k) out of the
    cyclic garbage collector's full collections, which walked them all: about 40 ms each here, often enough to
    land in a commit round or in the redo of a dead peer's WAL (``gc.freeze``; what is garbage now is
    collected first)."""
    gc.collect()
    gc.freeze()


class NodeAgent:
    def __init__(self, cfg: Config, node_id: int) -> None:
        self.cfg = cfg
        self.node_id = node_id
        self.node_cfg = cfg.node(node_id)
        self.clock = LamportClock(node_id)
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.wake_endpoint = f"inproc://wake-{id(self)}"
        self.events: queue.SimpleQueue[MemberEvent] = queue.SimpleQueue()
        self._held: collections.deque[MemberEvent] = collections.deque()
        """Events taken from ``events`` and not applied yet: they wait behind ``_fencing``."""
        self._fencing: tuple[threading.Thread, MemberEvent] | None = None
        """A crashed peer's fence running in a thread, and its event (finished by ``_fenced``)."""
        self.stop_mode: StopMode | None = None
        self.state = NodeState.STARTING
        self.members: dict[int, Member] = {}
        self.backend: MembershipBackend | None = None
        self.lease: Lease | None = None
        self.fence: Fence | None = None
        self.keeper: LeaseKeeper | None = None
        self.watch = LoopWatch(cfg.lease_ttl / 2)
        """The loop's turns, as the lease keeper sees them (``fence.LoopWatch``)."""
        self.member: Member | None = None
        self.mesh: Mesh | None = None
        self.port: ClientPort | None = None
        self.security: NodeSecurity | None = None
        self.sql: SqlServer | None = None
        self._stopping = threading.Event()
        self.locks: LockService | None = None
        self.xids: XidService | None = None
        self.xid_batch = (16, 1 << 16)  # ranges: a begin on each node must not pull the xid lock over
        self.accept_data_loss = False
        self.engine: Engine | None = None
        self.sessions: Sessions | None = None
        self.scopes: ScopeWaits | None = None
        self.commits: CommitService | None = None
        self.ownership: Ownership | None = None
        self.reads: ConsistentReads | None = None
        self._decided: set[int] = set()
        self.survivors: Survivors | None = None
        self.peerwatch: PeerWatch | None = None
        self.obs: Any = None  # the metrics and health HTTP server (muheam.node.obsfeed), if configured
        self.wal_start_lsn = 0

    # startup ------------------------------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.cfg
        self.backend = backend = connect(cfg.etcd_endpoints, timeout=2.0)
        registered = backend.get_cluster(cfg.cluster_name)
        if registered is None:
            raise ClusterStateError(
                f"cluster {cfg.cluster_name!r} is not registered in etcd at {', '.join(cfg.etcd_endpoints)}; "
                "run 'muheam cluster init' first or fix cluster_name/etcd_endpoints"
            )
        control.verify_member_dir(cfg.shared_dir, registered)
        startup.refuse_duplicate(cfg, self.node_id, backend)
        try:
            if cfg.security == "curve":
                self.security = sec = NodeSecurity.start(cfg, self.node_id, self.ctx)
                self.mesh = Mesh(self.ctx, self.node_id, self.clock, self.node_cfg.peer_endpoint, sec.peer,
                                 sec.to_peer, sec.guard.peer_of)
                self.port = ClientPort(self.ctx, self.node_cfg.client_endpoint, sec.client)
            else:
                self.mesh = Mesh(self.ctx, self.node_id, self.clock, self.node_cfg.peer_endpoint)
                self.port = ClientPort(self.ctx, self.node_cfg.client_endpoint)
            if self.node_cfg.sql_endpoint:
                # bound now (so a taken port fails the start), served once the sessions exist
                self.sql = SqlServer(self.node_cfg.sql_endpoint, self.port.ops, cfg.shared_dir, self.node_id,
                                     cfg.sql_auth, self._long_work)  # (a large statement's parse and compile)
            self.obs = obsfeed.open_server(self)
        except (zmq.ZMQError, OSError) as exc:
            raise ClusterStateError(
                f"node {self.node_id} cannot listen on its endpoints ({exc}); another process holds the port — "
                "stop it or change peer_endpoint/client_endpoint/sql_endpoint"
            ) from None
        self.port.register("ping", lambda req: {"node_id": self.node_id, "epoch": self.mesh_epoch})
        self.port.register("status", lambda req: self.status())
        self.mesh.on("hello", lambda msg: None)  # carries only its stamp: the clock merge is the point

        keeper_backend = connect(cfg.etcd_endpoints, timeout=min(1.0, cfg.lease_ttl / 4))
        granted_at = time.monotonic()
        self.lease = keeper_backend.grant_lease(cfg.lease_ttl)
        self.fence = Fence(cfg.lease_ttl, granted_at)
        proposal = Member(
            node_id=self.node_id, host=self.node_cfg.host or socket.gethostname(),
            peer_endpoint=self.node_cfg.peer_endpoint, client_endpoint=self.node_cfg.client_endpoint,
            epoch=0, pid=os.getpid(), state=NodeState.STARTING, started_at=time.time(),
            sql_endpoint=self.node_cfg.sql_endpoint, stamp=process_stamp(os.getpid()) or "",
        )
        try:
            self.member = backend.join(cfg.cluster_name, proposal, self.lease)
        except NodeIdInUse:
            self.lease.revoke()
            raise
        self.mesh.epoch = self.member.epoch
        # the loop reads the fence deadline every turn; the keeper renews only while the loop turns
        self.keeper = LeaseKeeper(self.lease, self.fence, self.watch)
        self.keeper.start()

        snapshot, revision = backend.members(cfg.cluster_name)
        # a member that is merely stopping still counts until its lease ends: it may hold locks and run rounds
        peers = {m.node_id: m.epoch for m in snapshot
                 if m.node_id != self.node_id and m.state in MEMBER_STATES}
        if not any(m.state == NodeState.RUNNING for m in snapshot if m.node_id in peers):
            rep = startup.redo_whole_cluster(cfg, self.node_id, backend, self.fence, self.accept_data_loss)
            self.clock.observe(rep.max_lamport)
            self._decided = {x for xids in rep.no_outcome.values() for x in xids}
        else:
            try:
                startup.require_live_directory(cfg, self.node_id, backend, self.fence,
                                               {m.node_id for m in snapshot if m.node_id in peers
                                                and m.state == NodeState.RUNNING}, LONG_WORK_BUSY)
            except ClusterStateError:
                self._leave_unstarted()
                raise
            startup.await_own_recovery(cfg, self.node_id, self.fence)
            startup.await_pending_recoveries(cfg, self.node_id, backend, self.fence)
            # the records our own recovery writes (its checkpoint, aborts) come before any peer message: their
            # GLSNs must still be above everything the running nodes have logged
            self.clock.observe(wal_tails_lamport(cfg.shared_dir, EngineConfig().system_id))
        for member in snapshot:
            if member.node_id in peers:
                self.members[member.node_id] = member
                self.mesh.connect(member.node_id, member.epoch, member.peer_endpoint)
        # every XID below the floor was handed out before any live node started: decided, none running
        table = TxTable(cluster_floor(cfg.shared_dir) if not peers else 3)
        self.locks = LockService(self.mesh, self.clock, self.member.epoch, peers)
        self.xids = XidService(self.locks, cfg.shared_dir, self.node_id, self.fence.check,
                               min_batch=self.xid_batch[0], max_batch=self.xid_batch[1])
        self.port.register("xid", self._op_xid)
        self.engine = Engine.open(cfg.shared_dir, self.node_id, lamport=lambda: self.clock.tick().lamport,
                                  seed_clock=self.clock.observe, accept_data_loss=self.accept_data_loss,
                                  config=EngineConfig(epoch=self.member.epoch))
        if self._decided:
            self.engine.log_decided(self._decided)
        if self.engine.recovery.data_loss:
            log.warning("started after accepting data loss: %s", self.engine.recovery.data_loss)
        self.engine.cache.forget_all()  # recovery ended with a checkpoint; we own no block yet
        self.wal_start_lsn = self.engine.wal.end_lsn
        table.load(*statefiles.read_all_xact(cfg.shared_dir))
        table.load(self.engine.committed, self.engine.aborted)
        self.ownership = Ownership(self.locks, self.engine)
        self.commits = CommitService(self.mesh, table, lambda: list(self.members),
                                     lambda ended: self.sessions.on_outcome(ended) if self.sessions else None)
        self.commits.sync(peers)
        self.reads = ConsistentReads(self.mesh, self.locks, self.ownership, self.engine)
        cluster = Cluster(table, self.commits, self.ownership,
                          stamp=lambda: pack_glsn(self.clock.tick().lamport, self.node_id),
                          now_glsn=lambda: pack_glsn(self.clock.time, self.node_id), reads=self.reads)
        self.sessions = Sessions(self.engine, self.xids, self.port, self.fence.check, cluster,
                                 lock_timeout=cfg.lock_timeout, idle_timeout=cfg.idle_in_transaction_timeout,
                                 flusher=WalFlusher(self.engine.flush_wal) if cfg.wal_flush_thread else None,
                                 lazy_outcome=cfg.lazy_outcome)
        self.scopes = replicas.wire(self.sessions, self.port, cfg.commit_scope, lambda: backend, cfg.cluster_name)
        self.survivors = Survivors(self.node_id, cfg.cluster_name, self.engine, self.ownership, self.commits,
                                   lambda: backend, self.lease, self.sessions.on_outcome,
                                   EngineConfig().system_id, observe=self.clock.observe)
        commits, on_outcome = self.commits, self.sessions.on_outcome
        self.survivors.long_work = self._long_work
        self.engine.long_work = self._long_work  # a new table's relation file
        self.survivors.on_recovered = lambda node: departures.sync_peer_recovered(
            cfg.shared_dir, node, commits, pack_glsn(self.clock.tick().lamport, self.node_id), on_outcome)
        self.port.register("lock_cycle", lambda req: benchops.lock_cycle(self.locks, req))
        self.port.register("reload", lambda req: reload.apply(self))
        self.peerwatch = PeerWatch(self.node_id, cfg.cluster_name, self.mesh, lambda: backend, self.lease,
                                   cfg.lease_ttl)
        for peer, m in self.members.items():
            if m.state == "running":  # a node beats once its loop runs: listen from then on
                self.peerwatch.watch(peer)
        threading.Thread(target=self._watch, args=(revision + 1, snapshot), name="membership-watch",
                         daemon=True).start()
        self._set_state(NodeState.RUNNING)
        obsfeed.publish(self)
        # the compiled WAL walk and page redo make reading and redoing a dead peer's WAL several times faster;
        # numba's start-up (about half a second, ~100 MB) is paid now, in the background, not when a peer dies
        # (MUHEAM_NO_JIT=1: off)
        rebuild.warm_up_in_background(then=_freeze_heap)
        workmem.reserve()
        try:  # the first real rebuild of a dead peer's pages should not pay numpy's first-call costs
            rebuild.warm_up()
        except Exception as e:  # noqa: BLE001 - a warm-up only; the recovery path reports its own errors
            log.warning("could not warm up the redo of a dead peer's pages (%s: %s)", type(e).__name__, e)
        _freeze_heap()
        obsfeed.publish(self)
        log.info("node %d running: epoch %d, peer %s, client %s, lease %x (TTL %d s)", self.node_id,
                 self.member.epoch, self.node_cfg.peer_endpoint, self.node_cfg.client_endpoint, self.lease.id,
                 cfg.lease_ttl)

    @property
    def mesh_epoch(self) -> int:
        return self.member.epoch if self.member else 0

    def _leave_unstarted(self) -> None:
        """A start refused after joining, before this node wrote or took anything: leave as a clean stop does
        (``stopping``, then the lease revoked), so the peers see it leave rather than expire and recover it."""
        assert self.keeper is not None and self.lease is not None
        self.keeper.stop()
        try:
            self._set_state(NodeState.STOPPING, StopMode.FAST)
            self.lease.revoke()
        except (EtcdUnavailable, Fenced) as exc:
            log.warning("could not leave the cluster cleanly (%s); the peers will see the lease expire", exc)

    def _set_state(self, state: NodeState, stop_mode: StopMode | None = None) -> None:
        assert self.backend and self.member and self.lease and self.fence
        self.fence.check()
        self.state = state
        self.member = dataclasses.replace(self.member, state=state, stop_mode=stop_mode or "")
        self.backend.update_member(self.cfg.cluster_name, self.member, self.lease)

    # membership ---------------------------------------------------------------------------------------------
    def _watch(self, revision: int, snapshot: Sequence[Member] = ()) -> None:
        """Feed member events to the loop; after losing etcd resume from the next revision, missing nothing.  If
        etcd compacted that revision meanwhile, ``MemberWatch`` turns a fresh listing, against ``snapshot`` (the
        members at ``revision - 1``) and the events since, into the events missed instead of retrying for ever."""
        wake = self._wake_socket()
        backend: MembershipBackend | None = None
        watch = MemberWatch(self.cfg.cluster_name, snapshot, revision - 1)
        while not self._stopping.is_set():
            try:
                backend = backend or connect(self.cfg.etcd_endpoints, timeout=2.0)
                for event in watch.events(backend):
                    if self._stopping.is_set():
                        break
                    if event is not None:
                        self.events.put(event)
                        wake.send(b"", zmq.NOBLOCK)
            except EtcdUnavailable as exc:
                log.warning("membership watch lost (%s); resuming from revision %d", exc, watch.revision + 1)
                self._stopping.wait(0.5)
        wake.close(0)

    def _apply(self, event: MemberEvent) -> None:
        assert self.mesh is not None
        member = event.member
        if member.node_id == self.node_id:
            if event.kind in ("left", "expired") and self.member is not None and member.epoch == self.member.epoch \
                    and self.fence is not None and self.stop_mode is None:
                # our member key is gone while we run: our peers removed us (we were cut off from them), or the
                # lease ended; either way others now recover our work, so we must stop touching anything at once
                self.fence.lost(f"removed from the cluster at etcd revision {event.revision} (cut off from its "
                                f"peers, or its lease ended)")
            return
        known = self.members.get(member.node_id)
        if event.kind in ("joined", "updated") and member.state in (NodeState.STARTING, NodeState.RUNNING):
            if known is not None and known.epoch < member.epoch:
                self._remove(known)  # a restart whose expiry we have not seen yet; its recovery ended before it
                if self.survivors is not None:  # restarted (a restart waits for it): its outcome file is complete
                    self.survivors.on_recovered(member.node_id)
            self.members[member.node_id] = member
            self.mesh.connect(member.node_id, member.epoch, member.peer_endpoint)
            if self.peerwatch is not None and member.state == "running":
                # listened to from when it runs, not from its join: its start (redo, warm-ups) can outlast the
                # silence timeout, and a node still starting sends no beat yet
                self.peerwatch.watch(member.node_id)
            if self.locks is not None:
                self.locks.member_added(member.node_id, member.epoch)
            if self.commits is not None:
                self.commits.member_added(member.node_id)
        elif event.kind in ("left", "expired"):
            # only the lease's end removes a member: until then it may still hold locks (I6)
            if known is not None and known.epoch <= member.epoch:
                crashed = event.kind == "expired" or member.stop_mode == StopMode.IMMEDIATE
                if crashed and self.survivors is not None:
                    assert self.member is not None  # before its WAL is read and before anyone takes its chains
                    # a fence agent may take many seconds (a killed peer stuck in the kernel up to 10 s): it runs
                    # in a thread while the loop turns on (beats, its own fence, clients), and the rest of this
                    # event, and every later one, waits for it (``_take_events``)
                    if self.peerwatch is not None:
                        self.peerwatch.forget(member.node_id)  # gone from etcd: not a silent peer to decide about
                    fencing = threading.Thread(target=self._fence_peer, name=f"fence-{member.node_id}",
                                               args=(member, self.member.host), daemon=True)
                    fencing.start()
                    self._fencing = (fencing, event)
                    return
                if not crashed:
                    if self.commits is not None:  # before its sync and rounds stop counting
                        departures.learn_outcomes(self.cfg.shared_dir, member.node_id, self.commits.table,
                                                  pack_glsn(self.clock.tick().lamport, self.node_id),
                                                  self.sessions.on_outcome if self.sessions else None)
                self._remove(known, outcomes_known=not crashed)  # (crashed: no survivors here to recover it)
            log.info("node %d (epoch %d) %s at revision %d", member.node_id, member.epoch, event.kind,
                     event.revision)

        elif event.kind == "recovered" and self.survivors is not None:
            self.survivors.recovered(member.node_id, member.epoch)

    def _fence_peer(self, member: Member, our_host: str) -> None:
        """The fencing thread: fence, then wake the loop so that the departure goes on at once."""
        try:
            departures.fence_peer(member, our_host, self.cfg.fence_command)
        finally:
            self._wake_loop()

    def _wake_socket(self) -> zmq.Socket[Any]:
        """A socket that ends the loop's poll (``send(b"", zmq.NOBLOCK)``), for a thread other than the loop's:
        each thread has its own (ZeroMQ sockets are not shared between threads)."""
        wake: zmq.Socket[Any] = self.ctx.socket(zmq.PUSH)
        wake.connect(self.wake_endpoint)
        return wake

    def _wake_loop(self) -> None:
        """From another thread, once: end the loop's poll now."""
        try:
            wake = self._wake_socket()
        except zmq.ZMQError:
            return  # the node is stopping; the loop has gone (and it polls at least every 100 ms anyway)
        try:
            wake.send(b"", zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        finally:
            wake.close(0)

    def _fenced(self, event: MemberEvent) -> None:
        """The rest of a crashed member's departure, once it cannot write any more (its fence is done)."""
        assert self.survivors is not None
        member = event.member
        known = self.members.get(member.node_id)
        if known is not None:
            floor = self.survivors.expired(member.node_id, member.epoch)
            self._remove(known, floor, outcomes_known=False)
            self.survivors.claim_all()
        log.info("node %d (epoch %d) %s at revision %d", member.node_id, member.epoch, event.kind, event.revision)

    def _take_events(self) -> None:
        """Apply the membership events in order, except behind a peer's fence still running (``_apply``): what
        follows it waits, so every event still sees the members as etcd reported them, one after the other.
        Our own removal does not wait (it must fence this node at once)."""
        while not self.events.empty():  # (this loop is the only consumer; no Empty raised per turn)
            self._held.append(self.events.get_nowait())
        if self._fencing is not None:
            thread, event = self._fencing
            if thread.is_alive():
                for own in [e for e in self._held if e.member.node_id == self.node_id]:
                    self._held.remove(own)
                    self._apply(own)
                return
            self._fencing = None
            self._fenced(event)
        while self._held and self._fencing is None:
            self._apply(self._held.popleft())

    def _remove(self, member: Member, floor_glsn: int = 0, outcomes_known: bool = False) -> None:
        assert self.mesh is not None
        self.members.pop(member.node_id, None)
        if self.peerwatch is not None:
            self.peerwatch.forget(member.node_id)
        self.mesh.drop(member.node_id, member.epoch)
        if self.locks is not None:
            self.locks.member_removed(member.node_id, member.epoch, floor_glsn)
        if self.commits is not None:
            self.commits.member_removed(member.node_id, outcomes_known)

    def _op_xid(self, request: dict[str, Any]) -> Deferred:
        """Allocate ``count`` global XIDs; the reply lists ranges ``[first, count]`` and the lock wait in us."""
        assert self.xids is not None and self.fence is not None
        count = request.get("count", 1)
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 1_000_000:
            raise RequestError("bad_request", "count must be an integer in 1..1000000")
        self.fence.check()
        reply = Deferred()
        self.xids.allocate(count, lambda ranges, waited_us: reply.resolve({"ranges": ranges, "wait_us": waited_us}))
        return reply

    @contextlib.contextmanager
    def _long_work(self) -> Iterator[None]:
        """Work in the loop whose length grows with a dead node's WAL (reading it, staging its pages), with a new
        table's size (its relation file, up to 128 MiB) or with a SQL statement's text (parsing and compiling it,
        from 32 KiB to at most 1 MiB): healthy, so the loop watch is paused (the lease is kept),
        and the peers are told first (``PeerWatch.busy``), so they do not take the silence for a cut and remove
        this node or themselves (a 2-node tie)."""
        if self.peerwatch is not None:
            self.peerwatch.busy(LONG_WORK_BUSY)
        try:
            with self.watch.paused():
                yield
        finally:
            if self.peerwatch is not None:
                self.peerwatch.listening()

    # the loop -----------------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        assert self.mesh and self.port and self.fence
        return {
            "node_id": self.node_id, "epoch": self.mesh_epoch, "state": self.state, "pid": os.getpid(),
            "lamport": self.clock.time, "peers": sorted(self.mesh.peers), "links": self.mesh.link_state(),
            "fence_remaining_s": round(self.fence.remaining(), 3), "security": self.cfg.security,
            "counters": {"peer": dict(self.mesh.counters), "client": dict(self.port.counters),
                         "locks": self.locks.stats() if self.locks else {},
                         "xids": dict(self.xids.counters) if self.xids else {},
                         "sessions": self.sessions.stats() if self.sessions else {},
                         "ownership": self.ownership.stats() if self.ownership else {},
                         "reads": self.reads.stats() if self.reads else {},
                         "commits": self.commits.stats() if self.commits else {},
                         "survivors": self.survivors.stats() if self.survivors else {},
                         "peerwatch": dict(self.peerwatch.counters) if self.peerwatch else {},
                         "sql": self.sql.stats() if self.sql else {},
                         "scopes": self.scopes.status() if self.scopes else {},
                         "security": dict(self.security.guard.counters) if self.security else {},
                         "wal": self._wal_stats()},
        }

    def _wal_stats(self) -> dict[str, int]:
        if self.engine is None:
            return {}
        wal = self.engine.wal
        return {"end_lsn": wal.end_lsn, "flushed_lsn": wal.flushed_lsn, "fsyncs": wal.fsync_count,
                "flushes": wal.flush_count, "records": wal.records_appended}

    def run(self) -> int:
        """Serve until stopped (exit 0) or fenced (exit 3)."""
        assert self.mesh and self.port and self.fence
        wake: zmq.Socket[Any] = self.ctx.socket(zmq.PULL)
        wake.bind(self.wake_endpoint)
        poller = zmq.Poller()
        for sock in (self.mesh.router, self.mesh.monitor, self.port.sock, self.port.monitor, wake):
            poller.register(sock, zmq.POLLIN)
        self.take_stop_signals()
        # a stop signal must wake the poll at once, not at its next timeout: peers learn of a stop sooner
        sig_r, sig_w = socket.socketpair()
        sig_r.setblocking(False)
        sig_w.setblocking(False)
        signal.set_wakeup_fd(sig_w.fileno(), warn_on_full_buffer=False)
        poller.register(sig_r.fileno(), zmq.POLLIN)
        if self.sql is not None:
            self.sql.attach(poller)  # its listening socket, and each connection as it is accepted
        if self.sessions is not None and self.sessions.flusher is not None:
            poller.register(self.sessions.flusher.fd, zmq.POLLIN)  # commits made durable: answer them
        if self.ownership is not None:
            self.ownership.settle()  # a CREATE or DROP TABLE whose node stopped before logging it
        next_tick = 0.0
        try:
            while True:
                self.watch.turn()
                self.mesh.uncork()  # (a turn left early still sends what it held)
                if self.fence.fenced:
                    return self._self_fence()
                if self.stop_mode is not None:
                    self.watch.pause()  # the shutdown's own steps keep the lease to the end
                    return self._shutdown(self.stop_mode)
                ready = dict(poller.poll(self._poll_ms()))
                # one frame per peer per turn for everything this turn sends (muheam.net.mesh: bundling)
                self.mesh.cork()
                self._take_events()
                if self.fence.fenced:
                    return self._self_fence()
                if self.sql is not None:
                    self.sql.begin_turn()  # statements parked by the last turn's budget go first
                if wake in ready:
                    while wake.poll(0):
                        wake.recv()
                if sig_r.fileno() in ready:
                    try:
                        sig_r.recv(512)
                    except BlockingIOError:
                        pass
                if self.mesh.router in ready:
                    self.mesh.receive_ready()
                    if self.locks is not None:
                        self.locks.flush()
                if self.port.sock in ready:
                    self.port.receive_ready()
                if self.sql is not None:
                    self.sql.handle(ready)
                if self.engine is not None and self.engine.failed is not None and self.stop_mode is None:
                    log.critical("node %d: its engine stopped (%s); stopping at once so that the other nodes "
                                 "recover its work (fix the cause, e.g. free space on the WAL's file system, and "
                                 "start it again)", self.node_id, self.engine.failed)
                    self.stop_mode = StopMode.IMMEDIATE
                    # a COMMIT among these may be durable already (waiting for its flush report or for a
                    # replica under a commit scope): the answer must not promise it was not committed
                    self.port.answer_all("engine_stopped", f"node {self.node_id} stopped: its engine cannot "
                                         f"write ({self.engine.failed}). A transaction whose COMMIT you sent may "
                                         "or may not be committed: look the change up on another node before "
                                         "retrying it; any other transaction here was not committed")
                if self.survivors is not None and self.survivors.backlog:
                    self.survivors.resume()  # a recovery sweep whose chains came faster than one turn's budget
                if self.sessions is not None:
                    self.sessions.pump()
                    if self.locks is not None:
                        self.locks.flush()
                    now = time.monotonic()
                    if now >= next_tick:
                        next_tick = now + 0.2
                        try:
                            self.sessions.tick(now)
                            if self.reads is not None:
                                self.reads.tick(now)
                            if self.scopes is not None:
                                self.scopes.tick(now)
                            if self.survivors is not None:
                                self.survivors.tick(now)
                            if self.peerwatch is not None:
                                self.peerwatch.tick(now)
                            if self.sql is not None:
                                self.sql.tick(now)
                            if self.engine is not None:
                                self.engine.heartbeat(HEARTBEAT_IDLE, now)
                            obsfeed.publish(self)
                        except (StorageFailed, EngineStopped):
                            pass  # the engine stopped; the next turn stops the node (engine.failed)
                # after the sessions and locks had their say: acknowledgements ride on what they just sent
                self.mesh.uncork()
                self.mesh.tick(time.monotonic())
                if self.mesh.monitor in ready:
                    self.mesh.drain_monitor()
                if self.port.monitor in ready:
                    self.port.drain_monitor()
        finally:
            # (the watch stays armed if an exception left the loop: the lease then runs out and the others
            # recover this node, rather than it holding a lease while serving nobody)
            signal.set_wakeup_fd(-1)
            sig_r.close()
            sig_w.close()
            wake.close(0)

    def _poll_ms(self) -> int:
        """How long the loop may sleep: 100 ms, or less when the mesh has an acknowledgement or retransmission
        due sooner (a late acknowledgement would make the peer resend for nothing); not at all while a recovery
        sweep or a SQL statement has work left over from the last turn's budget."""
        assert self.mesh is not None
        if (self.survivors is not None and self.survivors.backlog) or (self.sql is not None and self.sql.pending):
            return 0
        now = time.monotonic()
        due = self.mesh.next_timer(now)
        if due is None:
            return 100
        return max(0, min(100, int((due - now) * 1000) + 1))

    def take_stop_signals(self) -> None:
        """From the process's start, not only from ``run``: a stop signal sent as soon as the member shows
        ``running`` in etcd (before ``start`` returns) was otherwise lost where the parent had the signal ignored
        (a SIGINT ignored is inherited across exec), or raised ``KeyboardInterrupt`` at some random point of the
        start.  Taken early, it is only noted, and ``run``'s first turn stops the node in that mode."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        mode = STOP_SIGNALS.get(signal.Signals(signum), StopMode.FAST)
        # a second, harsher signal upgrades the mode, as with pg_ctl
        if self.stop_mode is None or mode.harshness > self.stop_mode.harshness:
            self.stop_mode = mode

    def _self_fence(self) -> int:
        assert self.fence is not None
        self.state = NodeState.FENCED
        self._close_ports()
        log.critical("SELF-FENCING node %d epoch %d: %s; stopped serving and touching the shared directory; "
                     "exiting with code %d — restart the node once etcd is reachable", self.node_id,
                     self.mesh_epoch, self.fence.reason, EXIT_FENCED)
        return EXIT_FENCED

    def _shutdown(self, mode: StopMode) -> int:
        assert self.lease and self.keeper
        log.info("node %d stopping (%s)", self.node_id, mode)
        try:
            self._set_state(NodeState.STOPPING, mode)
        except (EtcdUnavailable, Fenced) as exc:
            log.warning("could not mark node stopping in etcd: %s", exc)
        failed = self.engine.failed if self.engine is not None else None
        if self.sql is not None:  # SQL clients hear why before their transactions are rolled back
            if failed is not None:
                self.sql.terminate(f"terminating connection because node {self.node_id}'s engine stopped ({failed}); "
                                   "the other nodes recover its work: connect to another node", "57P02")
            else:
                self.sql.terminate("terminating connection due to immediate shutdown command"
                                   if mode == StopMode.IMMEDIATE else "terminating connection due to administrator command")
        if mode != StopMode.IMMEDIATE:
            self._finish_rounds()
        self._close_ports()
        if self.sessions is not None and self.sessions.flusher is not None:
            self.sessions.flusher.close()
        if self.engine is not None and mode != StopMode.IMMEDIATE:
            try:
                self.fence.check() if self.fence else None
                self.engine.close()  # aborts what is running and takes the shutdown checkpoint
            except MuheamError as exc:
                log.error("clean shutdown of the engine failed (%s); recovery will redo the WAL at next start", exc)
        self.keeper.stop()
        try:
            self.lease.revoke()
        except EtcdUnavailable as exc:
            log.warning("could not revoke lease %x (%s); peers will see it expire after the TTL", self.lease.id, exc)
        try:  # after the revoke: the peers learn of the stop first (muheam history)
            assert self.backend is not None
            self.backend.add_history(self.cfg.cluster_name, {"kind": "left", "node_id": self.node_id,
                                                             "epoch": self.mesh_epoch, "mode": str(mode)})
        except EtcdUnavailable:
            pass
        log.info("node %d stopped (%s)", self.node_id, mode)
        return 0

    def _finish_rounds(self, timeout: float = 2.0) -> None:
        """Roll back what runs here and let the other members hear every outcome before we leave: a member
        that never learns the fate of one of our XIDs would treat rows it touched as locked."""
        if self.sessions is None or self.commits is None or self.mesh is None:
            return
        failpoints.hit("node.finish_rounds")  # marked stopping in etcd, nothing rolled back yet
        self.sessions.abort_all()
        deadline = time.monotonic() + timeout
        # lazy outcomes are not acknowledged: once every round drained, a barrier makes sure each member has them,
        # since the final checkpoint moves the redo pointer past every COMMIT and a recoverer that had missed one
        # would abort it (acknowledged outcome rounds need none)
        barrier_due = self.sessions.lazy_outcome
        while time.monotonic() < deadline:
            if not (self.commits.rounds or self.sessions.prepared or self.sessions.commits or self.sessions.flushing):
                if not barrier_due:
                    break
                barrier_due = False
                self.commits.barrier(lambda: None)
                continue
            if self.mesh.router.poll(20):
                self.mesh.receive_ready()
                if self.locks is not None:
                    self.locks.flush()
            self.sessions.pump()
            self.mesh.tick(time.monotonic())  # an outcome lost in flight must still reach the others

    def _close_ports(self) -> None:
        self._stopping.set()
        obsfeed.close(self)
        if self.mesh is not None:
            self.mesh.close()
        if self.port is not None:
            self.port.close()
        if self.sql is not None:
            self.sql.close()
            self.sql = None
        if self.security is not None:
            self.security.close()
            self.security = None


def run_node(cfg: Config, node_id: int, accept_data_loss: bool = False) -> int:
    failpoints.arm_from_env(node_id)
    agent = NodeAgent(cfg, node_id)
    agent.accept_data_loss = accept_data_loss
    agent.take_stop_signals()
    try:
        agent.start()
        failpoints.hit("node.started")  # tests: a stop signal between the etcd 'running' put and the loop
    except BaseException:
        agent._close_ports()
        raise
    return agent.run()
