"""``muheam cluster``: create, start and stop a whole cluster."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from muheam import config as config_mod
from muheam.cli.common import config_options, emit, format_option, load_config


# cluster ----------------------------------------------------------------------------------------------------
@click.group()
def cluster() -> None:
    """Create, start and stop a whole cluster."""


@cluster.command("init")
@config_options
@format_option
def cluster_init(fmt: str, **kw: Any) -> None:
    """Create the shared-directory layout and register the cluster in etcd.

    Refuses a directory that holds another cluster or unrelated files, and a cluster name etcd already knows.
    """
    from muheam.ops.cluster import init_cluster
    from muheam.membership import connect

    cfg = load_config(kw, require_shared_dir=False)
    backend = connect(cfg.etcd_endpoints)
    try:
        backend.ping() or backend.get_cluster(cfg.cluster_name)
        identity = init_cluster(cfg, backend)
    finally:
        backend.close()
    if fmt == "json":
        emit(identity, fmt)
    else:
        click.echo(f"cluster {cfg.cluster_name!r} (id {identity['cluster_id']}) initialised in {cfg.shared_dir}")


@cluster.command("up")
@click.option("--nodes", type=click.IntRange(1, 16), default=3, show_default=True, help="Number of nodes.")
@click.option("--dir", "directory", type=click.Path(file_okay=False), required=True,
              help="Work directory: muheam.toml, shared/, etcd/, run/ and log/ live here.")
@click.option("--lease-ttl", type=click.IntRange(config_mod.ETCD_MIN_TTL, 600), default=None,
              help=f"Lease TTL in seconds for a new cluster (default {config_mod.DEFAULT_TTL}).")
@click.option("--security", type=click.Choice(config_mod.SECURITY_MODES), default=None,
              help="For a new cluster: 'curve' (the default: CURVE keys made now, every ZeroMQ port authenticated "
                   "and encrypted) or 'none' (a trusted network only).")
@format_option
def cluster_up(nodes: int, directory: str, lease_ttl: int | None, security: str | None, fmt: str) -> None:
    """Start a local cluster: embedded etcd, init (first time), and the nodes as daemons.

    Idempotent: on an existing DIR it starts only what is not running.  Nodes beyond --nodes that are running
    are left running and listed (JSON: other_running_nodes).  The client key file the CLI uses (with -c DIR/
    muheam.toml) is shown as client_key_file; give it to other programs with MUHEAM_CLIENT_KEY.
    """
    from muheam.ops.cluster import cluster_up as up

    result = up(Path(directory), nodes, lease_ttl, security)
    if fmt == "json":
        emit(result, fmt)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"cluster {result['config']['cluster_name']} is up")
    for col in ("Node", "PID", "Epoch", "Peer endpoint", "Client endpoint", "SQL endpoint"):
        table.add_column(col)
    for n in result["nodes"]:
        table.add_row(str(n["node_id"]), str(n["pid"]), str(n["epoch"]), n["peer_endpoint"], n["client_endpoint"],
                      n.get("sql_endpoint") or "-")
    (Console() if sys.stdout.isatty() else Console(width=160)).print(table)
    others = result.get("other_running_nodes") or []
    if others:
        ids = ", ".join(str(n["node_id"]) for n in others)
        click.echo(f"note: {len(others)} more node(s) of this cluster are running, beyond --nodes {nodes}: {ids} "
                   f"(pids {', '.join(str(n['pid']) for n in others)}); they were left as they are. Stop one with "
                   f"'muheam node stop -c {result['config_file']} --node-id N', or all with 'muheam cluster down "
                   f"--dir {directory}'")
    click.echo(f"config: {result['config_file']}   (try: muheam list -c {result['config_file']})")
    if result.get("client_key_file"):
        click.echo(f"client key: {result['client_key_file']}   (programs: MUHEAM_CLIENT_KEY=that file)")
    else:
        click.echo("security = none: ports are not authenticated (a trusted network only)")


@cluster.command("down")
@click.option("--dir", "directory", type=click.Path(file_okay=False), required=True,
              help="The work directory given to 'cluster up'.")
@click.option("--mode", type=click.Choice(["smart", "fast", "immediate"]), default="fast", show_default=True)
@format_option
def cluster_down(directory: str, mode: str, fmt: str) -> None:
    """Stop every node and the embedded etcd of a local cluster."""
    from muheam.ops.cluster import cluster_down as down

    result = down(Path(directory), mode)
    if fmt == "json":
        emit(result, fmt)
    else:
        click.echo(f"stopped nodes {result['stopped_nodes'] or 'none'}; embedded etcd "
                   f"{'stopped' if result['etcd_stopped'] else 'was not running'}")
