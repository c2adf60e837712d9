"""What a node does before it serves: wait out dead processes' leases and refuse a live duplicate, replay
the whole cluster's WAL when nobody serves, or wait for the survivors to recover its previous incarnation.

Functions over the config, etcd and the shared directory, called by ``NodeAgent.start`` in order; none of them
touches the node's sockets.
"""

from __future__ import annotations

import logging
import time

from muheam.config import Config
from muheam.engine import EngineConfig, statefiles
from muheam.engine.replay import ReplayReport, redo_cluster, wal_tail_glsn
from muheam.errors import ClusterStateError, NodeIdInUse
from muheam.membership import MembershipBackend
from muheam.node.fence import Fence
from muheam.ops.procs import is_node
from muheam.states import NodeState
from walmerge import WalError, WalReader, node_wal_dir

log = logging.getLogger("muheam.node")


def refuse_duplicate(cfg: Config, node_id: int, backend: MembershipBackend) -> None:
    """Wait out the leases of members on this host whose process is gone -- our own dead predecessor, or peers
    after a whole-cluster crash (they must not count as live) -- then refuse an id a live node holds."""
    host = cfg.node(node_id).host
    deadline = time.monotonic() + cfg.lease_ttl + 2
    while True:
        members = backend.members(cfg.cluster_name)[0]
        stale = [m for m in members if m.host == host and not is_node(m.pid, m.node_id, m.started_at, m.stamp)]
        if stale and time.monotonic() < deadline:
            log.info("waiting for the lease(s) of dead process(es) of node(s) %s to expire", [m.node_id for m in stale])
            time.sleep(0.2)
            continue
        held = [m for m in members if m.node_id == node_id]
        if held:
            member = held[0]
            raise NodeIdInUse(
                f"node id {node_id} is held by a live node (host {member.host}, pid {member.pid}, epoch "
                f"{member.epoch}); stop it with 'muheam node stop --node-id {node_id}' or use another id"
            )
        return


LIVE_DIRECTORY_POLL = 0.15


def require_live_directory(cfg: Config, node_id: int, backend: MembershipBackend, fence: Fence,
                           running: set[int], longest_work: float = 0.0) -> None:
    """Before a node joins running peers: the shared directory it was given must show one of them writing.

    A copy of the shared directory (a backup restored beside the original, ``cp -a``) names the same cluster id,
    so ``verify_member_dir`` passes it, and a node on it served stale rows to the cluster.  Every running node
    logs at least a heartbeat every fraction of a second into its WAL in the shared directory, so the real one
    shows some running peer's WAL tail move within moments; a copy, or another mount of old contents, never does.
    One moving peer is enough (another may be paused, or busy with long work that keeps its loop from turning);
    peers that leave meanwhile are no longer waited for.  Waits up to three lease TTLs, and longer than
    ``longest_work``, the longest silence a peer announces for long work (staging a dead node's pages, this
    node's among them after a crash), during which its loop logs nothing."""
    system_id = EngineConfig().system_id

    def tails() -> dict[int, int]:  # (each reads its node's last segment: only the running peers')
        return {n: wal_tail_glsn(cfg.shared_dir, n, system_id) for n in running}
    first = tails()
    limit = max(10.0, 3 * cfg.lease_ttl, longest_work + 5)
    deadline = time.monotonic() + limit
    next_listing = time.monotonic() + 1.0
    while running:
        fence.check()
        now = tails()
        if any(now[n] > first.get(n, 0) for n in running):
            return
        if time.monotonic() >= deadline:
            raise ClusterStateError(
                f"shared_dir {cfg.shared_dir} does not show the running node(s) {sorted(running)} writing their WAL "
                f"(nothing moved in {limit:.0f} s): it is not the directory the cluster runs "
                "on (a copy or an old backup, or another mount); point node "
                f"{node_id} at the cluster's shared directory")
        if time.monotonic() >= next_listing:
            next_listing = time.monotonic() + 1.0
            members = backend.members(cfg.cluster_name)[0]
            running &= {m.node_id for m in members if m.state == NodeState.RUNNING}
        time.sleep(LIVE_DIRECTORY_POLL)


