"""The logical decoder on hand-made merged streams: commit order, aborts, interleaving, catalog, resume points."""

from __future__ import annotations

from typing import Any

import pytest

from muheam.engine import walrec
from muheam.replica.decode import _HEADER, DELETE, INSERT, UPDATE, DecodeError, Decoder, DroppedTable, TableDef, Txn
from muheam.storage.schema import Schema
from walmerge.record import align8, encode_record

SCHEMA = Schema("accounts", {"balance": "int64", "owner": "text(8)"})


class Stream:
    """Records with increasing LSNs and GLSNs, as a merged stream has them."""

    def __init__(self) -> None:
        self.records: list[tuple[int, bytes]] = []
        self.lsn = 0
        self.lamport = 1

    def add(self, kind: int, payload: bytes, xid: int = 0, node: int = 1) -> int:
        data = encode_record(kind=kind, payload=payload, lsn=self.lsn, prev_lsn=0, lamport=self.lamport, node=node,
                             xid=xid)
        at = self.lsn
        self.records.append((at, data))
        self.lsn += align8(len(data))
        self.lamport += 1
        return at

    def create(self, table_id: int = 1, schema: Schema = SCHEMA) -> int:
        return self.add(walrec.CATALOG_CREATE, walrec.encode_create_table(table_id, 4, schema.to_dict()))

    def insert(self, xid: int, key: int, row: dict[str, Any], table_id: int = 1) -> int:
        return self.add(walrec.HEAP_INSERT, walrec.encode_insert(table_id, 0, 0, 0, 0, key, SCHEMA.row_bytes(row)),
                        xid)

    def update(self, xid: int, key: int, row: dict[str, Any]) -> int:
        return self.add(walrec.HEAP_UPDATE, walrec.encode_update(1, 0, 1, 0, 0, key, 0, 0, SCHEMA.row_bytes(row)),
                        xid)

    def delete(self, xid: int, key: int) -> int:
        return self.add(walrec.HEAP_DELETE, walrec.encode_delete(1, 0, 0, key), xid)

    def commit(self, xid: int, t: int = 1_700_000_000_000_000) -> int:
        return self.add(walrec.COMMIT, walrec.encode_commit(t), xid)

    def abort(self, xid: int) -> int:
        return self.add(walrec.ABORT, b"", xid)


def txns(events: list[Any]) -> list[Txn]:
    return [e for e in events if isinstance(e, Txn)]


def test_interleaved_transactions_come_out_whole_in_commit_order_and_aborts_never() -> None:
    s = Stream()
    s.create()
    s.insert(10, 1, {"balance": 5, "owner": "a"})
    s.insert(11, 2, {"balance": 6, "owner": "b"})
    s.insert(12, 3, {"balance": 7, "owner": "c"})  # aborted
    s.update(11, 2, {"balance": 7, "owner": "b"})
    s.add(walrec.HEAP_LOCK, walrec.encode_delete(1, 0, 0, 1), 13)  # a lock changes no row
    c11 = s.commit(11)
    s.abort(12)
    s.delete(10, 1)
    s.commit(10)
    s.commit(13)
    s.add(walrec.HEARTBEAT, b"")
    events = list(Decoder().feed(s.records))
    assert isinstance(events[0], TableDef) and events[0].name == "accounts"
    assert events[0].columns == (("balance", "int64"), ("owner", "text(8)"))
    got = txns(events)
    assert [t.xid for t in got] == [11, 10, 13]
    assert [(c.op, c.key, c.row) for c in got[0].changes] == [
        (INSERT, 2, {"balance": 6, "owner": "b"}), (UPDATE, 2, {"balance": 7, "owner": "b"})]
    assert [(c.op, c.key) for c in got[1].changes] == [(INSERT, 1), (DELETE, 1)]
    assert got[2].changes == []
    assert got[0].commit_lsn == c11 and got[0].commit_time_us == 1_700_000_000_000_000
    assert got[0].commit_glsn < got[1].commit_glsn < got[2].commit_glsn
    assert all(3 not in {c.key for c in t.changes} for t in got), "an aborted change reached the output"


