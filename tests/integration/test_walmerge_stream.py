"""Follow mode as an operator runs it: ``muheam walmerge --follow --publish`` next to a live cluster, and
subscribers of the published stream.

In-process (small WALs written with ``WalWriter``): every kind of ``from_lsn`` position is served with no gap and
no duplicate, also when the records have to be read back from the output files; a subscriber that grants no
credit is sent nothing beyond its credit; malformed requests get an error reply and are counted.

On a real 3-node cluster: tests/integration/test_walmerge_stream_cluster.py (which uses the helpers here).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import msgpack
import pytest
import zmq

import muheam.walstream.publisher as ws
from muheam.walstream.publisher import Publisher, StreamError, parse_lsn, record_end
from muheam.walstream.subscriber import Subscriber, request
from tests.support.keyed import client_dealer
from tests.support.cluster import LocalCluster
from walmerge import MERGED_NODE_ID, RecordKind, WalReader, WalWriter
from walmerge.follow import Follower
from walmerge.merge import detect_system_id
from walmerge.segment import list_segments

ROOT = Path(__file__).resolve().parents[2]
SYS = 0x5EED
SEG = 4096
HB = int(RecordKind.HEARTBEAT)
Start = Callable[..., LocalCluster]


# --- helpers ---------------------------------------------------------------------------------------------------


def stream_records(out: Path) -> list[tuple[int, bytes]]:
    """(lsn, record bytes) of every record of a merged stream directory, read with the ordinary reader."""
    sid = detect_system_id(out)
    assert sid is not None, f"no merged segment in {out}"
    got: list[tuple[int, bytes]] = []
    for batch in WalReader(out, node_id=MERGED_NODE_ID, system_id=sid).batches():
        for off, tl in zip(batch.offsets.tolist(), batch.headers["total_len"].tolist()):
            got.append((batch.header.start_lsn + off, batch.data[off:off + tl]))
    return got


def same_files(a: Path, b: Path) -> None:
    sa, sb = list_segments(a), list_segments(b)
    assert [s for s, _ in sa] == [s for s, _ in sb], (a, b)
    for (_, pa), (_, pb) in zip(sa, sb):
        assert pa.read_bytes() == pb.read_bytes(), f"{pa} differs from {pb}"


def glsn_of(data: bytes) -> int:
    return int.from_bytes(data[24:32], "little")


def raw_request(sock: zmq.Socket[Any], *frames: bytes, timeout: float = 5.0) -> dict[str, Any]:
    sock.send_multipart(list(frames))
    assert sock.poll(int(timeout * 1000)), "no reply from the publisher"
    reply = msgpack.unpackb(sock.recv(), raw=False)
    assert isinstance(reply, dict)
    return reply


def pack(obj: Any) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


MALFORMED: list[tuple[list[bytes], str]] = [
    ([b"\xc1 not msgpack"], "malformed"),
    ([pack([1, 2, 3])], "malformed"),
    ([pack({"op": 7})], "malformed"),
    ([pack({"op": "bogus"})], "malformed"),
    ([pack({"op": "subscribe"})], "malformed"),
    ([pack({"op": "subscribe", "from_lsn": "0/40"})], "malformed"),
    ([pack({"op": "subscribe", "from_lsn": -1})], "malformed"),
    ([pack({"op": "subscribe", "from_lsn": True})], "malformed"),
    ([pack({"op": "subscribe", "from_lsn": 0, "credit": 0})], "malformed"),
    ([pack({"op": "subscribe", "from_lsn": 64 + 8})], "bad_lsn"),  # inside the first record
    ([pack({"op": "subscribe", "from_lsn": 1 << 60})], "bad_lsn"),  # beyond the end
    ([pack({"op": "credit", "n": -5})], "malformed"),
    ([pack({"op": "credit", "n": 1})], "not_subscribed"),
    ([b"two", pack({"op": "ping"})], "malformed"),  # two frames where one belongs
    ([b"x" * (ws.MAX_REQUEST_BYTES + 1)], "malformed"),
]


def check_malformed(endpoint: str) -> None:
    """Every malformed request gets an error reply with the right code, is counted, and the publisher then still
    serves a subscriber."""
    before = request(endpoint, "status")["counters"].get("malformed", 0)
    ctx = zmq.Context()
    sock = client_dealer(ctx)  # with the test's client key when the publisher is a cluster's (CURVE)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        for frames, code in MALFORMED:
            reply = raw_request(sock, *frames)
            assert reply.get("type") == "error" and reply.get("code") == code, (frames[:1], reply)
            assert isinstance(reply.get("message"), str) and reply["message"]
    finally:
        sock.close(0)
        ctx.term()
    counters = request(endpoint, "status")["counters"]
    assert counters.get("malformed", 0) - before == sum(code == "malformed" for _, code in MALFORMED), counters
    with Subscriber(endpoint, 0, timeout=10) as sub:
        batch = sub.receive(10)
        assert batch and batch[0][0] == 64


# --- in process: positions, replay from files, credit ------------------------------------------------------------


class Inputs:
    """Three node WALs with Lamport clocks that stay in step (every record jumps to the highest clock)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.clock = 0
        self.n = 0
        self.w = {k: WalWriter(root / "wal" / f"node-{k}", node_id=k, system_id=SYS, epoch=1, segment_size=SEG)
                  for k in (1, 2, 3)}

    def write(self, count: int) -> None:
        for _ in range(count):
            self.n += 1
            self.clock += 1
            k = 1 + self.n % 3
            self.w[k].append(1, bytes([self.n % 251]) * (self.n * 37 % 700), lamport=self.clock)
        for k in (1, 2, 3):  # every node passes everything written: all of it can go out
            self.clock += 1
            self.w[k].append(HB, b"", lamport=self.clock)
            self.w[k].flush()

    def close(self) -> None:
        for w in self.w.values():
            w.close()


