"""Garbage on every port: random bytes, wrong frame counts, oversized frames, bad msgpack, spoofed senders.

Nodes must keep serving (clients and peers), count what they dropped, and change nothing.
"""

from __future__ import annotations

import random
import socket
import time
from typing import Any, Callable
from urllib.parse import urlparse

import msgpack
import pytest
import zmq

from muheam.net import wire
from muheam.client import request
from muheam.ops.procs import wait_until
from tests.support.cluster import LocalCluster
from tests.support.keyed import client_dealer, peer_dealer

pytestmark = pytest.mark.integration


def raw_tcp_garbage(endpoint: str, rng: random.Random) -> None:
    url = urlparse(endpoint)
    with socket.create_connection((url.hostname, url.port), timeout=2) as sock:
        sock.sendall(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 4096))))
        time.sleep(0.05)


def zmq_abuse(ctx: zmq.Context[Any], endpoint: str, peer: bool, rng: random.Random, dest_epoch: int = 0,
              dealer: zmq.Socket[Any] | None = None) -> None:
    """Peer frames come from a made-up member (node 9, epoch 1), addressed to the target's incarnation
    (``dest_epoch``) and numbered 1, 2, ... as a real link would number them, so that they pass the link layer and
    reach the checks behind it.  (Under a live member's id they would land in that member's numbered stream, where
    they are the subject of tests/faults/test_faults.py's spoofed-routing-id test.)  Under CURVE the abuser holds
    node 9's key (peer) or a client key (client): garbage from a party that got in, which is what reaches the
    parsers; keyless garbage is refused at the handshake (tests/integration/test_security.py)."""
    dealer = dealer if dealer is not None else ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    if peer:
        dealer.setsockopt(zmq.ROUTING_ID, b"n9e1")  # pretends to be node 9, epoch 1
    dealer.connect(endpoint)
    limit = wire.MAX_PEER_FRAME if peer else wire.MAX_CLIENT_FRAME
    seqs = iter(range(1, 100))

    def peer_frame(sender: int, stamp: int, kind: str, body: Any) -> bytes:
        return wire.encode_peer(sender, 1, stamp, kind, body, dest_epoch=dest_epoch, seq=next(seqs))

    frames: list[list[bytes]] = [
        [bytes(rng.getrandbits(8) for _ in range(64))],
        [b"a", b"b", b"c"],  # wrong frame count
        [b"\xc1"],  # never-used msgpack byte
        [msgpack.packb([1, 2, 3])],
        [msgpack.packb({"op": 7})],
        [msgpack.packb({"op": "no-such-op"})],
        [wire.encode_peer(99, 5, 10, "hello", {}, dest_epoch=dest_epoch)],  # claims node 99 under node 9's id
        [peer_frame(9, 7, "no-such-kind", None)],
        # a stamp beyond the GLSN range: must not reach the clock (malformed: takes no place in the numbering)
        [wire.encode_peer(9, 1, 2**62, "hello", {}, dest_epoch=dest_epoch, seq=90)],
        [peer_frame(9, 5, "lock", ["not", "a", "lock", "message"])],  # valid frame, bad lock body
        [peer_frame(9, 6, "lockb", [[7, [99]], "junk"])],  # bad lock batch
        [wire.encode_peer(9, 1, 8, "hello", {}, dest_epoch=dest_epoch, seq=-1)],  # a bad seq field
        [b"x" * (limit + 1)],  # oversized
    ]
    for parts in frames:
        dealer.send_multipart([b"", *parts] if not peer else parts)
    time.sleep(0.2)
    if not peer:
        replies = 0
        while dealer.poll(500):
            reply = msgpack.unpackb(dealer.recv_multipart()[-1])
            assert reply["ok"] is False and reply["error"]["message"]
            replies += 1
        assert replies == len(frames)
    dealer.close(5000)  # under CURVE the oversized frame takes a while to encrypt and send: let it out


def test_garbage_on_every_port_is_counted_and_nodes_keep_serving(local_cluster: Callable[..., LocalCluster]) -> None:
    c = local_cluster(3)
    rng = random.Random(42)
    ctx: zmq.Context[Any] = zmq.Context()
    before = {m["node_id"]: m for m in c.members()}
    try:
        for m in before.values():
            for _ in range(3):
                raw_tcp_garbage(m["peer_endpoint"], rng)
                raw_tcp_garbage(m["client_endpoint"], rng)
            zmq_abuse(ctx, m["peer_endpoint"], True, rng, int(m["epoch"]),
                      peer_dealer(ctx, c.dir, 9, int(m["node_id"])))
            zmq_abuse(ctx, m["client_endpoint"], False, rng, dealer=client_dealer(ctx))
    finally:
        ctx.term()

    def counted() -> bool:
        rows = c.members()
        return all(r["answering"] and r["counters"]["peer"].get("malformed", 0) >= 5
                   and r["counters"]["peer"].get("oversized", 0) >= 1 for r in rows)

    assert wait_until(counted, 10)
    for row in c.members():
        assert row["state"] == "running" and row["epoch"] == before[row["node_id"]]["epoch"]
        peer, client = row["counters"]["peer"], row["counters"]["client"]
        assert peer.get("oversized") == 1 and peer.get("spoofed") == 1
        assert peer.get("malformed_frame_count", 0) >= 1  # raw garbage may also parse as ZMTP/1.0 frames
        assert peer.get("unknown_kind", 0) >= 1
        assert peer.get("rejected_body", 0) >= 1
        assert client.get("malformed", 0) >= 8
        assert peer.get("handshake_failed", 0) + client.get("handshake_failed", 0) >= 1
        assert request(row["client_endpoint"], "ping")["node_id"] == row["node_id"]
        # peers still talk to each other: all three connected
        assert len(request(row["client_endpoint"], "status")["peers"]) == 2
