"""Cluster-level operations: init, the local one-command cluster, starting and stopping node daemons.

``cluster init`` registers the cluster in etcd and writes ``global/control`` under the etcd control lock, after
checking that the directory is empty or already ours and that etcd does not know the name under another id.
``cluster up`` is idempotent: it starts whatever is not running (embedded etcd, nodes) and leaves the rest.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from muheam import config as config_mod
from muheam.ops import control
from muheam.config import Config, EmbeddedEtcd, NodeConfig
from muheam.errors import ClusterStateError, MuheamError
from muheam.ops.etcd_server import EtcdServer
from muheam.security import keys
from muheam.membership import Member, MembershipBackend, connect
from muheam.states import ClusterState, NodeState, StopMode
from muheam.ops.procs import (SIGNAL_FOR_MODE, config_of, free_port, is_node, node_marks, pid_alive, pid_of,
                              remove_pid, stop_pid, tail, wait_until, write_pid)

CONFIG_NAME = "muheam.toml"


def pid_file(cfg: Config, node_id: int) -> Path:
    return cfg.run_dir / "run" / f"node-{node_id}.pid"


def log_file(cfg: Config, node_id: int) -> Path:
    return cfg.run_dir / "log" / f"node-{node_id}.log"


def embedded_server(cfg: Config) -> EtcdServer | None:
    emb = cfg.embedded_etcd
    return None if emb is None else EtcdServer(emb.data_dir, emb.client_endpoint, emb.peer_endpoint)


def init_cluster(cfg: Config, backend: MembershipBackend) -> dict[str, Any]:
    """Create the layout and control file and register the cluster; refuse foreign directories and names.  With
    ``security = "curve"`` (the default) also make the CURVE keys that are missing (``muheam.security.keys``)."""
    identity = _init_cluster(cfg, backend)
    if cfg.security == "curve":
        keys.ensure_cluster_keys(cfg.shared_dir, cfg.run_dir, sorted(cfg.nodes))
    return identity


def _init_cluster(cfg: Config, backend: MembershipBackend) -> dict[str, Any]:
    shared = cfg.shared_dir
    existing = control.check_empty_or_ours(shared, cfg.cluster_name)
    registered = backend.get_cluster(cfg.cluster_name)
    if existing is not None:
        if registered is None or registered.get("cluster_id") != existing["cluster_id"]:
            raise ClusterStateError(
                f"shared_dir {shared} holds cluster id {existing['cluster_id']} which etcd at "
                f"{', '.join(cfg.etcd_endpoints)} does not know as {cfg.cluster_name!r}; use the etcd it was "
                "created with, or an empty directory"
            )
        return existing
    if registered is not None:
        raise ClusterStateError(
            f"cluster name {cfg.cluster_name!r} is already registered in etcd (id {registered.get('cluster_id')}, "
            f"shared_dir {registered.get('shared_dir')}); choose another cluster_name or point shared_dir there"
        )
    identity = control.new_identity(cfg.cluster_name, shared)
    with backend.lock(cfg.cluster_name, "control"):
        ours = backend.register_cluster(cfg.cluster_name, identity)
        if ours["cluster_id"] != identity["cluster_id"]:
            raise ClusterStateError(f"cluster {cfg.cluster_name!r} was registered concurrently by another command")
        control.create_layout(shared, identity)
        backend.set_state(cfg.cluster_name, ClusterState.STOPPED)
    return identity


def _local_node(node_id: int) -> NodeConfig:
    """A node on free loopback ports: peer, client, SQL (PostgreSQL protocol) and metrics (HTTP) endpoints."""
    return NodeConfig(node_id, f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}",
                      sql_endpoint=f"tcp://127.0.0.1:{free_port()}",
                      metrics_endpoint=f"http://127.0.0.1:{free_port()}")


def local_config(directory: Path, nodes: int, lease_ttl: int | None = None, cluster_name: str = "muheam",
                 security: str = "curve") -> Config:
    """A fresh single-host config on free loopback ports, with an embedded etcd under ``directory``."""
    directory = directory.resolve()
    etcd_client = f"http://127.0.0.1:{free_port()}"
    node_cfgs = {n: _local_node(n) for n in range(1, nodes + 1)}
    return Config(
        cluster_name=cluster_name, shared_dir=directory / "shared", run_dir=directory, etcd_endpoints=(etcd_client,),
        lease_ttl=lease_ttl or config_mod.DEFAULT_TTL, nodes=node_cfgs,
        embedded_etcd=EmbeddedEtcd(etcd_client, f"http://127.0.0.1:{free_port()}", directory / "etcd" / "data"),
        source=directory / CONFIG_NAME, security=security,
    )


def load_or_create(directory: Path, nodes: int, lease_ttl: int | None, security: str | None = None) -> Config:
    """The local cluster's config: read it (``security`` given and different is refused: the keys, or their
    absence, are the cluster's), or make it."""
    cfg = _load_or_create(directory, nodes, lease_ttl, security or "curve")
    if security is not None and cfg.security != security:
        raise ClusterStateError(f"the cluster in {directory} runs with security = {cfg.security!r}; change it in "
                                f"{cfg.source}, not with --security {security}")
    return cfg


