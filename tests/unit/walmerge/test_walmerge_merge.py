"""Merge: output == inputs in GLSN order (payload, origin node, epoch, GLSN kept; new LSN/prev/CRC valid),
readable by the ordinary reader, fences applied, start LSNs honoured; fast CRC check == reference; the bulk
record copy, threads and piece sizes change no byte; a corrupt input leaves a valid prefix and no temp file."""

from __future__ import annotations

import itertools
import os
import random
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from walmerge import MERGED_NODE_ID, SEGMENT_HEADER_SIZE, Record, WalCorruption, WalError, WalReader, WalWriter
from walmerge.crcfast import aggregate_ok, first_bad_crc, zshift
from walmerge.merge import ReadAhead, merge
from walmerge.record import align8
from walmerge.scan import Expect, _first_bad_crc, scan_headers, validate
from walmerge.segment import list_segments
from walmerge.sink import MergedSink, copy_records

SYS = 0xBEEF
SEG = 8192

# one record spec: (node, clock jump taken from another node?, payload size, epoch bump?)
Spec = tuple[int, bool, int, bool]


def write_cluster(root: Path, specs: list[Spec], *, nodes: int = 3, seg: int = SEG, seed: int = 0
                  ) -> list[tuple[int, int, int, int, bytes]]:
    """Write node WALs as real nodes would (own clock ticks, occasional max-merge with another node's clock).
    Returns (glsn, node, epoch, kind, payload) per record."""
    rnd = random.Random(seed)
    clocks = {k: 0 for k in range(1, nodes + 1)}
    epochs = {k: 1 for k in clocks}
    writers = {k: WalWriter(root / "wal" / f"node-{k}", node_id=k, system_id=SYS, epoch=1, segment_size=seg)
               for k in clocks}
    out = []
    for node, jump, size, bump in specs:
        k = 1 + node % nodes
        if jump:
            clocks[k] = max(clocks[k], clocks[1 + rnd.randrange(nodes)])
        if bump:  # a restart: new incarnation
            writers[k].close()
            epochs[k] += 1
            writers[k] = WalWriter(root / "wal" / f"node-{k}", node_id=k, system_id=SYS, epoch=epochs[k])
        clocks[k] += 1
        payload = rnd.randbytes(size)
        kind = 1 + rnd.randrange(3)
        writers[k].append(kind, payload, lamport=clocks[k], xid=0)
        out.append(((clocks[k] << 16) | k, k, epochs[k], kind, payload))
    for w in writers.values():
        w.close()
    return out


def read_merged(out: Path) -> list[Record]:
    return list(WalReader(out, node_id=MERGED_NODE_ID, system_id=SYS))


specs_st = st.lists(st.tuples(st.integers(0, 2), st.booleans(), st.integers(0, 700), st.just(False)),
                    min_size=0, max_size=120)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=specs_st, out_seg=st.sampled_from([SEG, 4096, 1 << 16]))
