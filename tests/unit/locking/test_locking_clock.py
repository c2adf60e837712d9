"""Lamport clock: happened-before implies a smaller clock value (DESIGN.md section 3), and GLSN packing keeps order."""

from __future__ import annotations

from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from locking.clock import LamportClock
from locking.glsn import MAX_LAMPORT, MAX_NODE_ID, Glsn

# An event: (node, op, peer) with op 0 = local, 1 = send to peer, 2 = receive the next message from peer.
events = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(0, 3)), max_size=80)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(events)
def test_happened_before_implies_smaller_lamport_time(history: list[tuple[int, int, int]]) -> None:
    n = 4
    clocks = [LamportClock(i) for i in range(n)]
    vectors = [[0] * n for _ in range(n)]              # vector clocks give the exact happened-before relation
    channels: dict[tuple[int, int], deque[tuple[int, list[int]]]] = {}
    seen: list[tuple[list[int], int]] = []             # (vector, lamport) of every event
    for node, op, peer in history:
        if op == 2:
            queue = channels.get((peer, node))
            if not queue:
                continue                                 # nothing to receive: skip the event
            stamp, vector = queue.popleft()
            vectors[node] = [max(a, b) for a, b in zip(vectors[node], vector)]
            vectors[node][node] += 1
            lamport = clocks[node].receive(stamp)
        else:
            vectors[node][node] += 1
            if op == 1 and peer != node:
                lamport = clocks[node].send()
                channels.setdefault((node, peer), deque()).append((lamport, list(vectors[node])))
            else:
                lamport = clocks[node].tick().lamport
        seen.append((list(vectors[node]), lamport))
    for va, la in seen:
        for vb, lb in seen:
            if va != vb and all(x <= y for x, y in zip(va, vb)):    # a -> b
                assert la < lb


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.tuples(st.integers(0, MAX_LAMPORT), st.integers(0, MAX_NODE_ID)),
       st.tuples(st.integers(0, MAX_LAMPORT), st.integers(0, MAX_NODE_ID)))
def test_packed_glsn_orders_like_the_tuple(a: tuple[int, int], b: tuple[int, int]) -> None:
    ga, gb = Glsn(*a), Glsn(*b)
    assert (ga < gb) == (ga.pack() < gb.pack())
    assert Glsn.unpack(ga.pack()) == ga


def test_receive_rejects_negative_stamp() -> None:
    clock = LamportClock(1)
    try:
        clock.receive(-1)
    except ValueError:
        return
    raise AssertionError("negative stamp accepted")
