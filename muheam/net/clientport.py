"""The client port: a ZeroMQ ROUTER that answers client requests (``{"op": ..., ...}`` maps in msgpack).

Works with REQ clients (an empty delimiter frame) and DEALER clients alike.  Every request gets exactly one
reply; a malformed one gets an error reply naming the problem and is counted.  Operations are registered by the
node (``status`` and ``ping`` now; transactions in later layers).
"""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import zmq

from muheam.net import wire
from muheam.errors import MuheamError
from muheam.net.mesh import harden, monitor
from muheam.security.sockets import HandshakeWatch, RefusalLog, ServerSecurity, server_socket, user_id

log = logging.getLogger("muheam.server")
_POLLIN = int(zmq.POLLIN)

Operation = Callable[[dict[str, Any]], Any]


class RequestError(Exception):
    """A request the node understood but refuses; ``code`` is machine-readable for the client library."""

    def __init__(self, code: str, message: str, malformed: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.malformed = malformed
        """An argument of the request is not what the operation takes (refused before anything was done)."""


def int_arg(req: dict[str, Any], name: str, default: int | None, lo: int, hi: int, must: str) -> int:
    """The request's integer ``name`` (``default`` when absent) within ``lo..hi``, else a ``bad_request`` that says
    what it must be."""
    v = req.get(name, default)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise RequestError("bad_request", f"{name} must be {must}", malformed=True)
    return v


_held: "list[Deferred] | None" = None


@contextmanager
def callbacks_held() -> Iterator[None]:
    """In-process callbacks (``Deferred.then``) of answers settled inside the block run when it ends, not in the
    middle of it: an operation run from ``muheam.cluster.reads`` with consistent-read copies readable must end
    before the SQL port goes on with its next operation (which would read those copies under a newer snapshot,
    or trim them away).  Replies to remote clients are only bytes and go out at once."""
    global _held
    if _held is not None:
        yield  # nested: the outermost block releases them
        return
    _held = []
    try:
        yield
    finally:
        queued, _held = _held, None
        for deferred in queued:
            try:
                deferred._flush()
            except Exception:  # noqa: BLE001 - a bug in one connection's callback must not strand the others
                log.exception("a held answer's callback failed")


class Deferred:
    """Returned by an operation that answers later (e.g. after a lock grant); resolve or fail it exactly once.

    It may be settled before the port has bound it to the request's envelope; the reply then goes out at bind.
    Instead of a port, an in-process caller (the SQL port, ``muheam.sql``) may ask for a callback with ``then``:
    it gets the plain result, with no msgpack round trip.
    """

    def __init__(self) -> None:
        self._port: "ClientPort | None" = None
        self._envelope: list[bytes] = []
        self._outcome: tuple[bool, Any] | None = None
        self._callback: Callable[[bool, Any], None] | None = None
        self.done = False

    def _bind(self, port: "ClientPort", envelope: list[bytes]) -> None:
        self._port, self._envelope = port, envelope
        self._flush()

    def then(self, callback: Callable[[bool, Any], None]) -> None:
        """Call ``callback(True, result)`` or ``callback(False, (code, message))`` once settled (at once if it
        is)."""
        self._callback = callback
        self._flush()

    def take(self) -> tuple[bool, Any] | None:
        """The outcome if it is already settled (it is then consumed: no callback and no reply follow), else
        ``None``.  An in-process caller drives a run of such answers in a loop instead of nesting a callback per
        answer (a 5,000-row INSERT whose inserts all answer at once would exhaust Python's stack)."""
        if self._outcome is None or self._callback is not None or self._port is not None:
            return None
        outcome, self._outcome = self._outcome, None
        return outcome

    def _flush(self) -> None:
        if self._outcome is None:
            return
        ok, value = self._outcome
        if self._callback is not None:
            if _held is not None:
                _held.append(self)
                return
            self._outcome, callback, self._callback = None, self._callback, None
            callback(ok, value)
        elif self._port is not None:
            self._outcome = None
            self._port.pending.discard(self)
            self._port._reply(self._envelope, wire.reply_ok(value) if ok else wire.reply_error(*value))

    def resolve(self, result: Any = None) -> None:
        if not self.done:
            self.done = True
            self._outcome = (True, result)
            self._flush()

    def fail(self, code: str, message: str) -> None:
        if not self.done:
            self.done = True
            self._outcome = (False, (code, message))
            self._flush()


class ClientPort:
    """``security``: CURVE with the client keys let in (``muheam.security``); None: a plain port.  Under CURVE a
    request is also refused (error ``unauthorized``) once its connection's key is revoked or replaced, so a
    revocation cuts off clients that were connected before it, not only new connections."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, security: ServerSecurity | None = None) -> None:
        self.endpoint = endpoint
        self.guard = security.guard if security is not None else None
        self.refusals = RefusalLog()
        self.sock: zmq.Socket[Any] = server_socket(ctx, zmq.ROUTER, security)
        harden(self.sock)
        self.sock.bind(endpoint)
        self.monitor = monitor(self.sock)
        self.ops: dict[str, Operation] = {}
        self.counters: Counter[str] = Counter()
        self.handshakes = HandshakeWatch(self.counters, "client", self.refusals if self.guard else None)
        self.pending: set[Deferred] = set()
        """Requests answered later (``Deferred``) and not answered yet: ``answer_all`` fails them."""
        self._linger_ms = 0
        """Time the last replies get to leave at ``close``: 0 unless ``answer_all`` sent some."""

    def register(self, op: str, fn: Operation) -> None:
        self.ops[op] = fn

    def receive_ready(self) -> int:
        handled = 0
        if self.guard is not None:
            # two stats per batch, not per request: a revocation made before a request was sent still applies
            # to it, since the batch that reads it starts after the revocation
            self.guard.keyring.refresh()
        while handled < 10_000 and int(self.sock.getsockopt(zmq.EVENTS)) & _POLLIN:  # (not a zmq.Again per batch)
            try:
                if self.guard is None:
                    frames = self.sock.recv_multipart(zmq.NOBLOCK)
                else:
                    parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    frames = [p.bytes for p in parts]
                    if self.guard.client_of(user_id(parts[-1])) is None:
                        self._refuse(frames)
                        handled += 1
                        continue
            except zmq.Again:
                break
            handled += 1
            self._handle(frames)
        return handled

    def _refuse(self, frames: list[bytes]) -> None:
        self.counters["refused_revoked"] += 1
        self.refusals("refused a request on the client port: the connection's key was revoked or replaced")
        envelope = [frames[0], b""] if len(frames) > 2 and frames[1] == b"" else [frames[0]]
        self._reply(envelope, wire.reply_error("unauthorized", "this client's key was revoked or replaced; get "
                                               "a new one with 'muheam keys add-client NAME'"))

    def _reply(self, envelope: list[bytes], payload: bytes) -> None:
        try:
            self.sock.send_multipart([*envelope, payload], zmq.NOBLOCK)
        except zmq.ZMQError:
            self.counters["reply_dropped"] += 1

    def _handle(self, frames: list[bytes]) -> None:
        ident, rest = frames[0], frames[1:]
        envelope = [ident]
        if rest and rest[0] == b"":
            envelope.append(b"")
            rest = rest[1:]
        if len(rest) != 1:
            self.counters["malformed"] += 1
            self._reply(envelope, wire.reply_error("malformed", f"expected one request frame, got {len(rest)}"))
            return
        try:
            request = wire.decode_request(rest[0])
        except wire.Malformed as exc:
            self.counters["malformed"] += 1
            self._reply(envelope, wire.reply_error("malformed", f"malformed request: {exc}"))
            return
        op = self.ops.get(request["op"])
        if op is None:
            self.counters["malformed"] += 1
            self._reply(envelope, wire.reply_error(
                "unknown_op", f"unknown op {request['op'][:40]!r}; known: {', '.join(sorted(self.ops))}"))
            return
        self.counters["requests"] += 1
        try:
            result = op(request)
        except RequestError as exc:
            self.counters["errors"] += 1
            self._reply(envelope, wire.reply_error(exc.code, str(exc)))
            return
        except MuheamError as exc:
            self.counters["errors"] += 1
            self._reply(envelope, wire.reply_error(type(exc).__name__, str(exc)))
            return
        except (ValueError, TypeError, KeyError) as exc:
            self.counters["malformed"] += 1
            self._reply(envelope, wire.reply_error("bad_request", f"bad {request['op']} request: {exc!r}"[:500]))
            return
        if isinstance(result, Deferred):
            if not result.done:
                self.pending.add(result)
            result._bind(self, envelope)
            return
        self._reply(envelope, wire.reply_ok(result))

    def answer_all(self, code: str, message: str) -> int:
        """Before a stop that answers nothing more (an engine that cannot write): every request waiting for a
        later answer, and every request still queued in the socket, gets the error ``code``/``message``, so its
        client learns why instead of seeing a refused connection.  Returns how many were answered; ``close``
        then lingers, so the replies have time to leave."""
        answered = 0
        for deferred in list(self.pending):
            deferred.fail(code, message)
            answered += 1
        self.pending.clear()
        while answered < 10_000:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            envelope = [frames[0], b""] if len(frames) > 2 and frames[1] == b"" else frames[:1]
            self._reply(envelope, wire.reply_error(code, message))
            answered += 1
        self.counters["answered_at_stop"] += answered
        if answered:
            self._linger_ms = 1000
        return answered

    def drain_monitor(self) -> None:
        self.handshakes.drain(self.monitor)

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(self._linger_ms)
