"""The demo's report: ``index.html`` with PNG plots (matplotlib, Agg: no display needed) and the table of checks.

The data behind every plot is computed first, as plain lists (:func:`series`), and written to ``data.json`` next
to the pictures: a test reads that, not pixels, to check that each plot has points.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

MARKS = ("kill", "detection", "recovered", "rejoin")
COLORS = {"kill": "red", "detection": "orange", "recovered": "green", "rejoin": "blue"}


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else 0.0


def series(data: dict[str, Any]) -> dict[str, Any]:
    """Every plot's points: ``{plot: {"x": [...], "y"...}}`` plus the event marks."""
    node_of = {ep: int(n) for n, ep in data.get("client_endpoints", {}).items()}
    buckets: dict[int, list[float]] = {}
    per_node: dict[int, dict[int, int]] = {}
    for client in data.get("trace", []):
        node = node_of.get(client["endpoint"], 0)
        for t, lat in client["trace"]:
            b = int(t)
            buckets.setdefault(b, []).append(lat)
            per_node.setdefault(node, {}).setdefault(b, 0)
            per_node[node][b] += 1
    if buckets:
        xs = list(range(min(buckets), max(buckets) + 1))
    else:
        xs = []
    tps = {"x": xs, "total": [len(buckets.get(b, [])) for b in xs],
           "per_node": {str(n): [c.get(b, 0) for b in xs] for n, c in sorted(per_node.items())}}
    lat = {"x": [b for b in xs if buckets.get(b)],
           "p50_ms": [round(_pct(buckets[b], 0.5) * 1000, 3) for b in xs if buckets.get(b)],
           "p99_ms": [round(_pct(buckets[b], 0.99) * 1000, 3) for b in xs if buckets.get(b)]}
    msgs: dict[str, list[float]] = {"x": [], "per_txn": []}
    scrapes = data.get("metrics", {}).get("scrapes", [])
    for a, b in zip(scrapes, scrapes[1:]):
        dm = dc = 0.0
        for n, now in b["nodes"].items():
            before = a["nodes"].get(n)
            if before is None or "stopped" in (now["state"], before["state"]):
                continue
            if now["commits"] >= before["commits"] and now["messages"] >= before["messages"]:
                dm += now["messages"] - before["messages"]
                dc += now["commits"] - before["commits"]
        if dc > 0:
            msgs["x"].append(b["t"])
            msgs["per_txn"].append(round(dm / dc, 3))
    per_node_wal = ((data.get("walmerge") or {}).get("merge") or {}).get("per_node") or {}
    wal = {"nodes": [str(n) for n in sorted(per_node_wal, key=int)],
           "records": [int(per_node_wal[n]) for n in sorted(per_node_wal, key=int)]}
    marks = {e["name"]: e["t"] for e in data.get("events", []) if e["name"] in MARKS}
    return {"tps": tps, "latency": lat, "messages_per_txn": msgs, "wal_per_node": wal, "marks": marks}


def _mark(ax: Any, marks: dict[str, float]) -> None:
    for name, t in marks.items():
        ax.axvline(t, color=COLORS[name], linestyle="--", linewidth=1, label=name)


