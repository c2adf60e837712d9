"""``muheam bench kv``: one node, many clients: commits/s, gets/s, WAL throughput, and group commit at work.

``fsyncs_per_commit`` is WAL fsyncs divided by commits during the commit phase: with many concurrent clients it
falls well below 1 because commits arriving in one event-loop turn share one flush.  ``fsyncs_per_commit_1`` is
the same with a single client, the baseline it is compared with.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import time
from typing import Any

from muheam.bench.harness import status, temp_cluster
from muheam.client import ClientError, connect

TABLE = "kv"


def _committer(ep: str, seconds: float, keys: range, out: "mp.Queue[int]") -> None:
    rng = random.Random(keys.start)
    done = 0
    with connect(ep) as conn:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                with conn.transaction() as tx:
                    tx.update(TABLE, rng.choice(keys), {"value": done})
                done += 1
            except ClientError:
                pass
    out.put(done)


def _getter(ep: str, seconds: float, nkeys: int, out: "mp.Queue[int]") -> None:
    rng = random.Random()
    done = 0
    with connect(ep) as conn, conn.transaction() as tx:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            tx.get(TABLE, rng.randrange(nkeys))
            done += 1
    out.put(done)


def _phase(target: Any, ep: str, clients: int, seconds: float, args: list[tuple[Any, ...]]) -> tuple[int, float]:
    out: mp.Queue[int] = mp.Queue()
    procs = [mp.Process(target=target, args=(ep, seconds, *args[i], out)) for i in range(clients)]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    total = sum(out.get(timeout=seconds + 60) for _ in procs)
    elapsed = time.monotonic() - t0
    for p in procs:
        p.join(10)
    return total, elapsed


def _commit_phase(ep: str, clients: int, seconds: float, nkeys: int) -> dict[str, float]:
    per = nkeys // clients
    before = status(ep)["counters"]["wal"]
    commits, elapsed = _phase(_committer, ep, clients, seconds,
                              [(range(i * per, (i + 1) * per),) for i in range(clients)])
    after = status(ep)["counters"]["wal"]
    return {"commits_per_s": commits / elapsed, "fsyncs_per_commit": (after["fsyncs"] - before["fsyncs"]) / max(1, commits),
            "wal_mb_per_s": (after["end_lsn"] - before["end_lsn"]) / elapsed / 1e6}


def run(clients: int = 8, seconds: float = 5.0, nkeys: int = 4000) -> dict[str, Any]:
    with temp_cluster(1) as eps:
        ep = eps[1]
        with connect(ep) as conn:
            conn.create_table(TABLE, {"value": "int64", "pad": "text(32)"}, expected_rows=nkeys)
            for start in range(0, nkeys, 500):
                with conn.transaction() as tx:
                    for k in range(start, min(nkeys, start + 500)):
                        tx.insert(TABLE, k, {"value": 0, "pad": "x" * 32})
        single = _commit_phase(ep, 1, seconds / 2, nkeys)
        many = _commit_phase(ep, clients, seconds, nkeys)
        gets, elapsed = _phase(_getter, ep, clients, seconds, [(nkeys,)] * clients)
    return {
        "commits_per_s": round(many["commits_per_s"]),
        "gets_per_s": round(gets / elapsed),
        "wal_mb_per_s": round(many["wal_mb_per_s"], 3),
        "fsyncs_per_commit": round(many["fsyncs_per_commit"], 3),
        "fsyncs_per_commit_1": round(single["fsyncs_per_commit"], 3),
        "commits_per_s_1": round(single["commits_per_s"]),
        "clients": clients,
    }
