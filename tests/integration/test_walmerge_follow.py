"""Follow mode: tails see only complete records, the followed stream equals the bulk merge (same LSNs and bytes),
nothing goes out above the watermark, heartbeats keep idle nodes from stalling, departures end a stream at its
recovery point, and a restart resumes with no gap and no duplicate."""

from __future__ import annotations

import os
import random
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from walmerge import MERGED_NODE_ID, RecordKind, WalCorruption, WalError, WalReader, WalWriter, encode_record
from walmerge.follow import Emitted, Follower, NodeTail
from walmerge.merge import Chunk, merge
from walmerge.record import Record, record_from
from walmerge.segment import list_segments
from walmerge.verify import Status, verify

SYS = 0xF011
SEG = 4096
HB = RecordKind.HEARTBEAT


class Cluster:
    """Node writers with Lamport clocks (own ticks, occasionally merged with another node's clock)."""

    def __init__(self, root: Path, nodes: int = 3, seed: int = 0) -> None:
        self.root = root
        self.rnd = random.Random(seed)
        self.clock = {k: 0 for k in range(1, nodes + 1)}
        self.epoch = {k: 1 for k in self.clock}
        self.w = {k: self._writer(k) for k in self.clock}

    def _writer(self, k: int) -> WalWriter:
        return WalWriter(self.root / "wal" / f"node-{k}", node_id=k, system_id=SYS, epoch=self.epoch[k],
                         segment_size=SEG)

    def rec(self, k: int, size: int | None = None, *, jump: bool = False, kind: int = 1) -> int:
        if jump:
            self.clock[k] = max(self.clock[k], max(self.clock.values()))
        self.clock[k] += 1
        payload = self.rnd.randbytes(self.rnd.randrange(400) if size is None else size)
        self.w[k].append(kind, payload, lamport=self.clock[k])
        return (self.clock[k] << 16) | k

    def hb(self, k: int, *, jump: bool = True) -> int:
        return self.rec(k, 0, jump=jump, kind=HB)

    def restart(self, k: int) -> None:
        self.w[k].close()
        self.epoch[k] += 1
        self.w[k] = self._writer(k)

    def written(self, k: int) -> int:
        return self.w[k].last_glsn

    def close(self) -> None:
        for w in self.w.values():
            w.close()


def bulk(root: Path, out: Path, **kw: object) -> list[tuple[int, bytes]]:
    """(lsn, record bytes) of the bulk merge of ``root`` into ``out``."""
    merge(root, out, system_id=SYS, segment_size=SEG, fsync=False, **kw)  # type: ignore[arg-type]
    return [(r.lsn, raw(out, r.lsn, r.end_lsn - r.lsn))
            for r in WalReader(out, node_id=MERGED_NODE_ID, system_id=SYS)]


def raw(out: Path, lsn: int, n: int) -> bytes:
    seg = lsn - lsn % SEG
    with open(out / f"{seg:016X}", "rb") as f:
        return os.pread(f.fileno(), n, lsn - seg)


def pairs(emitted: list[Emitted]) -> list[tuple[int, bytes]]:
    return [(e.lsn, e.data) for e in emitted]


def same_files(a: Path, b: Path) -> None:
    sa, sb = list_segments(a), list_segments(b)
    assert [s for s, _ in sa] == [s for s, _ in sb]
    for (_, pa), (_, pb) in zip(sa, sb):
        assert pa.read_bytes() == pb.read_bytes(), pa.name


def drain(f: Follower) -> list[Emitted]:
    out: list[Emitted] = []
    while True:
        got = f.poll()
        out += got
        if not got:
            return out


def check_poll(f: Follower, c: Cluster, out: list[Emitted]) -> None:
    """Poll once; nothing may go out above min over live nodes of what they have written so far."""
    got = f.poll()
    if got:
        limit = min(c.written(k) for k in f.live) if f.live else 1 << 64
        assert max(e.glsn for e in got) <= limit
        assert f.watermark is not None and max(e.glsn for e in got) <= f.watermark
        if out:
            assert got[0].glsn >= out[-1].glsn
    out += got


# --- the tail -------------------------------------------------------------------------------------------------


