"""``muheam bench engine``: the CPU one TPC-B-like transaction costs the storage engine alone, in this process.

pgbench's transaction (update an account, read it back, update a teller and a branch, insert a history row,
commit) run straight on an ``Engine`` in a temporary directory: no sockets, no SQL, no cluster layer, one
thread.  What it is for: the end-to-end benchmarks (``bench pgbench``, ``bench bank``) move by 10-30 % between
runs of the same code on this shared machine, so a change of a few per cent in the engine's per-row path is
invisible there; here the same code gives the same figure within a few per cent.  Compare two checkouts with
``PYTHONPATH=<checkout> python -m muheam bench engine`` run alternately.

Figures: ``user_us_per_txn`` and ``sys_us_per_txn`` (process CPU from ``os.times``, the best and the median of
``repeat`` rounds of ``transactions`` each, after one unmeasured round that warms the cache and the prune
cycle), ``commits_per_s`` of the best round (wall clock, including each commit's WAL flush).  Tables as
``bench pgbench`` makes them through SQL (256 hash chains each; ``scale`` branches, 10 tellers and 10,000
accounts per branch); the history keys grow, the others are drawn at random (seeded).  There is no goal and no
baseline: the figure exists to compare two versions of the engine in one shell.  ``consistent``: afterwards the
accounts', tellers', branches' and history's sums agree, as in ``bench pgbench``.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from typing import Any

from muheam.engine import Engine, EngineConfig

BUCKETS = 256
"""As a table made by SQL without ``WITH (buckets = N)`` (``muheam.sql.plan.DEFAULT_BUCKETS``)."""
TELLERS_PER_BRANCH = 10
ACCOUNTS_PER_BRANCH = 10_000


class _Workload:
    def __init__(self, engine: Engine, scale: int, seed: int) -> None:
        self.engine, self.rnd = engine, random.Random(seed)
        self.accounts, self.tellers, self.branches = ACCOUNTS_PER_BRANCH * scale, TELLERS_PER_BRANCH * scale, scale
        self.next_xid = 1000
        self.next_hid = 0
        for name, cols in (("accounts", {"bid": "int64", "abalance": "int64"}),
                           ("tellers", {"bid": "int64", "tbalance": "int64"}), ("branches", {"bbalance": "int64"}),
                           ("history", {"tid": "int64", "bid": "int64", "aid": "int64", "delta": "int64"})):
            engine.create_table(name, cols, buckets=BUCKETS)
        t = engine.begin(self._xid())
        for a in range(1, self.accounts + 1):
            t.insert("accounts", a, {"bid": (a - 1) // ACCOUNTS_PER_BRANCH + 1, "abalance": 0})
        for k in range(1, self.tellers + 1):
            t.insert("tellers", k, {"bid": (k - 1) // TELLERS_PER_BRANCH + 1, "tbalance": 0})
        for b in range(1, self.branches + 1):
            t.insert("branches", b, {"bbalance": 0})
        t.commit()

    def _xid(self) -> int:
        self.next_xid += 1
        return self.next_xid

    def transaction(self) -> None:
        rnd = self.rnd
        aid, tid = rnd.randint(1, self.accounts), rnd.randint(1, self.tellers)
        bid, delta = rnd.randint(1, self.branches), rnd.randint(-5000, 5000)
        t = self.engine.begin(self._xid())
        t.add("accounts", aid, "abalance", delta)
        t.get("accounts", aid)
        t.add("tellers", tid, "tbalance", delta)
        t.add("branches", bid, "bbalance", delta)
        self.next_hid += 1
        t.insert("history", self.next_hid, {"tid": tid, "bid": bid, "aid": aid, "delta": delta})
        t.commit()

    def consistent(self) -> bool:
        """The four sums agree (every transaction applied whole), read under one snapshot."""
        t = self.engine.begin(self._xid())
        sums = {sum(int(row[col]) for _, row in t.scan(table))
                for table, col in (("accounts", "abalance"), ("tellers", "tbalance"), ("branches", "bbalance"),
                                   ("history", "delta"))}
        t.commit()
        return len(sums) == 1


def run(transactions: int = 2000, repeat: int = 5, scale: int = 4, seed: int = 7,
        tmpdir: str | None = None) -> dict[str, Any]:
    where = tempfile.mkdtemp(prefix="muheam-bench-engine-", dir=tmpdir)
    try:
        engine = Engine.open(where, 1, config=EngineConfig(cache_pages=4096))
        try:
            work = _Workload(engine, scale, seed)
            for _ in range(transactions):  # unmeasured: the cache filled, versions accumulated, prunes under way
                work.transaction()
            rounds: list[tuple[float, float, float]] = []
            for _ in range(repeat):
                t0, w0 = os.times(), time.perf_counter()
                for _ in range(transactions):
                    work.transaction()
                t1, w1 = os.times(), time.perf_counter()
                rounds.append(((t1.user - t0.user) / transactions * 1e6, (t1.system - t0.system) / transactions * 1e6,
                               transactions / (w1 - w0)))
            consistent = work.consistent()
        finally:
            engine.close()
    finally:
        shutil.rmtree(where, ignore_errors=True)
    user = sorted(r[0] for r in rounds)
    system = sorted(r[1] for r in rounds)
    return {
        "user_us_per_txn": round(user[0], 1),
        "user_us_per_txn_median": round(user[len(user) // 2], 1),
        "sys_us_per_txn": round(system[0], 1),
        "sys_us_per_txn_median": round(system[len(system) // 2], 1),
        "commits_per_s": round(max(r[2] for r in rounds)),
        "consistent": consistent,
        "transactions": transactions,
        "repeat": repeat,
        "scale": scale,
    }
