"""The ``muheam`` command line.

Conventions from patronictl and the pg tools: ``-c/--config`` (TOML; ``MUHEAM_*`` environment variables and
flags override it), ``--format table|json``, ``--watch`` to refresh, and exit codes 0 (success), 1 (the operation
failed) and 2 (bad usage or configuration).  Errors are one line naming the problem and what to do next.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, NoReturn, TypeVar

import click

from muheam import __version__
from muheam import config as config_mod
from muheam.config import Config
from muheam.errors import MuheamError

F = TypeVar("F", bound=Callable[..., Any])


def config_options(fn: F) -> F:
    """``-c`` plus the flags that override single config keys."""
    for opt in reversed([
        click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), envvar="MUHEAM_CONFIG",
                     help="Cluster config file (TOML). Default: $MUHEAM_CONFIG, else ./muheam.toml."),
        click.option("--etcd", "etcd_endpoints", help="Comma-separated etcd endpoints (overrides etcd_endpoints)."),
        click.option("--shared-dir", help="Shared data directory (overrides shared_dir)."),
        click.option("--cluster-name", help="Cluster name (overrides cluster_name)."),
        click.option("--lease-ttl", type=int, help="Lease TTL in whole seconds (overrides lease_ttl)."),
    ]):
        fn = opt(fn)
    return fn


def load_config(kw: dict[str, Any], require_shared_dir: bool = True, extra: dict[str, Any] | None = None) -> Config:
    path = kw.pop("config_path", None)
    if path is None and Path("muheam.toml").exists():
        path = "muheam.toml"
    etcd = kw.pop("etcd_endpoints", None)
    overrides = {
        "etcd_endpoints": [e.strip() for e in etcd.split(",")] if etcd else None,
        "shared_dir": kw.pop("shared_dir", None),
        "cluster_name": kw.pop("cluster_name", None),
        "lease_ttl": kw.pop("lease_ttl", None),
        **(extra or {}),
    }
    return config_mod.load(path, overrides=overrides, require_shared_dir=require_shared_dir)


def emit(data: Any, fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps(data, indent=None, sort_keys=True, default=str))


format_option = click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
                             show_default=True, help="Output format.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="muheam")
def cli() -> None:
    """MUHEAM: a shared-disk database cluster manager.

    Start a local 3-node cluster with 'muheam cluster up --nodes 3 --dir DIR', look at it with
    'muheam list -c DIR/muheam.toml', stop it with 'muheam cluster down --dir DIR'.
    """


# cluster ----------------------------------------------------------------------------------------------------
@cli.group()
def cluster() -> None:
    """Create, start and stop a whole cluster."""


@cluster.command("init")
@config_options
@format_option
def cluster_init(fmt: str, **kw: Any) -> None:
    """Create the shared-directory layout and register the cluster in etcd.

    Refuses a directory that holds another cluster or unrelated files, and a cluster name etcd already knows.
    """
    from muheam.cluster import init_cluster
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
@format_option
def cluster_up(nodes: int, directory: str, lease_ttl: int | None, fmt: str) -> None:
    """Start a local cluster: embedded etcd, init (first time), and the nodes as daemons.

    Idempotent: on an existing DIR it starts only what is not running.
    """
    from muheam.cluster import cluster_up as up

    result = up(Path(directory), nodes, lease_ttl)
    if fmt == "json":
        emit(result, fmt)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"cluster {result['config']['cluster_name']} is up")
    for col in ("Node", "PID", "Epoch", "Peer endpoint", "Client endpoint"):
        table.add_column(col)
    for n in result["nodes"]:
        table.add_row(str(n["node_id"]), str(n["pid"]), str(n["epoch"]), n["peer_endpoint"], n["client_endpoint"])
    (Console() if sys.stdout.isatty() else Console(width=160)).print(table)
    click.echo(f"config: {result['config_file']}   (try: muheam list -c {result['config_file']})")


@cluster.command("down")
@click.option("--dir", "directory", type=click.Path(file_okay=False), required=True,
              help="The work directory given to 'cluster up'.")
@click.option("--mode", type=click.Choice(["smart", "fast", "immediate"]), default="fast", show_default=True)
@format_option
def cluster_down(directory: str, mode: str, fmt: str) -> None:
    """Stop every node and the embedded etcd of a local cluster."""
    from muheam.cluster import cluster_down as down

    result = down(Path(directory), mode)
    if fmt == "json":
        emit(result, fmt)
    else:
        click.echo(f"stopped nodes {result['stopped_nodes'] or 'none'}; embedded etcd "
                   f"{'stopped' if result['etcd_stopped'] else 'was not running'}")


# node -------------------------------------------------------------------------------------------------------
@cli.group()
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
def node_start(node_id: int, daemon: bool, log_file: str | None, accept_data_loss: bool, **kw: Any) -> None:
    """Join the cluster under a new epoch and serve until stopped or fenced (exit 3 when self-fenced)."""
    cfg = load_config(kw)
    cfg.node(node_id)
    if daemon:
        from muheam.cluster import start_node_daemon
        from muheam.membership import connect

        backend = connect(cfg.etcd_endpoints)
        try:
            member = start_node_daemon(cfg, node_id, backend, accept_data_loss=accept_data_loss)
        finally:
            backend.close()
        click.echo(f"node {node_id} started: pid {member.pid}, epoch {member.epoch}")
        return
    handler: logging.Handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"%(asctime)s node-{node_id} %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    from muheam.node import run_node

    try:
        code = run_node(cfg, node_id, accept_data_loss)
    except MuheamError as exc:
        logging.getLogger("muheam.node").error("%s", exc)
        raise
    leave(code)  # gRPC threads must not delay the exit of a stopped or fenced node


def leave(code: int) -> NoReturn:
    """Flush and exit at once, skipping the interpreter's shutdown: a process that used an etcd watch can hang
    for ever in gRPC's clean-up at exit (a stopped node; ``walmerge --follow`` after its summary was printed)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    os._exit(code)


