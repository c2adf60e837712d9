"""The WAL tools as one family, ``muheam wal merge|follow|subscribe|verify|dump``: a node's WAL as text, and the
merged stream (bulk, follow, publish, subscribe, verify).  The older spellings ``muheam walmerge ...`` (one
command, modes by flag) and ``muheam waldump`` stay, with the same output: operators' scripts use them."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from muheam import config as config_mod
from muheam.cli.common import (
    LONGEST_S, FiniteRange, config_options, emit, format_option, leave, load_config, tcp_endpoint,
)
from muheam.errors import ClusterStateError, ConfigError, MuheamError
from walmerge import RecordKind
from walmerge.record import format_glsn


@click.command("waldump")
@click.option("--node-id", type=click.IntRange(1, config_mod.MAX_NODE_ID), required=True, help="Whose WAL.")
@click.option("--xid", type=click.IntRange(min=0), default=None, help="Only records of this transaction.")
@click.option("--kind", default=None, callback=lambda _ctx, _param, value: _kind(value),
              help="Only records of this kind: " + ", ".join(k.name for k in RecordKind) + " (any case).")
@click.option("--stats", is_flag=True, help="Summary per record kind instead of records.")
@click.option("--limit", type=click.IntRange(min=0), default=None, help="Stop after this many records.")
@format_option
@config_options
def waldump_cmd(node_id: int, xid: int | None, kind: int | None, stats: bool, limit: int | None, fmt: str,
                **kw: Any) -> None:
    """Print a node's WAL records (lsn, prev, glsn, xid, node, epoch, kind, length), like pg_waldump."""
    from itertools import islice

    from muheam.ops import waldump

    cfg = load_config(kw)
    _check_node_wal(cfg.shared_dir, node_id)
    rows = waldump.records(cfg.shared_dir, node_id, xid, kind)
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


def _kind(name: str | None) -> int | None:
    """``--kind``: a record kind's name in any case; an unknown one is a usage error (exit 2) listing the kinds."""
    from muheam.ops.waldump import parse_kind

    try:
        return None if name is None else parse_kind(name)
    except ClusterStateError as exc:
        raise click.BadParameter(str(exc), param_hint="--kind") from None


def _check_node_wal(shared: Path, node_id: int) -> None:
    """Say which directory was looked for when a node has no WAL there: the bare "No such file or directory"
    the reader gave named neither the node nor where its WAL should be."""
    from walmerge.merge import node_dirs
    from walmerge.segment import node_wal_dir

    directory = node_wal_dir(shared, node_id)
    if directory.is_dir():
        return
    found = sorted(node_dirs(shared))
    has = f"nodes with a WAL there: {', '.join(map(str, found))}" if found else "no node has a WAL there"
    raise ClusterStateError(f"node {node_id} has no WAL in {shared}: {directory} does not exist ({has}); check "
                            "--node-id and the shared directory (-c, --shared-dir)")


# walmerge ---------------------------------------------------------------------------------------------------
_out_bulk = click.option("--out", type=click.Path(file_okay=False), default=None,
                         help="Write the merged stream here (bulk: a new or empty directory; --follow/--subscribe: "
                              "resumed at the end of what it holds).")
_verify_flag = click.option("--verify", "verify_", is_flag=True,
                            help="Check the inputs (and --out, or --merged) for CRC, chain, order, missing segments.")
_merged_opt = click.option("--merged", type=click.Path(file_okay=False), default=None,
                           help="Verify this merged stream.")
_torn_opt = click.option("--allow-torn-tail", is_flag=True,
                         help="A torn last record (after a crash) is not a problem.")
_publish_opt = click.option("--publish", type=tcp_endpoint, default=None, metavar="ENDPOINT",
                            help="With --follow: serve the stream to subscribers on this ZeroMQ endpoint "
                                 "(tcp://HOST:PORT).")
_from_lsn_opt = click.option("--from-lsn", default=None, metavar="LSN",
                             help="With --follow/--subscribe: cut --out back to this merged LSN (HI/LO hex as "
                                  "printed, 0x hex or decimal) and continue from there.")
_poll_opt = click.option("--poll-interval", type=FiniteRange(0.001, 60), default=0.05, show_default=True,
                         help="With --follow: seconds between polls of the node WALs.")
_duration_opt = click.option("--duration", type=FiniteRange(0, LONGEST_S, min_open=True), default=None,
                             help="With --follow/--subscribe: stop after this many seconds.")
_idle_opt = click.option("--until-idle", is_flag=True,
                         help="With --follow: stop once no node is live and every WAL has been merged to its end.")