def plot(points: dict[str, Any], out: Path) -> dict[str, str]:
    """Write one PNG per plot into ``out``; returns ``{plot: file name}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: dict[str, str] = {}

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=90)
        plt.close(fig)
        files[name] = f"{name}.png"

    tps, marks = points["tps"], points["marks"]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.plot(tps["x"], tps["total"], color="black", linewidth=2, label="all nodes")
    for n, ys in tps["per_node"].items():
        ax.plot(tps["x"], ys, linewidth=1, label=f"clients of node {n}")
    _mark(ax, marks)
    ax.set(xlabel="seconds since the demo started", ylabel="acknowledged transfers / s",
           title="Throughput through a node failure")
    ax.legend(fontsize=7, ncol=2)
    save(fig, "tps")

    lat = points["latency"]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.plot(lat["x"], lat["p50_ms"], label="p50")
    ax.plot(lat["x"], lat["p99_ms"], label="p99")
    _mark(ax, marks)
    ax.set(xlabel="seconds since the demo started", ylabel="ms", title="Transfer latency (client side)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    save(fig, "latency")

    msgs = points["messages_per_txn"]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.plot(msgs["x"], msgs["per_txn"], marker=".")
    _mark(ax, marks)
    ax.set(xlabel="seconds since the demo started", ylabel="peer messages / commit",
           title="Node-to-node messages per committed transaction")
    save(fig, "messages_per_txn")

    wal = points["wal_per_node"]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.bar([f"node {n}" for n in wal["nodes"]], wal["records"], color="steelblue")
    ax.set(ylabel="WAL records", title="WAL merged, per node")
    save(fig, "wal_per_node")
    return files


def _table(checks: list[dict[str, Any]]) -> str:
    rows = []
    for c in checks:
        nums = ", ".join(f"{k}={v}" for k, v in c["numbers"].items())
        rows.append(f"<tr class='{'pass' if c['passed'] else 'fail'}'><td>{html.escape(c['name'])}</td>"
                    f"<td>{'passed' if c['passed'] else 'FAILED'}</td><td>{html.escape(c['detail'])}</td>"
                    f"<td><code>{html.escape(nums)}</code></td></tr>")
    return ("<table id='checks'><tr><th>invariant</th><th>result</th><th>what was seen</th><th>numbers</th></tr>"
            + "".join(rows) + "</table>")


def write(data: dict[str, Any], report_dir: Path) -> Path:
    """``report_dir/index.html``, the PNGs and ``data.json`` (the run's data and every plot's points)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    points = series(data)
    files = plot(points, report_dir)
    slim = {k: v for k, v in data.items() if k != "trace"}  # the raw trace is large; its per-second sums are kept
    (report_dir / "data.json").write_text(json.dumps({"run": slim, "plots": points, "files": files},
                                                     indent=1, default=str))
    bank = data.get("bank", {})
    events = "".join(f"<li>{e['t']:.1f} s: {html.escape(e['name'])} {html.escape(e['detail'])}</li>"
                     for e in data.get("events", []))
    verdict = "every check passed" if data.get("passed") else "SOME CHECKS FAILED"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>muheam demo</title><style>
body {{ font-family: sans-serif; max-width: 1000px; margin: 2em auto; }} td, th {{ border: 1px solid #ccc;
padding: 4px 8px; vertical-align: top; }} table {{ border-collapse: collapse; }} .pass td:nth-child(2) {{ color: green;
}} .fail td:nth-child(2) {{ color: red; font-weight: bold; }} img {{ max-width: 100%; }}</style></head><body>
<h1>muheam demo: {verdict}</h1>
<p>{data['nodes']} nodes on one shared directory, the bank workload ({data['clients']} transfer clients and
{data['readers']} sum readers, spread over every node) for {data['seconds']:g} s; node {data['victim']} killed with
SIGKILL halfway, recovered by the survivors, restarted; then the WAL of every node merged, verified and replayed
into a scratch copy. {bank.get('transfers', 0)} transfers acknowledged ({bank.get('tps', 0)} per second),
{bank.get('sums', 0)} full-table sums read.</p>
<h2>Invariants</h2>{_table(data.get('checks', []))}
<h2>Throughput</h2><img src="{files['tps']}" alt="transactions per second">
<h2>Latency</h2><img src="{files['latency']}" alt="commit latency p50 and p99">
<h2>Messages per transaction</h2><img src="{files['messages_per_txn']}" alt="messages per transaction">
<h2>WAL merged per node</h2><img src="{files['wal_per_node']}" alt="WAL records per node">
<h2>Timeline</h2><ul>{events}</ul>
<p>The numbers behind every plot: <a href="data.json">data.json</a>.</p></body></html>
"""
    index = report_dir / "index.html"
    index.write_text(page)
    return index
