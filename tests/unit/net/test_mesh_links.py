"""Two real meshes (ZeroMQ sockets, in one process) talking through TCP proxies that reset their connections:
what each side's handlers see is every message once, in order, with the stamps merged once; frames for another
incarnation of the receiver are dropped, not mixed into its numbering."""

from __future__ import annotations

import time
from typing import Any, Iterator

import pytest
import zmq

from locking.clock import LamportClock
from muheam.net import wire
from muheam.ops.procs import free_port
from muheam.net.mesh import Mesh, routing_id
from tests.support.faults import TcpProxy


@pytest.fixture
def pair() -> Iterator[tuple[Mesh, Mesh, TcpProxy, TcpProxy]]:
    ctx: zmq.Context[Any] = zmq.Context()
    ea, eb = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    a, b = Mesh(ctx, 1, LamportClock(1), ea), Mesh(ctx, 2, LamportClock(2), eb)
    a.epoch, b.epoch = 11, 22
    pa, pb = TcpProxy(ea), TcpProxy(eb)
    a.connect(2, 22, pb.url("tcp"))
    b.connect(1, 11, pa.url("tcp"))
    try:
        yield a, b, pa, pb
    finally:
        a.close()
        b.close()
        pa.close()
        pb.close()
        ctx.destroy(0)


def spin(meshes: tuple[Mesh, ...], seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for m in meshes:
            m.receive_ready()
            m.tick(time.monotonic())
        time.sleep(0.002)


def test_resets_under_traffic_lose_nothing_and_deliver_each_message_once_in_order(
        pair: tuple[Mesh, Mesh, TcpProxy, TcpProxy]) -> None:
    a, b, pa, pb = pair
    got: dict[int, list[int]] = {1: [], 2: []}
    stamps: list[int] = []
    a.on("m", lambda m: got[1].append(m.body))
    b.on("m", lambda m: (got[2].append(m.body), stamps.append(m.stamp)))
    n = 0
    for _ in range(4):
        for i in range(150):
            a.send(2, "m", n)
            b.send(1, "m", n)
            n += 1
            if i == 75:
                assert pa.reset() + pb.reset() > 0
            spin((a, b), 0.001)
        spin((a, b), 0.5)
    deadline = time.monotonic() + 15
    while (len(got[1]) < n or len(got[2]) < n) and time.monotonic() < deadline:
        spin((a, b), 0.1)
    assert got[1] == list(range(n)) and got[2] == list(range(n))
    assert stamps == sorted(stamps) and len(set(stamps)) == n  # each original stamp, once, in send order
    assert a.counters["retransmitted"] + b.counters["retransmitted"] > 0  # the resets did lose frames
    spin((a, b), 0.3)
    assert not a.peers[2].out.frames and not b.peers[1].out.frames  # everything acknowledged


def test_frames_for_another_incarnation_of_the_receiver_or_with_a_bad_seq_are_dropped(
        pair: tuple[Mesh, Mesh, TcpProxy, TcpProxy]) -> None:
    a, b, _, _ = pair
    got: list[Any] = []
    b.on("m", lambda m: got.append(m.body))
    spin((a, b), 0.3)
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.ROUTING_ID, routing_id(7, 70))
    s.connect(b.endpoint)
    s.send(wire.encode_peer(7, 70, 5, "m", "old incarnation", dest_epoch=21, seq=1))
    s.send(wire.pack([wire.WIRE_VERSION, 7, 70, 22, "1", 0, 5, "m", "bad seq"]))
    s.send(wire.encode_peer(7, 70, 5, "m", "late", dest_epoch=22, seq=2))  # waits for seq 1
    s.send(wire.encode_peer(7, 70, 5, "m", "first", dest_epoch=22, seq=1))
    s.send(wire.encode_peer(7, 70, 5, "m", "first", dest_epoch=22, seq=1))  # a duplicate
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        spin((b,), 0.05)
    s.close(0)
    assert got == ["first", "late"]
    c = b.counters
    assert c["wrong_dest_epoch"] == 1 and c["malformed"] >= 1 and c["held_back"] == 1
    spin((b,), 0.2)
    assert c["duplicate"] == 1


