"""The compiled merge kernels (``walmerge.jit``) against the numpy reference: the clean-segment walk answers only
for segments the reference finds clean, and then exactly as it does; merges with and without compiled code
write the same bytes, also with torn tails, fences and several nodes."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from walmerge import SEGMENT_HEADER_SIZE, WalWriter, jit
from walmerge.merge import merge
from walmerge.scan import END, Expect, scan_headers, validate
from walmerge.segment import list_segments

from tests.unit.walmerge.test_walmerge_merge import SYS, _tree, write_cluster


def test_compiled_kernels_load() -> None:
    """numba is a dependency: without it the merge silently runs at a third of its speed."""
    assert jit.enabled(), "walmerge.jit could not load numba; is MUHEAM_NO_JIT set or numba missing?"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 1 << 30), stream=st.booleans(), verify_crc=st.booleans(),
       prev=st.sampled_from(["none", "right", "wrong"]), glsn_floor=st.sampled_from([0, 1 << 40]))
def test_compiled_walk_agrees_with_the_reference(seed: int, stream: bool, verify_crc: bool, prev: str,
                                                glsn_floor: int) -> None:
    rnd = random.Random(seed)
    seg = 1 << 16
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        with WalWriter(d, node_id=3, system_id=SYS, epoch=1, segment_size=seg) as w:
            for i in range(rnd.randint(0, 60)):
                w.append(1 + i % 5, rnd.randbytes(rnd.choice([0, 1, 7, 8, 100, 1000, 3000])), lamport=i + 1)
        path = list_segments(d)[0][1]
        buf = bytearray(path.read_bytes())
    first_prev = int.from_bytes(buf[SEGMENT_HEADER_SIZE + 16: SEGMENT_HEADER_SIZE + 24], "little")
    damage = rnd.choice(["none", "none", "flip", "flips", "cut", "tail"])
    if damage in ("flip", "flips"):
        for _ in range(1 if damage == "flip" else 3):
            buf[rnd.randrange(SEGMENT_HEADER_SIZE, len(buf))] ^= 1 << rnd.randrange(8)
    elif damage == "cut":
        buf = buf[: rnd.randrange(SEGMENT_HEADER_SIZE, len(buf))]
    elif damage == "tail":  # garbage after the last record
        end = len(buf.rstrip(b"\0"))
        at = min(len(buf) - 1, (end + 7) // 8 * 8 + rnd.randrange(0, 64))
        buf[at] = rnd.randrange(1, 256)
    data = bytes(buf)
    expect = Expect({"none": None, "right": first_prev, "wrong": first_prev + 8}[prev], glsn_floor, 0)
    node = 3 if stream else None
    ref = scan_headers(data, 0, SEGMENT_HEADER_SIZE, seg)
    n_ok, _ = validate(data, ref, 0, expect, stream_node=node, verify_crc=verify_crc)
    ref_clean = n_ok == len(ref.offsets) and ref.stop_reason == END
    got = jit.scan_clean(data, 0, SEGMENT_HEADER_SIZE, seg, expect, stream_node=node, verify_crc=verify_crc)
    if got is None:
        assert not ref_clean, "the compiled walk refused a segment the reference finds clean"
        return
    assert ref_clean, "the compiled walk accepted a segment the reference refuses"
    assert got.offsets.tolist() == ref.offsets.tolist()
    assert got.headers.tobytes() == ref.headers.tobytes()
    assert (got.stop, got.stop_reason) == (ref.stop, ref.stop_reason)


def _both(root: Path, monkeypatch: pytest.MonkeyPatch, **kw: object) -> tuple[dict[str, bytes], dict[str, bytes]]:
    merge(root, root / "jit", **kw)  # type: ignore[arg-type]
    with monkeypatch.context() as m:
        m.setattr(jit, "kernels", lambda: None)
        assert not jit.enabled()
        merge(root, root / "numpy", **kw)  # type: ignore[arg-type]
    return _tree(root / "jit"), _tree(root / "numpy")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 5000), min_size=0, max_size=150), nodes=st.integers(1, 5),
       threads=st.booleans())
def test_compiled_and_numpy_merges_write_the_same_bytes(sizes: list[int], nodes: int, threads: bool,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_cluster(root, [(i % nodes, i % 7 == 0, n, False) for i, n in enumerate(sizes)], nodes=nodes,
                      seg=1 << 14)
        a, b = _both(root, monkeypatch, segment_size=1 << 15, threads=threads)
        assert a == b and a


def test_torn_tail_and_fences_give_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cluster(tmp_path, [(i % 3, i % 4 == 0, (53 * i) % 1500, False) for i in range(500)], seg=1 << 14)
    last = list_segments(tmp_path / "wal" / "node-2")[-1][1]
    size = len(last.read_bytes().rstrip(b"\0"))
    os.truncate(last, size - 5)  # node 2's last record torn
    fences = {1: [(1, (40 << 16) | 1)]}
    a, b = _both(tmp_path, monkeypatch, fences=fences)
    assert a == b and a


def test_a_kernel_that_cannot_load_falls_back_to_numpy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """numba failing to compile or cache (it raises RuntimeError, not ImportError) turns the kernels off with one
    warning; the merge then runs on the reference and writes the same bytes."""
    write_cluster(tmp_path, [(i % 3, i % 5 == 0, 40 * i % 700, False) for i in range(120)], seg=1 << 14)
    merge(tmp_path, tmp_path / "jit")

    def broken(_k: object) -> None:
        raise RuntimeError("cannot cache function 'walk_clean': no locator available")

    monkeypatch.setattr(jit, "_warm_up", broken)
    jit.kernels.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="walmerge.jit"):
            assert not jit.enabled()
        assert "no locator available" in caplog.text and "numpy" in caplog.text
        merge(tmp_path, tmp_path / "fallback")
    finally:
        monkeypatch.undo()
        jit.kernels.cache_clear()
    assert jit.enabled()
    assert _tree(tmp_path / "fallback") == _tree(tmp_path / "jit")