def test_merge_equals_sorted_inputs(specs: list[Spec], out_seg: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        expected = sorted(write_cluster(root, specs), key=lambda r: r[0])
        summary = merge(root, root / "out", segment_size=out_seg)
        got = read_merged(root / "out")
        assert [(r.glsn, r.node, r.epoch, r.kind, r.payload) for r in got] == expected
        assert summary.records == len(expected)
        assert summary.per_node == {k: n for k, n in
                                    ((k, sum(1 for e in expected if e[1] == k)) for k in (1, 2, 3)) if n}
        # new LSNs and prev chain: positions of a single-node stream
        if got:
            assert got[0].prev_lsn == 0 and got[0].lsn == SEGMENT_HEADER_SIZE
            assert all(b.prev_lsn == a.lsn for a, b in zip(got, got[1:]))
            assert summary.first_glsn == expected[0][0] and summary.last_glsn == expected[-1][0]
        for _, path in list_segments(root / "out"):
            assert path.stat().st_size == out_seg


def test_merge_keeps_node_order_for_equal_glsns_and_restarts(tmp_path: Path) -> None:
    specs: list[Spec] = [(i % 3, i % 7 == 0, 50 + i, i == 40) for i in range(90)]
    expected = sorted(write_cluster(tmp_path, specs), key=lambda r: r[0])
    merge(tmp_path, tmp_path / "out")
    got = read_merged(tmp_path / "out")
    assert [(r.glsn, r.node, r.epoch, r.payload) for r in got] == [(g, n, e, p) for g, n, e, _, p in expected]
    assert {r.epoch for r in got} == {1, 2}


def test_fenced_records_are_left_out(tmp_path: Path) -> None:
    specs: list[Spec] = [(i % 3, False, 30, False) for i in range(60)]
    recs = write_cluster(tmp_path, specs)
    node2 = [r for r in recs if r[1] == 2]
    fence_glsn = node2[5][0]
    summary = merge(tmp_path, tmp_path / "out", fences={2: [(1, fence_glsn)], 3: [(7, 0)]})
    got = read_merged(tmp_path / "out")
    expected = sorted((r for r in recs if not (r[1] == 2 and r[0] > fence_glsn)), key=lambda r: r[0])
    assert [r.glsn for r in got] == [r[0] for r in expected]
    assert summary.skipped_fenced == len(node2) - 6


def test_start_lsns_and_stop_glsn(tmp_path: Path) -> None:
    specs: list[Spec] = [(i % 3, i % 4 == 0, 200, False) for i in range(150)]
    recs = write_cluster(tmp_path, specs)
    n1 = list(WalReader(tmp_path / "wal" / "node-1", node_id=1, system_id=SYS))
    start = n1[20].lsn
    stop = sorted(r[0] for r in recs)[120]
    merge(tmp_path, tmp_path / "out", start_lsns={1: start}, stop_glsn=stop)
    got = read_merged(tmp_path / "out")
    skipped = {r.glsn for r in n1[:20]}
    assert [r.glsn for r in got] == sorted(r[0] for r in recs if r[0] not in skipped and r[0] <= stop)


def test_empty_and_refuses_nonempty_output(tmp_path: Path) -> None:
    summary = merge(tmp_path, tmp_path / "out", system_id=SYS)
    assert summary.records == 0 and read_merged(tmp_path / "out") == []
    with pytest.raises(Exception, match="already holds"):
        merge(tmp_path, tmp_path / "out", system_id=SYS)


def test_progress_reports_bytes(tmp_path: Path) -> None:
    write_cluster(tmp_path, [(i % 3, False, 300, False) for i in range(200)])
    seen: list[tuple[int, int]] = []
    merge(tmp_path, tmp_path / "out", progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1] > 0
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(0, 900), min_size=1, max_size=40), data=st.data())
def test_fast_crc_check_agrees_with_reference(sizes: list[int], data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        with WalWriter(d, node_id=1, system_id=SYS, epoch=1, segment_size=1 << 16) as w:
            for i, n in enumerate(sizes):
                w.append(1, bytes((i + j) & 0xFF for j in range(n)), lamport=i + 1)
        path = list_segments(d)[0][1]
        buf = bytearray(path.read_bytes())
        scan = scan_headers(bytes(buf), 0, SEGMENT_HEADER_SIZE, len(buf))
        assert aggregate_ok(bytes(buf), scan.offsets, scan.headers)
        i = data.draw(st.integers(0, len(sizes) - 1))
        o, tl = int(scan.offsets[i]), int(scan.headers["total_len"][i])
        pos = data.draw(st.sampled_from([p for p in range(o + 16, o + tl) if not 40 <= p - o < 48] or [o + 52]))
        buf[pos] ^= 1 << data.draw(st.integers(0, 7))
        bad = bytes(buf)
        s2 = scan_headers(bad, 0, SEGMENT_HEADER_SIZE, len(bad))
        if len(s2.offsets) == len(scan.offsets):
            ref = _first_bad_crc(bad, s2.offsets.tolist(), s2.headers["total_len"].tolist(), s2.headers["crc"].tolist())
            assert ref == i
            assert first_bad_crc(bad, s2.offsets, s2.headers) == i


def test_zshift_matches_appending_zeros() -> None:
    import google_crc32c
    v = np.array([0, 1, 0x80000000, 0xDEADBEEF], dtype=np.uint32)
    for k in (0, 1, 52, 63, 64, 4097, (1 << 24) + 5):
        want = [google_crc32c.extend(int(x) ^ 0xFFFFFFFF, bytes(k)) ^ 0xFFFFFFFF for x in v]
        assert zshift(np.full(len(v), k), v).tolist() == want


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.tuples(st.integers(0, 2), st.integers(2, 600)), min_size=1, max_size=80), data=st.data())
def test_copy_records_matches_slicing(sizes: list[tuple[int, int]], data: st.DataObject) -> None:
    """Two power-of-two blocks per record land exactly the record's bytes, whatever the sizes and order."""
    rnd = random.Random(data.draw(st.integers(0, 1 << 30)))
    bufs = [bytearray(rnd.randbytes(8 * sum(w for s, w in sizes if s == k) + 64)) for k in range(3)]
    pos = [0, 0, 0]
    recs = []
    for s, words in sizes:
        recs.append((s, pos[s] * 8, words * 8))
        pos[s] += words
    order = data.draw(st.permutations(range(len(recs))))
    recs = [recs[i] for i in order]
    src = np.array([r[0] for r in recs], dtype=np.int32)
    off = np.array([r[1] for r in recs], dtype=np.int64)
    aligned = np.array([r[2] for r in recs], dtype=np.int64)
    dst = np.concatenate(([8], 8 + np.cumsum(aligned)[:-1]))
    out = bytearray(int(dst[-1] + aligned[-1]) + 8)
    copy_records(out, dst, [bytes(b) for b in bufs], src, off, aligned)
    want = bytearray(8) + b"".join(bytes(bufs[s][o: o + a]) for s, o, a in recs) + bytearray(8)
    assert out == want


