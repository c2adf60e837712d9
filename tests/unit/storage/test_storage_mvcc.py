"""MVCC: the visibility rules, their vectorised form, and a model check of random transaction histories.

The history test drives a real heap file with random begin/insert/update/delete/lock/commit/abort/snapshot/prune
steps and compares every snapshot's view with a model that knows nothing about xmin/xmax: a snapshot sees the
writes of the transactions that committed before it was taken, applied in commit order, plus its own.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from muheam.storage import (DuplicateKey, Heap, KeyNotFound, Page, RowConflict, Schema, Snapshot,
                            relation_path, version_visible, xid_visible)
from muheam.storage import mvcc
from muheam.storage.mvcc import FROZEN_XID, SLOT_LOCK_ONLY, SLOT_USED

C, A, R = "committed", "aborted", "in_progress"


def test_rules_on_hand_picked_cases() -> None:
    status = {10: C, 11: A, 12: R, 13: C, 14: C}.__getitem__
    snap = Snapshot(xmin=12, xmax=14, running=frozenset({12}), xid=12)   # 13 committed before, 14 after

    def vis(xmin: int, xmax: int = 0, flags: int = SLOT_USED) -> bool:
        return version_visible(xmin, xmax, flags, snap, status)

    assert vis(10) and vis(13) and vis(FROZEN_XID)
    assert not vis(11)                          # aborted creator
    assert vis(12)                              # our own insert
    assert not vis(14)                          # committed after the snapshot was taken: repeatable read
    assert not vis(10, 13)                      # deleted by a transaction our snapshot sees as committed
    assert vis(10, 11)                          # deleter aborted
    assert vis(10, 14)                          # deleter committed too late for us
    assert not vis(10, 12)                      # we deleted it ourselves
    assert vis(10, 13, SLOT_USED | SLOT_LOCK_ONLY)   # only locked
    assert not vis(10, 0, 0)                    # free slot
    other = Snapshot(xmin=12, xmax=14, running=frozenset({12}))
    assert not xid_visible(12, other, status) and xid_visible(13, other, status)
    assert not version_visible(12, 0, SLOT_USED, other, status)


def test_snapshot_validation_and_status_checking() -> None:
    with pytest.raises(ValueError, match="outside"):
        Snapshot(5, 8, frozenset({9}))
    with pytest.raises(ValueError):
        Snapshot(9, 8)
    p = Page.new(Schema("t", {}), block=1)
    p.insert(1, {}, 5)
    with pytest.raises(ValueError, match="must return"):
        p.visible_slot(1, Snapshot(6, 6), lambda x: "commited")


XIDS = st.integers(0, 12)
STATUS = st.dictionaries(st.integers(3, 12), st.sampled_from([C, A, R]), min_size=10, max_size=10)


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    xmin = draw(st.integers(3, 12))
    xmax = draw(st.integers(xmin, 13))
    running = draw(st.frozensets(st.integers(xmin, max(xmin, xmax - 1)))) if xmax > xmin else frozenset()
    return Snapshot(xmin, xmax, running, draw(st.sampled_from([0, *range(3, 13)])))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(XIDS, XIDS, st.sampled_from([0, 1, 3, 5, 7])), max_size=40), snapshots(), STATUS)
def test_vectorised_visibility_equals_the_scalar_rules(slots: list[tuple[int, int, int]], snap: Snapshot,
                                                        status_map: dict[int, str]) -> None:
    calls: list[int] = []

    def status(x: int) -> str:
        calls.append(x)
        return status_map.get(x, C)

    xmin = np.array([s[0] for s in slots], dtype=np.uint64)
    xmax = np.array([s[1] for s in slots], dtype=np.uint64)
    flags = np.array([s[2] for s in slots], dtype=np.uint8)
    want = [version_visible(a, b, f, snap, status) for a, b, f in slots]
    saved = mvcc.PER_XID_SORT
    try:
        for sort_from in (saved, 0):  # the distinct XIDs by a set, then by numpy's sort
            mvcc.PER_XID_SORT = sort_from
            calls.clear()
            got = mvcc.visible_mask(xmin, xmax, flags, snap, status)
            assert len(calls) == len(set(calls)), "status must be looked up once per distinct XID"
            assert got.tolist() == want
    finally:
        mvcc.PER_XID_SORT = saved


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(3, 12), st.sampled_from([0, *range(3, 13)]), st.booleans(), st.booleans()),
                min_size=1, max_size=40),
       snapshots(), STATUS)
def test_visible_slot_is_the_newest_version_the_scalar_rules_see(versions: list[tuple[int, int, bool, bool]],
                                                                snap: Snapshot, status_map: dict[int, str]) -> None:
    """A hot row's many versions on one page (with other keys between them): ``visible_slot`` loops over them
    rather than using the vectorised mask, newest XID first, and must pick the version the rules pick in that
    order, with the same status lookups (random histories may have several visible versions; valid ones not)."""
    page = Page.new(Schema("t", {}), block=1)
    slots = []
    for n, (xmin, xmax, lock_only, other_first) in enumerate(versions):
        if other_first:
            page.insert(100 + n, {}, xmin)
        slot = page.insert(7, {}, xmin)
        if xmax:
            page.set_xmax(slot, xmax, lock_only=lock_only)
        slots.append((slot, xmin, xmax, SLOT_USED | (SLOT_LOCK_ONLY if lock_only and xmax else 0)))
    asked: list[int] = []

    def status(x: int) -> str:
        asked.append(x)
        return status_map.get(x, C)

    want, rules_asked = None, []
    for slot, xmin, xmax, flags in sorted(slots, key=lambda v: (v[1], v[0]), reverse=True):  # newest first
        if version_visible(xmin, xmax, flags, snap, status):
            want = slot
            break
    rules_asked, asked[:] = list(asked), []
    assert page.visible_slot(7, snap, status) == want
    assert asked == rules_asked, "the same status lookups as the rules (one that fails must fail alike)"


# -- model check of random histories --------------------------------------------------------------------------


@dataclass
class Tx:
    xid: int
    snap: Snapshot
    seen_commits: int
    writes: dict[int, int | None] = field(default_factory=dict)
    locks: set[int] = field(default_factory=set)


@dataclass
class Model:
    commits: list[tuple[int, dict[int, int | None]]] = field(default_factory=list)

    def state(self, n: int | None = None) -> dict[int, int]:
        out: dict[int, int] = {}
        for _, writes in self.commits[:n]:
            for k, v in writes.items():
                if v is None:
                    out.pop(k, None)
                else:
                    out[k] = v
        return out


class History:
    """Drives a heap and the model side by side, checking each write's outcome and every snapshot's view."""

    def __init__(self, heap: Heap, nkeys: int, pad: int) -> None:
        self.heap, self.nkeys, self.pad = heap, nkeys, pad
        self.next_xid = 3
        self.status: dict[int, str] = {}
        self.running: dict[int, Tx] = {}
        self.readers: list[tuple[Snapshot, int]] = []
        self.model = Model()
        self.status_fn: Callable[[int], str] = self.status.__getitem__

    def take_snapshot(self, own: int = 0) -> Snapshot:
        running = frozenset(self.running) | ({own} if own else frozenset())
        return Snapshot(min(running, default=self.next_xid), self.next_xid, running, own)

    def begin(self) -> None:
        xid = self.next_xid
        self.next_xid += 1
        self.status[xid] = R
        self.running[xid] = Tx(xid, self.take_snapshot(xid), len(self.model.commits))

    def view(self, tx: Tx) -> dict[int, int]:
        state = self.model.state(tx.seen_commits)
        for k, v in tx.writes.items():
            if v is None:
                state.pop(k, None)
            else:
                state[k] = v
        return state

    def expected(self, tx: Tx, op: str, key: int) -> str:
        others = [t for t in self.running.values() if t is not tx]
        late = any(key in w for _, w in self.model.commits[tx.seen_commits:])
        if op == "insert":
            if late and key not in tx.writes:
                # A live committed row is a duplicate whoever's snapshot it is outside of (as PostgreSQL);
                # a version a late commit deleted is first-committer-wins; else wait for the running writer.
                pending = any(key in t.writes for t in others)
                if key in self.model.state() and not pending:
                    return "dup"
                if self.late_deleted(tx, key):
                    return "serialize"
                return "wait"
            if any(key in t.writes for t in others):
                return "wait"
            if key in tx.writes:
                return "ok" if tx.writes[key] is None else "dup"
            return "dup" if key in self.view(tx) else "ok"
        if key not in self.view(tx):
            return "notfound"
        if key in tx.writes:
            return "ok"
        if late:
            return "serialize"
        if any(key in t.writes or key in t.locks for t in others):
            return "wait"
        return "ok"

    def late_deleted(self, tx: Tx, key: int) -> bool:
        """Did a commit that ``tx``'s snapshot does not see end a version of ``key`` (update or delete)?"""
        return any(key in writes and key in self.model.state(n)
                   for n, (_, writes) in enumerate(self.model.commits) if n >= tx.seen_commits)

    def write(self, tx: Tx, op: str, key: int, value: int) -> None:
        want = self.expected(tx, op, key)
        row = {"v": value, "pad": "x" * (value % (self.pad + 1))}
        try:
            if op == "insert":
                self.heap.insert(key, row, tx.snap, self.status_fn, oldest_xmin=self.horizon())
            elif op == "update":
                self.heap.update(key, row, tx.snap, self.status_fn, oldest_xmin=self.horizon())
            elif op == "delete":
                self.heap.delete(key, tx.snap, self.status_fn)
            else:
                self.heap.lock_row(key, tx.snap, self.status_fn)
            got = "ok"
        except DuplicateKey:
            got = "dup"
        except KeyNotFound:
            got = "notfound"
        except RowConflict as e:
            got = "serialize" if e.committed else "wait"
        assert got == want, f"{op} key {key} by {tx.xid}: storage said {got}, model {want}"
        if got == "ok":
            if op == "lock":
                tx.locks.add(key)
            else:
                tx.writes[key] = None if op == "delete" else value

    def finish(self, tx: Tx, commit: bool) -> None:
        del self.running[tx.xid]
        self.status[tx.xid] = C if commit else A
        if commit:
            self.model.commits.append((tx.xid, tx.writes))

    def horizon(self) -> int:
        xmins = [t.snap.xmin for t in self.running.values()] + [s.xmin for s, _ in self.readers]
        return min(xmins, default=self.next_xid)

    def check(self) -> None:
        views = [(t.snap, self.view(t)) for t in self.running.values()]
        views += [(s, self.model.state(n)) for s, n in self.readers]
        for snap, want in views:
            got = {k: int(r["v"]) for k, r in self.heap.rows(snap, self.status_fn)}
            assert got == want, f"scan for {snap}"
            for key in range(self.nkeys):
                row = self.heap.get(key, snap, self.status_fn)
                assert (None if row is None else row["v"]) == want.get(key), f"lookup {key} for {snap}"


