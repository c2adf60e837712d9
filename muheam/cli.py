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
from typing import Any, Callable, TypeVar

import click

from muheam import __version__
from muheam import config as config_mod
from muheam.config import Config
from muheam.errors import ConfigError, MuheamError

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
    logging.shutdown()
    os._exit(code)  # gRPC threads must not delay the exit of a stopped or fenced node


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


# tables and rows -------------------------------------------------------------------------------------------
node_choice = click.option("--node-id", type=click.IntRange(1, config_mod.MAX_NODE_ID), default=None,
                           help="Node to talk to (default: the lowest configured node id).")


def _connection(kw: dict[str, Any]) -> Any:
    from muheam.client import connect

    node_id = kw.pop("node_id", None)
    cfg = load_config(kw, require_shared_dir=False)
    if not cfg.nodes:
        raise ConfigError("nodes: no node configured; add [nodes.N] tables or use the config 'cluster up' wrote")
    return connect(cfg.node(node_id if node_id is not None else min(cfg.nodes)).client_endpoint, timeout=10)


def _coerce(columns: list[list[str]], assignments: tuple[str, ...]) -> dict[str, Any]:
    types = dict((name, typ) for name, typ in columns)
    row: dict[str, Any] = {}
    for item in assignments:
        name, sep, raw = item.partition("=")
        if not sep or name not in types:
            raise click.UsageError(f"{item!r}: write COLUMN=VALUE with a column of {', '.join(types)}")
        typ = types[name]
        try:
            row[name] = int(raw) if typ == "int64" else float(raw) if typ == "float64" else raw
        except ValueError:
            raise click.UsageError(f"{item!r}: {name} is {typ}") from None
    return row


@cli.group()
def table() -> None:
    """Create and list tables."""


@table.command("create")
@click.argument("name")
@click.argument("columns", nargs=-1, required=True)
@click.option("--expected-rows", type=int, default=0, help="Sizes the hash buckets.")
@node_choice
@config_options
def table_create(name: str, columns: tuple[str, ...], expected_rows: int, **kw: Any) -> None:
    """Create table NAME with COLUMN:TYPE ... (types: int64, float64, text(N)); the key is an implicit int64."""
    cols = {}
    for spec in columns:
        col, sep, typ = spec.partition(":")
        if not sep:
            raise click.UsageError(f"{spec!r}: write COLUMN:TYPE, e.g. balance:int64 or name:text(16)")
        cols[col] = typ
    with _connection(kw) as conn:
        info = conn.create_table(name, cols, expected_rows)
    click.echo(f"table {info['name']} created (id {info['table_id']})")


@table.command("list")
@format_option
@node_choice
@config_options
def table_list(fmt: str, **kw: Any) -> None:
    """List tables and their columns."""
    with _connection(kw) as conn:
        tables = conn.tables()
    if fmt == "json":
        emit(tables, fmt)
        return
    for t in tables:
        click.echo(f"{t['table_id']:>4}  {t['name']:<20} key:int64 " + " ".join(f"{c}:{ty}" for c, ty in t["columns"]))


@cli.command("get")
@click.argument("table_name")
@click.argument("key", type=int)
@node_choice
@config_options
def get_cmd(table_name: str, key: int, **kw: Any) -> None:
    """Print one row as JSON (exit 1 if there is none)."""
    with _connection(kw) as conn, conn.transaction() as tx:
        row = tx.get(table_name, key)
    if row is None:
        raise MuheamError(f"no row with key {key} in {table_name}")
    click.echo(json.dumps({"key": key, **row}, sort_keys=True))


@cli.command("put")
@click.argument("table_name")
@click.argument("key", type=int)
@click.argument("values", nargs=-1, required=True)
@node_choice
@config_options
def put_cmd(table_name: str, key: int, values: tuple[str, ...], **kw: Any) -> None:
    """Insert or update one row: muheam put TABLE KEY col=value ... (one transaction)."""
    with _connection(kw) as conn:
        columns = next((t["columns"] for t in conn.tables() if t["name"] == table_name), None)
        if columns is None:
            raise MuheamError(f"table {table_name!r} does not exist; create it with 'muheam table create'")
        row = _coerce(columns, values)
        with conn.transaction() as tx:
            if tx.get(table_name, key) is None:
                tx.insert(table_name, key, row)
            else:
                tx.update(table_name, key, row)
    click.echo(f"put {table_name} {key}")


