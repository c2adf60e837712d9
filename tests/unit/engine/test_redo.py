"""Batched physical redo (``muheam.engine.redo``): replaying a node's WAL onto the data as it was before gives the
live engine's pages byte for byte, whatever the batch size; a second replay changes nothing; and the vectorised
``Page.insert_many`` writes what ``Page.insert`` writes and refuses what it refuses."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from muheam.engine import Engine, EngineConfig
from muheam.engine.redo import gather
from muheam.engine.replay import Replayer
from muheam.storage import Schema, SlotError
from muheam.storage.page import Page, slot_images
from walmerge import WalReader


SCHEMA = Schema("n", {"v": "int64"})


def _relations(shared: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((shared / "base").iterdir()) if p.is_file()}


def new_engine(root: Path, cache_pages: int) -> tuple[Engine, Path]:
    """A one-node engine on an empty shared directory under ``root`` (small segments), and that directory."""
    shared = root / "shared"
    (shared / "global").mkdir(parents=True)
    (shared / "global" / "control").write_text("{}")
    return Engine.open(shared, 1, config=EngineConfig(cache_pages=cache_pages, segment_size=1 << 20)), shared


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A base copy (tables created, empty), then a random insert/update/delete/lock run on small buckets, so
    there are overflow blocks, prunes and many versions per page; the live pages checkpointed."""
    root = tmp_path_factory.mktemp("redo")
    e, shared = new_engine(root, 64)
    e.create_table("wide", {"pad": "text(300)", "n": "int64"}, buckets=3)
    e.create_table("narrow", {"v": "int64"}, buckets=2)
    e.checkpoint()
    base = root / "base"
    shutil.copytree(shared, base)
    rnd = random.Random(7)
    live: dict[str, set[int]] = {"wide": set(), "narrow": set()}
    for xid in range(101, 1001):
        txn = e.begin(xid)
        table = rnd.choice(["wide", "narrow"])
        keys = set(live[table])  # this transaction's view; kept only if it commits
        row = {"pad": "p" * rnd.randrange(300), "n": xid} if table == "wide" else {"v": xid}
        op = rnd.random()
        if op < 0.45 or not keys:
            k = rnd.choice([k for k in range(10_000) if k not in keys][:50])
            txn.insert(table, k, row)
            keys.add(k)
        elif op < 0.8:
            txn.update(table, rnd.choice(sorted(keys)), row)
        elif op < 0.9:
            k = rnd.choice(sorted(keys))
            txn.delete(table, k)
            keys.discard(k)
        else:
            txn.lock(table, rnd.choice(sorted(keys)))
        if rnd.random() < 0.1:
            txn.abort()
        else:
            e.commit(txn)
            live[table] = keys
    e.checkpoint()
    e.close()
    return shared, base


@pytest.mark.parametrize("limit", [1, 7, 4096])
def test_replay_reproduces_live_pages(history: tuple[Path, Path], tmp_path: Path, limit: int) -> None:
    shared, base = history
    target = tmp_path / "t"
    shutil.copytree(base, target)
    recs = list(WalReader(shared / "wal" / "node-1", node_id=1, system_id=0))
    r = Replayer(target)
    r._batch.limit = limit
    for rec in recs:
        r.apply(rec)
    first = r.finish()
    assert first.pages_changed > 0
    assert _relations(target) == _relations(shared)
    again = Replayer(target)  # idempotent: every page already has every record
    for rec in recs:
        again.apply(rec)
    assert again.finish().pages_changed == 0
    assert _relations(target) == _relations(shared)


def test_insert_many_matches_insert() -> None:
    schema = SCHEMA
    rnd = np.random.default_rng(3)
    one = Page.new(schema, block=5, table_id=2)
    many = Page.new(schema, block=5, table_id=2)
    for p in (one, many):
        p.insert(1, {"v": 1}, 9, slot=4)
    slots = np.array([0, 2, 3, 7, 9], np.int64)
    keys = rnd.integers(-1000, 1000, len(slots)).astype(np.int64)
    xmins = np.arange(10, 10 + len(slots), dtype=np.uint64)
    rows = rnd.integers(0, 255, (len(slots), schema.row_width)).astype(np.uint8)
    for s, k, x, row in zip(slots, keys, xmins, rows):
        one.insert(int(k), row.tobytes(), int(x), slot=int(s))
    many.insert_many(slots, slot_images(schema, keys, xmins, rows))
    assert many.encode() == one.encode()
    assert many.nused == 6 and int(many._h["free_hint"]) == 1