class Loop(threading.Thread):
    """A follow loop in a thread: the only user of its Follower and Publisher."""

    def __init__(self, root: Path, out: Path) -> None:
        super().__init__(daemon=True)
        self.f = Follower(root, out, system_id=SYS, nodes=[1, 2, 3], segment_size=SEG, fsync=False)
        self.pub = Publisher("tcp://127.0.0.1:0", out, system_id=SYS, segment_size=SEG, end_lsn=self.f.end_lsn)
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                got = self.f.poll()
                self.pub.publish([(e.lsn, e.data) for e in got], self.f.end_lsn)
                self.pub.wait(0.01)
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            self.error = exc
        finally:
            self.pub.close()
            self.f.close()

    def settle(self, timeout: float = 10.0) -> int:
        """Wait until the loop has emitted all it can (its end stays put for 0.3 s); return that end."""
        deadline = time.monotonic() + timeout
        end, since = self.pub.end_lsn, time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.02)
            if self.pub.end_lsn != end:
                end, since = self.pub.end_lsn, time.monotonic()
            elif time.monotonic() - since > 0.3:
                return end
        raise AssertionError(f"the follow loop did not settle ({self.error})")


@pytest.fixture
def loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Inputs, Loop, Path]]:
    monkeypatch.setattr(ws, "RECENT_BYTES", 3000)  # keep only a few records in memory: most come from the files
    inputs = Inputs(tmp_path)
    inputs.write(5)
    out = tmp_path / "out"
    lp = Loop(tmp_path, out)
    lp.start()
    yield inputs, lp, out
    lp.stop.set()
    lp.join(10)
    inputs.close()
    assert lp.error is None, lp.error


def collect(endpoint: str, start: int, until: int, timeout: float = 10.0) -> list[tuple[int, bytes]]:
    got: list[tuple[int, bytes]] = []
    with Subscriber(endpoint, start, credit=2, timeout=timeout) as sub:
        deadline = time.monotonic() + timeout
        while sub.next_lsn < until and time.monotonic() < deadline:
            got += sub.receive(0.5)
    return got


