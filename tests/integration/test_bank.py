"""The bank workload (DESIGN.md section 9, seed 002) on a real node, its PostgreSQL baseline, and its benchmark.

The sum check is only worth something if it can fail, so two tests plant a violation (a fake backend, and a
real one-sided update on a node) and require the readers to report it.
"""

from __future__ import annotations

import random
from typing import Callable

import psycopg
import pytest

from muheam.bench.workloads import bank
from muheam.bench import pgbase
from muheam.client import connect, request
from tests.support.cluster import LocalCluster

Start = Callable[..., LocalCluster]
PG_MISSING = pgbase.available()


@pytest.mark.integration
def test_bank_one_node(local_cluster: Start) -> None:
    c = local_cluster(1)
    ep = str(c.members()[0]["client_endpoint"])
    bank.create_accounts(ep, 50)
    result = bank.run([ep], seconds=8, transfer_clients=4, readers=1, accounts=50, seed=2)
    assert result.violations == [] and result.sum_violations == 0
    assert result.transfers > 0 and result.sums > 0
    assert result.errors == {} and result.error_count == 0, result.errors
    assert result.tps > 0 and result.elapsed >= 8
    first = bank.checksum(ep)
    assert bank.checksum(ep) == first
    assert bank.running_transactions(ep) == 0
    with connect(ep) as conn, conn.transaction() as tx:
        rows = dict(tx.scan(bank.TABLE))
    assert len(rows) == 50 and sum(r[bank.COLUMN] for r in rows.values()) == 0
    assert any(r[bank.COLUMN] != 0 for r in rows.values())  # transfers did land

    # a half transfer (credit without debit) must be seen by every reader from now on
    with connect(ep) as conn, conn.transaction() as tx:
        tx.add(bank.TABLE, 7, bank.COLUMN, 1)
    planted = bank.run([ep], seconds=1, transfer_clients=0, readers=1, accounts=50, mode="thread")
    assert planted.sums > 0 and planted.sum_violations == planted.sums
    assert {v["sum"] for v in planted.violations} == {1}
    assert bank.checksum(ep) != first


@pytest.mark.integration
@pytest.mark.parametrize("lazy", [False, True], ids=["acknowledged-outcome", "lazy-outcome"])
def test_bank_three_nodes_in_both_outcome_modes(local_cluster: Start, monkeypatch: pytest.MonkeyPatch,
                                                lazy: bool) -> None:
    """The bank on 3 nodes with the outcome round acknowledged (the default) and with ``lazy_outcome = true``:
    no sum violation, every node reads the same table, and the mode is the one asked for (lazily, commits send
    unacknowledged outcomes and no acknowledged outcome round runs for them)."""
    if lazy:
        monkeypatch.setenv("MUHEAM_LAZY_OUTCOME", "true")
    c = local_cluster(3)
    monkeypatch.delenv("MUHEAM_LAZY_OUTCOME", raising=False)
    eps = [str(m["client_endpoint"]) for m in sorted(c.members(), key=lambda m: int(m["node_id"]))]
    bank.create_accounts(eps[0], 30)
    result = bank.run(eps, seconds=4, transfer_clients=3, readers=1, accounts=30, seed=5)
    assert result.sum_violations == 0 and result.error_count == 0, (result.violations, result.errors)
    assert result.transfers > 0 and len({bank.checksum(ep) for ep in eps}) == 1
    commits = [request(ep, "status")["counters"]["commits"] for ep in eps]
    unacked = sum(int(s.get("done_unacked", 0)) for s in commits)
    assert (unacked > 0) if lazy else unacked == 0, commits  # one per commit batch