@pytest.mark.parametrize("slots", [[1, 1], [4], [3, 5000], [-1]])
def test_insert_many_refuses_like_insert(slots: list[int]) -> None:
    schema = SCHEMA
    page = Page.new(schema, block=5, table_id=2)
    page.insert(1, {"v": 1}, 9, slot=4)
    before = page.encode()
    k = len(slots)
    images = slot_images(schema, np.arange(k, dtype=np.int64), np.full(k, 5, np.uint64),
                         np.zeros((k, schema.row_width), np.uint8))
    with pytest.raises(SlotError):
        page.insert_many(np.array(slots, np.int64), images)
    assert page.encode() == before


def test_insert_many_refuses_xmin_zero() -> None:
    page = Page.new(SCHEMA, block=5, table_id=2)
    before = page.encode()
    images = slot_images(SCHEMA, np.array([1], np.int64), np.array([0], np.uint64),
                         np.zeros((1, SCHEMA.row_width), np.uint8))
    with pytest.raises(ValueError, match="xmin"):
        page.insert_many(np.array([0], np.int64), images)
    assert page.encode() == before


def test_gather_lines_from_several_buffers_padding_past_the_end() -> None:
    bufs = [b"abcdefgh", b"xyz"]
    got = gather(bufs, np.array([0, 1, 0, 1], np.int32), np.array([0, 0, 6, 2]), 4)
    assert [bytes(line) for line in got] == [b"abcd", b"xyz\0", b"gh\0\0", b"z\0\0\0"]
    assert bytes(gather([b"ab"], np.array([0], np.int32), np.array([1]), 4)[0]) == b"b\0\0\0"


# -- decoding under the installed numpy ------------------------------------------------------------------------

class _Rec:
    """The fields ``HeapRun.of_records`` reads from a WAL record."""

    def __init__(self, kind: int, glsn: int, payload: bytes) -> None:
        self.kind, self.glsn, self.xid, self.payload, self.end_lsn = kind, glsn, 7, payload, 0


def test_decoded_sentinels_are_int64_minus_one() -> None:
    """Fields a kind lacks decode as -1 in int64, never as a wrapped unsigned value.  Under numpy >= 2,
    ``np.where(mask, uint32_field, -1)`` kept uint32 and gave 4294967295: a dead node's highest block became
    2^32 - 1 and a survivor grew the relation to 2^32 blocks ("block number 4294967296 out of range")."""
    from muheam.recovery import deadwal
    from muheam.engine import walrec
    from muheam.engine.redo import HeapRun

    row = (5).to_bytes(8, "little")
    recs = [
        _Rec(walrec.HEAP_INSERT, 1 << 16, walrec.encode_insert(3, 4, 0, 0, 0xFFFFFFFF, 11, row)),  # not a new page
        _Rec(walrec.HEAP_INSERT, 2 << 16, walrec.encode_insert(3, 9, 0, walrec.NEW_PAGE, 4, 12, row)),
        _Rec(walrec.HEAP_UPDATE, 3 << 16, walrec.encode_update(3, 4, 1, 0, 0xFFFFFFFF, 11, 6, 2, row)),
        _Rec(walrec.HEAP_DELETE, 4 << 16, walrec.encode_delete(3, 2, 0, -1)),  # key -1: all ones where link sits
    ]
    d = HeapRun.of_records(recs).decoded()
    for name in ("table", "block", "slot", "link", "key", "old_block", "old_slot"):
        assert getattr(d, name).dtype == np.int64, name
    assert d.link.tolist() == [-1, 4, -1, -1]
    assert d.old_block.tolist() == [-1, -1, 6, -1]
    assert d.old_slot.tolist() == [-1, -1, 2, -1]
    assert d.key.tolist() == [11, 12, 11, -1]
    dead = deadwal.DeadWal(2, 1)
    deadwal._max_blocks(dead, HeapRun.of_records(recs))
    assert dead.max_block == {3: 9}
