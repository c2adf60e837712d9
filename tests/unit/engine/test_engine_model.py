"""Engine against a dict model (hypothesis): random transactions, checkpoints and crashes with a cut WAL tail.

A crash drops the engine without checkpoint or close and may cut the WAL anywhere after the last flushed LSN
(an unflushed tail is exactly what a power loss may lose).  After reopening, every committed transaction must be
present with its values and nothing of any other.  The buffer cache is far smaller than the data, so pages are
evicted all the time; a hook asserts the WAL-before-data rule (I3) at every page write.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from muheam.engine import Engine, EngineConfig
from muheam.storage import DuplicateKey, KeyNotFound
from walmerge import node_wal_dir, segment_name

SEG = 1 << 16
COLS = {"balance": "int64", "name": "text(16)", "x": "float64", "pad": "text(400)"}
KEYS = 40

op = st.one_of(
    st.tuples(st.just("insert"), st.integers(0, KEYS - 1), st.integers(-1000, 1000)),
    st.tuples(st.just("update"), st.integers(0, KEYS - 1), st.integers(-1000, 1000)),
    st.tuples(st.just("add"), st.integers(0, KEYS - 1), st.integers(-50, 50)),
    st.tuples(st.just("delete"), st.integers(0, KEYS - 1), st.just(0)),
)
txn = st.tuples(st.lists(op, min_size=1, max_size=12), st.sampled_from(["commit", "commit", "abort"]))
step = st.one_of(txn, st.just("checkpoint"), st.just("crash"), st.just("crash-cut"))


def row(v: int) -> dict[str, Any]:
    return {"balance": v, "name": f"r{v}", "x": v / 4, "pad": "p" * (abs(v) % 300)}


class Harness:
    def __init__(self, shared: Path, cut_seed: int, cache_pages: int = 6) -> None:
        self.shared = shared
        self.cfg = EngineConfig(cache_pages=cache_pages, segment_size=SEG)
        self.next_xid = 3
        self.cut_seed = cut_seed
        self.page_writes = 0
        self.eng = self.open()
        self.eng.create_table("t", COLS, expected_rows=20)

    def open(self) -> Engine:
        eng = Engine.open(self.shared, 1, config=self.cfg)

        def i3(table: int, block: int, page_lsn: int, flushed: int) -> None:
            assert eng.wal.flushed_lsn >= page_lsn, (table, block, page_lsn, eng.wal.flushed_lsn)
            self.page_writes += 1

        eng.cache.write_hook = i3
        return eng

    def xid(self) -> int:
        self.next_xid += 1
        return self.next_xid

    def crash(self, cut: bool) -> None:
        wal = self.eng.wal
        flushed, end = wal.flushed_lsn, wal.end_lsn
        self.eng.crash()
        if cut and end > flushed:
            pos = flushed + self.cut_seed % (end - flushed)
            seg = pos - pos % SEG
            path = node_wal_dir(self.shared, 1) / segment_name(seg)
            data = bytearray(path.read_bytes())
            data[pos - seg:] = bytes(len(data) - (pos - seg))
            path.write_bytes(bytes(data))
        self.eng = self.open()

    def check(self, model: dict[int, int]) -> None:
        t = self.eng.begin(self.xid())
        assert dict(t.scan("t")) == {k: row(v) for k, v in model.items()}
        for k in range(KEYS):
            assert t.get("t", k) == (row(model[k]) if k in model else None)
        t.commit()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(step, min_size=1, max_size=14), cut_seed=st.integers(0, 1 << 30), leave_open=st.booleans())
def test_random_transactions_crash_and_redo_match_the_model(steps: list[Any], cut_seed: int,
                                                           leave_open: bool) -> None:
    shared = Path(tempfile.mkdtemp(dir="/tmp", prefix="engmodel-"))
    try:
        h = Harness(shared, cut_seed)
        model: dict[int, int] = {}
        for s in steps:
            if s == "checkpoint":
                h.eng.checkpoint()
                continue
            if s in ("crash", "crash-cut"):
                if leave_open:           # a transaction with changes but no outcome at the crash
                    t = h.eng.begin(h.xid())
                    for k in range(KEYS):
                        if k not in model:
                            t.insert("t", k, row(7777))
                            break
                h.crash(s == "crash-cut")
                h.check(model)
                continue
            ops, outcome = s
            t = h.eng.begin(h.xid())
            mine = dict(model)
            for kind, k, v in ops:
                try:
                    if kind == "insert":
                        t.insert("t", k, row(v))
                        assert k not in mine
                        mine[k] = v
                    elif kind == "update":
                        t.update("t", k, row(v))
                        assert k in mine
                        mine[k] = v
                    elif kind == "add":
                        t.add("t", k, "balance", v)
                        assert k in mine
                        mine[k] = mine[k] + v
                        t.update("t", k, row(mine[k]))     # keep the other columns a function of balance
                    else:
                        t.delete("t", k)
                        assert k in mine
                        del mine[k]
                except DuplicateKey:
                    assert k in mine
                except KeyNotFound:
                    assert k not in mine
                assert t.get("t", k) == (row(mine[k]) if k in mine else None)
            if outcome == "commit":
                t.commit()
                model = mine
            else:
                t.abort()
        h.check(model)
        h.crash(True)
        h.check(model)
        h.eng.close()
        h.eng = h.open()
        assert h.eng.recovery.records_replayed == 1      # clean shutdown: only the final checkpoint to redo
        h.check(model)
        h.eng.close()
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_small_cache_evicts_and_every_write_respects_i3() -> None:
    shared = Path(tempfile.mkdtemp(dir="/tmp", prefix="engi3-"))
    try:
        h = Harness(shared, 12345, cache_pages=4)
        model: dict[int, int] = {}
        for i in range(500):
            t = h.eng.begin(h.xid())
            k = i % 160
            if k in model:
                t.update("t", k, row(i))
            else:
                t.insert("t", k, row(i))
            if i % 3:
                t.commit()
                model[k] = i
            else:
                t.abort()
            if i == 250:
                h.eng.checkpoint()
        assert h.eng.cache.evictions > 50 and h.page_writes > 20
        h.crash(True)
        h.check(model)
        h.eng.close()
    finally:
        shutil.rmtree(shared, ignore_errors=True)
