"""One request, one reply, with a deadline: the helper the client (``muheam.client``) and the WAL stream's one-shot
``request`` (``muheam.walstream.subscriber``) share.

``Requester`` is a DEALER socket with a ZeroMQ socket monitor.  A reply that does not come within the timeout is
``unavailable``; so is a connection the peer refuses (nothing listens on the port: ZeroMQ reports
``EVENT_CONNECT_RETRIED`` while no connection is up), which is known within ZeroMQ's reconnect interval (0.1 s)
instead of after the full timeout.  ``check_endpoint`` says what is wrong with an endpoint before ZeroMQ raises a
bare ``ZMQError``.
"""

from __future__ import annotations

import time
from typing import Any, Callable
from urllib.parse import urlparse

import zmq
from zmq.utils.monitor import recv_monitor_message

from muheam.net import wire
from muheam.security.sockets import HANDSHAKE_FAILURES, ClientSecurity, client_socket

_WATCHED = (zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_CLOSED
            | zmq.EVENT_HANDSHAKE_SUCCEEDED | HANDSHAKE_FAILURES)
SILENT_DROPS = 3
"""Handshakes failed (other than a ZAP refusal) or connections dropped before their handshake completed, in a
row, that count as a refused handshake (ZeroMQ reconnects every 0.1 s, so this takes about 0.3 s): a CURVE
server that cannot decrypt our hello (we expect another server's key), or that gets a plain hello from a client
with no key, closes without a word."""


def check_endpoint(endpoint: object, what: str = "endpoint") -> str:
    """``tcp://HOST:PORT`` (``ipc://PATH`` and ``inproc://NAME`` pass too); else ``ValueError`` saying how to write it."""
    if not isinstance(endpoint, str):
        raise ValueError(f"{what} {endpoint!r} is not a string; write it as 'tcp://HOST:PORT', e.g. "
                         "'tcp://127.0.0.1:8001'")
    if endpoint.startswith(("ipc://", "inproc://")):
        return endpoint
    parsed = urlparse(endpoint)
    try:
        port = parsed.port
    except ValueError:
        port = None
    if parsed.scheme != "tcp" or not parsed.hostname or port is None or not 0 < port < 65536:
        hint = f"'tcp://{endpoint}'" if "://" not in endpoint else "'tcp://HOST:PORT', e.g. 'tcp://127.0.0.1:8001'"
        raise ValueError(f"{what} {endpoint!r} is not a ZeroMQ endpoint: it needs tcp:// and a port; write {hint}")
    return endpoint


