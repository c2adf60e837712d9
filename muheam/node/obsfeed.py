"""What a node shows its metrics and health endpoints (``muheam.obs``): the snapshot its loop publishes.

The loop calls :func:`publish` at start and a few times a second; the snapshot is the node's ``status`` plus what
the health checks need (lease TTL, synced, recovering) and the per-kind counters the metrics break out.  Nothing
here runs on the HTTP thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from muheam.engine import rebuild
from muheam.obs.server import ObsServer

if TYPE_CHECKING:
    from muheam.node.agent import NodeAgent


def open_server(agent: "NodeAgent") -> ObsServer | None:
    """Bind the node's ``metrics_endpoint`` (none configured: no server); raises ``OSError`` if the port is taken."""
    endpoint = agent.node_cfg.metrics_endpoint
    if not endpoint:
        return None

    def lease() -> tuple[float, str | None]:
        fence = agent.fence
        if fence is None:
            raise LookupError("no lease yet")
        return fence.deadline, fence.reason

    server = ObsServer(endpoint, agent.cfg.cluster_name, lease)
    server.publish({"node_id": agent.node_id, "state": str(agent.state), "lease_ttl": agent.cfg.lease_ttl})
    server.start()
    return server


def snapshot(agent: "NodeAgent") -> dict[str, Any]:
    """The loop's numbers now (call from the loop only)."""
    if agent.mesh is None or agent.port is None or agent.fence is None:
        return {"node_id": agent.node_id, "state": str(agent.state), "lease_ttl": agent.cfg.lease_ttl}
    snap = agent.status()
    survivors = agent.survivors
    snap.update({
        "state": str(agent.state),
        "lease_ttl": agent.cfg.lease_ttl,
        "fence_deadline": agent.fence.deadline,
        # every member it knows from etcd is connected on the mesh, and its own start-up sync is behind it
        "synced": set(agent.members) <= set(agent.mesh.peers),
        "recovering": sorted(survivors.dead) if survivors is not None else [],
        "abort_reasons": dict(agent.sessions.abort_reasons) if agent.sessions is not None else {},
        "peer_kinds": agent.mesh.sent_by_label(),
        "wal_start_lsn": agent.wal_start_lsn,
        "compiled_redo": rebuild.compiled(),
    })
    return snap


def publish(agent: "NodeAgent") -> None:
    if agent.obs is not None:
        agent.obs.publish(snapshot(agent))


def close(agent: "NodeAgent") -> None:
    """Answer the probes already waiting with the final state, then stop serving."""
    if agent.obs is not None:
        server, agent.obs = agent.obs, None
        server.close(snapshot(agent))