@click.command("walmerge")
@_out_bulk
@_verify_flag
@_merged_opt
@_torn_opt
@click.option("--follow", is_flag=True,
              help="Follow mode: merge the node WALs as they grow (live nodes from etcd) until stopped.")
@_publish_opt
@click.option("--subscribe", type=tcp_endpoint, default=None, metavar="ENDPOINT",
              help="Copy the stream a 'walmerge --follow --publish' serves into --out, resuming where it stops.")
@_from_lsn_opt
@_poll_opt
@_duration_opt
@_idle_opt
@config_options
@format_option
def walmerge_cmd(out: str | None, verify_: bool, merged: str | None, allow_torn_tail: bool, follow: bool,
                 publish: str | None, subscribe: str | None, from_lsn: str | None, poll_interval: float,
                 duration: float | None, until_idle: bool, fmt: str, **kw: Any) -> None:
    """Merge every node's WAL into one stream in GLSN order, in the very format of one node's WAL.

    \b
    Bulk:      muheam walmerge --out DIR [--verify]        (--verify [--merged DIR] only checks)
    Follow:    muheam walmerge --follow --out DIR [--publish tcp://HOST:PORT] [--from-lsn LSN]
                               [--poll-interval S] [--duration S | --until-idle]
    Subscribe: muheam walmerge --subscribe tcp://HOST:PORT --out DIR [--duration S]
    The same as 'muheam wal merge|verify|follow|subscribe'.

    Bulk mode with -c/--config asks etcd which nodes are running and merges (and checks) only up to the GLSN all
    their WALs have passed (a consistent cut; JSON: running_nodes, cut_glsn); with --shared-dir and no config,
    nodes running on this host (processes with their WAL open) are found and cut the same way, and every other
    WAL is merged to its end (stop nodes on other hosts first).

    Follow mode learns the live nodes from etcd (-c/--config, MUHEAM_* and --etcd/--cluster-name), writes what
    every live node's WAL has passed to --out (resuming at its end after a restart), and stops cleanly on
    SIGINT/SIGTERM; --format json prints a summary at exit.  Subscribers get the records from any merged LSN on
    (see docs/architecture.md, "Follow mode").

    Exit codes: 0 clean (or stopped), 1 problems found or the operation failed, 2 unusable input or bad usage.
    """
    _walmerge(out, verify_, merged, allow_torn_tail, follow, publish, subscribe, from_lsn, poll_interval, duration,
              until_idle, fmt, kw)


def _walmerge(out: str | None, verify_: bool, merged: str | None, allow_torn_tail: bool, follow: bool,
              publish: str | None, subscribe: str | None, from_lsn: str | None, poll_interval: float,
              duration: float | None, until_idle: bool, fmt: str, kw: dict[str, Any]) -> None:
    from muheam.walstream.publisher import parse_lsn

    modes = [name for name, on in (("--follow", follow), ("--subscribe", subscribe is not None),
                                   ("--verify", verify_)) if on]
    if follow and subscribe is not None or verify_ and (follow or subscribe is not None):
        raise click.UsageError(f"{' and '.join(modes)} do not go together")
    if publish is not None and not follow:
        raise click.UsageError("--publish needs --follow")
    if not follow and subscribe is None:
        for name, value in (("--from-lsn", from_lsn), ("--duration", duration), ("--until-idle", until_idle)):
            if value:
                raise click.UsageError(f"{name} goes with --follow or --subscribe")
    if until_idle and not follow:
        raise click.UsageError("--until-idle goes with --follow")
    start = parse_lsn(from_lsn) if from_lsn is not None else None
    if follow or subscribe is not None:
        if out is None:
            raise click.UsageError(f"{modes[0]} needs --out DIR")
        _walmerge_stream(Path(out), subscribe, publish, start, poll_interval, duration, until_idle, fmt, kw)
        return
    _walmerge_bulk(kw.get("shared_dir"), out, verify_, merged, allow_torn_tail, fmt, kw)


# the family: muheam wal merge|follow|subscribe|verify|dump ---------------------------------------------------
@click.group("wal")
def wal() -> None:
    """WAL tools: merge, follow, subscribe, verify, dump (also spelled 'muheam walmerge ...', 'muheam waldump')."""