OPS = ["begin", "insert", "update", "delete", "lock", "commit", "abort", "read", "close", "prune", "check"]
STEPS = st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 1000), st.integers(0, 1000)), min_size=5,
                 max_size=70)


def run_history(path: Path, steps: list[tuple[str, int, int]], nbuckets: int, pad: int, nkeys: int) -> None:
    schema = Schema("model", {"v": "int64", "pad": f"text({pad})"})
    with Heap.create(path, schema, table_id=1, nbuckets=nbuckets, fsync=False) as heap:
        h = History(heap, nkeys, pad)
        for op, a, b in steps:
            txs = list(h.running.values())
            if op == "begin" or (not txs and op in ("insert", "update", "delete", "lock", "commit", "abort")):
                h.begin()
            elif op in ("insert", "update", "delete", "lock"):
                h.write(txs[a % len(txs)], op, b % nkeys, a * 1000 + b)
            elif op in ("commit", "abort"):
                h.finish(txs[a % len(txs)], op == "commit")
            elif op == "read":
                h.readers.append((h.take_snapshot(), len(h.model.commits)))
            elif op == "close" and h.readers:
                h.readers.pop(a % len(h.readers))
            elif op == "prune":
                heap.prune(h.horizon(), h.status_fn)
            elif op == "check":
                h.check()
        h.check()
        for tx in list(h.running.values()):
            h.finish(tx, commit=bool(tx.xid % 2))
        h.readers.clear()
        h.check()
        # Once nothing can see the past, pruning leaves exactly one version per live key, with no stale xmax.
        heap.prune(h.next_xid, h.status_fn)
        live = h.model.state()
        slots = [v for page in heap.blocks() for v in page.versions()]
        assert sorted(v.key for v in slots) == sorted(live)
        assert all(v.xmax == 0 for v in slots)
        final = Snapshot(h.next_xid, h.next_xid)
        assert {k: int(r["v"]) for k, r in heap.rows(final, h.status_fn)} == live


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS, nbuckets=st.integers(1, 3), pad=st.sampled_from([8, 700, 1900]), nkeys=st.integers(2, 10))
def test_random_histories_match_the_model(tmp_path: Path, steps: list[tuple[str, int, int]], nbuckets: int,
                                          pad: int, nkeys: int) -> None:
    run_history(relation_path(tmp_path, next(_ids)), steps, nbuckets, pad, nkeys)


