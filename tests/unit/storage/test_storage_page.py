"""Pages: byte layout, encode/decode round trips, corruption detection, slot bookkeeping, GLSN stamping."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from muheam.storage import (BLOCK_SIZE, GlsnRegression, Page, PageCorrupt, PageFull, PageZeroed, Schema,
                            SlotError, TupleId)
from muheam.storage.layout import PAGE_HEADER_SIZE, slot_size, slots_per_page
from muheam.storage.mvcc import SLOT_LOCK_ONLY, SLOT_UPDATED, SLOT_USED
from muheam.storage.page import (HEADER_DTYPE, KIND_OVERFLOW, PAGE_MAGIC, decode_meta_page, encode_meta_page,
                                 slot_images)
from tests.unit.storage.test_storage_schema import schema_and_rows

ACCT = Schema("acct", {"bal": "int64", "rate": "float64", "who": "text(16)"})


def row(i: int) -> dict[str, Any]:
    return {"bal": i, "rate": i / 2, "who": f"n{i}"}


def test_header_layout_is_the_documented_one() -> None:
    assert HEADER_DTYPE.itemsize == PAGE_HEADER_SIZE == 64
    fields = HEADER_DTYPE.fields
    assert fields is not None
    offsets = {name: spec[1] for name, spec in fields.items()}
    assert offsets == {"checksum": 0, "magic": 4, "version": 8, "kind": 9, "flags": 10, "table_id": 12,
                       "glsn": 16, "blkno": 24, "next_block": 28, "nslots": 32, "nused": 34, "free_hint": 36,
                       "slot_size": 38, "row_width": 40, "reserved0": 42, "schema_crc": 44, "payload_len": 48}
    p = Page.new(ACCT, block=9, table_id=3)
    p.stamp((7 << 16) | 2)
    raw = p.encode()
    assert int.from_bytes(raw[4:8], "little") == PAGE_MAGIC
    assert int.from_bytes(raw[16:24], "little") == (7 << 16) | 2
    assert int.from_bytes(raw[24:28], "little") == 9
    slot = p.insert(-5, row(1), 42)
    p.set_xmax(slot, 43, lock_only=True)
    raw = p.encode()
    base = PAGE_HEADER_SIZE + slot * slot_size(ACCT.row_width)
    assert int.from_bytes(raw[base:base + 8], "little", signed=True) == -5
    assert int.from_bytes(raw[base + 8:base + 16], "little") == 42
    assert int.from_bytes(raw[base + 16:base + 24], "little") == 43
    assert raw[base + 30] == SLOT_USED | SLOT_LOCK_ONLY
    assert raw[base + 32:base + 40] == (1).to_bytes(8, "little")
    assert p.nslots == slots_per_page(ACCT.row_width) == (BLOCK_SIZE - 64) // 64


@st.composite
def filled_pages(draw: st.DrawFn) -> Page:
    schema, rows = draw(schema_and_rows(max_rows=40))
    page = Page.new(schema, block=draw(st.integers(1, 1000)), kind=draw(st.sampled_from([2, 3])),
                    table_id=draw(st.integers(0, 2 ** 32 - 1)))
    for r in rows[:page.nslots]:
        slot = page.insert(draw(st.integers(-(1 << 63), (1 << 63) - 1)), r, draw(st.integers(1, 2 ** 64 - 1)))
        choice = draw(st.integers(0, 3))
        if choice == 1:
            page.set_xmax(slot, draw(st.integers(3, 2 ** 64 - 1)))
        elif choice == 2:
            page.set_xmax(slot, draw(st.integers(3, 2 ** 64 - 1)), lock_only=True)
        elif choice == 3:
            page.set_xmax(slot, draw(st.integers(3, 2 ** 64 - 1)),
                          ctid=TupleId(draw(st.integers(0, 2 ** 32 - 1)), draw(st.integers(0, page.nslots - 1))))
    drop = draw(st.booleans())
    if rows and drop:
        page.free(draw(st.lists(st.sampled_from(list(np.flatnonzero(page.used_mask()))), unique=True)))
    page.stamp(draw(st.integers(0, 2 ** 64 - 1)))
    page.next_block = draw(st.sampled_from([0, page.block + 1]))
    return page


@settings(max_examples=80, deadline=None)
@given(filled_pages())
def test_encode_decode_round_trip(page: Page) -> None:
    raw = page.encode()
    assert len(raw) == BLOCK_SIZE
    again = Page.decode(raw, page.schema, block=page.block, table_id=page.table_id)
    assert again.encode() == raw
    assert again.versions() == page.versions()
    assert (again.glsn, again.next_block, again.nused, again.kind) == \
        (page.glsn, page.next_block, page.nused, page.kind)
    assert again.nused == len(again.versions())


@settings(max_examples=80, deadline=None)
@given(filled_pages(), st.data())
def test_any_flipped_byte_is_detected(page: Page, data: st.DataObject) -> None:
    raw = bytearray(page.encode())
    pos = data.draw(st.integers(0, BLOCK_SIZE - 1))
    raw[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises(PageCorrupt) as exc:
        Page.decode(raw, page.schema, block=page.block)
    assert exc.value.block == page.block and f"block {page.block}" in str(exc.value)


def test_decode_refuses_misplaced_foreign_zeroed_and_short_blocks() -> None:
    p = Page.new(ACCT, block=4, table_id=1)
    p.insert(1, row(1), 10)
    raw = p.encode()
    with pytest.raises(PageCorrupt, match="holds block 4's image"):
        Page.decode(raw, ACCT, block=5)
    with pytest.raises(PageCorrupt, match="table id 1, not 2"):
        Page.decode(raw, ACCT, block=4, table_id=2)
    with pytest.raises(PageCorrupt, match="another schema"):
        Page.decode(raw, Schema("acct", {"bal": "int64", "rate": "float64", "who": "text(17)"}), block=4)
    with pytest.raises(PageZeroed):
        Page.decode(bytes(BLOCK_SIZE), ACCT, block=4)
    with pytest.raises(PageCorrupt, match="truncated"):
        Page.decode(raw[:100], ACCT, block=4)
    meta = encode_meta_page(b"hello", table_id=1)
    assert decode_meta_page(meta, table_id=1) == b"hello"
    with pytest.raises(PageCorrupt, match="meta page, expected a tuple page"):
        Page.decode(meta, ACCT, block=0)
    with pytest.raises(PageCorrupt, match="not a valid meta page"):
        decode_meta_page(Page.new(ACCT, block=0).encode())


def test_page_fills_then_reuses_freed_slots_lowest_first() -> None:
    p = Page.new(ACCT, block=1)
    for i in range(p.nslots):
        assert p.insert(i, row(i), 10) == i
    assert p.nfree == 0
    with pytest.raises(PageFull):
        p.insert(999, row(0), 10)
    p.free([7, 3])
    assert p.nfree == 2
    assert p.insert(1000, row(0), 11) == 3
    assert p.insert(1001, row(0), 11) == 7
    assert list(p.find(1000)) == [3]
    with pytest.raises(SlotError):
        p.free([3, 3000])
    with pytest.raises(SlotError):
        p.insert(5, row(0), 12, slot=3)
    p.free([3])
    assert p.insert(5, row(5), 12, slot=3) == 3 and list(p.find(5)) == [3, 5]


def test_insert_at_slot_is_deterministic_for_redo() -> None:
    a, b = Page.new(ACCT, block=1), Page.new(ACCT, block=1)
    a.insert(1, row(1), 10)
    a.insert(2, row(2), 10)
    a.set_xmax(0, 11, ctid=TupleId(1, 1))
    b.insert(2, ACCT.row_bytes(row(2)), 10, slot=1)
    b.insert(1, ACCT.to_record(row(1)), 10, slot=0)
    b.set_xmax(0, 11, ctid=TupleId(1, 1))
    assert a.encode() == b.encode()
    assert a.version(0).ctid == TupleId(1, 1) and a.version(0).flags == SLOT_USED | SLOT_UPDATED


def test_glsn_never_goes_backwards() -> None:
    p = Page.new(ACCT, block=1)
    p.stamp(100)
    p.stamp(100)
    with pytest.raises(GlsnRegression, match="block 1"):
        p.stamp(99)
    assert p.glsn == 100


def test_set_xmax_validation_and_clear() -> None:
    p = Page.new(ACCT, block=1, kind=KIND_OVERFLOW)
    s = p.insert(1, row(1), 10)
    with pytest.raises(ValueError):
        p.set_xmax(s, 0)
    with pytest.raises(SlotError):
        p.set_xmax(s + 1, 11)
    p.set_xmax(s, 11, ctid=TupleId(3, 4))
    p.clear_xmax(s)
    v = p.version(s)
    assert (v.xmax, v.flags, v.ctid) == (0, SLOT_USED, None)
    with pytest.raises(ValueError, match="next overflow"):
        p.next_block = 1


def _slots_by_scan(p: Page, key: int) -> list[int]:
    """What the key index must say: the used slots holding ``key``, from the slot bytes themselves."""
    return np.flatnonzero((p.slots["key"] == key) & ((p.slots["flags"] & SLOT_USED) != 0)).tolist()


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_the_key_index_follows_every_change_of_the_page(data: st.DataObject) -> None:
    """``slots_of`` answers from an in-memory index built at the first lookup and kept by ``insert``,
    ``insert_many``, ``free`` and ``prune``; after any sequence of them, looked up at any point, it names exactly
    the used slots of each key, ascending."""
    p = Page.new(ACCT, block=1)
    keys = [-3, 0, 1, 2, 7]
    for _ in range(data.draw(st.integers(1, 60))):
        op = data.draw(st.sampled_from(["insert", "insert_at", "insert_many", "free", "prune", "look"]))
        free = np.flatnonzero((p.slots["flags"] & SLOT_USED) == 0).tolist()
        used = np.flatnonzero((p.slots["flags"] & SLOT_USED) != 0).tolist()
        if op == "insert" and free:
            p.insert(data.draw(st.sampled_from(keys)), row(1), data.draw(st.integers(3, 9)))
        elif op == "insert_at" and free:
            p.insert(data.draw(st.sampled_from(keys)), row(2), 5, slot=data.draw(st.sampled_from(free)))
        elif op == "insert_many" and free:
            at = sorted(data.draw(st.lists(st.sampled_from(free), min_size=1, max_size=4, unique=True)))
            ks = np.array([data.draw(st.sampled_from(keys)) for _ in at], np.int64)
            rows = np.frombuffer(ACCT.row_bytes(row(3)) * len(at), np.uint8).reshape(len(at), -1)
            p.insert_many(np.array(at, np.int64), slot_images(ACCT, ks, np.full(len(at), 4, np.uint64), rows))
        elif op == "free" and used:
            p.free(data.draw(st.lists(st.sampled_from(used), min_size=1, max_size=3, unique=True)))
        elif op == "prune" and used:
            for s in data.draw(st.lists(st.sampled_from(used), max_size=3, unique=True)):
                p.set_xmax(s, 6)
            p.prune(100, lambda xid: "committed")
        else:
            key = data.draw(st.sampled_from(keys))
            assert list(p.slots_of(key)) == _slots_by_scan(p, key)
    for key in keys:
        assert list(p.slots_of(key)) == _slots_by_scan(p, key)
        assert p.find(key).tolist() == _slots_by_scan(p, key)
    copy = Page.decode(p.encode(), ACCT, block=1)
    assert all(list(copy.slots_of(k)) == list(p.slots_of(k)) for k in keys)
