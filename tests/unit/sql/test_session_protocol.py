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


def test_a_duration_past_any_number_is_22023_not_an_overflow() -> None:
    """``SET lock_timeout = '1e400'`` raised OverflowError, which closed the connection as an internal error (a
    review)."""
    import pytest

    from muheam.sql import settings
    from muheam.sql.expr import SqlError

    for value in ("1e400", "1e308d", "'-1e400'"):
        with pytest.raises(SqlError) as info:
            settings.check("lock_timeout", value, "0")
        assert info.value.code == "22023", value


def test_a_bug_met_when_a_statement_times_out_costs_its_connection_not_the_node(monkeypatch: Any) -> None:
    """The server's tick ends statements past their statement_timeout; the cancel runs the statement's rest and
    the next one there, outside the guard the reads have: a bug there left the node's loop (a review)."""
    import socket

    import zmq

    from muheam.sql.server import SqlServer

    def broken(self: Session, now: float) -> None:
        raise RuntimeError("a bug in the cancelled statement's rest")
    monkeypatch.setattr(Session, "check_timeout", broken)
    srv = SqlServer("postgresql://127.0.0.1:0", {"tables": lambda req: []}, None, 1)
    poller = zmq.Poller()
    srv.attach(poller)
    client = socket.create_connection(("127.0.0.1", srv.port))
    try:
        client.sendall(startup())
        for _ in range(100):
            srv.handle(dict(poller.poll(20)))
            if srv.conns:
                break
        (conn,) = srv.conns.values()
        conn.session.statement_deadline = 0.0
        srv.tick(1.0)  # raised out of here before
        assert not srv.conns and srv.counters["closed"] == 1
    finally:
        client.close()
        srv.close()