@cli.command("scan")
@click.argument("table_name")
@format_option
@node_choice
@config_options
def scan_cmd(table_name: str, fmt: str, **kw: Any) -> None:
    """Print every row of a table (one snapshot), ordered by key."""
    with _connection(kw) as conn, conn.transaction() as tx:
        rows = sorted(tx.scan(table_name))
    if fmt == "json":
        emit([{"key": k, **r} for k, r in rows], fmt)
        return
    for k, r in rows:
        click.echo(f"{k}\t" + "\t".join(f"{c}={v}" for c, v in r.items()))


@cli.command("waldump")
@click.option("--node-id", type=click.IntRange(1, config_mod.MAX_NODE_ID), required=True, help="Whose WAL.")
@click.option("--xid", type=int, default=None, help="Only records of this transaction.")
@click.option("--kind", default=None, help="Only records of this kind (e.g. COMMIT, HEAP_INSERT).")
@click.option("--stats", is_flag=True, help="Summary per record kind instead of records.")
@click.option("--limit", type=int, default=None, help="Stop after this many records.")
@format_option
@config_options
def waldump_cmd(node_id: int, xid: int | None, kind: str | None, stats: bool, limit: int | None, fmt: str,
                **kw: Any) -> None:
    """Print a node's WAL records (lsn, prev, glsn, xid, node, epoch, kind, length), like pg_waldump."""
    from itertools import islice

    from muheam import waldump

    cfg = load_config(kw)
    rows = waldump.records(cfg.shared_dir, node_id, xid, waldump.parse_kind(kind) if kind else None)
    if stats:
        summary = waldump.stats(rows)
        if fmt == "json":
            emit(summary, fmt)
        else:
            click.echo(f"records {summary['records']}  bytes {summary['bytes']}  transactions "
                       f"{summary['transactions']}")
            for name, v in summary["by_kind"].items():
                click.echo(f"  {name:<22} {v['records']:>10} records {v['bytes']:>12} bytes")
        return
    for row in islice(rows, limit):
        if fmt == "json":
            emit(row, fmt)
        elif "torn_tail" in row:
            click.echo(f"torn tail: {row['torn_tail']}")
        else:
            click.echo(f"lsn: {row['lsn']}, prev {row['prev']}, glsn: {row['glsn']}, tx: {row['xid']}, "
                       f"node: {row['node']}, epoch: {row['epoch']}, len: {row['len']}, desc: {row['kind']}")


# walmerge ---------------------------------------------------------------------------------------------------
@cli.command("walmerge")
@click.option("--shared-dir", "shared", type=click.Path(file_okay=False), default=None,
              help="Shared directory whose wal/node-*/ streams are merged (default: shared_dir of the config).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Write the merged stream here (a new or empty directory).")
@click.option("--verify", "verify_", is_flag=True,
              help="Check the inputs (and --out, or --merged) for CRC, chain, order, missing segments.")
@click.option("--merged", type=click.Path(file_okay=False), default=None, help="Verify this merged stream.")
@click.option("--allow-torn-tail", is_flag=True, help="A torn last record (after a crash) is not a problem.")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), envvar="MUHEAM_CONFIG",
              help="Cluster config file (for shared_dir).")
@format_option
def walmerge_cmd(shared: str | None, out: str | None, verify_: bool, merged: str | None, allow_torn_tail: bool,
                 config_path: str | None, fmt: str) -> None:
    """Merge every node's WAL into one stream in GLSN order, in the very format of one node's WAL.

    Exit codes with --verify: 0 clean, 1 problems found, 2 unusable input.
    """
    from walmerge.merge import merge
    from walmerge.verify import verify

    if shared is None and merged is None:
        shared = str(load_config({"config_path": config_path}, require_shared_dir=True).shared_dir)
    if shared is not None and not Path(shared).is_dir():
        raise ConfigError(f"--shared-dir: {shared} does not exist")
    if out is None and not verify_:
        raise click.UsageError("give --out DIR to merge, or --verify to check")
    result: dict[str, Any] = {}
    if out is not None:
        assert shared is not None
        summary = _merge_with_progress(merge, shared, out, fmt == "table" and sys.stderr.isatty())
        result["merge"] = {
            "records": summary.records, "bytes_in": summary.bytes_in, "bytes_out": summary.bytes_out,
            "per_node": summary.per_node, "segments": len(summary.segments), "skipped_fenced": summary.skipped_fenced,
            "first_glsn": summary.first_glsn, "last_glsn": summary.last_glsn, "seconds": round(summary.seconds, 3),
            "mb_per_s": round(summary.mb_per_s, 1), "out": str(out),
        }
        if fmt == "table":
            click.echo(f"merged {summary.records} records from {len(summary.per_node)} nodes "
                       f"({summary.bytes_in / 1e6:.1f} MB in, {len(summary.segments)} segments out) "
                       f"in {summary.seconds:.2f} s into {out}")
    code = 0
    if verify_:
        report = verify(shared, out or merged, allow_torn_tail=allow_torn_tail)
        code = report.exit_code
        result["verify"] = {"status": str(report.status.value) if hasattr(report.status, "value") else
                            str(report.status), "problems": [str(p) for p in report.problems],
                            "unusable": list(report.unusable)}
        if fmt == "table":
            for line in report.unusable:
                click.echo(f"unusable: {line}")
            for problem in report.problems:
                click.echo(f"problem: {problem}")
            click.echo(f"verify: {result['verify']['status']}")
    if fmt == "json":
        emit(result, fmt)
    if code:
        sys.exit(code)