@wal.command("merge")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="A new or empty directory for the merged stream.")
@_verify_flag
@_torn_opt
@config_options
@format_option
def wal_merge(out: str, verify_: bool, allow_torn_tail: bool, fmt: str, **kw: Any) -> None:
    """Merge every node's WAL into one stream in GLSN order, once ('muheam walmerge --out DIR').

    With -c/--config running nodes (from etcd) are cut at the GLSN all their WALs have passed; with --shared-dir
    the nodes running on this host are.  Exit codes: 0 done (and clean), 1 problems found or the operation
    failed, 2 unusable input or bad usage.
    """
    _walmerge(out, verify_, None, allow_torn_tail, False, None, None, None, 0.05, None, False, fmt, kw)


@wal.command("verify")
@_merged_opt
@_torn_opt
@config_options
@format_option
def wal_verify(merged: str | None, allow_torn_tail: bool, fmt: str, **kw: Any) -> None:
    """Check the node WALs (and a merged stream, --merged DIR): CRC, chain, order, missing segments
    ('muheam walmerge --verify').  Exit codes: 0 clean, 1 problems found, 2 unusable input or bad usage."""
    _walmerge(None, True, merged, allow_torn_tail, False, None, None, None, 0.05, None, False, fmt, kw)


@wal.command("follow")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="The merged copy; resumed at the end of what it holds.")
@_publish_opt
@_from_lsn_opt
@_poll_opt
@_duration_opt
@_idle_opt
@config_options
@format_option
def wal_follow(out: str, publish: str | None, from_lsn: str | None, poll_interval: float, duration: float | None,
               until_idle: bool, fmt: str, **kw: Any) -> None:
    """Merge the node WALs as they grow, until stopped ('muheam walmerge --follow').  SIGINT/SIGTERM stop it
    (exit 0); --publish serves the stream to subscribers."""
    _walmerge(out, False, None, False, True, publish, None, from_lsn, poll_interval, duration, until_idle, fmt, kw)


@wal.command("subscribe")
@click.argument("endpoint", type=tcp_endpoint)
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="The copy; resumed where it ends.")
@_from_lsn_opt
@_duration_opt
@format_option
def wal_subscribe(endpoint: str, out: str, from_lsn: str | None, duration: float | None, fmt: str) -> None:
    """Copy the stream 'muheam wal follow --publish ENDPOINT' serves into --out ('muheam walmerge --subscribe')."""
    _walmerge(out, False, None, False, False, None, endpoint, from_lsn, 0.05, duration, False, fmt, {})


wal.add_command(waldump_cmd, name="dump")


def _walmerge_stream(out: Path, subscribe: str | None, publish: str | None, start: int | None,
                     poll_interval: float, duration: float | None, until_idle: bool, fmt: str,
                     kw: dict[str, Any]) -> None:
    from muheam.walstream.follow import FollowRun, StopFlag, isatty_stderr, run_subscribe, stderr_note

    note = stderr_note(fmt == "table")
    with StopFlag() as stop:
        if subscribe is not None:
            from muheam.security.setup import resolve_client

            key = resolve_client(config=kw.get("config_path"))
            result = run_subscribe(subscribe, out, from_lsn=start, duration=duration, stop=stop, note=note,
                                   key=key)
            if fmt == "json":
                emit(result, fmt)
            else:
                click.echo(f"copied {result['records']} records into {out}; resume at {result['next_lsn_text']} "
                           f"(stopped: {result['stopped']})")
            if not result["caught_up"]:
                sys.exit(1)
            return
        from muheam.membership import connect
        from muheam.security.setup import publisher_security

        cfg = load_config(kw, require_shared_dir=True)
        backend = connect(cfg.etcd_endpoints, timeout=2.0)
        try:
            run = FollowRun(cfg.shared_dir, out, backend, cfg.cluster_name, publish=publish, from_lsn=start,
                            poll_interval=poll_interval, duration=duration, until_idle=until_idle, stop=stop,
                            note=note, progress=fmt == "table" and isatty_stderr(),
                            publish_security=lambda ctx: publisher_security(cfg, ctx))
            result = run.run()
        finally:
            backend.close()
    if fmt == "json":
        emit(result, fmt)
    else:
        click.echo(f"followed {result['records']} records into {out} up to LSN {result['end_lsn_text']} "
                   f"(stopped: {result['stopped']})")
    leave(0)  # the etcd watch the follower used must not hold the process at exit


