"""Merge: output == inputs in GLSN order (payload, origin node, epoch, GLSN kept; new LSN/prev/CRC valid),
readable by the ordinary reader, fences applied, start LSNs honoured; fast CRC check == reference."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from walmerge import MERGED_NODE_ID, SEGMENT_HEADER_SIZE, Record, WalReader, WalWriter
from walmerge.crcfast import aggregate_ok, first_bad_crc, zshift
from walmerge.merge import merge
from walmerge.scan import _first_bad_crc, scan_headers
from walmerge.segment import list_segments

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