def _merge_with_progress(merge: Any, shared: str, out: str, bar: bool) -> Any:
    if not bar:
        return merge(shared, out)
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), transient=True) as progress:
        task = progress.add_task("merging WAL", total=None)
        return merge(shared, out, progress=lambda done, total: progress.update(task, completed=done, total=total))


# bench ------------------------------------------------------------------------------------------------------
@cli.group()
def bench() -> None:
    """Benchmarks that print JSON, measured against a baseline in the same run."""


@bench.command("membership")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the default output).")
@click.option("--kills", type=click.IntRange(1, 20), default=3, show_default=True)
@click.option("--stops", type=click.IntRange(1, 20), default=3, show_default=True)
@click.option("--lease-ttl", type=click.IntRange(config_mod.ETCD_MIN_TTL, 60), default=config_mod.DEFAULT_TTL)
def bench_membership(as_json: bool, kills: int, stops: int, lease_ttl: int) -> None:
    """Failure detection: kill -9 and graceful stops of real nodes; median detection times in ms."""
    from muheam.bench.membership import run

    emit(run(kills=kills, stops=stops, lease_ttl=lease_ttl), "json")


@bench.command("xid")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the default output).")
@click.option("--nodes", type=click.IntRange(1, 8), default=3, show_default=True)
@click.option("--seconds", type=float, default=5.0, show_default=True, help="Length of the throughput phase.")
@click.option("--per-request", type=click.IntRange(1, 10_000), default=16, show_default=True,
              help="XIDs a client asks for per request in the throughput phase.")
def bench_xid(as_json: bool, nodes: int, seconds: float, per_request: int) -> None:
    """Global XID allocation: throughput, unbatched latency, messages per allocation, vs a ZeroMQ round trip."""
    from muheam.bench.xid import run

    emit(run(nodes=nodes, seconds=seconds, per_request=per_request), "json")


@bench.command("lock")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the default output).")
@click.option("--transfers", type=click.IntRange(10, 100_000), default=500, show_default=True)
def bench_lock(as_json: bool, transfers: int) -> None:
    """A lock bouncing between two nodes: re-acquire and transfer cost vs a ZeroMQ round trip."""
    from muheam.bench.lock import run

    emit(run(transfers=transfers), "json")


@bench.command("kv")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the default output).")
@click.option("--clients", type=click.IntRange(1, 64), default=8, show_default=True)
@click.option("--seconds", type=float, default=5.0, show_default=True)
def bench_kv(as_json: bool, clients: int, seconds: float) -> None:
    """One node: commits/s and gets/s with concurrent clients, WAL MB/s, fsyncs per commit (group commit)."""
    from muheam.bench.kv import run

    emit(run(clients=clients, seconds=seconds), "json")


@bench.command("walmerge")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the default output).")
@click.option("--mb", type=click.IntRange(10, 100_000), default=1024, show_default=True, help="Input WAL size.")
@click.option("--nodes", type=click.IntRange(1, 16), default=3, show_default=True)
def bench_walmerge(as_json: bool, mb: int, nodes: int) -> None:
    """Merge speed against heapq.merge and cp of the same input, measured in one run."""
    from muheam.bench.walmerge import run

    emit(run(total_bytes=mb << 20, nodes=nodes), "json")


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
