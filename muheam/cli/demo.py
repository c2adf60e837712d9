"""``muheam demo``: one command that shows what a shared-disk cluster does, with a live view and a report."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from muheam.cli.common import FiniteRange, dumps


def _render(progress: Any, seconds: float) -> Any:
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    now = time.monotonic()
    elapsed = now - progress.started
    head = Table.grid(padding=(0, 2))
    head.add_row("[bold]phase[/]", progress.phase)
    head.add_row("[bold]elapsed[/]", f"{elapsed:5.1f} s (load {seconds:g} s)")
    members = Table(title="members (from each node's /metrics)", expand=False)
    for col in ("node", "state", "commits/s", "msgs/s", "ready", "live"):
        members.add_column(col, justify="right")
    scrapes = progress.scrapes
    total = 0.0
    if scrapes:
        t1, last = scrapes[-1]
        t0, prev = scrapes[-2] if len(scrapes) > 1 else scrapes[-1]
        for n, s in sorted(last.items()):
            p = prev.get(n)
            dt = t1 - t0
            rate = (s.get("muheam_commits_total") - p.get("muheam_commits_total")) / dt \
                if p is not None and dt > 0 and s.state != "stopped" and p.state != "stopped" else None
            msgs = (s.get("muheam_peer_messages_sent_total") - p.get("muheam_peer_messages_sent_total")) / dt \
                if rate is not None and p is not None else None
            total += max(0.0, rate or 0.0)
            ok = {200: "[green]yes[/]", 503: "[red]no[/]"}
            members.add_row(str(n), s.state, "-" if rate is None else f"{max(0.0, rate):.0f}",
                            "-" if msgs is None else f"{max(0.0, msgs):.0f}",
                            ok.get(s.health.get("readiness", 0), "-"), ok.get(s.health.get("liveness", 0), "-"))
    head.add_row("[bold]commits/s[/]", f"{total:.0f}")
    events = "\n".join(f"{e.t - progress.started:6.1f} s  {e.name}  [dim]{e.detail}[/]" for e in progress.events[-8:])
    return Panel(Group(head, members, events), title="muheam demo", border_style="cyan")


@click.command("demo")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=None,
              help="Where the cluster, its WAL and the report go (new, empty, or a previous demo's, which is "
                   "cleared). Default: muheam-demo in the system's temporary directory.")
@click.option("--seconds", type=FiniteRange(6, 3600), default=30.0, show_default=True,
              help="Length of the bank workload; one node is killed halfway.")
@click.option("--open", "open_", is_flag=True, help="Open the report in a web browser at the end.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="table: a live view, then the checks; json: no live view, one JSON summary at the end.")
def demo_cmd(directory: str | None, seconds: float, open_: bool, fmt: str) -> None:
    """Start embedded etcd and 3 nodes, run the bank workload on every node, kill -9 one node halfway, let the
    survivors recover it, restart it, merge and verify the WAL, replay it into a scratch copy, compare checksums,
    stop everything, and write DIR/report/index.html (plots and the invariants checked).

    Exit 0 when every invariant held, 1 when one failed (the report says which)."""
    from muheam.demo import report
    from muheam.demo.run import Demo

    where = Path(directory) if directory else Path(tempfile.gettempdir()) / "muheam-demo"
    live_view = fmt == "table" and sys.stdout.isatty()
    if live_view:
        from rich.live import Live

        with Live(refresh_per_second=4, transient=False) as live:
            demo = Demo(where, seconds, on_update=lambda p: live.update(_render(p, seconds)))
            data = demo.run()
    else:
        if fmt == "table":
            click.echo(f"muheam demo: running in {where} (about {seconds + 40:.0f} s)")
        data = Demo(where, seconds).run()
    index = report.write(data, where / "report")
    failed = [c for c in data["checks"] if not c["passed"]]
    if fmt == "json":
        click.echo(dumps({"passed": not failed, "report": str(index), "checks": data["checks"],
                          "tps": data.get("bank", {}).get("tps"), "events": data["events"]}))
    else:
        for c in data["checks"]:
            click.echo(f"{'ok  ' if c['passed'] else 'FAIL'}  {c['name']}: {c['detail']}")
        click.echo(f"report: {index}")
    if open_:
        import webbrowser

        webbrowser.open(index.as_uri())
    if failed:
        sys.exit(1)
