"""``muheam bench engine`` runs its transactions on a real engine, checks their sums and leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from muheam.bench import engine as bench
from muheam.cli import cli
from muheam.engine import Engine, EngineConfig


def test_a_small_run_reports_every_figure_and_consistent_sums(tmp_path: Path) -> None:
    out = bench.run(transactions=100, repeat=2, scale=1, tmpdir=str(tmp_path))
    assert out["consistent"] is True
    assert out["transactions"] == 100 and out["repeat"] == 2 and out["scale"] == 1
    assert out["commits_per_s"] > 0
    assert 0 <= out["user_us_per_txn"] <= out["user_us_per_txn_median"]
    assert 0 <= out["sys_us_per_txn"] <= out["sys_us_per_txn_median"]
    assert list(tmp_path.iterdir()) == []  # the engine's directory is removed


def test_the_sums_tell_a_transaction_applied_in_part(tmp_path: Path) -> None:
    """``consistent`` can fail: a branch changed outside a transaction's other rows breaks the equality."""
    engine = Engine.open(tmp_path, 1, config=EngineConfig(cache_pages=256))
    try:
        work = bench._Workload(engine, 1, seed=3)
        work.transaction()
        assert work.consistent()
        t = engine.begin(work._xid())
        t.add("branches", 1, "bbalance", 1)
        t.commit()
        assert not work.consistent()
    finally:
        engine.close()


def test_the_cli_prints_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["bench", "engine", "--transactions", "100", "--repeat", "1", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert '"consistent": true' in result.output and '"user_us_per_txn"' in result.output
