"""WAL writer and reader: round trips across segment boundaries, torn tails vs corruption, truncate_at,
group commit, and write failures (disk full, fsync error)."""

from __future__ import annotations

import errno
import os
import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import walmerge.writer as writer_mod
from walmerge import (
    MERGED_NODE_ID, SEGMENT_HEADER_SIZE, Record, RecordKind, RecordTooLarge, WalCorruption, WalError, WalMismatch,
    WalMissingSegment, WalReader, WalWriteError, WalWriter, read_wal, segment_name, truncate_at,
)
from walmerge.record import align8
from walmerge.segment import list_segments

NODE, SYSID = 3, 0xC0FFEE
SEG = 4096

Spec = tuple[int, bytes, bool]  # kind, payload, flush after


def write(d: Path, specs: list[Spec], *, seg: int = SEG, epoch: int = 1, first_lamport: int = 1) -> list[tuple[int, int]]:
    out = []
    with WalWriter(d, node_id=NODE, system_id=SYSID, epoch=epoch, segment_size=seg) as w:
        for i, (kind, payload, flush) in enumerate(specs):
            lsn, end = w.append(kind, payload, lamport=first_lamport + i, xid=i)
            out.append((lsn, end))
            if flush:
                assert w.flush(end) >= end
    return out


def read(d: Path) -> tuple[list[Record], WalReader]:
    r = WalReader(d, node_id=NODE, system_id=SYSID)
    return list(r), r


def seg_of(d: Path, lsn: int, seg: int = SEG) -> Path:
    return d / segment_name(lsn - lsn % seg)


def flip(path: Path, offset: int, mask: int = 1) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ mask]))


def overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


