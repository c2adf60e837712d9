"""``muheam bench pgbench --format json`` runs end to end (short): both systems measured, money conserved."""

from __future__ import annotations

import json

import pytest

from muheam.bench import pgbase
from tests.support.cluster import run_cli

pytestmark = pytest.mark.integration


@pytest.mark.skipif(pgbase.available() is not None, reason=str(pgbase.available()))
def test_bench_pgbench_reports_both_systems() -> None:
    out = json.loads(run_cli("bench", "pgbench", "--format", "json", "--seconds", "2", "--clients", "2",
                             timeout=240).stdout)
    assert out["tps_postgres"] > 0 and out["tps_muheam_1"] > 0
    assert out["ratio_muheam_1_vs_postgres"] == pytest.approx(out["tps_muheam_1"] / out["tps_postgres"], rel=0.01)
    assert out["failed_muheam_1"] == 0 and out["sum_muheam_1"] == 0 and out["sum_postgres"] == 0
