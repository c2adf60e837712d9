"""``muheam recover``: whole-cluster crash recovery offline, or point-in-time recovery from a merged stream."""

from __future__ import annotations

import datetime as dt
import math
import time
from pathlib import Path
from typing import Any

import click

from muheam.cli.common import config_options, emit, format_option, load_config
from muheam.errors import ClusterStateError, ConfigError, EtcdUnavailable
from walmerge import parse_glsn


def _parse_glsn(text: str) -> int:
    """``LAMPORT/NODE`` (as ``waldump`` prints it) or ``LAMPORT.NODE`` (``walmerge.lsn.parse_glsn``)."""
    try:
        return parse_glsn(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--until-glsn") from None


#: how far past this machine's clock a --until-time may lie (clock skew between hosts); beyond, a typo
FUTURE_SLACK_S = 86400.0


def _parse_time(text: str, now: float | None = None) -> int:
    """Unix seconds, or ISO 8601 (no zone: local time); returns microseconds since the epoch.

    ``inf`` and ``nan`` are refused as input rather than crashing on the conversion.  A time more than a day
    after now (``1e30``, or Unix milliseconds given as seconds) is refused as a likely typo: no commit in an
    archive can be that late, so such a target would only mean "the whole stream", which no --until-time says
    plainly."""
    seconds: float
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = dt.datetime.fromisoformat(text)
        except ValueError:
            raise click.BadParameter(f"{text!r}: write an ISO 8601 time (2026-11-22T10:15:00+00:00) or Unix seconds",
                                     param_hint="--until-time") from None
        if when.tzinfo is None:
            when = when.astimezone()
        seconds = when.timestamp()
    else:
        if not math.isfinite(seconds):
            raise click.BadParameter(f"{text!r}: give a finite time, or no --until-time to replay the whole stream",
                                     param_hint="--until-time")
    now = time.time() if now is None else now
    if seconds > now + FUTURE_SLACK_S:
        ahead = seconds - now
        span = f"{ahead / 86400:.0f} days" if ahead < 86400 * 365 * 10 else f"{ahead / (86400 * 365.25):.3g} years"
        hint = " (milliseconds? give Unix seconds)" if 1e12 <= seconds < 1e14 else ""
        raise click.BadParameter(f"{text!r} is {span} after now{hint}: no commit can be that late; give a time "
                                 "within the archive, or no --until-time to replay the whole stream",
                                 param_hint="--until-time")
    return int(seconds * 1e6)


def _refuse_running(cfg: Any, skip: bool) -> None:
    """Recovery rewrites pages under the nodes' feet: refuse while any node of the cluster is a member."""
    if skip:
        return
    from muheam.membership import current_members

    try:
        members = current_members(cfg.etcd_endpoints, cfg.cluster_name)
    except EtcdUnavailable as e:
        raise EtcdUnavailable(f"{e}; recover must check that no node runs: start etcd (the cluster's 'muheam "
                              f"cluster up' starts it), or pass --skip-etcd-check if you are sure every node is "
                              f"stopped") from None
    if members:
        raise ClusterStateError(f"node(s) {sorted(m.node_id for m in members)} of cluster {cfg.cluster_name!r} "
                                f"are running; stop the cluster first ('muheam cluster down' or 'muheam node stop')")


@click.command("recover")
@click.option("--from-merged", "merged", type=click.Path(file_okay=False), default=None,
              help="Point-in-time recovery: replay this merged stream (from 'muheam walmerge --out') onto the "
                   "shared directory, which must be a base copy taken before the target (without one: before "
                   "the stream's end); a newer base is refused.")
@click.option("--until-xid", type=click.IntRange(min=1), default=None,
              help="Stop right after this transaction's COMMIT.")
@click.option("--until-glsn", default=None, help="Stop after the last record at or below this GLSN (LAMPORT/NODE).")
@click.option("--until-time", default=None,
              help="Keep every transaction committed at or before this time (ISO 8601, or Unix seconds); a time "
                   "more than a day after now is refused as a likely typo (no target replays the whole stream).")
@click.option("--accept-data-loss", is_flag=True,
              help="Crash recovery only: cut a node WAL at mid-stream corruption instead of refusing.")
@click.option("--skip-etcd-check", is_flag=True, help="Do not ask etcd whether nodes run (you made sure).")
@config_options
@format_option
def recover_cmd(merged: str | None, until_xid: int | None, until_glsn: str | None, until_time: str | None,
                accept_data_loss: bool, skip_etcd_check: bool, fmt: str, **kw: Any) -> None:
    """Recover the shared directory while the cluster is stopped.

    Without --from-merged: whole-cluster crash recovery, the same redo the first node to start runs by itself
    (every node's WAL merged from its checkpoint and replayed).  With --from-merged DIR: archive recovery onto a
    base copy, optionally up to one target; the old node WALs move to pre-recovery-<time>/ and the cluster
    starts a new history.  Exit 0 done, 1 not possible as asked (nothing changed), 2 bad input.
    """
    targets = [t for t in (until_xid, until_glsn, until_time) if t is not None]
    if len(targets) > 1:
        raise click.UsageError("give at most one of --until-xid, --until-glsn, --until-time")
    if targets and merged is None:
        raise click.UsageError("a recovery target needs --from-merged DIR (the archived merged stream)")
    cfg = load_config(kw)
    _refuse_running(cfg, skip_etcd_check)
    shared = Path(cfg.shared_dir)
    if merged is None:
        from muheam.engine import EngineConfig
        from muheam.engine.replay import redo_cluster

        rep = redo_cluster(shared, EngineConfig().system_id, accept_data_loss=accept_data_loss)
        result: dict[str, Any] = {"mode": "crash", **rep.to_dict()}
    else:
        from muheam.engine.replay import Target
        from muheam.recovery.restore import restore

        if not Path(merged).is_dir():
            raise ConfigError(f"--from-merged: {merged} is not a directory")
        target = Target(xid=until_xid, glsn=_parse_glsn(until_glsn) if until_glsn else None,
                        time_us=_parse_time(until_time) if until_time else None)
        result = {"mode": "point-in-time", **restore(shared, Path(merged), target)}
    if fmt == "json":
        emit(result, fmt)
        return
    for key, value in result.items():
        click.echo(f"{key.replace('_', ' ')}: {value}")