specs_st = st.lists(
    st.tuples(st.sampled_from(list(RecordKind)), st.binary(max_size=1500), st.booleans()), min_size=1, max_size=25
)
hyp = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@given(specs_st, st.sampled_from([4096, 8192]), specs_st)
@hyp
def test_round_trip_across_segments_and_reopen(specs: list[Spec], seg: int, more: list[Spec]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "wal" / "node-3"
        pos = write(d, specs, seg=seg)
        recs, r = read(d)
        assert [(x.kind, x.payload, x.xid) for x in recs] == [(k, p, i) for i, (k, p, _) in enumerate(specs)]
        assert [(x.lsn, x.end_lsn) for x in recs] == pos
        assert all(x.node == NODE and x.epoch == 1 for x in recs)
        assert r.torn is None and r.end_lsn == align8(pos[-1][1])
        # Reopen with a new epoch: the chain and the LSNs continue.
        pos2 = write(d, more, seg=seg, epoch=2, first_lamport=len(specs) + 1)
        recs2, r2 = read(d)
        assert [x.lsn for x in recs2] == [p[0] for p in pos + pos2]
        assert [x.payload for x in recs2[len(specs):]] == [p for _, p, _ in more]
        assert all(b.prev_lsn == a.lsn for a, b in zip(recs2, recs2[1:]))
        assert r2.torn is None


def test_batches_expose_numpy_headers(tmp_path: Path) -> None:
    write(tmp_path, [(RecordKind.HEAP_INSERT, bytes(range(i % 256)) * 3, False) for i in range(60)])
    r = WalReader(tmp_path, node_id=NODE, system_id=SYSID)
    n = 0
    for batch in r.batches():
        recs = list(batch.records())
        assert batch.headers["lsn"].tolist() == [x.lsn for x in recs]
        assert batch.headers["xid"].tolist() == list(range(n, n + len(recs)))
        n += len(recs)
    assert n == 60


@given(st.lists(st.binary(min_size=1, max_size=700), min_size=3, max_size=14), st.data())
@hyp
def test_flipped_bit_in_any_record_is_detected(payloads: list[bytes], data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        pos = write(d, [(RecordKind.HEAP_UPDATE, p, True) for p in payloads])
        victim = data.draw(st.integers(0, len(payloads) - 1))
        lsn, end = pos[victim]
        bit = data.draw(st.integers(0, (end - lsn) * 8 - 1))
        path = seg_of(d, lsn)
        flip(path, lsn % SEG + bit // 8, 1 << (bit % 8))
        later_in_segment = [p for p in pos[victim + 1:] if p[0] - p[0] % SEG == lsn - lsn % SEG]
        later_segment = any(p[0] - p[0] % SEG > lsn - lsn % SEG for p in pos)
        try:
            recs, r = read(d)
        except WalCorruption as e:
            assert e.lsn == lsn and e.path == path and e.offset == lsn % SEG
            assert path.name in str(e) and "truncate_at" in str(e)
            return
        # Only an unproven tail may read as torn: the victim is the very last record.
        assert not later_in_segment and not later_segment
        assert r.torn is not None and r.torn.lsn == lsn
        assert [x.payload for x in recs] == payloads[:victim]


def test_mid_stream_garbage_without_flush_proof_is_still_corruption(tmp_path: Path) -> None:
    rnd = random.Random(1)
    payloads = [bytes(rnd.randrange(1, 256) for _ in range(200)) for _ in range(10)]
    pos = write(tmp_path, [(RecordKind.HEAP_INSERT, p, False) for p in payloads])  # one flush, at close
    lsn = pos[4][0]
    overwrite(seg_of(tmp_path, lsn), lsn % SEG + 100, b"\xde\xad\xbe\xef")
    with pytest.raises(WalCorruption, match="not zero-filled") as ei:
        read(tmp_path)
    assert ei.value.lsn == lsn and ei.value.offset == lsn % SEG


def test_zeroed_sector_in_fsynced_data_is_corruption(tmp_path: Path) -> None:
    pos = write(tmp_path, [(RecordKind.HEAP_INSERT, b"\x07" * 1000, True) for _ in range(3)])
    lsn, end = pos[0]
    overwrite(seg_of(tmp_path, lsn), 512, bytes(512))  # inside record 0, fsynced before record 1 was written
    with pytest.raises(WalCorruption, match="fsynced") as ei:
        read(tmp_path)
    assert ei.value.lsn == lsn


@given(st.lists(st.tuples(st.binary(max_size=900), st.booleans()), min_size=1, max_size=20), st.data())
@hyp
def test_torn_tail_after_last_fsync_reads_cleanly(items: list[tuple[bytes, bool]], data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        w = WalWriter(d, node_id=NODE, system_id=SYSID, epoch=1, segment_size=SEG)
        pos = []
        for i, (p, fl) in enumerate(items):
            # non-zero payloads, so zeroing a sector always changes some record it touches
            pos.append(w.append(RecordKind.HEAP_INSERT, bytes(b or 1 for b in p), lamport=i + 1))
            if fl:
                w.flush()
        durable = w.flushed_lsn
        os.close(w._fd)  # "crash": no final flush  # noqa: SLF001
        last = list_segments(d)[-1]
        start = last[0]
        cut = data.draw(st.integers(max(durable, start + SEGMENT_HEADER_SIZE), start + SEG)) - start
        mode = data.draw(st.sampled_from(["truncate", "zero-sector"]))
        if mode == "truncate":
            os.truncate(last[1], cut)
        else:  # a sector after the durable point never reached the disk; later ones did
            s0 = -(-cut // 512) * 512
            if s0 < SEG:
                overwrite(last[1], s0, bytes(512))
            cut = s0
        survivors = [p for p in pos if p[1] <= start + cut or p[0] < start]
        recs, r = read(d)
        assert [(x.lsn, x.end_lsn) for x in recs] == survivors
        assert r.end_lsn == (align8(survivors[-1][1]) if survivors and survivors[-1][0] >= start
                             else start + SEGMENT_HEADER_SIZE)
        # The writer resumes after the last valid record and zeroes the torn bytes.
        with WalWriter(d, node_id=NODE, system_id=SYSID, epoch=2) as w2:
            assert w2.end_lsn == r.end_lsn
            w2.append(RecordKind.COMMIT, b"after", lamport=10_000)
        recs2, r2 = read(d)
        assert r2.torn is None and recs2[-1].payload == b"after" and len(recs2) == len(survivors) + 1


def test_missing_segment_is_named(tmp_path: Path) -> None:
    write(tmp_path, [(RecordKind.HEAP_INSERT, b"m" * 1500, False) for _ in range(12)])
    segs = list_segments(tmp_path)
    assert len(segs) >= 4
    os.unlink(segs[2][1])
    with pytest.raises(WalMissingSegment, match=f"first missing WAL segment is {segs[2][1].name}"):
        read(tmp_path)


def test_lost_records_at_end_of_fsynced_segment_are_detected(tmp_path: Path) -> None:
    pos = write(tmp_path, [(RecordKind.HEAP_INSERT, b"q" * 900, False) for _ in range(8)])
    first_seg = [p for p in pos if p[0] < SEG]
    lsn, end = first_seg[-1]
    overwrite(seg_of(tmp_path, lsn), lsn % SEG, bytes(end - lsn))  # zero the last record of segment 0
    with pytest.raises(WalCorruption, match="records are missing") as ei:
        read(tmp_path)
    assert ei.value.path.name == segment_name(0)


def test_garbage_after_end_of_non_last_segment_is_corruption(tmp_path: Path) -> None:
    write(tmp_path, [(RecordKind.HEAP_INSERT, b"g" * 1500, False) for _ in range(4)])
    overwrite(tmp_path / segment_name(0), SEG - 8, b"\x01")
    with pytest.raises(WalCorruption, match="fsynced in full"):
        read(tmp_path)


def test_truncate_at_discards_after_corruption_and_writer_continues(tmp_path: Path) -> None:
    pos = write(tmp_path, [(RecordKind.HEAP_INSERT, bytes([i + 1]) * 700, True) for i in range(20)])
    victim = 7
    lsn = pos[victim][0]
    flip(seg_of(tmp_path, lsn), lsn % SEG + 300)
    with pytest.raises(WalCorruption) as ei:
        read(tmp_path)
    with pytest.raises(WalError, match="not a record boundary"):
        truncate_at(tmp_path, pos[2][0] + 8, node_id=NODE, system_id=SYSID)
    report = truncate_at(tmp_path, ei.value.lsn, node_id=NODE, system_id=SYSID)
    assert report.lsn == lsn
    assert report.records_discarded == len(pos) - victim - 1  # the damaged one no longer has a valid CRC
    assert report.bytes_discarded == pos[-1][1] - lsn
    assert report.saved_to is not None and (report.saved_to / seg_of(tmp_path, lsn).name).exists()
    assert len(list(report.saved_to.iterdir())) == 1 + len(report.segments_removed)
    recs, r = read(tmp_path)
    assert [x.lsn for x in recs] == [p[0] for p in pos[:victim]] and r.torn is None
    with WalWriter(tmp_path, node_id=NODE, system_id=SYSID, epoch=2) as w:
        assert w.end_lsn == lsn
        w.append(RecordKind.ABORT, b"", lamport=1000)
    assert read(tmp_path)[0][-1].kind == RecordKind.ABORT


def test_truncate_at_segment_boundary_removes_later_segments(tmp_path: Path) -> None:
    write(tmp_path, [(RecordKind.HEAP_INSERT, b"s" * 1500, False) for _ in range(10)])
    segs = list_segments(tmp_path)
    report = truncate_at(tmp_path, segs[2][0], node_id=NODE, system_id=SYSID)
    assert report.segments_removed == [p.name for _, p in segs[2:]]
    recs, _ = read(tmp_path)
    assert recs and all(x.lsn < segs[2][0] for x in recs)
    with WalWriter(tmp_path, node_id=NODE, system_id=SYSID, epoch=2) as w:
        w.append(RecordKind.HEAP_INSERT, b"s" * 1500, lamport=1000)
        w.append(RecordKind.HEAP_INSERT, b"s" * 1500, lamport=1001)
    assert len(read(tmp_path)[0]) == len(recs) + 2


def test_foreign_wal_is_refused(tmp_path: Path) -> None:
    write(tmp_path, [(RecordKind.COMMIT, b"", True)])
    with pytest.raises(WalMismatch, match="another cluster"):
        WalReader(tmp_path, node_id=NODE, system_id=SYSID + 1).read_all()
    with pytest.raises(WalMismatch, match="node"):
        WalWriter(tmp_path, node_id=NODE + 1, system_id=SYSID, epoch=1)
    with pytest.raises(WalMismatch, match="segment size"):
        WalWriter(tmp_path, node_id=NODE, system_id=SYSID, epoch=1, segment_size=8192)


def test_writer_guards_order_epoch_and_size(tmp_path: Path) -> None:
    with WalWriter(tmp_path, node_id=NODE, system_id=SYSID, epoch=5, segment_size=SEG) as w:
        w.append(RecordKind.HEARTBEAT, b"", lamport=10)
        with pytest.raises(ValueError, match="GLSN"):
            w.append(RecordKind.HEARTBEAT, b"", lamport=9)
        with pytest.raises(RecordTooLarge):
            w.append(RecordKind.FULL_PAGE_IMAGE, bytes(SEG), lamport=11)
        with pytest.raises(ValueError):
            w.append(0, b"", lamport=11)
        assert w.append(RecordKind.FULL_PAGE_IMAGE, bytes(SEG - SEGMENT_HEADER_SIZE - 56), lamport=11)[0] == SEG + 64
        assert w.last_glsn >> 16 == 11
    with pytest.raises(ValueError, match="epoch"):
        WalWriter(tmp_path, node_id=NODE, system_id=SYSID, epoch=4)


def test_merged_stream_keeps_origin_node_and_epoch(tmp_path: Path) -> None:
    with WalWriter(tmp_path, node_id=MERGED_NODE_ID, system_id=SYSID, epoch=0, segment_size=SEG, merged=True) as w:
        for i in range(30):
            w.append(RecordKind.COMMIT, b"m" * 300, lamport=i // 3, node=i % 3 + 1, epoch=7 - i % 3, xid=i)
    recs = read_wal(tmp_path, node_id=MERGED_NODE_ID, system_id=SYSID)
    assert [(x.node, x.epoch, x.lamport) for x in recs] == [(i % 3 + 1, 7 - i % 3, i // 3) for i in range(30)]


# --- group commit -------------------------------------------------------------------------------------------


def slow_sync(monkeypatch: pytest.MonkeyPatch, delay: float) -> None:
    real: Callable[[int], None] = writer_mod._datasync  # noqa: SLF001

    def sync(fd: int) -> None:
        time.sleep(delay)  # a real disk's fsync latency; this machine's may be near zero
        real(fd)

    monkeypatch.setattr(writer_mod, "_datasync", sync)


def test_group_commit_shares_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slow_sync(monkeypatch, 0.004)
    threads, per_thread = 8, 20
    w = WalWriter(tmp_path, node_id=NODE, system_id=SYSID, epoch=1, segment_size=1 << 16)
    base_fsyncs = w.fsync_count
    clock = iter(range(1, 10**6))
    clock_lock = threading.Lock()

    def tick() -> int:
        with clock_lock:
            return next(clock)

    errors: list[BaseException] = []

    def committer(t: int) -> None:
        try:
            for i in range(per_thread):
                _, end = w.append(RecordKind.COMMIT, f"{t}:{i}".encode(), lamport=tick, xid=t * 1000 + i)
                assert w.flush(end) >= end and w.flushed_lsn >= end
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=committer, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    w.close()
    assert not errors
    commits = threads * per_thread
    assert w.flush_count <= commits // 2, (w.flush_count, commits)  # ~4 commits per fsync measured
    assert w.fsync_count - base_fsyncs <= w.flush_count + 10
    recs = read_wal(tmp_path, node_id=NODE, system_id=SYSID)
    assert sorted(x.xid for x in recs) == sorted(t * 1000 + i for t in range(threads) for i in range(per_thread))
    assert [x.lamport for x in recs] == sorted(x.lamport for x in recs)


# --- write failures -----------------------------------------------------------------------------------------


def failing_pwrite(monkeypatch: pytest.MonkeyPatch, after: int, *, partial: bool = False) -> None:
    real = os.pwrite
    calls = [0]

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        calls[0] += 1
        if calls[0] == after and partial:
            return real(fd, bytes(data)[: len(data) // 2], offset)
        if calls[0] >= after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)


@pytest.mark.parametrize("partial", [False, True])
def test_disk_full_on_append_stops_writer_and_keeps_durable_records(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, partial: bool) -> None:
    w = WalWriter(tmp_path, node_id=NODE, system_id=SYSID, epoch=1, segment_size=1 << 16)
    acked = []
    for i in range(5):
        lsn, end = w.append(RecordKind.COMMIT, b"c" * 100, lamport=i + 1)
        w.flush(end)
        acked.append(lsn)
    failing_pwrite(monkeypatch, 1, partial=partial)
    with pytest.raises(WalWriteError, match="No space left on device") as ei:
        w.append(RecordKind.COMMIT, b"lost" * 100, lamport=10)
    assert ei.value.path == w.current_segment and ei.value.errno == errno.ENOSPC
    assert "Free space" in str(ei.value)
    monkeypatch.undo()
    with pytest.raises(WalWriteError, match="earlier failure"):
        w.append(RecordKind.COMMIT, b"", lamport=11)
    assert w.flushed_lsn == w.end_lsn  # the failed record was never published
    w.close()
    w2 = WalWriter(tmp_path, node_id=NODE, system_id=SYSID, epoch=2)
    assert (w2.torn_at_open is not None) == partial
    w2.append(RecordKind.COMMIT, b"again", lamport=20)
    w2.close()
    recs = read_wal(tmp_path, node_id=NODE, system_id=SYSID)
    assert [x.lsn for x in recs[:5]] == acked and recs[-1].payload == b"again" and len(recs) == 6


def test_disk_full_while_creating_segment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = WalWriter(tmp_path, node_id=NODE, system_id=SYSID, epoch=1, segment_size=SEG)
    while w.end_lsn < SEG - 1600:
        w.append(RecordKind.HEAP_INSERT, b"x" * 1000, lamport=1)
    w.flush()
    n = len(read_wal(tmp_path, node_id=NODE, system_id=SYSID))
    failing_pwrite(monkeypatch, 2)  # header written, zero fill fails
    with pytest.raises(WalWriteError, match=f"could not create WAL segment .*{segment_name(SEG)}"):
        w.append(RecordKind.HEAP_INSERT, b"x" * 3000, lamport=2)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == [segment_name(0)]  # no half-made segment, no temp file
    w.close()
    with WalWriter(tmp_path, node_id=NODE, system_id=SYSID, epoch=2) as w2:
        w2.append(RecordKind.HEAP_INSERT, b"x" * 3000, lamport=3)
    recs = read_wal(tmp_path, node_id=NODE, system_id=SYSID)
    assert len(recs) == n + 1 and recs[-1].lsn == SEG + SEGMENT_HEADER_SIZE


def test_fsync_failure_is_fatal_for_the_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = WalWriter(tmp_path, node_id=NODE, system_id=SYSID, epoch=1)
    _, end = w.append(RecordKind.COMMIT, b"c", lamport=1)

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(writer_mod, "_datasync", eio)
    with pytest.raises(WalWriteError, match="Do not retry"):
        w.flush(end)
    with pytest.raises(WalWriteError, match="earlier failure"):
        w.flush(end)
    w.close()


def test_numpy_scan_of_a_real_segment(tmp_path: Path) -> None:
    write(tmp_path, [(RecordKind.HEAP_INSERT, bytes(i % 50), False) for i in range(200)], seg=1 << 16)
    r = WalReader(tmp_path, node_id=NODE, system_id=SYSID)
    (batch,) = list(r.batches())
    assert len(batch.offsets) == 200
    assert np.all(np.diff(batch.headers["glsn"].astype(np.int64)) > 0)


def test_read_from_a_checkpoint_lsn_and_stop_lsn(tmp_path: Path) -> None:
    pos = write(tmp_path, [(RecordKind.HEAP_INSERT, bytes([i + 1]) * 500, False) for i in range(30)])
    recs = list(WalReader(tmp_path, node_id=NODE, system_id=SYSID, start_lsn=pos[11][0]))
    assert [x.lsn for x in recs] == [p[0] for p in pos[11:]]
    r = WalReader(tmp_path, node_id=NODE, system_id=SYSID, start_lsn=pos[11][0], stop_lsn=pos[20][0])
    assert [x.lsn for x in r] == [p[0] for p in pos[11:20]] and r.end_lsn == align8(pos[19][1])
    # Old segments removed after a checkpoint: the first remaining segment's header still anchors the chain.
    first_kept = list_segments(tmp_path)[2]
    for _, p in list_segments(tmp_path)[:2]:
        os.unlink(p)
    recs = read_wal(tmp_path, node_id=NODE, system_id=SYSID)
    assert recs[0].lsn == first_kept[0] + SEGMENT_HEADER_SIZE and recs[-1].lsn == pos[-1][0]


def test_leftover_temp_segment_is_removed_on_open(tmp_path: Path) -> None:
    write(tmp_path, [(RecordKind.COMMIT, b"t", True)])
    (tmp_path / (segment_name(SEG) + ".tmp")).write_bytes(b"half a segment")
    with WalWriter(tmp_path, node_id=NODE, system_id=SYSID, epoch=2) as w:
        w.append(RecordKind.COMMIT, b"u", lamport=5)
    assert sorted(os.listdir(tmp_path)) == [segment_name(0)]
    assert [x.payload for x in read_wal(tmp_path, node_id=NODE, system_id=SYSID)] == [b"t", b"u"]
