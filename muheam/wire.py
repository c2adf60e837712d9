"""Frames on the wire: msgpack with hard limits, validated before anything acts on them.

Peer messages are ``[version, sender, epoch, stamp, kind, body]``; client requests are maps with an ``op``.
Anything else is malformed: it is counted and dropped (peers) or answered with an error (clients), never raised
into the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from locking.glsn import MAX_LAMPORT

WIRE_VERSION = 1
MAX_PEER_FRAME = 16 * 1024 * 1024
MAX_CLIENT_FRAME = 4 * 1024 * 1024
#: ZeroMQ itself drops connections that send more than this, so a hostile peer cannot exhaust memory.
ZMQ_MAXMSGSIZE = 64 * 1024 * 1024


class Malformed(ValueError):
    """A frame that is not a valid message; the text says what is wrong with it."""


@dataclass(frozen=True)
class PeerMessage:
    sender: int
    epoch: int
    stamp: int
    kind: str
    body: Any


def pack(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def unpack(frame: bytes, limit: int) -> Any:
    if len(frame) > limit:
        raise Malformed(f"frame of {len(frame)} bytes exceeds the {limit}-byte limit")
    try:
        return msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, TypeError) as exc:
        raise Malformed(f"not msgpack: {type(exc).__name__}") from None


def encode_peer(sender: int, epoch: int, stamp: int, kind: str, body: Any) -> bytes:
    return pack([WIRE_VERSION, sender, epoch, stamp, kind, body])


def _is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 63


def decode_peer(frame: bytes) -> PeerMessage:
    msg = unpack(frame, MAX_PEER_FRAME)
    if not isinstance(msg, list) or len(msg) != 6:
        raise Malformed("peer message must be a 6-element list")
    version, sender, epoch, stamp, kind, body = msg
    if version != WIRE_VERSION:
        raise Malformed(f"unsupported wire version {version!r}")
    if not (_is_uint(sender) and _is_uint(epoch) and _is_uint(stamp)) or not isinstance(kind, str):
        raise Malformed("sender, epoch and stamp must be unsigned integers and kind a string")
    if stamp > MAX_LAMPORT:  # merged into the clock, it would push every later GLSN out of range
        raise Malformed(f"Lamport stamp {stamp} exceeds the largest GLSN time {MAX_LAMPORT}")
    return PeerMessage(sender, epoch, stamp, kind, body)


def decode_request(frame: bytes) -> dict[str, Any]:
    req = unpack(frame, MAX_CLIENT_FRAME)
    if not isinstance(req, dict) or not isinstance(req.get("op"), str):
        raise Malformed("request must be a map with a string 'op'")
    return req


def reply_ok(result: Any = None, **extra: Any) -> bytes:
    return pack({"ok": True, "result": result, **extra})


def reply_error(code: str, message: str) -> bytes:
    return pack({"ok": False, "error": {"code": code, "message": message}})
