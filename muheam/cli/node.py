"""``muheam node``, ``muheam list`` and ``muheam watch``: one node agent, and the members."""

from __future__ import annotations

import logging
import time
from typing import Any

import click

from muheam import config as config_mod
from muheam.cli.common import (
    LONGEST_S, REFRESH_MIN_S, FiniteRange, config_options, emit, format_option, leave, load_config,
)
from muheam.errors import MuheamError


# node -------------------------------------------------------------------------------------------------------
@click.group()
def node() -> None:
    """Start and stop one node agent."""


@node.command("start")
@click.option("--node-id", type=click.IntRange(1, config_mod.MAX_NODE_ID), required=True)
@click.option("--daemon", is_flag=True, help="Run in the background with pid and log files under run_dir.")
@click.option("--log-file", type=click.Path(dir_okay=False), help="Log here instead of stderr.")
@click.option("--accept-data-loss", is_flag=True,
              help="Start even though the WAL is corrupt in the middle: cut it at the last valid record and "
                   "log what was lost. Only after saving a copy of the WAL directory.")
@config_options
@format_option
def node_start(node_id: int, daemon: bool, log_file: str | None, accept_data_loss: bool, fmt: str,
               **kw: Any) -> None:
    """Join the cluster under a new epoch and serve until stopped or fenced (exit 3 when self-fenced).

    --format json applies to --daemon (node_id, pid, epoch); in the foreground the node logs."""
    overrides = [arg for flag, key in (("--etcd", "etcd_endpoints"), ("--shared-dir", "shared_dir"),
                                       ("--cluster-name", "cluster_name"), ("--lease-ttl", "lease_ttl"))
                 if kw.get(key) is not None for arg in (flag, str(kw[key]))]  # (for --daemon's node process)
    cfg = load_config(kw)
    cfg.node(node_id)
    if daemon:
        from muheam.ops.cluster import start_node_daemon
        from muheam.membership import connect

        backend = connect(cfg.etcd_endpoints)
        try:
            member = start_node_daemon(cfg, node_id, backend, accept_data_loss=accept_data_loss,
                                       overrides=overrides)
        finally:
            backend.close()
        if fmt == "json":
            emit({"node_id": node_id, "pid": member.pid, "epoch": member.epoch}, fmt)
        else:
            click.echo(f"node {node_id} started: pid {member.pid}, epoch {member.epoch}")
        return
    handler: logging.Handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"%(asctime)s node-{node_id} %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, cfg.log_level, logging.INFO), handlers=[handler], force=True)
    from muheam.node.agent import run_node

    try:
        code = run_node(cfg, node_id, accept_data_loss)
    except MuheamError as exc:
        logging.getLogger("muheam.node").error("%s", exc)
        raise
    leave(code)  # gRPC threads must not delay the exit of a stopped or fenced node


@node.command("stop")
@click.option("--node-id", type=click.IntRange(1, config_mod.MAX_NODE_ID), required=True)
@click.option("--mode", type=click.Choice(["smart", "fast", "immediate"]), default="fast", show_default=True,
              help="smart: wait for clients; fast: abort them; immediate: no clean shutdown.")
@click.option("--timeout", type=FiniteRange(0, 86400), default=60.0, show_default=True,
              help="Seconds to wait for the node to exit before it is killed.")
@config_options
@format_option
def node_stop(node_id: int, mode: str, timeout: float, fmt: str, **kw: Any) -> None:
    """Stop a node; the lease is revoked so peers learn at once."""
    from muheam.ops.cluster import stop_node
    from muheam.membership import connect

    cfg = load_config(kw, require_shared_dir=False)
    backend = None
    try:
        backend = connect(cfg.etcd_endpoints, timeout=1.0)
    except MuheamError:
        pass
    if not stop_node(cfg, node_id, mode, timeout, backend):
        raise MuheamError(f"node {node_id} is not running (no live pid file under {cfg.run_dir / 'run'})")
    if fmt == "json":
        emit({"node_id": node_id, "stopped": True, "mode": mode}, fmt)
    else:
        click.echo(f"node {node_id} stopped ({mode})")


# list / watch -----------------------------------------------------------------------------------------------
@click.command("list")
@config_options
@format_option
@click.option("--watch", "watch_s", type=FiniteRange(REFRESH_MIN_S, 3600), default=None,
              help="Refresh every N seconds until Ctrl-C (at least 0.1, as 'muheam top --interval').")
def list_cmd(fmt: str, watch_s: float | None, **kw: Any) -> None:
    """Show the members: node, host, endpoints, state, epoch, lease TTL left, Lamport clock, lag (Lamport behind
    the most advanced member), chains owned, last error in its log; configured nodes that are not members show as
    stopped (JSON: "member": false)."""
    from muheam.cli.views import member_rows, print_members

    cfg = load_config(kw, require_shared_dir=False)
    while True:
        rows = member_rows(cfg)
        if fmt == "json":
            emit(rows, fmt)
        else:
            print_members(cfg, rows, clear=watch_s is not None)
        if watch_s is None:
            return
        time.sleep(watch_s)


@click.command("watch")
@config_options
@format_option
@click.option("--count", type=click.IntRange(min=0), default=None,
              help="Exit after this many events (not counting current members).")
@click.option("--timeout", type=FiniteRange(0, LONGEST_S), default=None, help="Exit after this many seconds.")
def watch_cmd(fmt: str, count: int | None, timeout: float | None, **kw: Any) -> None:
    """Print the current members, then every membership event (joined, left, expired) as it happens.

    Survives losing etcd: it resumes from the last revision it printed, missing and repeating nothing.
    """
    from muheam.cli.views import watch_events

    cfg = load_config(kw, require_shared_dir=False)
    watch_events(cfg, fmt, count, timeout)