class Requester:
    """A DEALER connected to ``endpoint`` that sends one request and waits for its reply.

    ``unavailable(message)`` builds the exception raised when nothing answers in time or the connection is
    refused.  ``envelope`` sends the empty delimiter frame a ROUTER-with-REQ-framing peer expects (the node's
    client port).  Not thread-safe: one per thread.
    """

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, unavailable: Callable[[str], Exception], *,
                 who: str = "node", envelope: bool = False, max_size: int = wire.MAX_CLIENT_FRAME,
                 security: ClientSecurity | None = None, refused: Callable[[str], Exception] | None = None,
                 key_source: str = "") -> None:
        self.endpoint = endpoint
        self.who = who
        self._unavailable = unavailable
        self._refused_key = refused or unavailable
        self._key_source = key_source
        self._secure = security is not None
        self._envelope = envelope
        self._max_size = max_size
        self._handshake_failed: str | None = None
        self._shaken = False
        self._drops = 0
        self.sock: zmq.Socket[Any] = client_socket(ctx, zmq.DEALER, security)
        self.sock.setsockopt(zmq.LINGER, 0)
        self._monitor: zmq.Socket[Any] | None = self.sock.get_monitor_socket(_WATCHED)
        self._connected = False
        self._poller = zmq.Poller()
        self._poller.register(self.sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        try:
            self.sock.connect(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise ValueError(f"{who} endpoint {endpoint!r}: {exc}; write it as 'tcp://HOST:PORT'") from None

    def _refused(self) -> bool:
        """Drain the monitor; True once a connection attempt failed while none is up."""
        assert self._monitor is not None
        refused = False
        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)["event"]
            if event == zmq.EVENT_CONNECTED:
                self._connected, refused = True, False
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._shaken, self._drops = True, 0
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:  # the server's ZAP said no: definite
                self._handshake_failed = "refused this client's key"
            elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and not self._secure:
                self._handshake_failed = "failed the handshake"  # a keyless client at a CURVE port: definite
            elif event & HANDSHAKE_FAILURES:  # may be transient (a loaded server): only when it repeats
                self._drops += 1
                if self._drops >= SILENT_DROPS:
                    self._handshake_failed = "failed the handshake"
            elif event in (zmq.EVENT_DISCONNECTED, zmq.EVENT_CLOSED):
                if self._connected and not self._shaken:
                    self._drops += 1
                    if self._drops >= SILENT_DROPS:
                        self._handshake_failed = "closed the connection during the handshake"
                self._connected, self._shaken = False, False
            elif event == zmq.EVENT_CONNECT_RETRIED and not self._connected and not self._drops:
                refused = True  # (a connection that was accepted and then dropped is a failed handshake)
        return refused

    def request(self, msg: dict[str, Any], timeout: float, label: str = "") -> Any:
        """Send ``msg`` (packed with msgpack) and return the unpacked reply."""
        what = f" {label!r}" if label else ""
        deadline = time.monotonic() + timeout
        self._send([b"", wire.pack(msg)] if self._envelope else [wire.pack(msg)], deadline, what, timeout)
        while True:
            left = deadline - time.monotonic()
            events = dict(self._poller.poll(max(0, int(left * 1000)))) if left > 0 else {}
            if self.sock in events:
                return wire.unpack(self.sock.recv_multipart()[-1], self._max_size)
            if self._monitor in events and self._refused():
                raise self._unavailable(f"{self.who} at {self.endpoint} refused the connection (nothing listens "
                                        f"there: is it running?) before answering{what}")
            if self._handshake_failed is not None:
                raise self._refused_key(self._auth_message(self._handshake_failed))
            if time.monotonic() >= deadline:
                raise self._unavailable(f"{self.who} at {self.endpoint} did not answer{what} within {timeout:g} s")

    def _send(self, frames: list[bytes], deadline: float, what: str, timeout: float) -> None:
        """Send without blocking past ``deadline``: a DEALER whose connection failed its handshake has no peer to
        queue for, and a blocking send then waited for good (a client with a wrong key hung for the whole CI
        test's timeout instead of being told).  Meanwhile the monitor says why the connection does not come."""
        waiting: zmq.Poller | None = None
        while True:
            try:
                self.sock.send_multipart(frames, flags=zmq.NOBLOCK)
                return
            except zmq.Again:
                pass
            if waiting is None:
                waiting = zmq.Poller()
                waiting.register(self.sock, zmq.POLLOUT)
                if self._monitor is not None:
                    waiting.register(self._monitor, zmq.POLLIN)
            left = deadline - time.monotonic()
            events = dict(waiting.poll(max(0, min(100, int(left * 1000))))) if left > 0 else {}
            if self._monitor in events and self._refused():
                raise self._unavailable(f"{self.who} at {self.endpoint} refused the connection (nothing listens "
                                        f"there: is it running?) before taking{what}")
            if self._handshake_failed is not None:
                raise self._refused_key(self._auth_message(self._handshake_failed))
            if left <= 0:
                raise self._unavailable(f"{self.who} at {self.endpoint} did not take{what} within {timeout:g} s "
                                        "(no connection: is it running, and is this its address?)")

    def _auth_message(self, how: str) -> str:
        """Why the handshake failed, and what to do; names the key's file, never the key."""
        if not self._secure:
            return (f"{self.who} at {self.endpoint} {how}: it requires a CURVE client key and this client has "
                    "none; pass key=PATH, set MUHEAM_CLIENT_KEY to a .key_secret file, or use the cluster's "
                    "config (-c / MUHEAM_CONFIG / ./muheam.toml)")
        return (f"{self.who} at {self.endpoint} {how} (CURVE authentication failed; key from {self._key_source or '?'}"
                "): the key is not one this cluster lets in (revoked, replaced, from another cluster, or the "
                "server key it names is not this server's); get one with 'muheam keys add-client NAME'")

    def close(self) -> None:
        if self._monitor is not None:
            try:
                self.sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self._monitor.close(0)
            self._monitor = None
        self.sock.close(0)
