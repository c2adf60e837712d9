"""``muheam top``: the members' work per second, from every node's Prometheus endpoint, like ``top``."""

from __future__ import annotations

import time
from typing import Any

import click

from muheam.cli.common import REFRESH_MIN_S, FiniteRange, config_options, dumps, load_config
from muheam.config import Config
from muheam.errors import ConfigError
from muheam.obs.scrape import Sample, rates, scrape


def _endpoints(cfg: Config) -> dict[int, str]:
    eps = {n: c.metrics_endpoint for n, c in sorted(cfg.nodes.items()) if c.metrics_endpoint}
    if not eps:
        raise ConfigError("no node has a metrics_endpoint in the config; add 'metrics_endpoint = "
                          "\"http://127.0.0.1:PORT\"' to each [nodes.N] table (cluster up writes one) and restart")
    return eps


def sample_all(eps: dict[int, str], interval: float, before: dict[int, Sample] | None = None
               ) -> tuple[list[dict[str, Any]], dict[int, Sample]]:
    """One row per configured node: rates over ``interval`` seconds (or since ``before``)."""
    first = before or {n: scrape(ep, health=False) for n, ep in eps.items()}
    if before is None:
        time.sleep(interval)
    second = {n: scrape(ep) for n, ep in eps.items()}
    return [{"node_id": n, **rates(first[n], second[n])} for n in eps], second


COLUMNS = (("node", "node_id"), ("state", "state"), ("epoch", "epoch"), ("commits/s", "commits_per_s"),
           ("aborts/s", "aborts_per_s"), ("transfers/s", "lock_transfers_per_s"), ("msgs/s", "messages_per_s"),
           ("WAL MB/s", "wal_mb_per_s"), ("lease left s", "lease_ttl_left_s"), ("ready", "ready"))


def _table(rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title=f"muheam top  {time.strftime('%H:%M:%S')}")
    for title, _ in COLUMNS:
        table.add_column(title, justify="right" if title not in ("state",) else "left")
    for r in rows:
        r = {**r, "ready": {200: "yes", 503: "no"}.get((r.get("health") or {}).get("readiness", 0), "-")}
        table.add_row(*("-" if r.get(k) is None else f"{r[k]:.{3 if k == 'wal_mb_per_s' else 1}f}"
                        if isinstance(r[k], float) else str(r[k]) for _, k in COLUMNS))
    return table


@click.command("top")
@config_options
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="table: a live view refreshed every --interval; json: one sample per member, then exit.")
@click.option("--interval", type=FiniteRange(REFRESH_MIN_S, 60), default=1.0, show_default=True,
              help="Seconds between samples (rates are over this interval).")
@click.option("--count", type=click.IntRange(1), default=None, help="Stop after this many refreshes (table).")
def top_cmd(fmt: str, interval: float, count: int | None, **kw: Any) -> None:
    """Per node: commits/s, aborts/s, chain transfers/s, messages/s, WAL MB/s, lease time left and state, from
    each node's metrics_endpoint. Nodes that do not answer show as stopped."""
    cfg = load_config(kw, require_shared_dir=False)
    eps = _endpoints(cfg)
    rows, last = sample_all(eps, interval)
    if fmt == "json":
        click.echo(dumps(rows))
        return
    from rich.live import Live

    shown = 1
    with Live(_table(rows), refresh_per_second=4, screen=False) as live:
        while count is None or shown < count:
            time.sleep(interval)
            rows, last = sample_all(eps, interval, last)
            live.update(_table(rows))
            shown += 1