@pytest.mark.parametrize("seed", range(40))
def test_long_seeded_histories_match_the_model(tmp_path: Path, seed: int) -> None:
    """Long uniform histories complement hypothesis's (shrinkable, but mostly short) ones."""
    rnd = random.Random(seed)
    steps = [(rnd.choice(OPS), rnd.randint(0, 1000), rnd.randint(0, 1000)) for _ in range(120)]
    run_history(tmp_path / "rel", steps, rnd.randint(1, 3), rnd.choice([8, 700, 1900]), rnd.randint(2, 10))


_ids = itertools.count(1)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(3, 12), st.integers(0, 12), st.booleans()), min_size=1, max_size=60),
       STATUS, st.integers(3, 13), st.data())
def test_pruning_keeps_everything_a_snapshot_at_or_above_the_horizon_can_see(
        versions: list[tuple[int, int, bool]], status_map: dict[int, str], horizon: int,
        data: st.DataObject) -> None:
    # Statuses must be consistent with the horizon: nothing below it is still running.
    status = {x: (s if x >= horizon or s != R else C) for x, s in status_map.items()}
    p = Page.new(Schema("t", {"n": "int64"}), block=1)
    for i, (xmin, xmax, lock) in enumerate(versions[:p.nslots]):
        slot = p.insert(i, {"n": i}, xmin)
        if xmax >= 3:
            p.set_xmax(slot, xmax, lock_only=lock)
    before = p.copy()
    result = p.prune(horizon, status.__getitem__)
    snaps = data.draw(st.lists(snapshots().filter(lambda s: s.xmin >= horizon), max_size=10))
    for snap in snaps:
        # A snapshot's own xid is still running and so never aborted/committed in the map; model it as such.
        st_fn = (lambda x, own=snap.xid: R if x == own else status[x])
        if snap.xid and status.get(snap.xid) != R:
            continue
        assert before.visible_mask(snap, st_fn).tolist() == p.visible_mask(snap, st_fn).tolist()
    for i in result.freed:
        v = before.version(i)
        assert status[v.xmin] == A or (status[v.xmax] == C and v.xmax < horizon and not v.lock_only)
    for v in p.versions():   # and everything reclaimable was reclaimed
        assert status[v.xmin] != A
        assert not (v.xmax and not v.lock_only and v.xmax < horizon and status[v.xmax] == C)
        assert v.xmax == 0 or status[v.xmax] != A
