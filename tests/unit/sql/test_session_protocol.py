"""Messages a session meets out of their place in the protocol, without a socket (``Session.feed``)."""

from __future__ import annotations

import struct
from typing import Any

from muheam.sql.catalog import Catalog
from muheam.sql.session import Session
from tests.unit.sql.frontend import query, startup


def _ready_session() -> Session:
    ops: dict[str, Any] = {"tables": lambda req: []}
    s = Session(ops, Catalog(ops, None), "127.0.0.1", "trust", None, 1, lambda pid, key: None)
    s.feed(startup())
    assert s.out and not s.closing
    s.out.clear()
    return s


def test_a_password_message_after_authentication_ends_the_connection_as_in_postgresql() -> None:
    """PostgreSQL answers a PasswordMessage outside authentication with FATAL 08P01 and closes; the session
    answered ERROR and then waited for a Sync the client had no reason to send (a black-box test saw no
    ReadyForQuery), so the client hung."""
    s = _ready_session()
    body = b"secret\0"
    s.feed(b"p" + struct.pack("!i", len(body) + 4) + body)
    out = bytes(s.out)
    assert out[:1] == b"E" and b"SFATAL" in out and b"C08P01" in out, out
    assert s.closing
    s.out.clear()
    s.feed(query("SELECT 1"))  # nothing more is served on it
    assert not s.out


def _startup_with(**params: str) -> bytes:
    body = struct.pack("!i", 196608) + b"user\0postgres\0" + b"".join(
        k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!i", len(body) + 4) + body


def test_an_unknown_parameter_in_the_startup_packet_is_fatal_42704_as_in_postgresql() -> None:
    """It was accepted and kept (a black-box test); PostgreSQL ends the connection."""
    ops: dict[str, Any] = {"tables": lambda req: []}
    s = Session(ops, Catalog(ops, None), "127.0.0.1", "trust", None, 1, lambda pid, key: None)
    s.feed(_startup_with(foo="bar"))
    out = bytes(s.out)
    assert b"SFATAL" in out and b"C42704" in out and b"foo" in out and s.closing, out
    ok = Session(ops, Catalog(ops, None), "127.0.0.1", "trust", None, 2, lambda pid, key: None)
    ok.feed(_startup_with(application_name="psql", lock_timeout="2s", **{"myapp.mode": "x"}))
    assert not ok.closing and ok.settings["lock_timeout"] == "2s" and ok.settings["application_name"] == "psql"
