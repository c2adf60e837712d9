"""What a PostgreSQL client sends, as bytes, for the session tests that drive ``Session.feed`` without a socket."""

from __future__ import annotations

import struct

from muheam.sql import wire


def startup() -> bytes:
    """A protocol 3.0 startup packet of user ``postgres``."""
    body = struct.pack("!i", wire.PROTOCOL_3_0) + b"user\0postgres\0\0"
    return struct.pack("!i", len(body) + 4) + body


def query(sql: str) -> bytes:
    """A simple-protocol Query message."""
    body = sql.encode() + b"\0"
    return b"Q" + struct.pack("!i", len(body) + 4) + body