def test_restart_lsn_is_the_first_record_of_the_oldest_open_transaction() -> None:
    s = Stream()
    s.create()
    first10 = s.insert(10, 1, {"balance": 1, "owner": ""})
    s.insert(11, 2, {"balance": 1, "owner": ""})
    s.commit(11)
    s.commit(10)
    got = txns(list(Decoder().feed(s.records)))
    assert got[0].xid == 11 and got[0].restart_lsn == first10  # 10 is still open when 11 commits
    assert got[1].xid == 10 and got[1].restart_lsn == got[1].end_lsn


@pytest.mark.parametrize("cut", range(1, 9))
def test_resuming_at_any_applied_transaction_gives_exactly_the_rest(cut: int) -> None:
    s = Stream()
    s.create()
    for x in range(8):  # overlapping transactions: each commits after the next one began
        s.insert(100 + x, x, {"balance": x, "owner": ""})
        if x:
            s.commit(100 + x - 1)
    s.commit(107)
    full = txns(list(Decoder().feed(s.records)))
    assert [t.xid for t in full] == list(range(100, 108))
    last = full[cut - 1]
    tables = [TableDef(1, "accounts", SCHEMA.columns)]
    resumed = Decoder(tables, skip_through=last.commit_lsn)
    rest = txns(list(resumed.feed([(lsn, d) for lsn, d in s.records if lsn >= last.restart_lsn])))
    assert [t.xid for t in rest] == [t.xid for t in full[cut:]]
    assert [t.changes for t in rest] == [t.changes for t in full[cut:]]


def test_a_change_to_an_unknown_table_is_an_error() -> None:
    s = Stream()
    s.insert(1, 1, {"balance": 1, "owner": ""}, table_id=9)
    s.commit(1)
    with pytest.raises(DecodeError, match="table 9"):
        list(Decoder().feed(s.records))


def test_a_dropped_tables_changes_are_left_out_even_of_a_transaction_that_commits_after_the_drop() -> None:
    s = Stream()
    s.create(1)
    s.create(2)
    s.insert(10, 1, {"balance": 1, "owner": "a"}, table_id=1)
    s.insert(10, 2, {"balance": 2, "owner": "b"}, table_id=2)
    s.add(walrec.CATALOG_DROP, walrec.encode_drop_table(1, "t1"))
    s.insert(11, 3, {"balance": 3, "owner": "c"}, table_id=1)  # a late change of the dropped table
    s.commit(10)
    s.commit(11)
    s.add(walrec.CATALOG_DROP, walrec.encode_drop_table(1, "t1"))  # logged again by a recoverer
    events = list(Decoder().feed(s.records))
    drops = [e for e in events if isinstance(e, DroppedTable)]
    assert [(d.table_id, d.name) for d in drops] == [(1, "accounts")]
    got = txns(events)
    assert [[(c.table_id, c.key) for c in t.changes] for t in got] == [[(2, 2)], []]


def test_a_resumed_decoder_reads_again_the_changes_of_a_table_it_dropped_without_an_error() -> None:
    s = Stream()
    s.create(1)
    first = s.insert(10, 1, {"balance": 1, "owner": "a"}, table_id=1)
    s.add(walrec.CATALOG_DROP, walrec.encode_drop_table(1, "accounts"))
    s.commit(10)
    resumed = [r for r in s.records if r[0] >= first]
    assert txns(list(Decoder().feed(resumed)))[0].changes == []  # table 1 is not in the registry any more


# --- after an initial copy (muheam.replica.copy): decoding from L0 with the copy snapshot's timestamp -------------

def glsn_at(s: Stream, lsn: int) -> int:
    """The GLSN in the header of the record at ``lsn`` (a COMMIT's GLSN is its commit timestamp)."""
    data = dict(s.records)[lsn]
    return int(_HEADER.unpack_from(data)[6])