def _tree(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.mark.parametrize("piece", [4096, 1 << 20])
def test_threads_and_pieces_give_the_same_bytes(tmp_path: Path, piece: int) -> None:
    """The read-ahead thread and the piece size change no byte of the merged stream."""
    write_cluster(tmp_path, [(i % 3, i % 5 == 0, (37 * i) % 900, False) for i in range(400)], seg=1 << 14)
    merge(tmp_path, tmp_path / "a", threads=False)
    merge(tmp_path, tmp_path / "b", threads=True)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    batches = list(WalReader(tmp_path / "a", node_id=MERGED_NODE_ID, system_id=SYS).batches())
    sink = MergedSink(tmp_path / "sink", system_id=SYS, segment_size=1 << 14, piece=piece)
    for b in batches:
        sink.append(b.headers, np.zeros(len(b.offsets), dtype=np.int32), b.offsets, [b.data])
    sink.close()
    # durable_lsn/lsn/prev are re-derived, so re-merging the merged stream reproduces it byte for byte
    assert _tree(tmp_path / "sink") == _tree(tmp_path / "a")


@pytest.mark.parametrize("threads", [False, True])
def test_corrupt_input_leaves_a_valid_prefix(tmp_path: Path, threads: bool) -> None:
    write_cluster(tmp_path, [(i % 3, False, 300, False) for i in range(600)], seg=1 << 14)
    segs = list_segments(tmp_path / "wal" / "node-2")
    path = segs[len(segs) // 2][1]
    raw = bytearray(path.read_bytes())
    raw[SEGMENT_HEADER_SIZE + 200] ^= 0x10  # a payload byte of the segment's first record
    path.write_bytes(bytes(raw))
    with pytest.raises(WalCorruption) as e:
        merge(tmp_path, tmp_path / "out", segment_size=1 << 12, threads=threads)
    assert e.value.path == path and "CRC" in str(e.value)
    names = [p.name for p in (tmp_path / "out").iterdir()]
    assert names and not [n for n in names if n.endswith(".tmp")]
    got = read_merged(tmp_path / "out")  # the published segments read cleanly: a prefix of the merge
    assert got and [r.glsn for r in got] == sorted(r.glsn for r in got)


def test_read_ahead_passes_items_then_the_error_and_stops_early() -> None:
    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise WalError("boom")

    ahead = ReadAhead([items(), iter([7]), itertools.count()], depth=1)
    first, second, endless = ahead.source(0), ahead.source(1), ahead.source(2)
    assert [next(first), next(first), next(second), next(endless), next(endless)] == [1, 2, 7, 0, 1]
    with pytest.raises(WalError, match="boom"):
        next(first)
    assert list(second) == []
    ahead.close()
    assert not ahead._thread.is_alive()


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 1 << 30))
def test_crc_taken_during_the_scan_agrees(seed: int) -> None:
    """``validate`` with the CRC the scan took on the way == without it, on damaged and cut buffers."""
    rnd = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        with WalWriter(d, node_id=3, system_id=SYS, epoch=1, segment_size=1 << 16) as w:
            for i in range(rnd.randint(1, 50)):
                w.append(1 + i % 5, rnd.randbytes(rnd.choice([0, 7, 8, 100, 1000, 3000])), lamport=i + 1)
        buf = bytearray(list_segments(d)[0][1].read_bytes())
        for _ in range(rnd.choice([0, 1, 2])):
            buf[rnd.randrange(SEGMENT_HEADER_SIZE, len(buf))] ^= 1 << rnd.randrange(8)
        if rnd.random() < 0.3:
            buf = buf[: rnd.randrange(SEGMENT_HEADER_SIZE, len(buf))]
        data = bytes(buf)
        sc = scan_headers(data, 0, SEGMENT_HEADER_SIZE, 1 << 16)
        assert sc.crc is not None
        expect = Expect(None, 0, 0)
        assert validate(data, sc, 0, expect, stream_node=3) == validate(data, sc._replace(crc=None), 0, expect,
                                                                        stream_node=3)


