"""Frames on the wire: msgpack with hard limits, validated before anything acts on them.

Peer messages are ``[version, sender, epoch, dest_epoch, seq, ack, stamp, kind, body]`` (the link fields
``dest_epoch``, ``seq`` and ``ack`` are explained in ``muheam.net.peerlink``; ``seq`` 0 with kind ``ack`` and no body
is an acknowledgement-only frame); client requests are maps with an ``op``.
Anything else is malformed: it is counted and dropped (peers) or answered with an error (clients), never raised
into the event loop.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgpack

from locking.glsn import MAX_LAMPORT

WIRE_VERSION = 2
"""2: sequence numbers and acknowledgements per link (1 had no link fields)."""
ACK_KIND = "ack"
BUNDLE_KIND = "bundle"
"""Several messages to one peer in one frame: body ``[[kind, stamp, body]...]``, delivered in that order."""
MAX_BUNDLE = 100_000
MAX_PEER_FRAME = 16 * 1024 * 1024
MAX_CLIENT_FRAME = 4 * 1024 * 1024
#: ZeroMQ itself drops connections that send more than this, so a hostile peer cannot exhaust memory.
ZMQ_MAXMSGSIZE = 64 * 1024 * 1024


class Malformed(ValueError):
    """A frame that is not a valid message; the text says what is wrong with it."""


class PeerMessage(NamedTuple):
    """One peer frame, decoded and validated (a named tuple: built for every frame received, so cheap to make)."""

    sender: int
    epoch: int
    stamp: int
    kind: str
    body: Any
    dest_epoch: int = 0
    """The receiver's incarnation the sender addressed: a frame meant for an earlier one is not for us."""
    seq: int = 0
    """Position in the (sender, epoch) -> (receiver, dest_epoch) stream; 0: an acknowledgement-only frame."""
    ack: int = 0
    """Cumulative acknowledgement of the reverse stream (receiver -> sender): every frame up to it arrived."""


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


def encode_peer(sender: int, epoch: int, stamp: int, kind: str, body: Any, *, dest_epoch: int = 0, seq: int = 1,
                ack: int = 0) -> bytes:
    return pack([WIRE_VERSION, sender, epoch, dest_epoch, seq, ack, stamp, kind, body])


def encode_ack(sender: int, epoch: int, dest_epoch: int, ack: int) -> bytes:
    """An acknowledgement-only frame: no sequence number, no stamp, no body."""
    return pack([WIRE_VERSION, sender, epoch, dest_epoch, 0, ack, 0, ACK_KIND, None])


def decode_peer(frame: bytes) -> PeerMessage:
    msg = unpack(frame, MAX_PEER_FRAME)
    if not isinstance(msg, list) or len(msg) != 9:
        raise Malformed("peer message must be a 9-element list")
    version, sender, epoch, dest_epoch, seq, ack, stamp, kind, body = msg
    if version != WIRE_VERSION:
        raise Malformed(f"unsupported wire version {version!r}")
    # exact type checks (bool is no integer here), spelled out: this runs for every frame received
    if not (type(sender) is int and type(epoch) is int and type(dest_epoch) is int and type(seq) is int
            and type(ack) is int and type(stamp) is int and type(kind) is str) \
            or min(sender, epoch, dest_epoch, seq, ack, stamp) < 0 \
            or max(sender, epoch, dest_epoch, seq, ack) >= 1 << 63:  # the stamp has its own, lower bound
        raise Malformed("sender, epochs, seq, ack and stamp must be unsigned integers and kind a string")
    if stamp > MAX_LAMPORT:  # merged into the clock, it would push every later GLSN out of range
        raise Malformed(f"Lamport stamp {stamp} exceeds the largest GLSN time {MAX_LAMPORT}")
    if (seq == 0) != (kind == ACK_KIND) or (seq == 0 and (body is not None or stamp != 0)):
        raise Malformed("seq 0 is for acknowledgement-only frames (kind 'ack', stamp 0, no body) and only them")
    return PeerMessage(sender, epoch, stamp, kind, body, dest_epoch, seq, ack)


def decode_bundle(body: Any) -> list[tuple[str, int, Any]]:
    """The messages of a bundle frame, checked as a frame's own kind and stamp are."""
    if not isinstance(body, list) or not 2 <= len(body) <= MAX_BUNDLE:
        raise Malformed("a bundle is a list of 2 or more [kind, stamp, body]")
    out: list[tuple[str, int, Any]] = []
    for item in body:
        if not isinstance(item, list) or len(item) != 3 or type(item[0]) is not str or type(item[1]) is not int:
            raise Malformed("a bundled message is [kind, stamp, body]")
        kind, stamp, inner = item
        if kind in (ACK_KIND, BUNDLE_KIND) or not 0 <= stamp <= MAX_LAMPORT:
            raise Malformed(f"bundled message of kind {kind!r} or stamp {stamp} not allowed")
        out.append((kind, stamp, inner))
    return out


def decode_request(frame: bytes) -> dict[str, Any]:
    req = unpack(frame, MAX_CLIENT_FRAME)
    if not isinstance(req, dict) or not isinstance(req.get("op"), str):
        raise Malformed("request must be a map with a string 'op'")
    return req


def reply_ok(result: Any = None, **extra: Any) -> bytes:
    return pack({"ok": True, "result": result, **extra})


def reply_error(code: str, message: str) -> bytes:
    return pack({"ok": False, "error": {"code": code, "message": message}})