def test_a_frame_claiming_a_newer_incarnation_of_a_peer_does_not_disturb_the_peer_stream(
        pair: tuple[Mesh, Mesh, TcpProxy, TcpProxy]) -> None:
    """Before the membership says so, frames of a peer's next incarnation (its restart) must get through, so such
    a frame opens a stream of its own: a forged one must not cut the live incarnation's stream off."""
    a, b, _, _ = pair
    got: list[Any] = []
    b.on("m", lambda m: got.append((m.epoch, m.body)))
    a.send(2, "m", "before")
    spin((a, b), 0.3)
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.ROUTING_ID, routing_id(1, 999))
    s.connect(b.endpoint)
    s.send(wire.encode_peer(1, 999, 5, "m", "next incarnation", dest_epoch=22, seq=1))
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        spin((a, b), 0.05)
    s.close(0)
    a.send(2, "m", "after")
    deadline = time.monotonic() + 5
    while len(got) < 3 and time.monotonic() < deadline:
        spin((a, b), 0.05)
    assert got == [(11, "before"), (999, "next incarnation"), (11, "after")]


def test_frames_are_counted_by_label_and_add_up_to_the_link_counters(
        pair: tuple[Mesh, Mesh, TcpProxy, TcpProxy]) -> None:
    a, b, _, _ = pair
    b.on("m", lambda m: None)
    for i in range(5):
        a.send(2, "m", i)
    a.send(2, "m", b"x" * 1000, label="image")
    spin((a, b), 0.3)
    c = a.counters
    assert c["sent.m"] == 5 and c["sent.hello"] == 1  # unlabelled frames count under their kind
    assert c["sent.image"] == 1 and c["bytes.image"] > 1000
    assert c["bytes.m"] > 0
    labelled = sum(v for k, v in c.items() if k.startswith("sent."))
    assert labelled == c["sent"] + c["ack_sent"] + c["retransmitted"]


def test_corked_messages_to_one_peer_go_as_one_frame_in_order_with_their_stamps(
        pair: tuple[Mesh, Mesh, TcpProxy, TcpProxy]) -> None:
    a, b, _, _ = pair
    got: list[tuple[str, Any, int]] = []
    b.on("m", lambda m: got.append(("m", m.body, m.stamp)))
    b.on("n", lambda m: got.append(("n", m.body, m.stamp)))
    spin((a, b), 0.2)  # the hellos
    frames = a.counters["sent"]
    a.cork()
    a.send(2, "m", 1)
    a.send(2, "n", b"x" * 100, label="image")
    a.send(2, "m", 3)
    assert a.counters["sent"] == frames  # held
    a.uncork()
    spin((a, b), 0.3)
    assert a.counters["sent"] == frames + 1 and a.counters["bundled"] == 3 and a.counters["bundles"] == 1
    assert [(k, body) for k, body, _ in got] == [("m", 1), ("n", b"x" * 100), ("m", 3)]
    stamps = [st for _, _, st in got]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3  # each its own stamp, taken when it was sent
    assert b.clock.time > stamps[-1]
    assert a.counters["sent.image"] == 1 and a.counters["sent.m"] == 2


@pytest.mark.parametrize("body", [None, [], [["m", 1, None]], [["ack", 1, None], ["m", 1, None]],
                                  [["m", -1, None], ["m", 1, None]], [["m", 1], ["m", 1, None]],
                                  [["bundle", 1, []], ["m", 1, None]]])
def test_malformed_bundles_are_refused(body: Any) -> None:
    with pytest.raises(wire.Malformed):
        wire.decode_bundle(body)


def test_a_lazy_message_rides_on_the_next_frame_to_its_peer_or_goes_when_due(
        pair: tuple[Mesh, Mesh, TcpProxy, TcpProxy]) -> None:
    a, b, _, _ = pair
    got: list[Any] = []
    b.on("m", lambda m: got.append(m.body))
    spin((a, b), 0.2)
    frames = a.counters["sent"]
    a.send(2, "m", "lazy-1", lazy=10.0)
    a.send(2, "m", "lazy-2", lazy=10.0)
    assert a.counters["sent"] == frames and a.next_timer(time.monotonic()) is not None
    a.send(2, "m", "now")                     # carries both, after them
    spin((a, b), 0.2)
    assert got == ["lazy-1", "lazy-2", "now"] and a.counters["sent"] == frames + 1
    a.send(2, "m", "alone", lazy=0.01)        # nothing else to ride on: sent when due, by tick
    spin((a, b), 0.3)
    assert got[-1] == "alone" and a.counters["sent"] == frames + 2
    a.cork()
    a.send(2, "m", "corked")
    a.send(2, "m", "lazy-while-corked", lazy=10.0)  # a frame goes this turn anyway: it joins it
    a.uncork()
    spin((a, b), 0.2)
    assert got[-2:] == ["corked", "lazy-while-corked"] and a.counters["sent"] == frames + 3
