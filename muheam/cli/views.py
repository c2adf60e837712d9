"""What ``muheam list`` and ``muheam watch`` show: member rows enriched with each node's live status."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import Any

import click

from muheam.client import AuthenticationFailed, request
from muheam.config import Config

from muheam.errors import EtcdUnavailable, MuheamError
from muheam.membership import MembershipBackend, MemberWatch, connect


def member_rows(cfg: Config) -> list[dict[str, Any]]:
    from muheam.security.setup import client_for

    key = client_for(cfg)
    backend = connect(cfg.etcd_endpoints, timeout=2.0)
    try:
        members, revision = backend.members(cfg.cluster_name)
        rows = []
        for m in members:
            row: dict[str, Any] = {
                "node_id": m.node_id, "host": m.host, "state": m.state, "epoch": m.epoch, "pid": m.pid,
                "peer_endpoint": m.peer_endpoint, "client_endpoint": m.client_endpoint,
                "sql_endpoint": m.sql_endpoint or None,
                "started_at": m.started_at, "lease_ttl_left": None, "lamport": None, "revision": revision,
                "answering": False,
            }
            try:
                row["lease_ttl_left"] = backend.lease_ttl_left(m.lease_id)
            except MuheamError:
                pass
            try:
                status = request(m.client_endpoint, "status", timeout=0.5, client_key=key)
                row["lamport"] = status.get("lamport")
                row["counters"] = status.get("counters")
                row["answering"] = True
                row["chains_owned"] = (status.get("counters") or {}).get("ownership", {}).get("held")
            except AuthenticationFailed as exc:
                row["error"] = str(exc)
            except MuheamError:
                pass
            rows.append(row)
        return _with_stopped(cfg, rows, revision)
    finally:
        backend.close()


def last_error(cfg: Config, node_id: int) -> str | None:
    """The last ERROR or CRITICAL line of the node's log on this host (``run_dir/log/node-N.log``), if any."""
    path = cfg.run_dir / "log" / f"node-{node_id}.log"
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 65536))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if " ERROR " in line or " CRITICAL " in line:
            return line.strip()[:300]
    return None


def _with_stopped(cfg: Config, rows: list[dict[str, Any]], revision: int) -> list[dict[str, Any]]:
    """Members first (``member: true``), then every configured node that is not one, as ``stopped``; plus each
    node's last logged error, and ``lag``: how far its Lamport clock is behind the most advanced member's."""
    listed = {r["node_id"] for r in rows}
    for node_id, n in sorted(cfg.nodes.items()):
        if node_id not in listed:
            rows.append({"node_id": node_id, "host": n.host, "state": "stopped", "epoch": None, "pid": None,
                         "peer_endpoint": n.peer_endpoint, "client_endpoint": n.client_endpoint,
                         "sql_endpoint": n.sql_endpoint or None, "started_at": None, "lease_ttl_left": None,
                         "lamport": None, "revision": revision, "answering": False, "member": False,
                         "chains_owned": None})
    top = max((r["lamport"] for r in rows if r.get("lamport") is not None), default=None)
    for r in rows:
        r.setdefault("member", True)
        r.setdefault("chains_owned", None)
        r["lag"] = None if top is None or r.get("lamport") is None else top - int(r["lamport"])
        r["last_error"] = last_error(cfg, int(r["node_id"]))
        r["metrics_endpoint"] = cfg.nodes[r["node_id"]].metrics_endpoint or None if r["node_id"] in cfg.nodes \
            else None
    return rows


def cluster_state(cfg: Config) -> str:
    backend = connect(cfg.etcd_endpoints, timeout=2.0)
    try:
        return backend.get_state(cfg.cluster_name) or "unregistered"
    finally:
        backend.close()


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


def print_members(cfg: Config, rows: list[dict[str, Any]], clear: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=160)
    if clear:
        console.clear()
    members = sum(1 for r in rows if r.get("member", True))
    table = Table(title=f"+ Cluster: {cfg.cluster_name} ({cluster_state(cfg)}, {members} members)")
    for col in ("Node", "Host", "Peer endpoint", "SQL endpoint", "State", "Epoch", "Lease TTL", "Lamport", "Lag",
                "Chains", "Last error"):
        table.add_column(col)
    for r in rows:
        state = r["state"] if r["answering"] or not r.get("member", True) else f"{r['state']} (no answer)"
        table.add_row(str(r["node_id"]), r["host"], r["peer_endpoint"], r.get("sql_endpoint") or "-", state,
                      _dash(r["epoch"]),
                      "-" if r["lease_ttl_left"] is None else f"{r['lease_ttl_left']} s",
                      _dash(r["lamport"]), _dash(r.get("lag")), _dash(r.get("chains_owned")),
                      (r.get("last_error") or "-")[-60:])
    console.print(table)


def _recovery_text(info: dict[str, Any]) -> str:
    parts = [f"by node {info.get('by')}"]
    for key, label in (("detect_ms", "detected after"), ("decided_ms", "transactions decided after"),
                       ("duration_ms", "took")):
        if info.get(key) is not None:
            parts.append(f"{label} {info[key]:.0f} ms")
    if info.get("chains") is not None:
        parts.append(f"{info['chains']} chains, {info.get('records', 0)} records, "
                     f"{info.get('aborted', 0)} transactions aborted")
    return ", ".join(parts)


def _line(kind: str, event_member: Any, revision: int, fmt: str, info: dict[str, Any] | None = None) -> None:
    now = time.time()
    if fmt == "json":
        record = {"event": kind, "node_id": event_member.node_id, "epoch": event_member.epoch,
                  "state": event_member.state, "pid": event_member.pid, "host": event_member.host,
                  "peer_endpoint": event_member.peer_endpoint, "revision": revision, "time": now}
        if info is not None:
            record["recovery"] = info
        click.echo(json.dumps(record, sort_keys=True))
    else:
        stamp = datetime.fromtimestamp(now).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        if info is not None:
            click.echo(f"{stamp}  {kind:<10} node {event_member.node_id:<4} epoch {event_member.epoch:<6} "
                       f"{_recovery_text(info)} rev {revision}")
        else:
            click.echo(f"{stamp}  {kind:<10} node {event_member.node_id:<4} epoch {event_member.epoch:<6} "
                       f"state {event_member.state:<9} rev {revision}")
    sys.stdout.flush()


def watch_events(cfg: Config, fmt: str, count: int | None, timeout: float | None) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    seen = 0
    backend: MembershipBackend | None = None
    watch: MemberWatch | None = None
    while True:
        try:
            backend = backend or connect(cfg.etcd_endpoints, timeout=2.0)
            if watch is None:
                members, rev = backend.members(cfg.cluster_name)
                for m in members:
                    _line("member", m, m.revision, fmt)
                watch = MemberWatch(cfg.cluster_name, members, rev)
            for event in watch.events(backend):
                if event is not None:
                    if event.kind != "updated" or fmt == "json":
                        _line(event.kind, event.member, event.revision, fmt, event.info)
                    if event.kind != "updated":
                        seen += 1
                if (count is not None and seen >= count) or (deadline is not None and time.monotonic() >= deadline):
                    return
        except EtcdUnavailable as exc:
            if watch is None:
                raise
            click.echo(f"muheam watch: etcd lost ({exc}); resuming from revision {watch.revision + 1}", err=True)
            if deadline is not None and time.monotonic() >= deadline:
                return
            time.sleep(0.5)