def test_tail_waits_for_a_partly_written_record(tmp_path: Path) -> None:
    d = tmp_path / "wal" / "node-1"
    w = WalWriter(d, node_id=1, system_id=SYS, epoch=1, segment_size=SEG)
    w.append(1, b"a" * 100, lamport=1)
    tail = NodeTail(d, node_id=1, system_id=SYS)
    assert sum(len(c.offsets) for c in tail.poll()) == 1
    assert tail.poll() == [] and tail.pending is None  # the zero tail of a live segment is no damage
    lsn, last = w.end_lsn, w.last_lsn
    w.close()
    rec = encode_record(kind=1, payload=bytes(range(256)) * 3, lsn=lsn, prev_lsn=last, lamport=2, node=1, epoch=1)
    fd = os.open(d / f"{0:016X}", os.O_RDWR)
    try:
        for cut in (8, 60, 500):  # header only partly there, header without payload, payload cut
            os.pwrite(fd, rec[:cut], lsn)
            for _ in range(3):
                assert tail.poll() == [] and tail.pending is not None and tail.pending[0] == lsn
        os.pwrite(fd, rec, lsn)
    finally:
        os.close(fd)
    got = tail.poll()
    assert [r.payload for c in got for r in _records(c)] == [bytes(range(256)) * 3]
    assert tail.pending is None and tail.last_glsn == (2 << 16) | 1


def _records(chunk: Chunk) -> list[Record]:
    return [record_from(chunk.data, int(o)) for o in chunk.offsets]


def test_tail_reports_damage_only_once_proven(tmp_path: Path) -> None:
    d = tmp_path / "wal" / "node-1"
    w = WalWriter(d, node_id=1, system_id=SYS, epoch=1, segment_size=SEG)
    w.append(1, b"x" * 50, lamport=1)
    bad, _ = w.append(1, b"y" * 50, lamport=2)
    w.flush()
    w.append(1, b"z" * 50, lamport=3)  # carries durable_lsn past the damaged record
    w.close()
    with open(d / f"{0:016X}", "r+b") as f:
        f.seek(bad + 70)
        f.write(b"Q")
    tail = NodeTail(d, node_id=1, system_id=SYS)
    assert sum(len(c.offsets) for c in tail.poll()) == 1  # first sight: maybe a write in progress
    with pytest.raises(WalCorruption) as e:
        tail.poll()
    assert e.value.lsn == bad
    # a later segment proves it at once
    d2 = tmp_path / "wal" / "node-2"
    with WalWriter(d2, node_id=2, system_id=SYS, epoch=1, segment_size=SEG) as w2:
        bad2, _ = w2.append(1, b"y" * 50, lamport=1)
        for i in range(20):
            w2.append(1, bytes(300), lamport=2 + i)
    with open(d2 / f"{0:016X}", "r+b") as f:
        f.seek(bad2 + 60)
        f.write(b"Q")
    with pytest.raises(WalCorruption):
        NodeTail(d2, node_id=2, system_id=SYS).poll()


def test_tail_reads_records_larger_than_its_window_across_segments(tmp_path: Path) -> None:
    d = tmp_path / "wal" / "node-1"
    tail = NodeTail(d, node_id=1, system_id=SYS, window=64)
    assert tail.poll() == [] and tail.next_lsn is None  # no WAL yet: nothing, no error
    sizes = [0, 3000, 10, 1500, 2900, 7, 0, 2000]
    with WalWriter(d, node_id=1, system_id=SYS, epoch=1, segment_size=SEG) as w:
        for i, n in enumerate(sizes):
            w.append(1, bytes([i]) * n, lamport=i + 1)
            if i % 3 == 0:
                assert tail.poll(max_bytes=1) is not None
    while True:
        if not tail.poll():
            break
    assert tail.records == len(sizes) and len(list_segments(d)) > 2
    t2 = NodeTail(d, node_id=1, system_id=SYS, window=64)
    assert [len(r.payload) for c in t2.poll() for r in _records(c)] == sizes


def test_tail_reports_a_missing_segment(tmp_path: Path) -> None:
    d = tmp_path / "wal" / "node-1"
    with WalWriter(d, node_id=1, system_id=SYS, epoch=1, segment_size=SEG) as w:
        for i in range(30):
            w.append(1, bytes(400), lamport=i + 1)
    segs = list_segments(d)
    segs[1][1].unlink()
    with pytest.raises(WalCorruption, match="missing"):
        NodeTail(d, node_id=1, system_id=SYS).poll()


# --- follower = bulk merge ------------------------------------------------------------------------------------

Step = tuple[int, str, int]
steps_st = st.lists(st.tuples(st.integers(1, 3), st.sampled_from(["rec", "rec", "rec", "jump", "hb", "poll",
                                                                   "restart", "big"]),
                              st.integers(0, 900)), max_size=90)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=steps_st, to_files=st.booleans())
