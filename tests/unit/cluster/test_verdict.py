"""Unit tests of the recoverer's verdict on a dead member's transactions (muheam.cluster.verdict): pure."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from muheam.cluster.txstate import TxTable
from muheam.cluster.verdict import decide


def test_verdict_of_a_dead_member() -> None:
    table = TxTable(3)
    table.commit(10, 100)            # known committed here, and its COMMIT is in the WAL
    table.commit(11, 110)            # known committed here, but the WAL's tail lost its COMMIT
    v = decide({10: 100, 12: 120}, {13}, started={10, 11, 12, 13, 14}, undecided={14, 15}, table=table)
    assert v.committed == ((12, 120),)                       # only what this node lacked
    assert v.known_committed == (11,)
    assert v.aborted == (14, 15)                             # undecided in the WAL, not committed anywhere known
    assert v.announce_committed == ((10, 100), (12, 120), (11, 110))  # every outcome, not only the new ones
    assert v.announce_aborted == (13, 14, 15)


xids = st.sets(st.integers(3, 40), max_size=12)


@settings(max_examples=200, deadline=None)
@given(xids, xids, xids, xids, xids)
def test_verdict_never_aborts_a_commit_and_decides_everything(wal_c: set[int], wal_a: set[int], started: set[int],
                                                               undecided: set[int], known: set[int]) -> None:
    table = TxTable(3)
    for x in known:
        table.commit(x, 1000 + x)
    v = decide({x: 500 + x for x in wal_c}, wal_a, started, undecided, table)
    committed = {x for x, _ in v.announce_committed}
    aborted = set(v.announce_aborted)
    assert not committed & aborted
    assert not aborted & (wal_c | known)
    assert (undecided - wal_c - known) <= aborted
    assert wal_c <= committed and (started & known) <= committed
