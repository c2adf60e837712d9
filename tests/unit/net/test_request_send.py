"""``Requester`` never blocks in its send: a DEALER whose connection failed its CURVE handshake has no peer to
queue a message for, and a blocking send waited for good (a client with a wrong key hung a CI test for its whole
300 s timeout).  The socket's send is replaced by one that cannot queue; nothing listens at the endpoint."""

from __future__ import annotations

import time
from typing import Any

import pytest
import zmq

from muheam.net.request import Requester
from muheam.ops.procs import free_port


class Unavailable(Exception):
    pass


class Refused(Exception):
    pass


def _requester(monkeypatch: pytest.MonkeyPatch) -> tuple[zmq.Context[Any], Requester]:
    ctx: zmq.Context[Any] = zmq.Context()
    r = Requester(ctx, f"tcp://127.0.0.1:{free_port()}", Unavailable, refused=Refused, envelope=True)
    r._refused = lambda: False  # type: ignore[method-assign]  # (no "connection refused": the queueing is the point)

    def cannot_queue(frames: list[bytes], flags: int = 0) -> None:
        assert flags & zmq.NOBLOCK, "a blocking send: it would wait for a peer for good"
        raise zmq.Again()

    monkeypatch.setattr(r.sock, "send_multipart", cannot_queue)
    return ctx, r


def test_a_send_that_cannot_queue_ends_at_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    ctx, r = _requester(monkeypatch)
    try:
        t0 = time.monotonic()
        with pytest.raises(Unavailable, match="did not take 'ping' within 0.3 s"):
            r.request({"op": "ping"}, 0.3, "ping")
        assert time.monotonic() - t0 < 5
    finally:
        r.close()
        ctx.term()


def test_a_failed_handshake_during_the_send_is_told_as_a_refused_key(monkeypatch: pytest.MonkeyPatch) -> None:
    ctx, r = _requester(monkeypatch)
    try:
        r._handshake_failed = "refused this client's key"  # what the monitor reports (EVENT_HANDSHAKE_FAILED_AUTH)
        with pytest.raises(Refused, match="refused this client's key"):
            r.request({"op": "ping"}, 30, "ping")
    finally:
        r.close()
        ctx.term()
