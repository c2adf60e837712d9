"""The operator CLI for tables and rows, waldump, and the kv benchmark's JSON (group commit must show)."""

from __future__ import annotations

import json
from typing import Callable

import pytest

from tests.support.cluster import LocalCluster, run_cli

pytestmark = pytest.mark.integration


def test_table_put_get_scan_waldump(local_cluster: Callable[..., LocalCluster]) -> None:
    c = local_cluster(1)
    assert "created" in c.cli("table", "create", "accounts", "balance:int64", "owner:text(8)").stdout
    c.cli("put", "accounts", "1", "balance=10", "owner=ann")
    c.cli("put", "accounts", "2", "balance=-10", "owner=bob")
    c.cli("put", "accounts", "1", "balance=11")
    assert json.loads(c.cli("get", "accounts", "1").stdout) == {"key": 1, "balance": 11, "owner": "ann"}
    rows = json.loads(c.cli("scan", "accounts", "--format", "json").stdout)
    assert [r["key"] for r in rows] == [1, 2] and sum(r["balance"] for r in rows) == 1
    tables = json.loads(c.cli("table", "list", "--format", "json").stdout)
    assert [t["name"] for t in tables] == ["accounts"]
    missing = c.cli("get", "accounts", "99", check=False)
    assert missing.returncode == 1 and "no row with key 99" in missing.stderr
    bad = c.cli("put", "accounts", "3", "balance=lots", check=False)
    assert bad.returncode == 2 and "balance is int64" in bad.stderr

    commits = [json.loads(line) for line in
               c.cli("waldump", "--node-id", "1", "--kind", "COMMIT", "--format", "json").stdout.splitlines()]
    assert len(commits) == 3 and all(r["kind"] == "COMMIT" for r in commits)
    assert [int(r["glsn"].split("/")[0]) for r in commits] == sorted(int(r["glsn"].split("/")[0]) for r in commits)
    stats = json.loads(c.cli("waldump", "--node-id", "1", "--stats", "--format", "json").stdout)
    assert stats["by_kind"]["HEAP_INSERT"]["records"] == 2 and stats["by_kind"]["HEAP_UPDATE"]["records"] == 1
    one = c.cli("waldump", "--node-id", "1", "--xid", str(commits[0]["xid"])).stdout.splitlines()
    assert one and all(f"tx: {commits[0]['xid']}," in line for line in one)

    assert "dropped" in c.cli("table", "drop", "accounts").stdout
    assert json.loads(c.cli("table", "list", "--format", "json").stdout) == []
    gone = c.cli("table", "drop", "accounts", check=False)
    assert gone.returncode == 1 and "does not exist" in gone.stderr
    assert "no table accounts" in c.cli("table", "drop", "accounts", "--if-exists").stdout
    drops = [json.loads(line) for line in
             c.cli("waldump", "--node-id", "1", "--kind", "CATALOG_DROP_TABLE", "--format", "json").stdout.splitlines()]
    assert len(drops) == 1


def test_bench_kv_shows_group_commit() -> None:
    result = json.loads(run_cli("bench", "kv", "--json", "--clients", "6", "--seconds", "2", timeout=180).stdout)
    assert set(result) >= {"commits_per_s", "gets_per_s", "wal_mb_per_s", "fsyncs_per_commit"}
    assert result["commits_per_s"] > 0 and result["gets_per_s"] > 0 and result["wal_mb_per_s"] > 0
    assert result["fsyncs_per_commit_1"] >= 0.9  # one client: every commit waits for its own flush
    assert result["fsyncs_per_commit"] < 0.7  # many clients: commits share flushes