def test_every_position_resumes_with_no_gap_and_no_duplicate(loop: tuple[Inputs, Loop, Path]) -> None:
    inputs, lp, out = loop
    inputs.write(300)
    want_end = lp.settle()
    want = stream_records(out)
    assert want_end == record_end(*want[-1]) and len(list_segments(out)) > 10
    ep = lp.pub.endpoint
    assert collect(ep, 0, want_end) == want
    ends = [record_end(lsn, d) for lsn, d in want]
    dead = [i for i in range(len(want) - 1) if ends[i] != want[i + 1][0]]  # the next record is in the next segment
    assert dead, "no record left the rest of a segment empty"
    for i in sorted({0, 1, 7, 50, len(want) // 2, len(want) - 2, *dead[:3]}):
        assert collect(ep, want[i][0], want_end) == want[i:], f"from the LSN of record {i}"
        assert collect(ep, ends[i], want_end) == want[i + 1:], f"from the end of record {i}"
    with pytest.raises(StreamError, match="bad_lsn"):
        collect(ep, want[3][0] + 8, want_end)
    gap = next(i for i in dead if SEG - ends[i] % SEG > 16)
    with pytest.raises(StreamError, match="bad_lsn"):
        collect(ep, ends[gap] + 8, want_end)  # in the empty rest of a segment, not a position
    # a subscriber at the end gets the records written after it subscribed, and only those
    with Subscriber(ep, want_end, timeout=10) as sub:
        assert sub.receive(0.3) == []
        inputs.write(40)
        got: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + 10
        while len(got) < 40 and time.monotonic() < deadline:
            got += sub.receive(0.5)
    lp.settle()
    assert got == stream_records(out)[len(want):len(want) + len(got)] and len(got) >= 40
    counters = lp.pub.status()["counters"]
    assert counters["replays"] > 10 and counters["errors_sent"] == 2, counters


def test_credit_bounds_what_a_slow_subscriber_is_sent(loop: tuple[Inputs, Loop, Path],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    inputs, lp, _ = loop
    monkeypatch.setattr(ws, "BATCH_BYTES", 2000)
    for _ in range(5):
        inputs.write(200)  # far more than MAX_CREDIT batches
    lp.settle()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(lp.pub.endpoint)
    try:
        sock.send(pack({"op": "subscribe", "from_lsn": 0, "credit": 2}))

        def received(wait: float) -> list[dict[str, Any]]:
            msgs = []
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if sock.poll(20):
                    msgs.append(msgpack.unpackb(sock.recv(), raw=False))
            return msgs

        first = received(0.5)
        assert [m["type"] for m in first] == ["subscribed", "batch", "batch"]
        inputs.write(100)  # the stream grows meanwhile
        lp.settle()
        assert received(0.5) == [], "sent beyond the credit granted"
        sock.send(pack({"op": "credit", "n": 3}))
        more = received(0.8)
        assert [m["type"] for m in more] == ["batch"] * 3
        batches = first[1:] + more
        for m in batches:
            size = sum(len(d) for _, d in m["records"])
            assert size < ws.BATCH_BYTES + SEG
        lsns = [lsn for m in batches for lsn, _ in m["records"]]
        assert lsns == sorted(set(lsns))
        sock.send(pack({"op": "credit", "n": 10_000}))  # capped: never more than MAX_CREDIT batches queued
        assert len(received(1.5)) == ws.MAX_CREDIT
    finally:
        sock.close(0)
        ctx.term()


def test_malformed_requests_get_errors_and_the_publisher_keeps_serving(loop: tuple[Inputs, Loop, Path]) -> None:
    _, lp, _ = loop
    lp.settle()
    check_malformed(lp.pub.endpoint)


def test_parse_lsn() -> None:
    assert parse_lsn("0/40") == 64 and parse_lsn("1/0") == 1 << 32 and parse_lsn("0x40") == 64
    assert parse_lsn("64") == 64
    for bad in ("x", "0/1/2", "-5", "0/100000000"):
        with pytest.raises(Exception, match="LSN"):
            parse_lsn(bad)
