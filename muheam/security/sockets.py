"""The one place ZeroMQ sockets get their security: CURVE options for servers and clients, and the ZAP
authenticator (``Guard``) that decides which client keys a server lets in.

A CURVE server without a ZAP handler in its context accepts any client key, so every context that binds a CURVE
socket starts a ``Guard`` first (pyzmq's ``ThreadAuthenticator``: a thread answering ZAP requests on the
context's inproc ZAP endpoint).  Its callback checks the client key against the ``Keyring`` for the socket's
ZAP domain: ``peer`` (node keys only) or ``client`` (client keys only), so a client key cannot join the mesh and
a node key cannot use a client port.  ZeroMQ then attaches the ZAP ``User-Id`` (pyzmq: the client's public key,
z85) to every message of that connection, which is what the mesh binds a peer's identity to (``peer_of``),
never the routing id the other side chose.  A connection with no key at all, or a key for another server, never
reaches ZAP: its handshake fails, which the socket monitor reports (``drain_monitor``).  Both kinds of refusal
are counted and logged, at most ``LOG_BURST`` lines per ``LOG_WINDOW`` seconds (a flood of bad handshakes must
not flood the log), with the key's fingerprint and the peer's address, never a secret.

``security = "none"`` in the config (a trusted network) makes every factory here return a plain socket.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import parse_monitor_message

from muheam.security.keys import KeyPair, Keyring, fingerprint

log = logging.getLogger("muheam.security")

DOMAIN_PEER = "peer"
DOMAIN_CLIENT = "client"
HANDSHAKE_FAILURES = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
LOG_BURST = 20
LOG_WINDOW = 10.0


class RefusalLog:
    """Log refusals one line each, but at most ``LOG_BURST`` per ``LOG_WINDOW`` s; say how many were left out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._window = 0.0
        self._lines = 0
        self._skipped = 0

    def __call__(self, msg: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._window >= LOG_WINDOW:
                if self._skipped:
                    log.warning("%d more refused connections were not logged", self._skipped)
                self._window, self._lines, self._skipped = now, 0, 0
            if self._lines >= LOG_BURST:
                self._skipped += 1
                return
            self._lines += 1
        log.warning(msg, *args)


class Guard(ThreadAuthenticator):
    """ZAP for one context: lets in the keys of ``keyring`` for the socket's domain, counts and logs the rest.

    ``counters``: ``refused_key`` (a key the cluster does not know for that port, or a revoked or replaced one),
    ``refused_domain`` (a socket with an unknown ZAP domain: a programming error), ``accepted``.
    """

    def __init__(self, ctx: zmq.Context[Any], keyring: Keyring) -> None:
        super().__init__(ctx, log=logging.getLogger("muheam.security.zap"))
        self.keyring = keyring
        self.counters: Counter[str] = Counter()
        self.refusals = RefusalLog()
        self._address = ""
        self.configure_curve_callback(DOMAIN_PEER, self)
        self.configure_curve_callback(DOMAIN_CLIENT, self)

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        self._address = msg[3].decode(errors="replace") if len(msg) > 3 else "?"
        await super().handle_zap_message(msg)

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's credentials-provider hook: ``key`` is the client's public key, z85."""
        self.keyring.refresh()  # a stat of two directories per handshake: a revoked key is refused at once
        if domain == DOMAIN_PEER:
            ok = key in self.keyring.nodes
        elif domain == DOMAIN_CLIENT:
            ok = key in self.keyring.clients
        else:
            self.counters["refused_domain"] += 1
            return False
        if ok:
            self.counters["accepted"] += 1
            return True
        self.counters[f"refused_key_{domain}"] += 1
        other = "a node key" if key in self.keyring.nodes else "a client key" if key in self.keyring.clients \
            else "not a key of this cluster (or revoked)"
        self.refusals("refused a connection to the %s port from %s: CURVE key %s... is %s", domain, self._address,
                      fingerprint(key), other)
        return False

    def peer_of(self, user_id: str | None) -> int | None:
        """The node whose key a peer connection authenticated with (its ZAP User-Id), None if none."""
        if not user_id:
            return None
        self.keyring.refresh(every=1.0)
        node = self.keyring.nodes.get(user_id.encode())
        if node is None:  # a key made within the last second (a node added, rotated): look again now
            self.keyring.refresh()
            node = self.keyring.nodes.get(user_id.encode())
        return node

    def client_of(self, user_id: str | None) -> str | None:
        """The client name of a connection's key, None once it is revoked or replaced, as of the last
        ``keyring.refresh`` (the client port refreshes once per batch of requests it reads, not per request)."""
        if not user_id:
            return None
        return self.keyring.clients.get(user_id.encode())

    def close(self) -> None:
        if self.is_alive():
            self.stop()


@dataclass(frozen=True)
class ServerSecurity:
    """What a listening socket needs: its key pair, its ZAP domain and the context's ``Guard``."""

    pair: KeyPair
    domain: str
    guard: Guard


@dataclass(frozen=True)
class ClientSecurity:
    """What a connecting socket needs: its own key pair and the server's public key."""

    pair: KeyPair
    server: bytes


def server_socket(ctx: zmq.Context[Any], kind: int, security: ServerSecurity | None) -> zmq.Socket[Any]:
    """A socket for ``bind``: CURVE server with the guard's ZAP domain, or plain when ``security`` is None."""
    sock: zmq.Socket[Any] = ctx.socket(kind)
    if security is not None:
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, security.pair.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, security.pair.secret)
        sock.setsockopt_string(zmq.ZAP_DOMAIN, security.domain)
    return sock