@node.command("stop")
@click.option("--node-id", type=click.IntRange(1, config_mod.MAX_NODE_ID), required=True)
@click.option("--mode", type=click.Choice(["smart", "fast", "immediate"]), default="fast", show_default=True,
              help="smart: wait for clients; fast: abort them; immediate: no clean shutdown.")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait.")
@config_options
def node_stop(node_id: int, mode: str, timeout: float, **kw: Any) -> None:
    """Stop a node; the lease is revoked so peers learn at once."""
    from muheam.cluster import stop_node
    from muheam.membership import connect

    cfg = load_config(kw, require_shared_dir=False)
    backend = None
    try:
        backend = connect(cfg.etcd_endpoints, timeout=1.0)
    except MuheamError:
        pass
    if not stop_node(cfg, node_id, mode, timeout, backend):
        raise MuheamError(f"node {node_id} is not running (no live pid file under {cfg.run_dir / 'run'})")
    click.echo(f"node {node_id} stopped ({mode})")


# list / watch -----------------------------------------------------------------------------------------------
@cli.command("list")
@config_options
@format_option
@click.option("--watch", "watch_s", type=float, default=None, help="Refresh every N seconds until Ctrl-C.")
def list_cmd(fmt: str, watch_s: float | None, **kw: Any) -> None:
    """Show the members: node, host, endpoints, state, epoch, lease TTL left, Lamport clock."""
    from muheam.views import member_rows, print_members

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


@cli.command("watch")
@config_options
@format_option
@click.option("--count", type=int, default=None, help="Exit after this many events (not counting current members).")
@click.option("--timeout", type=float, default=None, help="Exit after this many seconds.")
def watch_cmd(fmt: str, count: int | None, timeout: float | None, **kw: Any) -> None:
    """Print the current members, then every membership event (joined, left, expired) as it happens.

    Survives losing etcd: it resumes from the last revision it printed, missing and repeating nothing.
    """
    from muheam.views import watch_events

    cfg = load_config(kw, require_shared_dir=False)
    watch_events(cfg, fmt, count, timeout)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except MuheamError as exc:
        click.echo(f"muheam: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - never a bare traceback at the operator
        if os.environ.get("MUHEAM_DEBUG"):
            raise
        click.echo(f"muheam: internal error: {type(exc).__name__}: {exc} (set MUHEAM_DEBUG=1 for a traceback "
                   "and report it)", err=True)
        sys.exit(1)
    sys.exit(0)


# Commands defined in sibling modules register themselves on import (kept apart to keep modules small).
from muheam import cli_bench, cli_data, cli_recover  # noqa: E402,F401  isort: skip
