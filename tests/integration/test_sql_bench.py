"""``muheam bench pgbench --format json`` runs end to end (short): pgbench's TPC-B-like transaction on
PostgreSQL, a 1-node and a 3-node MUHEAM, each run's sums checked afterwards."""

from __future__ import annotations

import json

import pytest

from muheam.bench import pgbase
from tests.support.cluster import run_cli

pytestmark = pytest.mark.integration


@pytest.mark.skipif(pgbase.available() is not None, reason=str(pgbase.available()))
def test_bench_pgbench_reports_every_system() -> None:
    out = json.loads(run_cli("bench", "pgbench", "--format", "json", "--seconds", "2", "--clients", "3",
                             "--scale", "1", timeout=300).stdout)
    for name in ("postgres", "muheam_1", "muheam_3"):
        assert out[f"tps_{name}"] > 0 and out[f"transactions_{name}"] > 0, name
        assert out[f"failed_{name}"] == 0, name
        # every transaction applied whole: account, teller, branch and history sums agree, and one history row
        # per counted transaction (plus at most one per client whose COMMIT was in flight when -T ran out)
        assert out[f"consistent_{name}"] is True, name
        assert out[f"transactions_{name}"] <= out[f"history_rows_{name}"] <= out[f"transactions_{name}"] + 3, name
    assert out["ratio_muheam_1_vs_postgres"] == pytest.approx(out["tps_muheam_1"] / out["tps_postgres"], rel=0.01)
    assert out["ratio_muheam_3_vs_postgres"] == pytest.approx(out["tps_muheam_3"] / out["tps_postgres"], rel=0.01)
    assert out["node_cpu_ms_per_txn_muheam_1"] > 0 and out["node_cpu_ms_per_txn_muheam_3"] > 0
