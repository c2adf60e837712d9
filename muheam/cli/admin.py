"""The operator's commands patronictl users expect: ``history``, ``restart``, ``reload``, ``remove``."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import click

from muheam import config as config_mod
from muheam.cli.common import config_options, emit, format_option, load_config
from muheam.errors import ClusterStateError

node_option = click.option("--node-id", type=click.IntRange(1, config_mod.MAX_NODE_ID), default=None,
                           help="One node (default: every one, one at a time).")


def _detail(e: dict[str, Any]) -> str:
    skip = {"kind", "node_id", "epoch", "at"}
    return ", ".join(f"{k} {v}" for k, v in sorted(e.items()) if k not in skip and v is not None)


@click.command("history")
@config_options
@format_option
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="Newest events shown.")
def history_cmd(fmt: str, limit: int, **kw: Any) -> None:
    """The cluster's history from etcd: joins, leaves, expiries, evictions, recoveries with their durations,
    removals; oldest first."""
    from muheam.membership import connect

    cfg = load_config(kw, require_shared_dir=False)
    backend = connect(cfg.etcd_endpoints, timeout=2.0)
    try:
        events = backend.history(cfg.cluster_name, limit)
    finally:
        backend.close()
    if fmt == "json":
        emit(events, fmt)
        return
    for e in events:
        stamp = datetime.fromtimestamp(float(e.get("at", 0))).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        click.echo(f"{stamp}  {e.get('kind', '?'):<10} node {e.get('node_id', '?'):<4} epoch "
                   f"{e.get('epoch', '-')!s:<6} {_detail(e)}")


def _targets(cfg: Any, node_id: int | None) -> list[int]:
    if node_id is not None:
        cfg.node(node_id)
        return [node_id]
    return sorted(cfg.nodes)


@click.command("restart")
@config_options
@format_option
@node_option
@click.option("--mode", type=click.Choice(["smart", "fast", "immediate"]), default="fast", show_default=True,
              help="How each node stops before it starts again.")
def restart_cmd(fmt: str, node_id: int | None, mode: str, **kw: Any) -> None:
    """Restart a node, or every running node of this host one after the other (each is running again, under a new
    epoch, before the next stops). Nodes that are not running are left alone."""
    from muheam.membership import connect
    from muheam.ops.cluster import running_pid, start_node_daemon, stop_node

    cfg = load_config(kw, require_shared_dir=False)
    done: list[dict[str, Any]] = []
    backend = connect(cfg.etcd_endpoints)
    try:
        for n in _targets(cfg, node_id):
            if running_pid(cfg, n) is None:
                if node_id is not None:
                    raise ClusterStateError(f"node {n} is not running on this host (no live pid file under "
                                            f"{cfg.run_dir / 'run'}); start it with 'muheam node start --daemon'")
                continue
            stop_node(cfg, n, mode, 60.0, backend)
            member = start_node_daemon(cfg, n, backend)
            done.append({"node_id": n, "pid": member.pid, "epoch": member.epoch})
            if fmt != "json":
                click.echo(f"node {n} restarted: pid {member.pid}, epoch {member.epoch}")
    finally:
        backend.close()
    if fmt == "json":
        emit(done, fmt)
    elif not done:
        click.echo("no node of this host was running; nothing restarted")


@click.command("reload")
@config_options
@format_option
@node_option
def reload_cmd(fmt: str, node_id: int | None, **kw: Any) -> None:
    """Make running nodes re-read the config file and apply what can change live: lock_timeout,
    idle_in_transaction_timeout, log_level. Settings that need a restart are listed, not applied."""
    from muheam.client import request
    from muheam.membership import current_members
    from muheam.security.setup import client_for

    cfg = load_config(kw, require_shared_dir=False)
    key = client_for(cfg)  # the config's client key: found from ./muheam.toml alone, reload worked only there
    members = {m.node_id: m for m in current_members(cfg.etcd_endpoints, cfg.cluster_name)}
    if node_id is not None and node_id not in members:
        raise ClusterStateError(f"node {node_id} is not a running member; nothing to reload")
    results = []
    for n in sorted(members) if node_id is None else [node_id]:
        results.append(dict(request(members[n].client_endpoint, "reload", timeout=10.0, client_key=key)))
    if fmt == "json":
        emit(results, fmt)
        return
    for r in results:
        changed = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in r["changed"].items()) or "nothing changed"
        extra = f"; needs a restart: {', '.join(r['needs_restart'])}" if r["needs_restart"] else ""
        click.echo(f"node {r['node_id']}: {changed}{extra}")


@click.command("remove")
@config_options
@format_option
@click.option("--node-id", type=click.IntRange(1, config_mod.MAX_NODE_ID), required=True)
def remove_cmd(fmt: str, node_id: int, **kw: Any) -> None:
    """Remove a stopped node from the cluster for good: its [nodes.N] table leaves the config file and the removal
    is recorded in the history. Its WAL stays in the shared directory (merges and recovery still read it)."""
    from muheam.membership import connect

    cfg = load_config(kw, require_shared_dir=False)
    cfg.node(node_id)
    if cfg.source is None:
        raise ClusterStateError("remove rewrites the config file: pass it with -c")
    backend = connect(cfg.etcd_endpoints)
    try:
        members, _ = backend.members(cfg.cluster_name)
        if any(m.node_id == node_id for m in members):
            raise ClusterStateError(f"node {node_id} is a member now; stop it first ('muheam node stop --node-id "
                                    f"{node_id}') and remove it once it has left")
        rec = backend.get_recovery(cfg.cluster_name, node_id)
        if rec is not None and rec.get("state") != "recovered":
            raise ClusterStateError(f"node {node_id}'s recovery is still {rec.get('state')}; wait for the "
                                    "survivors to finish it ('muheam watch'), then remove it")
        nodes = {n: c for n, c in cfg.nodes.items() if n != node_id}
        import dataclasses

        cfg.source.write_text(dataclasses.replace(cfg, nodes=nodes).to_toml())
        backend.add_history(cfg.cluster_name, {"kind": "removed", "node_id": node_id, "at": time.time()})
    finally:
        backend.close()
    if fmt == "json":
        emit({"node_id": node_id, "removed": True, "config": str(cfg.source)}, fmt)
    else:
        click.echo(f"node {node_id} removed from {cfg.source}; its WAL stays in {cfg.shared_dir}")
