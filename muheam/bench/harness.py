"""A throw-away local cluster for benchmarks, and the per-node counters they read before and after."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from muheam.ops import cluster as cluster_mod
from muheam.client import request
from muheam.security.keys import CLIENT_KEY_ENV


@contextmanager
def client_key_of(info: dict[str, Any]) -> Iterator[None]:
    """While inside, ``MUHEAM_CLIENT_KEY`` names the client key of the cluster ``info`` describes (what
    ``cluster_up`` returned), or is unset when it has none: the benchmark's clients, in this process or started
    from it, connect as a user's program would.  The caller's own setting comes back afterwards."""
    saved = os.environ.pop(CLIENT_KEY_ENV, None)
    try:
        if info.get("client_key_file"):
            os.environ[CLIENT_KEY_ENV] = str(info["client_key_file"])
        yield
    finally:
        os.environ.pop(CLIENT_KEY_ENV, None)
        if saved is not None:
            os.environ[CLIENT_KEY_ENV] = saved


@contextmanager
def temp_cluster(nodes: int, lease_ttl: int = 2, security: str = "curve") -> Iterator[dict[int, str]]:
    """Start ``nodes`` real nodes with embedded etcd in a temp dir; yield node id -> client endpoint.

    ``security``: ``curve`` (the default, as users run it) or ``none``; the clients use its key
    (``client_key_of``)."""
    with tempfile.TemporaryDirectory(prefix="muheam-bench-") as tmp:
        directory = Path(tmp) / "cluster"
        try:
            info = cluster_mod.cluster_up(directory, nodes, lease_ttl, security)
            with client_key_of(info):
                yield {n["node_id"]: n["client_endpoint"] for n in info["nodes"]}
        finally:
            if (directory / cluster_mod.CONFIG_NAME).exists():
                cluster_mod.cluster_down(directory, "immediate")


def lock_messages(endpoints: dict[int, str]) -> int:
    """Lock-protocol messages sent so far, summed over the nodes."""
    total = 0
    for ep in endpoints.values():
        total += int(request(ep, "status")["counters"]["locks"].get("sent", 0))
    return total


PEER_FRAMES = ("sent", "ack_sent", "retransmitted")
"""What crosses the mesh: messages (locks, commit rounds, gossip), acknowledgement-only frames, retransmissions."""


def peer_frames(endpoints: dict[int, str]) -> dict[str, int]:
    """Node-to-node frames sent so far by kind (``PEER_FRAMES``), summed over the nodes."""
    total = dict.fromkeys(PEER_FRAMES, 0)
    for ep in endpoints.values():
        peer = request(ep, "status")["counters"]["peer"]
        for key in PEER_FRAMES:
            total[key] += int(peer.get(key, 0))
    return total


def peer_messages(endpoints: dict[int, str]) -> int:
    """Every node-to-node frame sent so far, the link's own acknowledgements and retransmissions included: what
    being a cluster costs on the wire, summed over the nodes."""
    return sum(peer_frames(endpoints).values())


LABEL_GROUPS = {"lock": "lock", "lockb": "lock", "image": "image", "round": "round", "gossip": "gossip",
                "beat": "gossip", "hello": "gossip", "ping": "gossip", "pong": "gossip", "join": "gossip",
                "ack": "ack", "retransmit": "retransmit", "cr": "read"}
"""The mesh's per-label counters grouped by purpose: block ownership (lock), page images moving between nodes
(image), commit rounds (round), periodic and membership chatter (gossip), the link's acknowledgement-only frames
(ack), its retransmissions (retransmit), and consistent-read copies for readers (read).  A label not listed is its own group."""


def peer_by_kind(endpoints: dict[int, str]) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """Node-to-node frames sent so far, from one status per node (so the three agree): by link counter
    (``PEER_FRAMES``), then messages and bytes by purpose (``LABEL_GROUPS``), each summed over the nodes.  The
    messages by purpose count every protocol message, bundled or not (a bundle frame carries several), so they
    add up to at least the frames."""
    frames = dict.fromkeys(PEER_FRAMES, 0)
    msgs: dict[str, int] = {}
    size: dict[str, int] = {}
    for ep in endpoints.values():
        peer = request(ep, "status")["counters"]["peer"]
        for key in PEER_FRAMES:
            frames[key] += int(peer.get(key, 0))
        for key, value in peer.items():
            for prefix, into in (("sent.", msgs), ("bytes.", size)):
                if key.startswith(prefix):
                    group = LABEL_GROUPS.get(key[len(prefix):], key[len(prefix):])
                    into[group] = into.get(group, 0) + int(value)
    return frames, msgs, size


def node_pids(endpoints: dict[int, str]) -> dict[int, int]:
    """Node id -> the node process's pid (from its status)."""
    return {n: int(request(ep, "status")["pid"]) for n, ep in endpoints.items()}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, every thread included (``/proc/<pid>/stat`` fields 14-15)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read().decode()
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces: fields start after ')'
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def status(endpoint: str) -> Any:
    return request(endpoint, "status")
