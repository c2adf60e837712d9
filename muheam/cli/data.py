"""``muheam table``, ``get``, ``put``, ``scan``: operator access to tables and rows."""

from __future__ import annotations

from typing import Any

import click

from muheam.cli.common import (
    INT64_MAX, INT64_MIN, SignedArgs, config_options, dumps, emit, format_option, int64_type, load_config,
    node_choice,
)
from muheam.errors import ConfigError, MuheamError

# tables and rows -------------------------------------------------------------------------------------------


def _stopped(cfg: Any, node_id: int) -> str | None:
    """Why ``node_id`` is known not to run on this host (its pid file names a process that has exited), or None.
    No pid file says nothing (a node in the foreground has none); the client then learns of a refused
    connection at once."""
    from muheam.ops.cluster import pid_file
    from muheam.ops.procs import pid_alive, read_pid

    path = pid_file(cfg, node_id)
    pid = read_pid(path)
    if pid is None or pid_alive(pid):
        return None
    return f"its pid file {path} names pid {pid}, which has exited"


def _connection(kw: dict[str, Any]) -> Any:
    from muheam.client import connect

    node_id = kw.pop("node_id", None)
    cfg = load_config(kw, require_shared_dir=False)
    if not cfg.nodes:
        raise ConfigError("nodes: no node configured; add [nodes.N] tables or use the config 'cluster up' wrote")
    if node_id is None:  # the lowest node not known to be stopped
        node_id = next((n for n in sorted(cfg.nodes) if _stopped(cfg, n) is None), min(cfg.nodes))
    why = _stopped(cfg, node_id)
    if why is not None:
        where = f" -c {cfg.source}" if cfg.source else ""
        raise MuheamError(f"node {node_id} is not running ({why}); start it with 'muheam node start{where} "
                          f"--node-id {node_id} --daemon', or pick a running node with --node-id")
    from muheam.security.setup import client_for

    return connect(cfg.node(node_id).client_endpoint, key=client_for(cfg))


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
        if typ == "int64" and not INT64_MIN <= row[name] <= INT64_MAX:
            raise click.UsageError(f"{item!r}: {name} is int64, {INT64_MIN} .. {INT64_MAX}")
    return row


@click.group()
def table() -> None:
    """Create, drop and list tables."""


@table.command("create")
@click.argument("name")
@click.argument("columns", nargs=-1, required=True)
@click.option("--expected-rows", type=int, default=0, help="Sizes the hash buckets.")
@click.option("--buckets", type=click.IntRange(min=0), default=0,
              help="Hash chains (0: from --expected-rows); chains are the unit of block ownership between nodes.")
@format_option
@node_choice
@config_options
def table_create(name: str, columns: tuple[str, ...], expected_rows: int, buckets: int, fmt: str,
                 **kw: Any) -> None:
    """Create table NAME with COLUMN:TYPE ... (types: int64, float64, text(N)); the key is an implicit int64."""
    cols = {}
    for spec in columns:
        col, sep, typ = spec.partition(":")
        if not sep:
            raise click.UsageError(f"{spec!r}: write COLUMN:TYPE, e.g. balance:int64 or name:text(16)")
        cols[col] = typ
    with _connection(kw) as conn:
        info = conn.create_table(name, cols, expected_rows, buckets)
    if fmt == "json":
        emit(info, fmt)
        return
    click.echo(f"table {info['name']} created (id {info['table_id']})")


@table.command("drop")
@click.argument("name")
@click.option("--if-exists", is_flag=True, help="No error when there is no such table.")
@format_option
@node_choice
@config_options
def table_drop(name: str, if_exists: bool, fmt: str, **kw: Any) -> None:
    """Drop table NAME and its rows for the whole cluster, at once (not part of any transaction)."""
    with _connection(kw) as conn:
        info = conn.drop_table(name, if_exists)
    if fmt == "json":
        emit(info, fmt)
        return
    click.echo(f"table {name} dropped (id {info['table_id']})" if info.get("dropped") else f"no table {name}")


@table.command("list")
@format_option
@node_choice
@config_options
def table_list(fmt: str, **kw: Any) -> None:
    """List tables, their columns and their hash chains (buckets)."""
    with _connection(kw) as conn:
        tables = conn.tables()
    if fmt == "json":
        emit(tables, fmt)
        return
    for t in tables:
        click.echo(f"{t['table_id']:>4}  {t['name']:<20} key:int64 " + " ".join(f"{c}:{ty}" for c, ty in t["columns"])
                   + (f"  buckets:{t['buckets']}" if "buckets" in t else ""))


@click.command("get", cls=SignedArgs)
@click.argument("table_name")
@click.argument("key", type=int64_type)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="json", show_default=True,
              help="Output format (json: one object with the key and the columns; table: KEY<tab>col=value...).")
@node_choice
@config_options
def get_cmd(table_name: str, key: int, fmt: str, **kw: Any) -> None:
    """Print one row, as JSON by default (exit 1 if there is none).  KEY may be negative: muheam get t -5."""
    with _connection(kw) as conn, conn.transaction() as tx:
        row = tx.get(table_name, key)
    if row is None:
        raise MuheamError(f"no row with key {key} in {table_name}")
    if fmt == "json":
        click.echo(dumps({"key": key, **row}))
    else:
        click.echo(f"{key}\t" + "\t".join(f"{c}={v}" for c, v in row.items()))


@click.command("put", cls=SignedArgs)
@click.argument("table_name")
@click.argument("key", type=int64_type)
@click.argument("values", nargs=-1, required=True)
@format_option
@node_choice
@config_options
def put_cmd(table_name: str, key: int, values: tuple[str, ...], fmt: str, **kw: Any) -> None:
    """Insert or update one row: muheam put TABLE KEY col=value ... (one transaction)."""
    with _connection(kw) as conn:
        columns = next((t["columns"] for t in conn.tables() if t["name"] == table_name), None)
        if columns is None:
            raise MuheamError(f"table {table_name!r} does not exist; create it with 'muheam table create'")
        row = _coerce(columns, values)
        with conn.transaction() as tx:
            action = "insert" if tx.get(table_name, key) is None else "update"
            if action == "insert":
                tx.insert(table_name, key, row)
            else:
                tx.update(table_name, key, row)
    if fmt == "json":
        emit({"table": table_name, "key": key, "action": action}, fmt)
    else:
        click.echo(f"put {table_name} {key}")


@click.command("scan")
@click.argument("table_name")
@format_option
@node_choice
@config_options
def scan_cmd(table_name: str, fmt: str, **kw: Any) -> None:
    """Print every row of a table (one snapshot), ordered by key.

    JSON is strict: a float column holding NaN or an infinity is written as the string "NaN", "Infinity" or
    "-Infinity"."""
    with _connection(kw) as conn, conn.transaction() as tx:
        rows = sorted(tx.scan(table_name))
    if fmt == "json":
        emit([{"key": k, **r} for k, r in rows], fmt)
        return
    for k, r in rows:
        click.echo(f"{k}\t" + "\t".join(f"{c}={v}" for c, v in r.items()))
