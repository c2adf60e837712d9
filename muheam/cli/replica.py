"""``muheam replicate`` (a PostgreSQL server as a replica of the cluster) and ``muheam replicas`` (their positions
and lags, as reported to etcd)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import click

from muheam.cli.common import (
    LONGEST_S, FiniteRange, config_options, emit, format_option, leave, load_config, tcp_endpoint,
)
from muheam.errors import ConfigError, MuheamError

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_-")


@click.command("replicate")
@click.option("--to", "conninfo", required=True, metavar="CONNINFO",
              help="The PostgreSQL replica: a libpq URI (postgresql://user@host:port/db) or key=value string.")
@click.option("--subscribe", "endpoint", type=tcp_endpoint, default=None, metavar="ENDPOINT",
              help="Replicate from this published merged stream (tcp://HOST:PORT of 'muheam walmerge --follow "
                   "--publish'). Without it, -c is needed and the stream is followed in this process.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="PostgreSQL connections applying transactions whose rows do not overlap at once (commits stay "
                   "in the cluster's commit order).")
@click.option("--name", default="default", show_default=True,
              help="The replica's name: its progress row in PostgreSQL and its report in etcd.")
@click.option("--audit", is_flag=True,
              help="Also record every applied transaction's XID in muheam_replica.applied (a second apply would "
                   "fail on its primary key).")
@click.option("--no-copy", "no_copy", is_flag=True,
              help="A new replica replays the merged stream from LSN 0 instead of starting with a copy of the "
                   "cluster's rows (works while the nodes keep their whole WAL; needed with --subscribe alone).")
@click.option("--duration", type=FiniteRange(0, LONGEST_S, min_open=True), default=None,
              help="Stop after this many seconds (default: until SIGINT/SIGTERM).")
@config_options
@format_option
def replicate_cmd(conninfo: str, endpoint: str | None, workers: int, name: str, audit: bool, no_copy: bool,
                  duration: float | None, fmt: str, **kw: Any) -> None:
    """Make a PostgreSQL database a replica of the cluster: create its tables, copy the existing rows once (one
    snapshot, consistent with a stream position), then apply every transaction committed after it exactly once, in
    commit order, and keep going (resuming by itself after a crash of either side).

    The position is kept in PostgreSQL (muheam_replica.progress), committed with the changes it covers (the copy
    with its rows). With -c the replica reports its positions and lags to etcd ('muheam replicas')."""
    from muheam import failpoints
    from muheam.replica.run import Replicator

    failpoints.arm_from_env(None)  # tests: replica.copy_list, copy_table, copy_commit
    if not name or set(name) - _NAME_CHARS or len(name) > 63:
        raise ConfigError(f"--name {name!r}: use 1-63 lower-case letters, digits, '_' or '-'")
    has_config = kw.get("config_path") is not None or Path("muheam.toml").exists() or kw.get("shared_dir")
    if endpoint is None and not has_config:
        raise ConfigError("replicate needs a source: -c CONFIG (follow the cluster's WAL in this process) or "
                          "--subscribe tcp://HOST:PORT (a running 'muheam walmerge --follow --publish')")
    cfg = load_config(kw) if has_config else None
    logging.basicConfig(level=logging.INFO, format="muheam replicate: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_a: stop.set())
    backend = None
    follow_errors: list[BaseException] = []
    follow: threading.Thread | None = None
    if cfg is not None:
        from muheam.membership import connect

        backend = connect(cfg.etcd_endpoints)
        if endpoint is None:
            from muheam.ops.procs import free_port
            from muheam.replica.run import follow_in_thread

            endpoint = f"tcp://127.0.0.1:{free_port()}"
            follow, follow_errors = follow_in_thread(cfg, Path(cfg.run_dir) / f"replica-{name}" / "stream", endpoint,
                                                     stop)

    def report(status: dict[str, Any]) -> None:
        if backend is not None and cfg is not None:
            backend.put_replica(cfg.cluster_name, name, status)

    assert endpoint is not None
    confirm_to = [n.client_endpoint for _, n in sorted(cfg.nodes.items())] if cfg is not None else []

    def live_nodes() -> list[str]:  # the initial copy's sources: every live member (muheam.replica.copy)
        assert backend is not None and cfg is not None
        return [m.client_endpoint for m in sorted(backend.members(cfg.cluster_name)[0], key=lambda m: m.node_id)]

    from muheam.security.setup import client_for_config, resolve_client

    # the cluster's own client key when -c names it: the stream this process publishes and the nodes it confirms
    # to are that cluster's; with --subscribe alone, the key is found as any client finds it
    client_key = client_for_config(cfg) if cfg is not None else resolve_client()
    rep = Replicator(conninfo, endpoint, name, workers=workers, audit=audit, report=report, stop=stop,
                     confirm_to=confirm_to, client_key=client_key, copy=not no_copy,
                     nodes=live_nodes if backend is not None else None)
    code = 0
    try:
        summary = rep.run(duration)
    except MuheamError as exc:
        click.echo(f"muheam: error: {exc}", err=True)
        summary, code = rep.status.to_dict(), exc.exit_code
    stop.set()
    if follow is not None:
        follow.join(15)
    if follow_errors:
        click.echo(f"muheam: error: following the WAL: {follow_errors[0]}", err=True)
        code = code or 1
    if fmt == "json":
        emit(summary, fmt)
    else:
        copied = (f" after a copy of {summary['copy_rows']} rows at {summary['copy_lsn']}"
                  if summary.get("copy_sts") else "")
        click.echo(f"replica {name}: {summary['applied_txns']} transactions applied{copied}, last commit at "
                   f"{summary['applied_lsn']}, state {summary['state']}")
    leave(code)


@click.command("replicas")
@config_options
@format_option
def replicas_cmd(fmt: str, **kw: Any) -> None:
    """Show each replica: state, received/flushed/applied positions, write/flush/replay lag, last report's age."""
    from muheam.membership import connect

    cfg = load_config(kw, require_shared_dir=False)
    backend = connect(cfg.etcd_endpoints)
    try:
        reps = backend.replicas(cfg.cluster_name)
    finally:
        backend.close()
    now = time.time()
    rows = [{**r, "age_s": round(now - float(r.get("updated_at", now)), 1)} for _, r in sorted(reps.items())]
    if fmt == "json":
        emit(rows, fmt)
        leave(0)
    if not rows:
        click.echo("no replicas have reported (start one with 'muheam replicate --to ... -c ...')")
        leave(0)
    cols = ["name", "state", "workers", "copy_lsn", "copy_rows", "received_lsn", "flushed_lsn", "applied_lsn",
            "applied_txns", "write_lag_ms", "flush_lag_ms", "replay_lag_ms", "age_s"]
    click.echo("  ".join(cols))
    for r in rows:
        click.echo("  ".join(str(r.get(c, "")) for c in cols))
    leave(0)