def client_socket(ctx: zmq.Context[Any], kind: int, security: ClientSecurity | None) -> zmq.Socket[Any]:
    """A socket for ``connect``: CURVE client of ``security.server``, or plain when ``security`` is None."""
    sock: zmq.Socket[Any] = ctx.socket(kind)
    if security is not None:
        sock.setsockopt(zmq.CURVE_SERVERKEY, security.server)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, security.pair.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, security.pair.secret)
    return sock


def user_id(frame: zmq.Frame) -> str | None:
    """The ZAP User-Id of the connection a frame came in on (None on a plain socket)."""
    try:
        value = frame.get("User-Id")
    except zmq.ZMQError:
        return None
    return value if isinstance(value, str) else None


MONITORED = HANDSHAKE_FAILURES | zmq.EVENT_ACCEPTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
"""What a listening socket's monitor reports: a connection accepted and closed again without a handshake (raw
garbage, a ZMTP/1.0 peer on a CURVE port) shows no handshake event of its own, so it is followed from accept."""
MAX_PENDING = 4096


class HandshakeWatch:
    """Follows a listening socket's monitor: every connection that ends before its handshake succeeded is one
    refusal, counted as ``handshake_failed`` and logged (those ZAP refused are logged by the guard, with the
    key).  Connections still in their handshake are remembered by file descriptor, at most ``MAX_PENDING``."""

    def __init__(self, counters: "Counter[str]", port: str, refusals: RefusalLog | None = None) -> None:
        self.counters = counters
        self.port = port
        self.refusals = refusals
        self.pending: dict[int, bool] = {}

    def _refused(self, fd: int, detail: str) -> None:
        self.pending.pop(fd, None)
        self.counters["handshake_failed"] += 1
        if self.refusals is not None and detail:
            self.refusals("refused a connection to the %s port: %s", self.port, detail)

    def _which(self, value: int) -> int:
        """The pending connection a handshake event is about: ``value`` if it is one, else the oldest."""
        if value in self.pending or not self.pending:
            return value
        return next(iter(self.pending))

    def drain(self, monitor_sock: zmq.Socket[Any]) -> None:
        while True:
            try:
                event = parse_monitor_message(monitor_sock.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            kind, fd = event["event"], int(event["value"])
            if kind == zmq.EVENT_ACCEPTED:
                if len(self.pending) >= MAX_PENDING:
                    self.pending.pop(next(iter(self.pending)))
                self.pending[fd] = True
            elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                # libzmq reports it with the value 0, not the connection's descriptor: the connection accepted
                # first of those still waiting is taken for the one that succeeded (handshakes mostly end in the
                # order they began; the count stays right, only which one is blamed may not).  Matching by fd
                # alone left every good connection pending, and each client that closed was logged refused.
                self.pending.pop(self._which(fd), None)
            elif kind & HANDSHAKE_FAILURES:  # (its value is an error number: the same guess as above)
                self._refused(self._which(fd), "" if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH else
                              "its handshake failed (no CURVE key, or a key for another server)")
            elif kind == zmq.EVENT_DISCONNECTED and fd in self.pending:
                self._refused(fd, "it closed before completing a handshake (not ZeroMQ, or no CURVE key)")
