"""``muheam demo`` end to end, short (issue 22): exit 0, the report's HTML and PNGs are there and not empty, its
invariant table lists every check as passed with its numbers, every plot has data points (read from the
``data.json`` kept next to the pictures, not from pixels), and no process it started is left running."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.cluster import _started_dirs, run_cli

pytestmark = pytest.mark.integration

CHECKS = {"bank sums always 0", "no acknowledged commit lost", "checksums equal", "merged WAL verifies",
          "killed node recovered by the survivors and rejoined", "every process it started is stopped"}


def processes_mentioning(needle: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.mark.timeout(400)
def test_demo_runs_checks_and_plots(tmp_path: Path) -> None:
    where = tmp_path / "demo"
    _started_dirs.append(where)  # the session's finaliser kills anything left there, should the demo fail to
    proc = run_cli("demo", "--dir", str(where), "--seconds", "6", "--format", "json", timeout=380, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["passed"] is True
    report = where / "report"
    for name in ("index.html", "tps.png", "latency.png", "messages_per_txn.png", "wal_per_node.png"):
        assert (report / name).stat().st_size > 0, name
    assert processes_mentioning(str(where)) == []

    data = json.loads((report / "data.json").read_text())
    checks = {c["name"]: c for c in data["run"]["checks"]}
    assert set(checks) == CHECKS
    assert all(c["passed"] for c in checks.values()), checks
    assert checks["bank sums always 0"]["numbers"]["full_reads"] > 0
    assert checks["bank sums always 0"]["numbers"]["violations"] == 0
    assert checks["no acknowledged commit lost"]["numbers"]["acknowledged_transfers"] > 0
    assert checks["checksums equal"]["numbers"]["nodes"] == 3
    assert checks["checksums equal"]["numbers"]["replayed"] in checks["checksums equal"]["numbers"]["live"]
    html = (report / "index.html").read_text()
    assert all(name in html for name in CHECKS) and "FAILED" not in html

    plots = data["plots"]
    assert sum(plots["tps"]["total"]) > 0 and len(plots["tps"]["x"]) == len(plots["tps"]["total"]) > 1
    assert len(plots["latency"]["p50_ms"]) > 1 and all(p >= 0 for p in plots["latency"]["p99_ms"])
    assert len(plots["messages_per_txn"]["per_txn"]) > 1 and max(plots["messages_per_txn"]["per_txn"]) > 0
    assert plots["wal_per_node"]["nodes"] == ["1", "2", "3"] and min(plots["wal_per_node"]["records"]) > 0
    marks = plots["marks"]
    assert set(marks) == {"kill", "detection", "recovered", "rejoin"}
    assert marks["kill"] < marks["detection"] <= marks["recovered"] < marks["rejoin"]