class _BrokenBank:
    """A backend whose transfers are not atomic: the credit lands, the debit sometimes does not."""

    balances = [0] * 10

    def __init__(self, endpoint: str, timeout: float) -> None:
        self.rng = random.Random(1)

    def transfer(self, src: int, dst: int, debit_first: bool) -> None:
        self.balances[dst] += 1
        if self.rng.random() < 0.5:
            self.balances[src] -= 1

    def read_all(self) -> list[tuple[int, int]]:
        return list(enumerate(self.balances))

    def close(self) -> None:
        pass


def test_sum_check_detects_a_planted_violation() -> None:
    result = bank.run(["fake"], seconds=0.5, transfer_clients=1, readers=1, accounts=10, factory=_BrokenBank,
                      mode="thread", seed=1)
    assert result.transfers > 0 and result.sums > 0
    assert result.sum_violations > 0 and all(v["sum"] > 0 for v in result.violations)
    assert result.violations[0]["reader"] == "reader-0"


def test_run_is_bounded_against_a_dead_endpoint() -> None:
    result = bank.run(["tcp://127.0.0.1:9"], seconds=1, transfer_clients=1, readers=1, accounts=10,
                      mode="thread", timeout=0.3)
    assert result.transfers == 0 and result.sums == 0 and result.error_count >= 2
    assert set(result.errors) == {"transfer-0", "reader-0"}
    assert "NodeUnavailable" in result.errors["transfer-0"][0]


@pytest.mark.integration
@pytest.mark.skipif(PG_MISSING is not None, reason=f"standalone PostgreSQL unavailable: {PG_MISSING}")
def test_postgres_baseline_runs_the_same_workload() -> None:
    with pgbase.postgres() as conninfo:
        pgbase.create_accounts(conninfo, 20)
        result = bank.run([conninfo], seconds=3, transfer_clients=3, readers=1, accounts=20,
                          factory=pgbase.pg_session)
        assert result.sum_violations == 0 and result.error_count == 0, result.errors
        assert result.transfers > 0 and result.sums > 0
        assert pgbase.checksum(conninfo) == pgbase.checksum(conninfo)
        with psycopg.connect(conninfo) as conn:
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
            assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
            assert conn.execute("SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in%'"
                                ).fetchone() == (0,)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(conninfo, connect_timeout=2).close()  # stopped


@pytest.mark.integration
def test_benchmark_smoke() -> None:
    from muheam.bench import bank as bench_bank

    out = bench_bank.run(seconds=2, clients=2, accounts=20)
    for key in ("tps_postgres", "tps_muheam_1", "tps_muheam_3", "tps_muheam_3_nosec", "ratio_3_vs_postgres",
                "msgs_per_txn", "sum_violations", "notes", "cpu_us_per_txn_1", "cpu_us_per_txn_3",
                "tps_muheam_3_affinity", "cpu_us_per_txn_3_affinity", "msgs_per_txn_affinity", "msgs_per_txn_by_kind",
                "bytes_per_txn_by_kind"):
        assert key in out
    assert out["sum_violations"] == 0
    assert out["tps_muheam_1"] > 0
    assert out["cpu_us_per_txn_1"] > 0
    # the reader's sums over the transfers (it sums at least once in 2 s; transfers commit on every node)
    assert out["scans_per_txn_1"] == round(out["details"]["muheam_1"]["sums"] / out["details"]["muheam_1"]["transfers"],
                                           3) > 0
    if out["tps_muheam_3"] is not None:
        # the kinds split the protocol messages: they add up to the total (each rounded to 3 places); frames
        # carry one or more of them
        assert abs(sum(out["msgs_per_txn_by_kind"].values()) - out["logical_msgs_per_txn"]) < 0.01
        assert out["msgs_per_txn"] <= out["logical_msgs_per_txn"] + 0.01
        assert out["cpu_us_per_txn_3"] > 0 and out["tps_muheam_3_affinity"] > 0
    assert (out["tps_postgres"] is None) == (PG_MISSING is not None)
    if out["tps_muheam_3"] is None:
        assert out["ratio_3_vs_postgres"] is None and any("3 nodes" in n for n in out["notes"])
