"""``muheam table``, ``get``, ``put``, ``scan``: operator access to tables and rows."""

from __future__ import annotations

import json
from typing import Any

import click

from muheam.cli.common import config_options, emit, format_option, load_config, node_choice
from muheam.errors import ConfigError, MuheamError

# tables and rows -------------------------------------------------------------------------------------------


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


@click.group()
def table() -> None:
    """Create and list tables."""


@table.command("create")
@click.argument("name")
@click.argument("columns", nargs=-1, required=True)
@click.option("--expected-rows", type=int, default=0, help="Sizes the hash buckets.")
@click.option("--buckets", type=click.IntRange(min=0), default=0,
              help="Hash chains (0: from --expected-rows); chains are the unit of block ownership between nodes.")
@node_choice
@config_options
def table_create(name: str, columns: tuple[str, ...], expected_rows: int, buckets: int, **kw: Any) -> None:
    """Create table NAME with COLUMN:TYPE ... (types: int64, float64, text(N)); the key is an implicit int64."""
    cols = {}
    for spec in columns:
        col, sep, typ = spec.partition(":")
        if not sep:
            raise click.UsageError(f"{spec!r}: write COLUMN:TYPE, e.g. balance:int64 or name:text(16)")
        cols[col] = typ
    with _connection(kw) as conn:
        info = conn.create_table(name, cols, expected_rows, buckets)
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


@click.command("get")
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


@click.command("put")
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


@click.command("scan")
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
