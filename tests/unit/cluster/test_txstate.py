"""Unit tests of the commit-timestamp snapshot rules (muheam.txstate): pure, no processes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from muheam.storage import mvcc
from muheam.cluster.txstate import TxTable


def test_visibility_is_commit_timestamp_below_snapshot() -> None:
    t = TxTable(floor=10)
    t.commit(20, cts=100)
    t.commit(21, cts=300)
    t.abort(22)
    snap, waits = t.snapshot(30, sts=200)
    assert waits == frozenset()
    assert mvcc.xid_visible(20, snap, t.status)
    assert not mvcc.xid_visible(21, snap, t.status)     # committed after the snapshot
    assert not mvcc.xid_visible(22, snap, t.status)     # aborted
    assert not mvcc.xid_visible(23, snap, t.status)     # unknown: running somewhere
    assert mvcc.xid_visible(30, snap, t.status)         # our own
    assert t.status(23) == mvcc.IN_PROGRESS and t.status(5) == mvcc.ABORTED  # below the floor: decided


def test_snapshot_reads_are_repeatable_when_outcomes_arrive_later() -> None:
    t = TxTable()
    t.prepare([40])
    snap, waits = t.snapshot(50, sts=1000)
    assert waits == {40}                                 # begin must learn 40's outcome first
    t.commit(40, cts=900)
    assert mvcc.xid_visible(40, snap, t.status)
    t.prepare([41])                                      # prepared after the snapshot: its CTS will be larger
    t.commit(41, cts=1100)
    assert not mvcc.xid_visible(41, snap, t.status)


def test_prune_status_keeps_what_an_old_snapshot_can_see() -> None:
    t = TxTable()
    t.commit(7, cts=50)
    t.commit(8, cts=150)
    status = t.prune_status(horizon=100)
    assert status(7) == mvcc.COMMITTED
    assert status(8) == mvcc.IN_PROGRESS                 # a snapshot at 100 must not lose 8's old versions


def test_merge_adopts_outcomes_prepared_and_higher_floor() -> None:
    a = TxTable(floor=100)
    a.commit(120, cts=5)
    a.abort(121)
    a.prepare([122])
    b = TxTable()
    b.merge(a.export())
    assert b.floor == 100 and b.committed[120] == 5 and b.status(121) == mvcc.ABORTED
    assert b.prepared == {122} and b.status(99) == mvcc.ABORTED
    with pytest.raises(ValueError):
        b.merge({"floor": 1, "committed": [[1]], "aborted": [], "prepared": []})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(3, 60), st.integers(1, 1000), st.booleans()), max_size=40),
       st.integers(1, 1000))
def test_snapshot_sees_a_prefix_of_the_commit_order(events: list[tuple[int, int, bool]], sts: int) -> None:
    """Whatever order outcomes arrive in, a snapshot sees exactly the commits below its timestamp."""
    t = TxTable()
    snap, _ = t.snapshot(0, sts)
    decided: dict[int, int | None] = {}
    for xid, cts, commit in events:
        if xid in decided:
            continue
        if commit:
            t.commit(xid, cts)
            decided[xid] = cts
        else:
            t.abort(xid)
            decided[xid] = None
    for xid, cts in decided.items():
        assert mvcc.xid_visible(xid, snap, t.status) == (cts is not None and cts < sts)


def test_learn_departed_takes_only_what_is_missing() -> None:
    """A cleanly stopped member's outcome file: commits we lack are taken at the given timestamp, a prepared XID
    leaves the prepared set, and an outcome we already know (commit timestamp included) is left as it was."""
    table = TxTable(3)
    table.commit(10, 500)
    table.prepare([11, 12])
    new = table.learn_departed({10, 11}, {12, 13}, cts=900)
    assert new == {11, 12, 13}
    assert table.committed == {10: 500, 11: 900}
    assert table.aborted == {12, 13} and not table.prepared
    assert table.learn_departed({10, 11}, {12}, cts=950) == set()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40), st.sampled_from([0, 1, 3])), max_size=60),
       st.dictionaries(st.integers(3, 40), st.one_of(st.none(), st.integers(1, 2000)), max_size=30),
       st.integers(0, 40), st.integers(1, 2000))
def test_a_page_judged_at_once_is_judged_as_slot_by_slot(slots: list[tuple[int, int, int]],
                                                           outcomes: dict[int, int | None], own: int,
                                                           sts: int) -> None:
    """``visible_mask`` with a cluster snapshot and its table's own status takes the commit table in one pass
    (``committed_before``); every slot must come out as ``version_visible`` judges it one XID at a time,
    special XIDs (invalid, bootstrap, frozen) and the snapshot's own XID included."""
    import numpy as np

    t = TxTable(floor=3)
    for xid, cts in outcomes.items():
        if cts is None:
            t.abort(xid)
        else:
            t.commit(xid, cts)
    snap, _ = t.snapshot(own, sts)
    xmin = np.array([s[0] for s in slots], dtype=np.uint64)
    xmax = np.array([s[1] for s in slots], dtype=np.uint64)
    flags = np.array([s[2] for s in slots], dtype=np.uint8)
    assert snap.committed_before(xmin, t.status) is not None     # the fast way is taken
    fast = mvcc.visible_mask(xmin, xmax, flags, snap, t.status)
    slow = [mvcc.version_visible(a, b, f, snap, t.status) for a, b, f in slots]
    assert fast.tolist() == slow
    assert snap.committed_before(np.array([5], dtype=np.uint64), lambda x: t.status(x)) is None  # another one
