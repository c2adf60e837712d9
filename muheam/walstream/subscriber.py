"""The client side of the merged WAL stream: ``Subscriber`` (resumable, checks every record's position) and
``request`` (one-shot ``ping``/``status``).  The protocol is described in ``muheam.walstream.publisher``."""

from __future__ import annotations

import time
from typing import Any, Iterator

import zmq
from zmq.utils.monitor import recv_monitor_message

from muheam.net import wire
from muheam.net.request import Requester, check_endpoint
from muheam.security.setup import resolve_client
from muheam.security.sockets import HANDSHAKE_FAILURES, client_socket
from muheam.walstream.messages import (
    DEFAULT_CREDIT, BadMessage, Batch, Credit, End, Error, Ping, Pong, Request, Subscribe, Subscribed, Unsubscribe,
    reply_from_wire, request_from_wire,
)
from muheam.walstream.publisher import CLOSE_LINGER_MS, MAX_CREDIT, PING_EVERY, PublisherUnavailable, StreamError, record_end
from walmerge.errors import format_lsn
from walmerge.segment import SEGMENT_HEADER_SIZE



class Subscriber:
    """A DEALER client of ``Publisher``: ``receive()`` returns the next batch of ``(lsn, record bytes)``.

    ``next_lsn`` is where to resume after a restart (the end of the last record returned; see "Positions").
    Records below ``next_lsn`` that arrive again (after the client re-subscribed because the publisher
    restarted) are dropped, and each batch is checked to follow on from the previous one (prev-LSN chain and
    placement), so what ``receive`` returns has no gap and no duplicate or it raises ``StreamError``.  Raises
    ``PublisherUnavailable`` after ``timeout`` seconds without a word from the publisher.
    """

    def __init__(self, endpoint: str, from_lsn: int = 0, *, credit: int = DEFAULT_CREDIT, timeout: float = 30.0,
                 context: zmq.Context[Any] | None = None, key: Any = None) -> None:
        """``key``: the client key, found as ``muheam.client.connect`` finds it (``muheam.security.setup``)."""
        self.endpoint = endpoint
        self.next_lsn = from_lsn
        self.last_lsn: int | None = None
        """LSN of the last record returned (None before the first): its successor's prev-LSN must be this."""
        self.credit = max(1, min(credit, MAX_CREDIT))
        self.timeout = timeout
        self.info: Subscribed | None = None
        """The publisher's answer to the last subscribe (stream identity, segment size)."""
        self.end_lsn: int | None = None
        self.ended = False
        self._own_ctx = context is None
        self.ctx = context or zmq.Context()
        security = resolve_client(key)
        self._key_source = security.pair.source if security else ""
        self.sock: zmq.Socket[Any] = client_socket(self.ctx, zmq.DEALER, security)
        self._monitor: zmq.Socket[Any] | None = self.sock.get_monitor_socket(HANDSHAKE_FAILURES)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, wire.ZMQ_MAXMSGSIZE)
        self.sock.connect(endpoint)
        self._heard = time.monotonic()
        self._pinged = self._heard
        self._subscribe()

    def _check_handshake(self) -> None:
        """A refused key looks like silence: the socket monitor says so, and we say it at once."""
        if self._monitor is None or not self._monitor.poll(0):
            return
        event = recv_monitor_message(self._monitor)["event"]
        if event & HANDSHAKE_FAILURES:
            why = ("it refused this client's key" if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH else
                   "the handshake failed (no client key, or a key for another server)")
            raise StreamError("unauthorized", f"the WAL stream publisher at {self.endpoint}: {why}; key from "
                              f"{self._key_source or 'nowhere'} (set MUHEAM_CLIENT_KEY, or get a key with "
                              "'muheam keys add-client NAME')")

    def _send(self, msg: Request) -> None:
        try:
            self.sock.send(wire.pack(msg.to_wire()), zmq.NOBLOCK)
        except zmq.Again:
            pass  # not connected yet or queue full: the ping cycle re-sends what matters

    def _subscribe(self) -> None:
        self._send(Subscribe(self.next_lsn, self.credit))

    def receive(self, timeout: float | None = None) -> list[tuple[int, bytes]]:
        """The next batch (in LSN order); ``[]`` after ``timeout`` seconds or once the stream ended (``ended``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.ended:
            now = time.monotonic()
            wait = PING_EVERY if deadline is None else min(PING_EVERY, deadline - now)
            if wait > 0 and self.sock.poll(int(wait * 1000) + 1):
                got = self._on_message(self.sock.recv())
                if got:
                    return got
                continue
            self._check_handshake()
            now = time.monotonic()
            if now - self._heard > self.timeout:
                raise PublisherUnavailable(f"no word from the WAL stream publisher at {self.endpoint} for "
                                           f"{self.timeout:g} s; is 'muheam walmerge --follow --publish' running?")
            if now - self._pinged >= PING_EVERY:
                self._pinged = now
                self._send(Ping() if self.info is not None else Subscribe(self.next_lsn, self.credit))
            if deadline is not None and now >= deadline:
                return []
        return []

    def _on_message(self, frame: bytes) -> list[tuple[int, bytes]]:
        self._heard = time.monotonic()
        try:
            msg = wire.unpack(frame, wire.ZMQ_MAXMSGSIZE)
        except wire.Malformed as exc:
            raise StreamError("protocol", f"the publisher sent something that is not msgpack: {exc}") from None
        try:
            reply = reply_from_wire(msg)
        except BadMessage as exc:
            raise StreamError("protocol", str(exc)) from None
        if isinstance(reply, Batch):
            self._send(Credit(1))
            self.end_lsn = reply.end_lsn
            return self._accept(list(reply.records), reply.next_lsn)
        if isinstance(reply, Subscribed):
            self.info = reply
            self.end_lsn = reply.end_lsn
        elif isinstance(reply, Pong):
            self.end_lsn = reply.end_lsn
            if not reply.subscribed:
                self._subscribe()  # the publisher restarted or dropped us: resume where we are
        elif isinstance(reply, End):
            self.ended = True
            self.end_lsn = reply.end_lsn
        elif isinstance(reply, Error):
            if reply.code == "not_subscribed":
                self._subscribe()
            else:
                raise StreamError(reply.code, f"the WAL stream publisher at {self.endpoint} refused: {reply.message}")
        return []

    def _accept(self, records: list[tuple[int, bytes]], nxt: int) -> list[tuple[int, bytes]]:
        fresh = [(lsn, data) for lsn, data in records if lsn >= self.next_lsn]  # a resend after a resubscribe
        seg = self.info.segment_size if self.info else 0
        for lsn, data in fresh:
            if len(data) < 56:
                raise StreamError("protocol", f"record at {format_lsn(lsn)} is shorter than a record header")
            prev = int.from_bytes(data[16:24], "little")
            placed = lsn == self.next_lsn or (seg > 0 and lsn % seg == SEGMENT_HEADER_SIZE
                                              and lsn - SEGMENT_HEADER_SIZE - self.next_lsn < seg)
            if not placed or (self.last_lsn is not None and prev != self.last_lsn):
                raise StreamError("gap", f"record at {format_lsn(lsn)} does not follow on from "
                                         f"{format_lsn(self.next_lsn)} (prev-LSN {format_lsn(prev)})")
            self.last_lsn = lsn
            self.next_lsn = record_end(lsn, data)
        if fresh and nxt != self.next_lsn:
            raise StreamError("protocol", f"batch says next_lsn {format_lsn(nxt)}, its records end at "
                                          f"{format_lsn(self.next_lsn)}")
        return fresh

    def batches(self, timeout: float | None = None) -> Iterator[list[tuple[int, bytes]]]:
        """Batches until the stream ends (or, with ``timeout``, until nothing came for that long)."""
        while not self.ended:
            got = self.receive(timeout)
            if not got and timeout is not None:
                return
            if got:
                yield got

    def close(self) -> None:
        if not self.ended:
            self._send(Unsubscribe())
        if self._monitor is not None:
            self.sock.disable_monitor()
            self._monitor.close(0)
            self._monitor = None
        self.sock.close(CLOSE_LINGER_MS)
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def request(endpoint: str, op: str, timeout: float = 5.0, client_key: Any = None, **fields: Any) -> dict[str, Any]:
    """One request/reply on a fresh DEALER (``status``, ``ping``): for operators and tests."""
    security = resolve_client(client_key)
    ctx = zmq.Context()
    req = Requester(ctx, check_endpoint(endpoint, "publisher endpoint"), PublisherUnavailable,
                    who="the WAL stream publisher", max_size=wire.ZMQ_MAXMSGSIZE, security=security,
                    key_source=security.pair.source if security else "")
    try:
        try:
            typed = request_from_wire({"op": op, **fields})
        except BadMessage as exc:
            raise StreamError("malformed", str(exc)) from None
        reply = req.request(typed.to_wire(), timeout, op)
        try:
            reply_from_wire(reply)  # checked; the map itself is returned (operators print it as JSON)
        except BadMessage as exc:
            raise StreamError("protocol", str(exc)) from None
        assert isinstance(reply, dict)
        return reply
    finally:
        req.close()
        ctx.term()


__all__ = ["Subscriber", "request"]