def redo_whole_cluster(cfg: Config, node_id: int, backend: MembershipBackend, fence: Fence,
                       accept_data_loss: bool) -> ReplayReport:
    """No node is serving: replay the merged WAL of every node before this one serves (whole-cluster crash
    recovery).  Idempotent, so a second node starting at the same time redoes nothing new."""
    with backend.lock(cfg.cluster_name, "recovery", ttl=max(60, 4 * cfg.lease_ttl)):
        fence.check()
        t0 = time.monotonic()
        rep = redo_cluster(cfg.shared_dir, EngineConfig().system_id, accept_data_loss=accept_data_loss)
    log.info("node %d: whole-cluster redo took %.2f s: %d merged records, %d page changes", node_id,
             time.monotonic() - t0, rep.records, rep.pages_changed)
    return rep


def await_own_recovery(cfg: Config, node_id: int, fence: Fence) -> None:
    """After a crash, running peers recover our previous incarnation (its WAL onto the chains it held); we must
    not redo that WAL ourselves onto pages others may have changed since, so wait until they moved our checkpoint
    pointer to the WAL's end."""
    shared = cfg.shared_dir
    ptr = statefiles.read_checkpoint(shared, node_id)
    if ptr is None:
        return
    reader = WalReader(node_wal_dir(shared, node_id), node_id=node_id, system_id=EngineConfig().system_id,
                       start_lsn=ptr.redo_lsn, verify_crc=False)
    try:
        count = sum(len(batch.headers) for batch in reader.batches())
    except WalError:
        return  # damaged: the engine's own recovery reports it
    if count <= 1 or reader.last is None:
        return  # only the checkpoint record: a clean stop
    end, first = reader.last.end_lsn, ptr.redo_lsn
    limit = 4 * cfg.lease_ttl + 60
    deadline = time.monotonic() + limit
    log.info("node %d: waiting for the survivors to recover its previous incarnation (WAL up to %#x)", node_id, end)
    while time.monotonic() < deadline:
        ptr = statefiles.read_checkpoint(shared, node_id)
        if ptr is not None and (ptr.redo_lsn >= end or ptr.redo_lsn > first):
            return  # moved by the recoverer (to where it fenced us, if a zombie wrote beyond)
        fence.check()
        time.sleep(0.2)
    raise ClusterStateError(f"node {node_id}: the running nodes did not recover its previous incarnation within "
                            f"{limit} s; check their logs ('recovering node {node_id}'), or stop every node and start "
                            f"the cluster again (whole-cluster recovery)")


def await_pending_recoveries(cfg: Config, node_id: int, backend: MembershipBackend, fence: Fence,
                             poll: float = 0.2) -> list[int]:
    """Before joining a running cluster, wait until no dead node is being recovered.  A joiner knows nothing of
    a node that died before it joined, so an invalid relation-extension grant here could not grow the relation
    past the blocks that node allocated and never released (the cluster simulator found it); a restart waits for
    its own recovery for the same kind of reason.  Bounded: past the limit it says so and goes on (the window is
    then one invalid grant wide).  Returns the nodes it waited for."""
    others = [n for n in sorted(cfg.nodes) if n != node_id]
    limit = 4 * cfg.lease_ttl + 60
    deadline = time.monotonic() + limit
    waited: list[int] = []
    while True:
        busy = [n for n in others if (backend.get_recovery(cfg.cluster_name, n) or {}).get("state") == "recovering"]
        if not busy:
            return waited
        waited = sorted(set(waited) | set(busy))
        if time.monotonic() >= deadline:
            log.warning("node %d joins although the recovery of node(s) %s has not finished after %d s", node_id,
                        busy, limit)
            return waited
        log.info("node %d: waiting for the survivors to finish recovering node(s) %s before joining", node_id, busy)
        fence.check()
        time.sleep(poll)