def _load_or_create(directory: Path, nodes: int, lease_ttl: int | None, security: str) -> Config:
    path = directory / CONFIG_NAME
    if path.exists():
        cfg = config_mod.load(path, require_shared_dir=False)
        if nodes > len(cfg.nodes):
            extra = {}
            for n in range(1, nodes + 1):
                if n not in cfg.nodes:
                    extra[n] = _local_node(n)
            cfg = replace(cfg, nodes={**cfg.nodes, **extra})
            path.write_text(cfg.to_toml())
        return cfg
    directory.mkdir(parents=True, exist_ok=True)
    leftovers = [p.name for p in directory.iterdir()]
    if leftovers:
        raise ClusterStateError(
            f"{directory} is not empty and has no {CONFIG_NAME} (found: {', '.join(sorted(leftovers)[:5])}); "
            "choose an empty directory for a new local cluster"
        )
    cfg = local_config(directory, nodes, lease_ttl, security=security)
    path.write_text(cfg.to_toml())
    return cfg


def running_pid(cfg: Config, node_id: int) -> int | None:
    """The node's pid from its pid file, if that process still runs and is still the node (``procs.pid_of``) of
    this cluster: started with this config file, where its command line names one (two clusters given one
    run_dir share the pid file's name, and ``cluster down`` of one stopped the other's node)."""
    pid = pid_of(pid_file(cfg, node_id), node_marks(node_id))
    return None if pid is None or _config_elsewhere(cfg, pid) is not None else pid


def _member_pid(cfg: Config, node_id: int, members: Sequence[Member]) -> int | None:
    """The pid of node ``node_id``'s member entry if it is a process on this host that still is that node (a
    node started in the foreground writes no pid file)."""
    host = cfg.node(node_id).host or socket.gethostname()
    for member in members:
        if member.node_id == node_id and member.host == host and \
                is_node(member.pid, node_id, member.started_at, member.stamp) and \
                _config_elsewhere(cfg, member.pid) is None:
            return member.pid
    return None


def _config_elsewhere(cfg: Config, pid: int) -> Path | None:
    """The config file node process ``pid`` runs with, if that is not ``cfg``'s (None: the same, or unknown)."""
    theirs = config_of(pid)
    return theirs if theirs is not None and cfg.source is not None and theirs != cfg.source.resolve() else None


def start_node_daemon(cfg: Config, node_id: int, backend: MembershipBackend, timeout: float = 60.0,
                      accept_data_loss: bool = False, overrides: Sequence[str] = ()) -> Member:
    """Start ``muheam node start`` detached, with pid and log files; return its member entry once running.
    ``overrides``: the command line's flags that override config keys (``--lease-ttl 7``), passed on to the
    node process (it reads the config file again: without them it ran with the file's values)."""
    cfg.node(node_id)
    if cfg.source is None:
        raise ClusterStateError("--daemon needs a config file (-c) so the node process can read it")
    pid = pid_of(pid_file(cfg, node_id), node_marks(node_id))
    if pid is not None:
        theirs = _config_elsewhere(cfg, pid)
        if theirs is not None:
            raise ClusterStateError(f"{pid_file(cfg, node_id)} belongs to node {node_id} of another cluster (pid "
                                    f"{pid}, config {theirs}): give each cluster its own run_dir")
        raise ClusterStateError(f"node {node_id} is already running (pid {pid}); stop it first")
    log_path = log_file(cfg, node_id)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "muheam", "node", "start", "--node-id", str(node_id), "-c", str(cfg.source),
           "--log-file", str(log_path), *overrides] + (["--accept-data-loss"] if accept_data_loss else [])
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    write_pid(pid_file(cfg, node_id), proc.pid)
    found: list[Member] = []

    def ready() -> bool:
        if proc.poll() is not None:
            return True
        for member in backend.members(cfg.cluster_name)[0]:
            if member.node_id == node_id and member.pid == proc.pid and member.state == NodeState.RUNNING:
                found.append(member)
                return True
        return False

    if not wait_until(ready, timeout, 0.05) or not found:
        if proc.poll() is None:
            stop_pid(proc.pid, signal.SIGKILL)
        remove_pid(pid_file(cfg, node_id))
        code = proc.poll()
        raise MuheamError(
            f"node {node_id} did not start (exit code {code}); last lines of {log_path}:\n{tail(log_path, 6)}"
        )
    return found[0]