@pytest.mark.parametrize("threads", [False, True])
def test_input_cut_inside_the_last_padding_and_records_larger_than_a_piece(tmp_path: Path, threads: bool) -> None:
    """A last segment file that ends inside its last record's padding (torn there) and records larger than the
    piece buffer are copied like the rest."""
    with WalWriter(tmp_path / "wal" / "node-1", node_id=1, system_id=SYS, epoch=1, segment_size=1 << 18) as w:
        for i in range(40):
            w.append(1, bytes([i]) * (150_000 if i % 9 == 4 else 13 + 40 * i), lamport=2 * i + 1)
        end = w.end_lsn
    with WalWriter(tmp_path / "wal" / "node-2", node_id=2, system_id=SYS, epoch=1, segment_size=1 << 18) as w:
        for i in range(40):
            w.append(2, bytes([100 + i]) * (21 + 32 * i), lamport=2 * i + 2)
    last = list_segments(tmp_path / "wal" / "node-1")[-1][1]
    recs = list(WalReader(tmp_path / "wal" / "node-1", node_id=1, system_id=SYS))
    assert align8(recs[-1].end_lsn) == end and recs[-1].end_lsn % 8  # the last record has padding
    os.truncate(last, recs[-1].end_lsn % (1 << 18) + 1)  # the file ends inside that padding
    summary = merge(tmp_path, tmp_path / "out", threads=threads)
    assert 1 in summary.torn
    got = read_merged(tmp_path / "out")
    want = sorted(list(WalReader(tmp_path / "wal" / "node-1", node_id=1, system_id=SYS))
                  + list(WalReader(tmp_path / "wal" / "node-2", node_id=2, system_id=SYS)), key=lambda r: r.glsn)
    assert [(r.glsn, r.payload) for r in got] == [(r.glsn, r.payload) for r in want]
    batches = list(WalReader(tmp_path / "out", node_id=MERGED_NODE_ID, system_id=SYS).batches())
    sink = MergedSink(tmp_path / "again", system_id=SYS, segment_size=1 << 18, piece=4096)
    for b in batches:
        sink.append(b.headers, np.zeros(len(b.offsets), dtype=np.int32), b.offsets, [b.data])
    sink.close()
    assert _tree(tmp_path / "again") == _tree(tmp_path / "out")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(0, 30_000), min_size=1, max_size=40),
       piece=st.sampled_from([64, 1000, 4096, 20_000]), split=st.integers(1, 9))
def test_bulk_sink_pieces_change_no_byte(sizes: list[int], piece: int, split: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        with WalWriter(d / "in", node_id=1, system_id=SYS, epoch=1, segment_size=1 << 16) as w:
            for i, n in enumerate(sizes):
                w.append(1 + i % 3, bytes([i % 251]) * n, lamport=i + 1)
        batches = list(WalReader(d / "in", node_id=1, system_id=SYS).batches())
        for name, p in (("small", piece), ("whole", 1 << 30)):
            sink = MergedSink(d / name, system_id=SYS, segment_size=1 << 16, piece=p)
            for b in batches:
                for k in range(0, len(b.offsets), split):  # several appends per input segment
                    sink.append(b.headers[k: k + split], np.zeros(len(b.offsets[k: k + split]), dtype=np.int32),
                                b.offsets[k: k + split], [b.data])
            sink.close()
        assert _tree(d / "small") == _tree(d / "whole")
        got = list(WalReader(d / "small", node_id=MERGED_NODE_ID, system_id=SYS))
        assert [r.payload for r in got] == [bytes([i % 251]) * n for i, n in enumerate(sizes)]
