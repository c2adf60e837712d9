"""The protocol state machine without sockets: framing, startup variants, limits, and what a violation says."""

from __future__ import annotations

import struct

from muheam.sql import wire


def startup(params: dict[str, str], version: int = wire.PROTOCOL_3_0) -> bytes:
    body = struct.pack("!i", version) + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items())
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def test_startup_then_query_split_across_reads() -> None:
    p = wire.FrontendParser()
    data = struct.pack("!ii", 8, wire.SSL_REQUEST) + startup({"user": "postgres", "database": "postgres"}) \
        + msg(b"Q", b"select 1\0") + msg(b"X", b"")
    events = [e for i in range(len(data)) for e in p.feed(data[i:i + 1])]  # one byte at a time
    assert [type(e) for e in events] == [wire.SSLRequest, wire.Startup, wire.Query, wire.Terminate]
    assert isinstance(events[1], wire.Startup) and events[1].params["user"] == "postgres"
    assert isinstance(events[2], wire.Query) and events[2].sql == "select 1"


def test_extended_messages_decode() -> None:
    p = wire.FrontendParser()
    p.feed(startup({"user": "u"}))
    bind = b"\0s1\0" + struct.pack("!hh", 1, 1) + struct.pack("!h", 2) + struct.pack("!i", 8) \
        + struct.pack("!q", 42) + struct.pack("!i", -1) + struct.pack("!hh", 1, 0)
    events = p.feed(msg(b"P", b"s1\0select $1\0" + struct.pack("!hi", 1, wire.INT8)) + msg(b"B", bind)
                    + msg(b"D", b"P\0") + msg(b"E", b"\0" + struct.pack("!i", 0)) + msg(b"S", b""))
    assert [type(e) for e in events] == [wire.Parse, wire.Bind, wire.Describe, wire.Execute, wire.Sync]
    b = events[1]
    assert isinstance(b, wire.Bind) and b.params[1] is None
    assert wire.decode_param(b.params[0], wire.INT8, 1) == 42


def test_wrong_protocol_version_is_refused() -> None:
    (ev,) = wire.FrontendParser().feed(startup({"user": "u"}, version=2 << 16))
    assert isinstance(ev, wire.ProtocolViolation) and ev.code == "0A000" and "2.0" in ev.message


def test_newer_minor_version_is_negotiated_down() -> None:
    (ev,) = wire.FrontendParser().feed(startup({"user": "u", "_pq_.x": "1"}, version=wire.PROTOCOL_3_0 + 2))
    assert isinstance(ev, wire.Startup) and ev.minor == 2 and ev.unsupported == ["_pq_.x"]


def test_oversized_and_malformed_messages_close_the_parser() -> None:
    p = wire.FrontendParser(max_message=1024)
    p.feed(startup({"user": "u"}))
    (ev,) = p.feed(b"Q" + struct.pack("!i", 1 << 20))
    assert isinstance(ev, wire.ProtocolViolation) and ev.code == "08P01" and "too long" in ev.message
    assert p.feed(msg(b"Q", b"select 1\0")) == []  # nothing more after a violation
    p = wire.FrontendParser()
    p.feed(startup({"user": "u"}))
    (ev,) = p.feed(msg(b"Q", b"no terminator"))
    assert isinstance(ev, wire.ProtocolViolation) and "unterminated" in ev.message
    (ev,) = wire.FrontendParser().feed(struct.pack("!i", 4) + b"\0\0\0\0")
    assert isinstance(ev, wire.ProtocolViolation) and "startup packet" in ev.message
    p = wire.FrontendParser()
    p.feed(startup({"user": "u"}))
    (ev,) = p.feed(msg(b"?", b""))
    assert isinstance(ev, wire.ProtocolViolation) and "invalid frontend message type" in ev.message


def test_values_round_trip() -> None:
    assert wire.text_value(1.0) == "1" and wire.text_value(2.5) == "2.5" and wire.text_value(True) == "t"
    assert wire.encode_value(7, wire.INT8, 1) == struct.pack("!q", 7)
    assert wire.decode_param(b"12", wire.INT2, 0) == 12 and wire.decode_param(b"x", 0, 0) == "x"