def stop_node(cfg: Config, node_id: int, mode: StopMode | str = StopMode.FAST, timeout: float = 60.0,
              backend: MembershipBackend | None = None) -> bool:
    """Signal the node's process (found by pid file, else by its member entry on this host); wait for it."""
    pid = running_pid(cfg, node_id)
    if pid is None and backend is not None:
        pid = _member_pid(cfg, node_id, backend.members(cfg.cluster_name)[0])
    if pid is None:
        return False
    stop_pid(pid, SIGNAL_FOR_MODE[StopMode(mode)], timeout)
    remove_pid(pid_file(cfg, node_id))
    return True


def cluster_up(directory: Path, nodes: int, lease_ttl: int | None = None,
               security: str | None = None) -> dict[str, Any]:
    cfg = load_or_create(directory, nodes, lease_ttl, security)
    server = embedded_server(cfg)
    etcd_info: list[dict[str, Any]] = []
    if server is not None:
        pid = server.start()
        etcd_info.append({"pid": pid, "client_endpoint": server.client_url, "data_dir": str(server.data_dir)})
    backend = connect(cfg.etcd_endpoints)
    try:
        init_cluster(cfg, backend)
        backend.set_state(cfg.cluster_name, ClusterState.STARTING)
        started: list[dict[str, Any]] = []
        live = {m.node_id: m for m in backend.members(cfg.cluster_name)[0]}
        for node_id in sorted(cfg.nodes)[:max(nodes, 1)]:
            member = live.get(node_id)
            if member is None or running_pid(cfg, node_id) is None and not is_node(
                    member.pid, node_id, member.started_at, member.stamp):
                member = start_node_daemon(cfg, node_id, backend)
            started.append({
                "node_id": node_id, "pid": member.pid, "epoch": member.epoch,
                "peer_endpoint": member.peer_endpoint, "client_endpoint": member.client_endpoint,
                "sql_endpoint": member.sql_endpoint, "metrics_endpoint": cfg.node(node_id).metrics_endpoint,
            })
        backend.set_state(cfg.cluster_name, ClusterState.RUNNING)
        # nodes running beyond the ones asked for (cluster up --nodes 2 while 4 run): say so, stop none
        chosen = {n["node_id"] for n in started}
        others = [{"node_id": m.node_id, "pid": m.pid, "client_endpoint": m.client_endpoint}
                  for m in sorted(backend.members(cfg.cluster_name)[0], key=lambda m: m.node_id)
                  if m.node_id not in chosen]
    finally:
        backend.close()
    client_key = None if cfg.security == "none" else str(
        cfg.client_key or keys.client_secret_file(cfg.run_dir, keys.ADMIN_CLIENT))
    return {"config": cfg.as_dict(), "config_file": str(cfg.source), "etcd": etcd_info, "nodes": started,
            "other_running_nodes": others, "security": cfg.security, "client_key_file": client_key}


def cluster_down(directory: Path, mode: StopMode | str = StopMode.FAST) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    if not path.exists():
        raise ClusterStateError(f"{path} does not exist; pass the --dir given to 'muheam cluster up'")
    cfg = config_mod.load(path, require_shared_dir=False)
    server = embedded_server(cfg)
    backend: MembershipBackend | None = None
    try:
        backend = connect(cfg.etcd_endpoints, timeout=1.0)
        backend.set_state(cfg.cluster_name, ClusterState.STOPPING)
    except MuheamError:
        backend = None
    pids = {n: running_pid(cfg, n) for n in cfg.nodes}
    if backend is not None and None in pids.values():  # nodes started in the foreground have no pid file
        try:
            members = backend.members(cfg.cluster_name)[0]
        except MuheamError:
            members = []
        pids = {n: pid if pid is not None else _member_pid(cfg, n, members) for n, pid in pids.items()}
    for node_id, pid in pids.items():
        if pid is not None:
            try:
                os.kill(pid, SIGNAL_FOR_MODE[StopMode(mode)])
            except ProcessLookupError:  # gone since it was found: nothing to stop, and etcd still is
                pass
    deadline = time.monotonic() + 60
    stopped = []
    for node_id, pid in pids.items():
        if pid is None:
            continue
        wait_until(lambda: not pid_alive(pid), max(0.1, deadline - time.monotonic()))
        stop_pid(pid, signal.SIGKILL, 5)
        remove_pid(pid_file(cfg, node_id))
        stopped.append(node_id)
    if backend is not None:
        try:
            backend.set_state(cfg.cluster_name, ClusterState.STOPPED)
        except MuheamError:
            pass
        backend.close()
    etcd_stopped = server.stop() if server is not None else False
    return {"stopped_nodes": stopped, "etcd_stopped": etcd_stopped}