def test_follow_equals_bulk_merge(steps: list[Step], to_files: bool) -> None:
    """Interleaved appends, heartbeats, polls and follower restarts; at the end the concatenation of all that
    was emitted (and the output files) equals the bulk merge of the final inputs."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        c = Cluster(root, seed=len(steps))
        out_dir = root / "follow" if to_files else None
        f = Follower(root, out_dir, system_id=SYS, nodes=[1, 2, 3], segment_size=SEG, fsync=False)
        got: list[Emitted] = []
        for k, op, size in steps:
            if op == "poll":
                check_poll(f, c, got)
            elif op == "restart":
                f.close()
                resume = None if to_files else f.end_lsn
                f = Follower(root, out_dir, system_id=SYS, nodes=[1, 2, 3], segment_size=SEG, fsync=False,
                             resume_lsn=resume)
            elif op == "hb":
                c.hb(k)
            else:
                c.rec(k, size * 3 if op == "big" else size % 400, jump=op == "jump")
        for k in (1, 2, 3):
            c.hb(k)  # everyone passes everything written so far
        check_poll(f, c, got)
        for k in (1, 2, 3):
            f.node_departed(k, 1 << 62)  # streams end: the rest (the final heartbeats) goes out too
        got += drain(f)
        f.close()
        c.close()
        want = bulk(root, root / "bulk")
        assert pairs(got) == want
        if out_dir is not None:
            same_files(out_dir, root / "bulk")


def test_concurrent_writers_and_follower(tmp_path: Path) -> None:
    """Three writer threads (Lamport clocks merged through a shared clock, heartbeats now and then) while the
    follower polls; the result equals the bulk merge."""
    lock = threading.Lock()
    seen = [0]

    def write(k: int, n: int, seed: int) -> None:
        rnd = random.Random(seed)
        own = [1]  # above the first heartbeat

        def tick() -> int:
            with lock:
                if rnd.random() < 0.3:
                    own[0] = max(own[0], seen[0])
                own[0] += 1
                seen[0] = max(seen[0], own[0])
                return own[0]
        with WalWriter(tmp_path / "wal" / f"node-{k}", node_id=k, system_id=SYS, epoch=1, segment_size=SEG) as w:
            for i in range(n):
                kind = HB if i % 25 == 24 else 1
                w.append(kind, rnd.randbytes(0 if kind == HB else rnd.randrange(300)), lamport=tick)
                if i % 40 == 0:
                    w.flush()
                    time.sleep(0.001)
            w.append(HB, b"", lamport=lambda: seen[0] + 1000)

    for k in (1, 2, 3):  # every node has a first record before the follower starts (else it stalls)
        with WalWriter(tmp_path / "wal" / f"node-{k}", node_id=k, system_id=SYS, epoch=1, segment_size=SEG) as w:
            w.append(HB, b"", lamport=1)
    threads = [threading.Thread(target=write, args=(k, 400, k)) for k in (1, 2, 3)]
    f = Follower(tmp_path, tmp_path / "follow", system_id=SYS, segment_size=SEG, fsync=False)
    got: list[Emitted] = []
    for t in threads:
        t.start()
    live_polls = 0
    while any(t.is_alive() for t in threads):
        part = f.poll()
        if part:
            live_polls += 1
            wm = f.watermark
            assert wm is not None and part[-1].glsn <= wm
        got += part
    for t in threads:
        t.join()
    got += drain(f)
    for k in (1, 2, 3):
        f.node_departed(k, 1 << 62)
    got += drain(f)
    f.close()
    assert live_polls > 1  # records went out while the writers were still writing
    assert pairs(got) == bulk(tmp_path, tmp_path / "bulk")
    same_files(tmp_path / "follow", tmp_path / "bulk")
    assert verify(tmp_path, tmp_path / "follow").status is Status.CLEAN


# --- watermarks -----------------------------------------------------------------------------------------------


def test_idle_node_stalls_without_heartbeats_and_not_with_them(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    f = Follower(tmp_path, system_id=SYS, nodes=[1, 2, 3], segment_size=SEG)
    c.rec(1)
    c.rec(2)
    assert f.poll() == [] and f.watermark is None  # node 3 has shown nothing yet
    g3 = c.rec(3)
    for _ in range(30):
        c.rec(1, jump=True)
        c.rec(2, jump=True)
    got = f.poll()
    assert f.watermark == g3 and all(e.glsn <= g3 for e in got)  # idle node 3 holds everything back
    assert len(got) == 3
    hb = c.hb(3)  # a heartbeat moves node 3's watermark past what the others wrote
    got += f.poll()
    assert len(got) == 62 and got[-1].glsn < hb
    c.hb(1)
    c.hb(2)
    got += f.poll()
    assert got[-1].glsn == hb and [e.glsn for e in got] == sorted(e.glsn for e in got)


def test_departed_node_ends_at_its_recovery_point_and_may_rejoin(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    f = Follower(tmp_path, system_id=SYS, nodes=[1, 2, 3], segment_size=SEG)
    glsns3 = [c.rec(3) for _ in range(10)]
    for _ in range(5):
        c.rec(1, jump=True)
        c.rec(2, jump=True)
    got = f.poll()
    assert max(e.glsn for e in got) <= c.written(3)
    recovery = glsns3[4]
    with pytest.raises(WalError):
        f.node_departed(3, glsns3[0])  # records past that already went out
    f2 = Follower(tmp_path, system_id=SYS, nodes=[1, 2, 3], segment_size=SEG)
    f2.node_departed(3, recovery)
    got2 = f2.poll()
    assert not any(e.node == 3 and e.glsn > recovery for e in got2)
    assert [e.glsn for e in got2 if e.node == 3] == glsns3[:5]
    assert f2.fences == {3: [(1, recovery)]}
    # node 3 no longer holds the watermark: the others move on alone
    for _ in range(5):
        c.rec(1, jump=True)
        c.rec(2, jump=True)
    got2 += f2.poll()
    assert f2.watermark == min(c.written(1), c.written(2))
    # it comes back as a new incarnation; its stale records stay out, the new ones go in
    c.restart(3)
    c.clock[3] = max(c.clock.values())
    f2.node_joined(3)
    new3 = [c.rec(3) for _ in range(3)]
    for k in (1, 2, 3):
        c.hb(k)
    got2 += f2.poll()
    assert [e.glsn for e in got2 if e.node == 3] == glsns3[:5] + new3
    for k in (1, 2, 3):
        f2.node_departed(k, 1 << 62)
    got2 += drain(f2)
    c.close()
    assert pairs(got2) == bulk(tmp_path, tmp_path / "bulk", fences=f2.fences)


def test_node_clock_below_the_frontier_is_refused(tmp_path: Path) -> None:
    c = Cluster(tmp_path, nodes=2)
    f = Follower(tmp_path, system_id=SYS, nodes=[1, 2], segment_size=SEG)
    for _ in range(5):
        c.rec(1)
    c.clock[2] = 10
    c.rec(2)
    assert len(f.poll()) == 5
    with WalWriter(tmp_path / "wal" / "node-3", node_id=3, system_id=SYS, epoch=1, segment_size=SEG) as w:
        w.append(HB, b"", lamport=2)
    f.node_joined(3)
    with pytest.raises(WalError, match="frontier"):
        f.poll()


# --- resume ---------------------------------------------------------------------------------------------------


def test_resume_from_a_merged_lsn_without_output(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    f = Follower(tmp_path, system_id=SYS, nodes=[1, 2, 3], segment_size=SEG)
    got: list[Emitted] = []
    for i in range(60):
        c.rec(1 + i % 3, jump=i % 7 == 0)
        if i % 10 == 9:
            check_poll(f, c, got)
    stop = f.end_lsn
    for k in (1, 2, 3):
        c.hb(k)
    g = Follower(tmp_path, system_id=SYS, nodes=[1, 2, 3], segment_size=SEG, resume_lsn=stop)
    assert g.resuming and g.end_lsn == stop
    more = g.poll()
    assert not g.resuming
    assert more and more[0].lsn >= stop
    # a subscriber that is behind resumes at the LSN of a record it wants again
    back = Follower(tmp_path, system_id=SYS, nodes=[1, 2, 3], segment_size=SEG, resume_lsn=got[5].lsn)
    again = back.poll()
    assert pairs(again) == pairs(got[5:] + more)
    with pytest.raises(WalError, match="record boundary"):
        Follower(tmp_path, system_id=SYS, nodes=[1, 2, 3], segment_size=SEG, resume_lsn=got[5].lsn + 8).poll()
    for k in (1, 2, 3):
        g.node_departed(k, 1 << 62)
    more += drain(g)
    c.close()
    assert pairs(got + more) == bulk(tmp_path, tmp_path / "bulk")


def test_restart_after_a_torn_output_write(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    out = tmp_path / "follow"
    f = Follower(tmp_path, out, system_id=SYS, nodes=[1, 2, 3], segment_size=SEG)
    for i in range(40):
        c.rec(1 + i % 3, jump=i % 5 == 0)
    f.poll()
    end = f.end_lsn
    f.close()
    seg = end - end % SEG
    with open(out / f"{seg:016X}", "r+b") as fh:  # a crash mid-write: half a record of garbage after the end
        fh.seek(end - seg)
        fh.write(os.urandom(40))
    for i in range(40):
        c.rec(1 + i % 3, jump=i % 5 == 0)
    for k in (1, 2, 3):
        c.hb(k)
    g = Follower(tmp_path, out, system_id=SYS, nodes=[1, 2, 3], segment_size=SEG)
    for k in (1, 2, 3):
        g.node_departed(k, 1 << 62)
    first = g.poll()
    assert first[0].lsn == end
    drain(g)
    g.close()
    c.close()
    bulk(tmp_path, tmp_path / "bulk")
    same_files(out, tmp_path / "bulk")
    with pytest.raises(WalError, match="valid only up to"):
        Follower(tmp_path, out, system_id=SYS, nodes=[1, 2, 3], segment_size=SEG, resume_lsn=1 << 40)