def test_commits_below_the_copy_snapshot_are_dropped_and_the_rest_applied() -> None:
    s = Stream()
    s.create()
    s.insert(10, 1, {"balance": 1, "owner": ""})
    c10 = s.commit(10)  # visible to the copy snapshot: its row is in the copy
    s.insert(11, 2, {"balance": 2, "owner": ""})
    c11 = s.commit(11)  # committed at or after the snapshot's timestamp: applied
    tables = [TableDef(1, "accounts", SCHEMA.columns)]
    for sts in (glsn_at(s, c10) + 1, glsn_at(s, c11)):  # the rule is "GLSN < sts": CTS == sts is not visible
        dec = Decoder(tables, copy_sts=sts)
        got = txns(list(dec.feed(s.records)))
        assert [t.xid for t in got] == [11] and dec.in_copy == 1 and dec.skipped == 0
    dec = Decoder(tables, copy_sts=glsn_at(s, c11) + 1)
    assert txns(list(dec.feed(s.records))) == [] and dec.in_copy == 2
    assert [t.xid for t in txns(list(Decoder(tables).feed(s.records)))] == [10, 11], "copy_sts 0: no copy"


def test_transactions_cut_by_the_copy_position_are_tolerated_and_never_applied() -> None:
    """Decoding starts at L0 in the middle of the stream: a transaction that wrote before L0 shows up in part.
    It is either visible to the copy snapshot (its COMMIT is below copy_sts: dropped) or aborted (dropped): no
    error for the changes, the COMMIT or the ABORT of a transaction whose start was never seen."""
    s = Stream()
    s.create()
    s.insert(20, 1, {"balance": 1, "owner": ""})  # 20: writes before L0, more after, commits below sts
    s.insert(21, 2, {"balance": 2, "owner": ""})  # 21: writes before L0 and aborts after it
    s.insert(22, 3, {"balance": 3, "owner": ""})  # 22: wholly before L0 but for its COMMIT, below sts
    l0 = s.lsn
    s.update(20, 1, {"balance": 9, "owner": ""})
    s.update(21, 2, {"balance": 9, "owner": ""})
    s.commit(22)
    s.insert(30, 4, {"balance": 4, "owner": ""})  # 30: wholly after L0, commits after the snapshot
    s.delete(20, 1)
    c20 = s.commit(20)
    s.abort(21)
    c30 = s.commit(30)
    tables = [TableDef(1, "accounts", SCHEMA.columns)]
    dec = Decoder(tables, copy_sts=glsn_at(s, c20) + 1)
    after = [(lsn, d) for lsn, d in s.records if lsn >= l0]
    got = txns(list(dec.feed(after)))
    assert [t.xid for t in got] == [30]
    assert [(c.op, c.key, c.row) for c in got[0].changes] == [(INSERT, 4, {"balance": 4, "owner": ""})]
    assert dec.in_copy == 2 and dec.pending == {} and dec.first_lsn == {}
    assert got[0].commit_lsn == c30 and got[0].restart_lsn == got[0].end_lsn


def test_restart_lsn_after_a_copy_is_never_below_l0_nor_past_a_record_still_needed() -> None:
    s = Stream()
    s.create()
    s.insert(40, 1, {"balance": 1, "owner": ""})  # before L0; still open at 41's commit, commits below sts
    l0 = s.lsn
    s.update(40, 1, {"balance": 2, "owner": ""})
    c40 = s.commit(40)
    first42 = s.insert(42, 3, {"balance": 3, "owner": ""})  # open when 41 commits: 41's restart point
    s.insert(41, 2, {"balance": 2, "owner": ""})
    s.commit(41)
    s.commit(42)
    tables = [TableDef(1, "accounts", SCHEMA.columns)]
    sts = glsn_at(s, c40) + 1
    got = txns(list(Decoder(tables, copy_sts=sts).feed([(lsn, d) for lsn, d in s.records if lsn >= l0])))
    assert [t.xid for t in got] == [41, 42]
    assert got[0].restart_lsn == first42 >= l0
    # resuming from each applied transaction's position (as the progress row keeps it) gives exactly the rest
    for i, t in enumerate(got):
        dec = Decoder(tables, skip_through=t.commit_lsn, copy_sts=sts)
        rest = txns(list(dec.feed([(lsn, d) for lsn, d in s.records if lsn >= t.restart_lsn])))
        assert [(r.xid, r.changes) for r in rest] == [(r.xid, r.changes) for r in got[i + 1:]]
