"""``muheam bench ... --report DIR``: the figures drawn from a result (issue 22, item 5)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from muheam.bench import figures


def test_systems_side_by_side_share_a_panel_and_the_png_is_written(tmp_path: Path) -> None:
    result = {"tps_postgres": 900.0, "tps_muheam_1": 500.5, "tps_muheam_3": 300, "msgs_per_txn": 7.5,
              "sum_violations": 0, "notes": ["x"], "details": {"a": 1}, "ok": True, "nan": float("nan")}
    parts = dict(figures.panels(result))
    assert parts["tps"] == {"postgres": 900.0, "muheam_1": 500.5, "muheam_3": 300.0}
    assert parts["other figures"] == {"msgs_per_txn": 7.5, "sum_violations": 0.0}
    paths = figures.write(result, tmp_path / "r", "bank")
    assert Path(paths["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(Path(paths["json"]).read_text())["tps_muheam_3"] == 300


def test_report_option_on_a_bench_command(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from muheam.cli.app import cli
    import muheam.bench.lock as lock

    monkeypatch.setattr(lock, "run", lambda transfers: {"transfer_p50_us": 10.0, "transfer_msgs": 3.0})
    out = CliRunner().invoke(cli, ["bench", "lock", "--report", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "lock.png").stat().st_size > 0 and (tmp_path / "lock.json").exists()
