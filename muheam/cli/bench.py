"""``muheam bench ...``: benchmarks that start what they need and print one JSON object."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar, cast

import click

from muheam import config as config_mod
from muheam.cli.common import FiniteRange, emit

F = TypeVar("F", bound=Callable[..., Any])


report_option = click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None,
                             help="Also write the result as DIR/NAME.json and its figures as DIR/NAME.png.")


def without_report(fn: F) -> F:
    """The command body never sees ``--report``: ``show`` reads it from the click context."""
    @functools.wraps(fn)
    def wrapper(*args: Any, report_dir: str | None = None, **kw: Any) -> Any:
        return fn(*args, **kw)
    return cast(F, wrapper)


def output_options(fn: F) -> F:
    """``--format table|json`` (json by default: benchmarks are read by programs), ``--json``, its alias, and
    ``--report DIR``."""
    fn = report_option(without_report(fn))
    fn = click.option("--json", "as_json", is_flag=True, help="Alias of --format json.")(fn)
    return click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="json",
                        show_default=True, help="Output format: one JSON object, or 'key  value' lines.")(fn)


def write_report(result: dict[str, Any]) -> None:
    ctx = click.get_current_context(silent=True)
    where = ctx.params.get("report_dir") if ctx is not None else None
    if where:
        from muheam.bench.figures import write

        write(result, Path(where), ctx.info_name or "bench")  # type: ignore[union-attr]


def show(result: dict[str, Any], fmt: str, as_json: bool) -> None:
    write_report(result)
    if as_json or fmt == "json":
        emit(result, "json")
        return
    width = max((len(k) for k in result), default=0)
    for key, value in result.items():
        click.echo(f"{key:<{width}}  {value}")

# bench ------------------------------------------------------------------------------------------------------
@click.group()
def bench() -> None:
    """Benchmarks, measured against a baseline in the same run: one JSON object (--format json, the default, or
    its alias --json) or 'key  value' lines (--format table)."""


@bench.command("membership")
@output_options
@click.option("--kills", type=click.IntRange(1, 20), default=3, show_default=True)
@click.option("--stops", type=click.IntRange(1, 20), default=3, show_default=True)
@click.option("--lease-ttl", type=click.IntRange(config_mod.ETCD_MIN_TTL, 60), default=config_mod.DEFAULT_TTL)
def bench_membership(fmt: str, as_json: bool, kills: int, stops: int, lease_ttl: int) -> None:
    """Failure detection: kill -9 and graceful stops of real nodes; median detection times in ms."""
    from muheam.bench.membership import run

    show(run(kills=kills, stops=stops, lease_ttl=lease_ttl), fmt, as_json)


@bench.command("xid")
@output_options
@click.option("--nodes", type=click.IntRange(1, 8), default=3, show_default=True)
@click.option("--seconds", type=FiniteRange(0, 86400, min_open=True), default=5.0, show_default=True,
              help="Length of the throughput phase.")
@click.option("--per-request", type=click.IntRange(1, 10_000), default=16, show_default=True,
              help="XIDs a client asks for per request in the throughput phase.")
def bench_xid(fmt: str, as_json: bool, nodes: int, seconds: float, per_request: int) -> None:
    """Global XID allocation: throughput, unbatched latency, messages per allocation, vs a ZeroMQ round trip."""
    from muheam.bench.xid import run

    show(run(nodes=nodes, seconds=seconds, per_request=per_request), fmt, as_json)


@bench.command("lock")
@output_options
@click.option("--transfers", type=click.IntRange(10, 100_000), default=500, show_default=True)
def bench_lock(fmt: str, as_json: bool, transfers: int) -> None:
    """A lock bouncing between two nodes: re-acquire and transfer cost vs a ZeroMQ round trip."""
    from muheam.bench.lock import run

    show(run(transfers=transfers), fmt, as_json)


@bench.command("kv")
@output_options
@click.option("--clients", type=click.IntRange(1, 64), default=8, show_default=True)
@click.option("--seconds", type=FiniteRange(0, 86400, min_open=True), default=5.0, show_default=True)
def bench_kv(fmt: str, as_json: bool, clients: int, seconds: float) -> None:
    """One node: commits/s and gets/s with concurrent clients, WAL MB/s, fsyncs per commit (group commit)."""
    from muheam.bench.kv import run

    show(run(clients=clients, seconds=seconds), fmt, as_json)


@bench.command("engine")
@output_options
@click.option("--transactions", type=click.IntRange(100, 1_000_000), default=2000, show_default=True,
              help="Transactions per measured round.")
@click.option("--repeat", type=click.IntRange(1, 50), default=5, show_default=True, help="Measured rounds.")
def bench_engine(fmt: str, as_json: bool, transactions: int, repeat: int) -> None:
    """The storage engine alone, in this process: CPU per TPC-B-like transaction (best and median of rounds)."""
    from muheam.bench.engine import run

    show(run(transactions=transactions, repeat=repeat), fmt, as_json)


@bench.command("walmerge")
@output_options
@click.option("--mb", type=click.IntRange(10, 100_000), default=1024, show_default=True, help="Input WAL size.")
@click.option("--nodes", type=click.IntRange(1, 16), default=3, show_default=True)
def bench_walmerge(fmt: str, as_json: bool, mb: int, nodes: int) -> None:
    """Merge speed against heapq.merge and cp of the same input, measured in one run."""
    from muheam.bench.walmerge import run

    show(run(total_bytes=mb << 20, nodes=nodes), fmt, as_json)


@bench.command("bank")
@output_options
@click.option("--seconds", type=FiniteRange(0, 86400, min_open=True), default=10.0, show_default=True)
@click.option("--clients", type=click.IntRange(1, 64), default=8, show_default=True)
@click.option("--accounts", type=click.IntRange(2, 100_000), default=100, show_default=True)
@click.option("--affinity/--no-affinity", default=True, show_default=True,
              help="Also run 3 nodes with each client routed to one node and 90% of its accounts in that node's "
                   "share (the *_affinity figures).")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Run against this running cluster instead (a live tps view on a terminal), not the comparison.")
def bench_bank(fmt: str, as_json: bool, seconds: float, clients: int, accounts: int, affinity: bool,
               config_path: str | None) -> None:
    """The bank workload on standalone PostgreSQL, MUHEAM with 1 node and with 3 nodes, in one run, with the
    node CPU time and the peer messages and bytes (by kind) per committed transfer; with -c, against your own
    running cluster."""
    from muheam.bench.bank import against, run

    if config_path is None:
        show(run(seconds=seconds, clients=clients, accounts=accounts, affinity=affinity), fmt, as_json)
        return
    cfg = config_mod.load(config_path, require_shared_dir=False)
    if sys.stdout.isatty() and not as_json:
        from rich.live import Live

        from muheam.cli.top import _table

        with Live(refresh_per_second=2) as live:
            result = against(cfg, seconds, clients, accounts, lambda rows: live.update(_table(rows)))
    else:
        result = against(cfg, seconds, clients, accounts)
    show(result, fmt, as_json)


@bench.command("pgbench")
@output_options
@click.option("--seconds", type=FiniteRange(0, 86400, min_open=True), default=10.0, show_default=True)
@click.option("--clients", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--scale", type=click.IntRange(1, 100), default=4, show_default=True,
              help="Branches; 10 tellers and 10,000 accounts per branch.")
@click.option("--three-nodes/--no-three-nodes", default=True, show_default=True,
              help="Also run MUHEAM with 3 nodes, the clients spread over them.")
def bench_pgbench(fmt: str, as_json: bool, seconds: float, clients: int, scale: int, three_nodes: bool) -> None:
    """pgbench's TPC-B-like transaction (branches, tellers, accounts, history; tables made through SQL) with the
    real pgbench on standalone PostgreSQL and on MUHEAM's SQL ports, 1 node and 3 nodes; every run's sums are
    checked afterwards (consistent_*)."""
    from muheam.bench.pgbench import run

    show(run(seconds=seconds, clients=clients, scale=scale, three_nodes=three_nodes), fmt, as_json)


@bench.command("replicate")
@output_options
@click.option("--seconds", type=FiniteRange(1, 600), default=10.0, show_default=True)
@click.option("--clients", type=click.IntRange(1, 64), default=6, show_default=True)
@click.option("--accounts", type=click.IntRange(2, 100_000), default=100, show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Connections of the live replicator (the replays try 1, 2, 4 and 8).")
def bench_replicate(fmt: str, as_json: bool, seconds: float, clients: int, accounts: int, workers: int) -> None:
    """A PostgreSQL replica of 3 nodes under the bank load: commit rate, apply rate (1 and best worker count),
    lag from commit on the cluster to commit on the replica (p50, p99)."""
    from muheam.bench.replicate import run

    show(run(seconds=seconds, clients=clients, accounts=accounts, live_workers=workers), fmt, as_json)


@bench.command("recovery")
@output_options
@click.option("--wal-mb", type=FiniteRange(0.1, 2000, unit="megabytes"), default=20.0, show_default=True,
              help="WAL the killed node writes before the kill (what the survivors redo).")
@click.option("--seconds-before", type=FiniteRange(1, 600), default=4.0, show_default=True,
              help="Bank load before the kill (the throughput baseline).")
@click.option("--lease-ttl", type=click.IntRange(config_mod.ETCD_MIN_TTL, 60), default=config_mod.DEFAULT_TTL)
def bench_recovery(fmt: str, as_json: bool, wal_mb: float, seconds_before: float, lease_ttl: int) -> None:
    """Kill one of three nodes under the bank load: detection, block availability, redo speed, throughput."""
    from muheam.bench.recovery import run

    show(run(seconds_before=seconds_before, wal_mb=wal_mb, lease_ttl=lease_ttl), fmt, as_json)
