"""``HandshakeWatch`` counts and logs connections that end before their handshake (garbage on a port, a client
without a CURVE key).  libzmq reports a succeeded handshake with the value 0, not the connection's file
descriptor, so no connection ever left the watch's pending set: every client that closed after a good request
(each ``muheam list``, ``get``, ``table list``) was logged as "refused a connection ... not ZeroMQ, or no CURVE
key" and counted as ``handshake_failed`` (a black-box test saw 48 on a node nobody attacked)."""

from __future__ import annotations

import socket
import time
from collections import Counter
from typing import Any

import zmq

from muheam.security.sockets import MONITORED, HandshakeWatch


def _settle(watch: HandshakeWatch, monitor: zmq.Socket[Any], seconds: float = 0.5) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        monitor.poll(50)
        watch.drain(monitor)


def test_good_clients_that_close_are_not_refusals_and_garbage_is() -> None:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    monitor = router.get_monitor_socket(MONITORED)
    counters: Counter[str] = Counter()
    logged: list[str] = []
    watch = HandshakeWatch(counters, "client", lambda fmt, *args: logged.append(fmt % args))
    try:
        for _ in range(3):  # three clients: a request each, an answer, then they close
            dealer = ctx.socket(zmq.DEALER)
            dealer.connect(f"tcp://127.0.0.1:{port}")
            dealer.send(b"ping")
            ident, _ = router.recv_multipart()
            router.send_multipart([ident, b"pong"])
            assert dealer.recv() == b"pong"
            dealer.close(0)
            _settle(watch, monitor, 0.3)
        assert counters["handshake_failed"] == 0, logged
        with socket.create_connection(("127.0.0.1", port)) as raw:  # not ZeroMQ: closes without a handshake
            raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
        _settle(watch, monitor)
        assert counters["handshake_failed"] == 1 and len(logged) == 1, logged  # once, not twice
    finally:
        monitor.close(0)
        router.close(0)
        ctx.term()
