"""The peer mesh: one ZeroMQ ROUTER per node for inbound traffic, one DEALER to each peer for outbound.

One DEALER per ordered pair of nodes gives the FIFO channels Lamport's algorithms need.  Every message carries
sender, epoch and a Lamport stamp; the mesh advances the node's clock on every send and receive, so everything
above it (lock manager, commit notifications) is ordered by the same clock.  Peers are connected and dropped as
the membership view changes.  A malformed frame is dropped and counted; it never raises into the loop.

Not thread-safe: the node's event loop owns the mesh and its sockets.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Callable

import zmq
from zmq.utils.monitor import parse_monitor_message

from locking.clock import LamportClock
from muheam import wire

log = logging.getLogger("muheam.transport")

Handler = Callable[[wire.PeerMessage], None]
HANDSHAKE_FAILURES = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


def routing_id(node_id: int, epoch: int) -> bytes:
    return f"n{node_id}e{epoch}".encode()


def harden(sock: zmq.Socket[Any]) -> None:
    """Options every listening socket gets: bounded message size, no lingering, no blocking on slow peers."""
    sock.setsockopt(zmq.MAXMSGSIZE, wire.ZMQ_MAXMSGSIZE)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.RCVHWM, 100_000)


def monitor(sock: zmq.Socket[Any]) -> zmq.Socket[Any]:
    return sock.get_monitor_socket(HANDSHAKE_FAILURES)


def count_handshake_failures(monitor_sock: zmq.Socket[Any], counters: "Counter[str]") -> None:
    """Drain a socket monitor; garbage that never completed a ZeroMQ handshake shows up only here."""
    while True:
        try:
            event = parse_monitor_message(monitor_sock.recv_multipart(zmq.NOBLOCK))
        except zmq.Again:
            return
        if event["event"] & HANDSHAKE_FAILURES:
            counters["handshake_failed"] += 1


class Mesh:
    def __init__(self, ctx: zmq.Context[Any], node_id: int, clock: LamportClock, endpoint: str) -> None:
        self.ctx = ctx
        self.node_id = node_id
        self.epoch = 0
        self.clock = clock
        self.endpoint = endpoint
        self.router: zmq.Socket[Any] = ctx.socket(zmq.ROUTER)
        harden(self.router)
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.router.bind(endpoint)
        self.monitor = monitor(self.router)
        self.peers: dict[int, tuple[int, zmq.Socket[Any]]] = {}
        self.handlers: dict[str, Handler] = {}
        self.self_clocked: set[str] = set()
        self.counters: Counter[str] = Counter()

    def on(self, kind: str, handler: Handler, clocked: bool = True) -> None:
        """Dispatch ``kind`` to ``handler``; ``clocked=False`` for protocols that merge stamps themselves."""
        self.handlers[kind] = handler
        if not clocked:
            self.self_clocked.add(kind)

    # membership ---------------------------------------------------------------------------------------------
    def connect(self, node_id: int, epoch: int, endpoint: str) -> None:
        """(Re)connect to a peer incarnation; an older incarnation's socket is closed."""
        if node_id == self.node_id:
            return
        current = self.peers.get(node_id)
        if current is not None:
            if current[0] == epoch:
                return
            current[1].close(0)
        sock: zmq.Socket[Any] = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, routing_id(self.node_id, self.epoch))
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.IMMEDIATE, 0)
        sock.connect(endpoint)
        self.peers[node_id] = (epoch, sock)
        self.send(node_id, "hello", {"endpoint": self.endpoint})

    def drop(self, node_id: int, epoch: int | None = None) -> None:
        current = self.peers.get(node_id)
        if current is not None and (epoch is None or current[0] <= epoch):
            current[1].close(0)
            del self.peers[node_id]

    def peer_epoch(self, node_id: int) -> int | None:
        current = self.peers.get(node_id)
        return None if current is None else current[0]

    # traffic ------------------------------------------------------------------------------------------------
    def send(self, dest: int, kind: str, body: Any) -> bool:
        return self.send_stamped(dest, kind, body, None)

    def send_stamped(self, dest: int, kind: str, body: Any, stamp: int | None) -> bool:
        """Send with a stamp the caller already took from the clock (None: take one now)."""
        peer = self.peers.get(dest)
        if peer is None:
            self.counters["send_no_peer"] += 1
            return False
        frame = wire.encode_peer(self.node_id, self.epoch, self.clock.send() if stamp is None else stamp, kind, body)
        try:
            peer[1].send(frame, zmq.NOBLOCK)
        except zmq.Again:
            self.counters["send_dropped_hwm"] += 1
            return False
        self.counters["sent"] += 1
        return True

    def broadcast(self, kind: str, body: Any) -> int:
        """One clock tick per message, as Lamport's rule has it; returns how many peers were sent to."""
        return sum(self.send(dest, kind, body) for dest in list(self.peers))

    def receive_ready(self) -> int:
        """Drain the ROUTER without blocking; returns the number of frames handled."""
        handled = 0
        while handled < 10_000:
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                break
            handled += 1
            self._dispatch(frames)
        return handled

    def _dispatch(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            self.counters["malformed"] += 1
            self.counters["malformed_frame_count"] += 1
            return
        ident, frame = frames
        if len(frame) > wire.MAX_PEER_FRAME:
            self.counters["malformed"] += 1
            self.counters["oversized"] += 1
            return
        try:
            msg = wire.decode_peer(frame)
        except wire.Malformed:
            self.counters["malformed"] += 1
            return
        if ident != routing_id(msg.sender, msg.epoch):
            self.counters["malformed"] += 1
            self.counters["spoofed"] += 1
            return
        known = self.peer_epoch(msg.sender)
        if known is not None and msg.epoch < known:
            self.counters["stale_epoch"] += 1
            return
        if msg.kind not in self.self_clocked:
            self.clock.receive(msg.stamp)
        self.counters["received"] += 1
        handler = self.handlers.get(msg.kind)
        if handler is None:
            self.counters["unknown_kind"] += 1
            return
        try:
            handler(msg)
        except (ValueError, TypeError, KeyError) as exc:
            self.counters["malformed"] += 1
            self.counters["rejected_body"] += 1
            log.warning("dropped %s from node %d: %s", msg.kind, msg.sender, exc)

    def drain_monitor(self) -> None:
        count_handshake_failures(self.monitor, self.counters)

    def close(self) -> None:
        for _, sock in self.peers.values():
            sock.close(0)
        self.peers.clear()
        self.router.disable_monitor()
        self.monitor.close(0)
        self.router.close(0)
