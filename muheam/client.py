"""Talking to a node's client port.

``request(endpoint, op, ...)`` is the one-shot form the CLI uses (status for ``muheam list``).  Every call has a
deadline: a node that died gives ``NodeUnavailable``, never a hang.
"""

from __future__ import annotations

from typing import Any

import zmq

from muheam import wire
from muheam.errors import MuheamError


class NodeUnavailable(MuheamError):
    """The node did not answer in time (down, paused, or unreachable)."""


class RequestFailed(MuheamError):
    """The node answered with an error; ``code`` says which."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


_ctx: zmq.Context[Any] | None = None


def _context() -> zmq.Context[Any]:
    global _ctx
    if _ctx is None:
        _ctx = zmq.Context.instance()
    return _ctx


def request(endpoint: str, op: str, timeout: float = 2.0, **args: Any) -> Any:
    sock: zmq.Socket[Any] = _context().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send_multipart([b"", wire.pack({"op": op, **args})])
        if not sock.poll(int(timeout * 1000)):
            raise NodeUnavailable(f"node at {endpoint} did not answer {op!r} within {timeout:g} s")
        frames = sock.recv_multipart()
    finally:
        sock.close(0)
    reply = wire.unpack(frames[-1], wire.MAX_CLIENT_FRAME)
    if not isinstance(reply, dict):
        raise RequestFailed("malformed", f"node at {endpoint} sent a malformed reply")
    if not reply.get("ok"):
        err = reply.get("error") or {}
        raise RequestFailed(str(err.get("code", "error")), str(err.get("message", "unknown error")))
    return reply.get("result")
