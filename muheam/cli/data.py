"""``muheam table``, ``get``, ``put``, ``scan``: operator access to tables and rows."""

from __future__ import annotations

import math
import re
from typing import Any

import click

from muheam.cli.common import (
    INT64_MAX, INT64_MIN, SignedArgs, config_options, dumps, emit, format_option, int64_type, load_config,
    node_choice, table_text,
)
from muheam.errors import ConfigError, MuheamError

# tables and rows -------------------------------------------------------------------------------------------
MAX_BUCKETS = 1 << 14
"""The most hash chains a table may have (``muheam.engine.catalog.CREATE_MAX_BUCKETS``, which a test holds this
to); importing the engine to read it would slow every command down."""


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


_INT = re.compile(r"[+-]?[0-9]+\Z")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")
_FLOAT_SPECIAL = re.compile(r"[+-]?(inf|infinity|nan)\Z", re.IGNORECASE)


def parse_value(name: str, typ: str, raw: str) -> Any:
    """One ``put`` value as its column's type, as PostgreSQL's int8in and float8in take it.

    Python's ``int()`` and ``float()`` are more lenient than PostgreSQL: they take ``1_000``, non-ASCII
    digits and surrounding blanks, and ``float('1e400')`` is silently ``inf`` (``1e-400`` silently 0).  Plain
    ASCII digits are taken; a finite-looking float that does not fit a double is out of range (PostgreSQL: "is
    out of range for type double precision"); ``NaN``, ``Infinity`` and ``inf`` are taken as written, as
    PostgreSQL does.  Raises ``click.UsageError`` (exit 2) naming the column and the form."""
    item = f"{name}={raw}"
    if typ == "int64":
        if not _INT.match(raw):
            raise click.UsageError(f"{item!r}: {name} is int64; write an integer such as -42 (digits 0-9 only, no "
                                   "'_' or blanks)")
        # more than 19 significant digits is out of range anyway; int() of thousands of digits would raise
        value = int(raw) if len(raw.lstrip("+-").lstrip("0")) <= 19 else INT64_MAX + 1
        if not INT64_MIN <= value <= INT64_MAX:
            raise click.UsageError(f"{item!r}: {name} is int64, {INT64_MIN} .. {INT64_MAX}")
        return value
    if typ == "float64":
        if _FLOAT_SPECIAL.match(raw):
            return float(raw)
        match = _FLOAT.match(raw)
        if not match:
            raise click.UsageError(f"{item!r}: {name} is float64; write a number such as -1.5 or 2.5e-3 (or NaN, "
                                   "Infinity, -Infinity)")
        number = float(raw)
        if math.isinf(number) or number == 0.0 and re.search(r"[1-9]", match.group(1)):
            raise click.UsageError(f"{item!r}: {raw} is out of range for float64 (a double holds 0 and "
                                   "magnitudes from about 4.9e-324 to 1.8e308)")
        return number
    return raw


def _coerce(columns: list[list[str]], assignments: tuple[str, ...]) -> dict[str, Any]:
    types = dict((name, typ) for name, typ in columns)
    row: dict[str, Any] = {}
    for item in assignments:
        name, sep, raw = item.partition("=")
        if not sep or name not in types:
            raise click.UsageError(f"{item!r}: write COLUMN=VALUE with a column of {', '.join(types)}")
        row[name] = parse_value(name, types[name], raw)
    return row


def table_columns(name: str, columns: tuple[str, ...]) -> dict[str, str]:
    """The ``COLUMN:TYPE`` arguments of ``table create``, checked here as the node would check them (names, types,
    a column declared twice, the row width) so that a mistake is a usage error (exit 2) naming the allowed
    values, not a failed request; a column given twice was silently kept once (the last type won)."""
    from muheam.storage.errors import SchemaError
    from muheam.storage.schema import Schema

    pairs = []
    for spec in columns:
        col, sep, typ = spec.partition(":")
        if not sep:
            raise click.UsageError(f"{spec!r}: write COLUMN:TYPE, e.g. balance:int64 or name:text(16)")
        pairs.append((col, typ))
    try:
        Schema(name, pairs)
    except SchemaError as exc:
        raise click.UsageError(str(exc)) from None
    return dict(pairs)


@click.group()
def table() -> None:
    """Create, drop and list tables."""


@table.command("create")
@click.argument("name")
@click.argument("columns", nargs=-1, required=True)
@click.option("--expected-rows", type=click.IntRange(0, INT64_MAX), default=0, help="Sizes the hash buckets.")
@click.option("--buckets", type=click.IntRange(0, MAX_BUCKETS), default=0,
              help="Hash chains (0: from --expected-rows); chains are the unit of block ownership between nodes.")
@format_option
@node_choice
@config_options
def table_create(name: str, columns: tuple[str, ...], expected_rows: int, buckets: int, fmt: str,
                 **kw: Any) -> None:
    """Create table NAME with COLUMN:TYPE ... (types: int64, float64, text(N)); the key is an implicit int64."""
    cols = table_columns(name, columns)
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
        click.echo(f"{key}\t" + "\t".join(f"{c}={table_text(v)}" for c, v in row.items()))


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
        click.echo(f"{k}\t" + "\t".join(f"{c}={table_text(v)}" for c, v in r.items()))