def _check_out(out: Path) -> None:
    """A bulk merge writes into a new or empty directory: say what is wrong with ``out`` before merging (exit 2)
    rather than failing half-way or mixing the stream with other files."""
    from walmerge.segment import list_segments

    blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ConfigError(f"--out: {blocker} is a file, so {out} cannot be a directory; give a new or empty "
                          "directory")
    if out.is_dir():
        segments = list_segments(out)
        if segments:
            raise ConfigError(f"--out: {out} already holds {len(segments)} WAL segment(s) (e.g. "
                              f"{segments[0][1].name}); merge into a new or empty directory (to continue a merged "
                              "stream use 'muheam wal follow --out')")
        others = sorted(p.name for p in out.iterdir())
        if others:
            more = f" and {len(others) - 5} more" if len(others) > 5 else ""
            raise ConfigError(f"--out: {out} is not empty (it holds {', '.join(others[:5])}{more}); merge into a "
                              "new or empty directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".muheam-write-probe"
        os.close(os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--out: cannot write in {out}: {e.strerror or e}; choose a writable directory") from None


def _local_wal_writers(shared: Path) -> dict[int, list[int]]:
    """Nodes running on this host, found as node agents (``... node start ...``) holding a file of
    ``shared/wal/node-<id>/`` open (pids by node).  Needs no config and no etcd; nodes on other hosts are not seen."""
    from walmerge.merge import node_dirs

    dirs = {str(d.resolve()) + os.sep: node for node, d in node_dirs(shared).items()}
    found: dict[int, set[int]] = {}
    try:
        procs = [p for p in Path("/proc").iterdir() if p.name.isdigit() and int(p.name) != os.getpid()]
    except OSError:
        return {}
    for proc in procs:
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if not any(a == b"node" and b == b"start" for a, b in zip(argv, argv[1:])):
                continue  # not a node agent ('muheam node start'): a reader of the WAL is no writer
            targets = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
        except OSError:
            continue  # gone, or not ours to look at
        for target in targets:
            for prefix, node in dirs.items():
                if target.startswith(prefix):
                    found.setdefault(node, set()).add(int(proc.name))
    return {node: sorted(pids) for node, pids in sorted(found.items())}


def _walmerge_bulk(shared: str | None, out: str | None, verify_: bool, merged: str | None, allow_torn_tail: bool,
                   fmt: str, kw: dict[str, Any]) -> None:
    from walmerge.errors import WalError
    from walmerge.merge import merge
    from walmerge.verify import verify

    cfg = None
    if out is None and not verify_:
        raise click.UsageError("give --out DIR to merge, --verify to check, or --follow --out DIR to follow")
    if merged is not None and not Path(merged).is_dir():
        raise ConfigError(f"--merged: {merged} " + ("is not a directory" if Path(merged).exists() else
                                                    "does not exist") + "; give the directory of a merged stream")
    if shared is None and merged is None:
        cfg = load_config(kw, require_shared_dir=True)
        shared = str(cfg.shared_dir)
    if shared is not None and not Path(shared).is_dir():
        raise ConfigError(f"--shared-dir: {shared} does not exist")
    if out is not None:
        _check_out(Path(out))
    if shared is not None and out is not None:
        from walmerge.merge import node_dirs
        if not node_dirs(Path(shared)):  # (a mistyped path made an empty "archive" and said merged, exit 0)
            raise ConfigError(f"--shared-dir: no node WAL directories (wal/node-<id>) under {shared}: it is not a "
                              "MUHEAM shared directory, or no node ever wrote; give the cluster's shared_dir")
    result: dict[str, Any] = {}
    from muheam.engine.statefiles import read_fences
    from muheam.ops.walcheck import Waits, block_of

    # incarnations the survivors recovered: what a zombie wrote after the fence point is not history (I6)
    fences = read_fences(Path(shared)) if shared is not None else {}
    live: list[int] = []
    cut: int | None = None
    if cfg is not None:
        live, cut = _running_cut(cfg, Path(cfg.shared_dir), fmt, "merging" if out is not None else "checking")
    elif shared is not None:
        writers = _local_wal_writers(Path(shared))
        if writers:
            live = sorted(writers)
            cut = _cut_at(Path(shared), live)
            pids = "; ".join(f"node {n}: pid {', '.join(map(str, p))}" for n, p in writers.items())
            which = f"nodes {', '.join(map(str, live))} are" if len(live) > 1 else f"node {live[0]} is"
            click.echo(f"muheam: note: {which} running on this host ({pids}, with the WAL open): {'merging' if out is not None else 'checking'} only up to GLSN "
                       f"{format_glsn(cut) if cut is not None else '(none yet)'}, which all their WALs have passed; "
                       "stop the cluster to cover everything (nodes on other hosts are not seen: stop them, or "
                       "use -c CONFIG)", err=True)
    if out is not None:
        assert shared is not None
        try:
            summary = _merge_with_progress(merge, shared, out, fmt == "table" and sys.stderr.isatty(), fences, cut)
        except OSError as e:
            raise MuheamError(f"writing the merged WAL into {out} failed: {e.strerror or e}"
                              f"{f' ({e.filename})' if e.filename else ''}; free space or choose another "
                              "directory") from None
        except WalError as e:
            raise MuheamError(f"merging into {out} failed: {e}") from None
        result["merge"] = {
            "records": summary.records, "bytes_in": summary.bytes_in, "bytes_out": summary.bytes_out,
            "per_node": summary.per_node, "segments": len(summary.segments), "skipped_fenced": summary.skipped_fenced,
            "first_glsn": summary.first_glsn, "last_glsn": summary.last_glsn, "seconds": round(summary.seconds, 3),
            "mb_per_s": round(summary.mb_per_s, 1), "out": str(out), "running_nodes": live,
            "cut_glsn": cut, "cut_glsn_text": format_glsn(cut) if cut is not None else None,
        }
        if fmt == "table":
            click.echo(f"merged {summary.records} records from {len(summary.per_node)} nodes "
                       f"({summary.bytes_in / 1e6:.1f} MB in, {len(summary.segments)} segments out) "
                       f"in {summary.seconds:.2f} s into {out}")
    code = 0
    if verify_:
        # a running node may be half-way through writing its last record: that is no damage
        report = verify(shared, out or merged, allow_torn_tail=allow_torn_tail or bool(live), fences=fences,
                        block_of=block_of, waits_of=Waits(), stop_glsn=cut)
        code = report.exit_code
        result["verify"] = {"status": str(report.status.value) if hasattr(report.status, "value") else
                            str(report.status), "problems": [str(p) for p in report.problems],
                            "unusable": list(report.unusable), "running_nodes": live,
                            "cut_glsn_text": format_glsn(cut) if cut is not None else None}
        if fmt == "table":
            for line in report.unusable:
                click.echo(f"unusable: {line}")
            for problem in report.problems:
                click.echo(f"problem: {problem}")
            click.echo(f"verify: {result['verify']['status']}")
    if fmt == "json":
        emit(result, fmt)
    if cfg is not None:
        leave(code)  # etcd was asked (the running nodes): gRPC's clean-up must not hold the process at exit
    if code:
        sys.exit(code)


def _cut_at(shared: Path, live: list[int]) -> int | None:
    """The GLSN every WAL of the running nodes ``live`` has passed (None: none has a record yet)."""
    from muheam.engine.replay import wal_tail_glsns
    from walmerge.merge import detect_system_id, node_dirs

    system_id = next((sid for d in node_dirs(shared).values() if (sid := detect_system_id(d)) is not None), None)
    tails = wal_tail_glsns(shared, system_id) if system_id is not None else {}
    ends = [tails[n] for n in live if n in tails]
    return min(ends) if ends else None


def _running_cut(cfg: Any, shared: Path, fmt: str, doing: str = "merging") -> tuple[list[int], int | None]:
    """The nodes etcd lists as members and the GLSN every one of their WALs has passed.  Merging only up to there
    gives a consistent cut of a running cluster: a running node's next records have higher GLSNs than its last
    one, so nothing can later appear below the cut (without it the output could miss a record of one node
    between two of another's, and ``--verify`` would report the merge wrong).  Returns ``([], None)`` when no
    node runs."""
    from muheam.errors import EtcdUnavailable
    from muheam.membership import current_members

    try:
        members = current_members(cfg.etcd_endpoints, cfg.cluster_name)
    except EtcdUnavailable as e:
        click.echo(f"muheam: warning: cannot ask etcd which nodes are running ({e}); {doing} every WAL to its end. "
                   "If nodes are running the last records may not form a consistent cut: stop them, or retry "
                   "with etcd up", err=True)
        return [], None
    live = sorted({m.node_id for m in members})
    if not live:
        return [], None
    cut = _cut_at(shared, live)
    if cut is None:
        return live, None
    if fmt == "table":
        click.echo(f"nodes {', '.join(map(str, live))} are running: {doing} up to GLSN {format_glsn(cut)}, which "
                   "all their WALs have passed (later records go into the next merge)", err=True)
    return live, cut


def _merge_with_progress(merge: Any, shared: str, out: str, bar: bool, fences: Any, cut: int | None) -> Any:
    if not bar:
        return merge(shared, out, fences=fences, stop_glsn=cut)
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), transient=True) as progress:
        task = progress.add_task("merging WAL", total=None)
        return merge(shared, out, fences=fences, stop_glsn=cut,
                     progress=lambda done, total: progress.update(task, completed=done, total=total))
