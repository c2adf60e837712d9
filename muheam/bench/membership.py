"""``muheam bench membership``: how fast the cluster learns that a node is gone.

Real etcd, real node processes.  ``detect_kill_ms`` is from ``kill -9`` to the ``expired`` watch event (bounded
below by the lease TTL: nobody can tell a dead node from a slow one sooner); ``detect_stop_ms`` is from the stop
signal to the ``left`` event (the node revokes its lease, so it does not wait for the TTL).
"""

from __future__ import annotations

import os
import queue
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from muheam.ops import cluster as cluster_mod
from muheam.ops.procs import remove_pid
from muheam import config as config_mod
from muheam.errors import MuheamError
from muheam.membership import MemberEvent, connect


def _watch(endpoints: tuple[str, ...], name: str, start: int, out: "queue.Queue[tuple[float, MemberEvent]]",
           stop: threading.Event) -> None:
    backend = connect(endpoints)
    for event in backend.watch_members(name, start, poll=0.05):
        if stop.is_set():
            return
        if event is not None:
            out.put((time.monotonic(), event))


def _wait_for(events: "queue.Queue[tuple[float, MemberEvent]]", kind: str, node_id: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise MuheamError(f"no {kind!r} event for node {node_id} within {timeout:.0f} s")
        try:
            at, event = events.get(timeout=remaining)
        except queue.Empty:
            continue
        if event.kind == kind and event.member.node_id == node_id:
            return at


def run(kills: int = 3, stops: int = 3, lease_ttl: int = config_mod.DEFAULT_TTL, nodes: int = 3) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="muheam-bench-") as tmp:
        directory = Path(tmp) / "cluster"
        try:
            info = cluster_mod.cluster_up(directory, nodes, lease_ttl)
            cfg = config_mod.load(info["config_file"])
            backend = connect(cfg.etcd_endpoints)
            _, revision = backend.members(cfg.cluster_name)
            events: queue.Queue[tuple[float, MemberEvent]] = queue.Queue()
            stop = threading.Event()
            threading.Thread(target=_watch, args=(cfg.etcd_endpoints, cfg.cluster_name, revision + 1, events, stop),
                             daemon=True).start()
            time.sleep(0.3)
            kill_ms: list[float] = []
            stop_ms: list[float] = []
            for i in range(kills + stops):
                node_id = 1 + i % nodes
                pid = cluster_mod.running_pid(cfg, node_id)
                assert pid is not None, f"node {node_id} is not running"
                killing = i < kills
                t0 = time.monotonic()
                os.kill(pid, signal.SIGKILL if killing else signal.SIGINT)
                at = _wait_for(events, "expired" if killing else "left", node_id, lease_ttl * 3 + 10)
                (kill_ms if killing else stop_ms).append((at - t0) * 1000)
                remove_pid(cluster_mod.pid_file(cfg, node_id))
                cluster_mod.start_node_daemon(cfg, node_id, backend)
            stop.set()
            backend.close()
        finally:
            if (directory / cluster_mod.CONFIG_NAME).exists():
                cluster_mod.cluster_down(directory, "immediate")
    return {
        "ttl_ms": lease_ttl * 1000,
        "detect_kill_ms": round(statistics.median(kill_ms), 1),
        "detect_stop_ms": round(statistics.median(stop_ms), 1),
        "detect_kill_samples_ms": [round(v, 1) for v in kill_ms],
        "detect_stop_samples_ms": [round(v, 1) for v in stop_ms],
        "nodes": nodes,
    }
