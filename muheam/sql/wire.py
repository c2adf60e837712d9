"""The PostgreSQL frontend/backend protocol v3 as a pure state machine: bytes in -> events, calls -> bytes out.

No sockets here (the "protocol without I/O" style of psycopg's ``generators.py`` and h11): ``FrontendParser.feed``
takes whatever bytes arrived and returns the complete messages as events; the ``msg_*`` functions build backend
messages.  So every framing rule (lengths, the startup phase without type bytes, size limits) is tested without a
server, and the server (``muheam.sql.server``) only moves bytes.

A frame the parser cannot accept becomes a ``ProtocolViolation`` event carrying the SQLSTATE and message
PostgreSQL sends in that case (``08P01`` for framing, ``0A000`` for an unsupported protocol version); the server
sends it as a FATAL error and closes that connection only.
"""

from __future__ import annotations

import struct
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal
from dataclasses import dataclass, field
from typing import Union

from muheam.sql import textinput

PROTOCOL_3_0 = 196608
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
MAX_STARTUP = 10_000
"""PostgreSQL's ``MAX_STARTUP_PACKET_LENGTH``."""
MAX_MESSAGE = 16 << 20
"""The largest frontend message accepted (PostgreSQL allows 1 GB for some; a node need not buffer that)."""

_I32 = struct.Struct("!i")
_I16 = struct.Struct("!h")
_HEAD = struct.Struct("!ci")


# --- events ------------------------------------------------------------------------------------------------------

@dataclass
class Startup:
    minor: int
    params: dict[str, str]
    unsupported: list[str] = field(default_factory=list)
    """``_pq_.`` protocol options the client asked for: refused in NegotiateProtocolVersion."""


@dataclass
class SSLRequest:
    pass


@dataclass
class GSSENCRequest:
    pass


@dataclass
class CancelRequest:
    pid: int
    key: bytes


@dataclass
class Query:
    sql: str


@dataclass
class Parse:
    name: str
    sql: str
    param_types: list[int]


@dataclass
class Bind:
    portal: str
    statement: str
    param_formats: list[int]
    params: list[bytes | None]
    result_formats: list[int]


@dataclass
class Describe:
    kind: str  # "S" statement, "P" portal
    name: str


@dataclass
class Execute:
    portal: str
    max_rows: int


@dataclass
class Close:
    kind: str
    name: str


@dataclass
class Sync:
    pass


@dataclass
class Flush:
    pass


@dataclass
class Terminate:
    pass


@dataclass
class Password:
    """A ``p`` message: password, SASLInitialResponse or SASLResponse; which one depends on the auth state."""

    data: bytes


@dataclass
class ProtocolViolation:
    code: str
    message: str


Event = Union[Startup, SSLRequest, GSSENCRequest, CancelRequest, Query, Parse, Bind, Describe, Execute, Close,
              Sync, Flush, Terminate, Password, ProtocolViolation]


class _Reader:
    """Reads the fields of one message body; running past its end is a malformed message."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def int32(self) -> int:
        if self.at + 4 > len(self.data):
            raise ValueError("message ends inside an int32")
        (v,) = _I32.unpack_from(self.data, self.at)
        self.at += 4
        return int(v)

    def int16(self) -> int:
        if self.at + 2 > len(self.data):
            raise ValueError("message ends inside an int16")
        (v,) = _I16.unpack_from(self.data, self.at)
        self.at += 2
        return int(v)

    def cstring(self) -> str:
        end = self.data.find(b"\0", self.at)
        if end < 0:
            raise ValueError("unterminated string")
        s = self.data[self.at:end].decode("utf-8")
        self.at = end + 1
        return s

    def raw(self, n: int) -> bytes:
        if n < 0 or self.at + n > len(self.data):
            raise ValueError("message ends inside a value")
        v = self.data[self.at:self.at + n]
        self.at += n
        return v

    def end(self) -> None:
        if self.at != len(self.data):
            raise ValueError(f"{len(self.data) - self.at} unexpected bytes at the end")


class FrontendParser:
    """Splits a client's byte stream into events.  ``phase`` is ``startup`` until a StartupMessage, then
    ``normal``; after a violation it is ``closed`` and the parser takes nothing more."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self.buf = bytearray()
        self.phase = "startup"
        self.max_message = max_message

    def feed(self, data: bytes) -> list[Event]:
        if self.phase == "closed":
            return []
        self.buf += data
        events: list[Event] = []
        while self.phase != "closed":
            event = self._startup() if self.phase == "startup" else self._message()
            if event is None:
                break
            if isinstance(event, ProtocolViolation):
                self.phase = "closed"
                self.buf.clear()
            events.append(event)
        return events

    def _startup(self) -> Event | None:
        if len(self.buf) < 8:
            return None
        (length,) = _I32.unpack_from(self.buf, 0)
        if not 8 <= length <= MAX_STARTUP:
            return ProtocolViolation("08P01", f"invalid length of startup packet ({length} bytes)")
        if len(self.buf) < length:
            return None
        body = bytes(self.buf[4:length])
        del self.buf[:length]
        (code,) = _I32.unpack_from(body, 0)
        if code == SSL_REQUEST and length == 8:
            return SSLRequest()
        if code == GSSENC_REQUEST and length == 8:
            return GSSENCRequest()
        if code == CANCEL_REQUEST and length >= 12:
            (pid,) = _I32.unpack_from(body, 4)
            return CancelRequest(pid, body[8:])
        major, minor = code >> 16, code & 0xFFFF
        if major != 3:
            return ProtocolViolation("0A000", f"unsupported frontend protocol {major}.{minor}: server supports "
                                     "3.0 to 3.0")
        params: dict[str, str] = {}
        unsupported: list[str] = []
        try:
            r = _Reader(body[4:])
            while True:
                name = r.cstring()
                if not name:
                    break
                value = r.cstring()
                if name.startswith("_pq_."):
                    unsupported.append(name)
                else:
                    params[name] = value
            r.end()
        except (ValueError, UnicodeDecodeError) as exc:
            return ProtocolViolation("08P01", f"invalid startup packet layout: {exc}")
        if "user" not in params:
            return ProtocolViolation("28000", "no PostgreSQL user name specified in startup packet")
        self.phase = "normal"
        return Startup(minor, params, unsupported)

    def _message(self) -> Event | None:
        if len(self.buf) < 5:
            return None
        kind, length = _HEAD.unpack_from(self.buf, 0)
        if length < 4:
            return ProtocolViolation("08P01", f"invalid message length {length} for message type {kind!r}")
        if length > self.max_message:
            return ProtocolViolation("08P01", f"message of type {kind!r} is too long ({length} bytes; at most "
                                     f"{self.max_message})")
        if len(self.buf) < 1 + length:
            return None
        body = bytes(self.buf[5:1 + length])
        del self.buf[:1 + length]
        try:
            return _decode(kind, body)
        except (ValueError, UnicodeDecodeError) as exc:
            return ProtocolViolation("08P01", f"malformed message of type {kind!r}: {exc}")


def _decode(kind: bytes, body: bytes) -> Event:
    r = _Reader(body)
    event: Event
    if kind == b"Q":
        event = Query(r.cstring())
    elif kind == b"P":
        name, sql = r.cstring(), r.cstring()
        event = Parse(name, sql, [r.int32() for _ in range(r.int16())])
    elif kind == b"B":
        portal, stmt = r.cstring(), r.cstring()
        formats = [r.int16() for _ in range(r.int16())]
        params: list[bytes | None] = []
        for _ in range(r.int16()):
            n = r.int32()
            params.append(None if n == -1 else r.raw(n))
        event = Bind(portal, stmt, formats, params, [r.int16() for _ in range(r.int16())])
    elif kind == b"D":
        which = r.raw(1).decode()
        if which not in "SP":
            raise ValueError(f"invalid DESCRIBE message subtype {which!r}")
        event = Describe(which, r.cstring())
    elif kind == b"E":
        event = Execute(r.cstring(), r.int32())
    elif kind == b"C":
        which = r.raw(1).decode()
        if which not in "SP":
            raise ValueError(f"invalid CLOSE message subtype {which!r}")
        event = Close(which, r.cstring())
    elif kind == b"S":
        event = Sync()
    elif kind == b"H":
        event = Flush()
    elif kind == b"X":
        event = Terminate()
    elif kind == b"p":
        return Password(body)
    else:
        return ProtocolViolation("08P01", f"invalid frontend message type {kind[0]}")
    r.end()
    return event


# --- backend messages --------------------------------------------------------------------------------------------

def _msg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + _I32.pack(len(body) + 4) + body


def _cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def msg_auth_ok() -> bytes:
    return _msg(b"R", _I32.pack(0))


def msg_auth_sasl(mechanisms: list[str]) -> bytes:
    return _msg(b"R", _I32.pack(10) + b"".join(_cstr(m) for m in mechanisms) + b"\0")


def msg_auth_sasl_continue(data: bytes) -> bytes:
    return _msg(b"R", _I32.pack(11) + data)


def msg_auth_sasl_final(data: bytes) -> bytes:
    return _msg(b"R", _I32.pack(12) + data)


def msg_parameter_status(name: str, value: str) -> bytes:
    return _msg(b"S", _cstr(name) + _cstr(value))


def msg_backend_key(pid: int, key: bytes) -> bytes:
    return _msg(b"K", _I32.pack(pid) + key)


def msg_negotiate_version(minor: int, unsupported: list[str]) -> bytes:
    return _msg(b"v", _I32.pack(PROTOCOL_3_0 + minor) + _I32.pack(len(unsupported))
                + b"".join(_cstr(o) for o in unsupported))


def msg_ready(status: str) -> bytes:
    return _msg(b"Z", status.encode())


def msg_row_description(fields: list[tuple[str, int]], formats: list[int] | None = None) -> bytes:
    """``fields``: (name, type OID); text format unless ``formats`` says otherwise (0 text, 1 binary)."""
    out = [_I16.pack(len(fields))]
    for i, (name, oid) in enumerate(fields):
        size = TYPE_SIZES.get(oid, -1)
        out.append(_cstr(name) + struct.pack("!ihihih", 0, 0, oid, size, -1, result_format(formats, i)))
    return _msg(b"T", b"".join(out))


def msg_data_row(values: list[bytes | None]) -> bytes:
    out = [_I16.pack(len(values))]
    for v in values:
        out.append(_I32.pack(-1) if v is None else _I32.pack(len(v)) + v)
    return _msg(b"D", b"".join(out))


def msg_command_complete(tag: str) -> bytes:
    return _msg(b"C", _cstr(tag))


def _report(kind: bytes, severity: str, code: str, message: str, detail: str, hint: str) -> bytes:
    """ErrorResponse (``E``) or NoticeResponse (``N``): the same fields."""
    parts = [b"S" + _cstr(severity), b"V" + _cstr(severity), b"C" + _cstr(code), b"M" + _cstr(message)]
    if detail:
        parts.append(b"D" + _cstr(detail))
    if hint:
        parts.append(b"H" + _cstr(hint))
    return _msg(kind, b"".join(parts) + b"\0")


def msg_error(code: str, message: str, severity: str = "ERROR", detail: str = "", hint: str = "") -> bytes:
    return _report(b"E", severity, code, message, detail, hint)


def msg_notice(code: str, message: str, severity: str = "WARNING", detail: str = "") -> bytes:
    return _report(b"N", severity, code, message, detail, "")


def msg_parse_complete() -> bytes:
    return _msg(b"1")


def msg_bind_complete() -> bytes:
    return _msg(b"2")


def msg_close_complete() -> bytes:
    return _msg(b"3")


def msg_no_data() -> bytes:
    return _msg(b"n")


def msg_empty_query() -> bytes:
    return _msg(b"I")


def msg_portal_suspended() -> bytes:
    return _msg(b"s")


def msg_parameter_description(oids: list[int]) -> bytes:
    return _msg(b"t", _I16.pack(len(oids)) + b"".join(_I32.pack(o) for o in oids))


def result_format(formats: list[int] | None, i: int) -> int:
    """Bind's result format codes: none (all text), one (for all columns) or one per column."""
    if not formats:
        return 0
    return formats[0] if len(formats) == 1 else formats[i] if i < len(formats) else 0


# --- types -------------------------------------------------------------------------------------------------------

BOOL, INT8, INT2, INT4, TEXT, FLOAT4, FLOAT8, UNKNOWN, VARCHAR, NUMERIC = 16, 20, 21, 23, 25, 700, 701, 705, 1043, 1700
TYPE_SIZES = {BOOL: 1, INT8: 8, INT2: 2, INT4: 4, FLOAT4: 4, FLOAT8: 8}
INT_TYPES = frozenset({INT2, INT4, INT8})
INT_BITS = {INT2: 16, INT4: 32, INT8: 64}
FLOAT_TYPES = frozenset({FLOAT4, FLOAT8})
_TYPE_NAMES = {BOOL: "boolean", INT8: "bigint", INT2: "smallint", INT4: "integer", TEXT: "text", FLOAT4: "real",
               FLOAT8: "double precision", UNKNOWN: "unknown", VARCHAR: "character varying", NUMERIC: "numeric"}
EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)
"""numeric's +, -, * and % are exact in PostgreSQL, and so is reading one; Python's default context rounds to 28
digits."""


def type_name(oid: int) -> str:
    """A type OID as PostgreSQL names it in messages."""
    return _TYPE_NAMES.get(oid, f"type {oid}")


def parse_numeric(text: str) -> Decimal:
    """A numeric from text, as PostgreSQL reads one (``NaN`` and infinities); ``ValueError`` for anything else,
    a signalling NaN included."""
    try:
        value = Decimal(text.strip())
    except ArithmeticError:  # (decimal's InvalidOperation is not a ValueError)
        raise ValueError(f"invalid input syntax for type numeric: {text!r}") from None
    if value.is_snan():
        raise ValueError(f"invalid input syntax for type numeric: {text!r}")
    return numeric_value(value)


def numeric_value(value: Decimal) -> Decimal:
    """A numeric as PostgreSQL keeps one: never a negative scale (``1e1`` is 10, of scale 0, so ``1e1 * 2.5`` is
    25.0; a ``Decimal`` keeps the exponent, and the product came out 25)."""
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent > 0:
        return value.quantize(Decimal(1), context=EXACT)
    return value


def encode_value(value: object, oid: int, fmt: int) -> bytes | None:
    """A result value in text (0) or binary (1) format; ``ValueError`` for a binary format we do not write."""
    if value is None:
        return None
    if fmt == 0:
        return text_value(value).encode()
    if oid in _INT_BINARY:
        fmt_code, name = _INT_BINARY[oid]
        try:
            return struct.pack(fmt_code, int(value))  # type: ignore[call-overload]
        except struct.error:
            raise OverflowError(f"{name} out of range") from None
    if oid == NUMERIC:
        return _numeric_binary(value)
    if oid == FLOAT8:
        return struct.pack("!d", float(value))  # type: ignore[arg-type]
    if oid == BOOL:
        return b"\1" if value else b"\0"
    if oid in (TEXT, VARCHAR, UNKNOWN):
        return str(value).encode()
    raise ValueError(f"binary output of type {oid} is not supported; request text results")


_INT_BINARY = {INT8: ("!q", "bigint"), INT4: ("!i", "integer"), INT2: ("!h", "smallint")}


def _numeric_binary(value: object) -> bytes:
    """PostgreSQL's binary ``numeric``: digit count, weight, sign, display scale, then base-10000 digits."""
    if isinstance(value, float):
        if value != value:
            return struct.pack("!hhHh", 0, 0, 0xC000, 0)
        if value in (float("inf"), float("-inf")):
            return struct.pack("!hhHh", 0, 0, 0xD000 if value > 0 else 0xF000, 0)
        value = Decimal(repr(value))
    d = value if isinstance(value, Decimal) else Decimal(int(value))  # type: ignore[call-overload]
    if not d.is_finite():
        return struct.pack("!hhHh", 0, 0, 0xC000 if d.is_nan() else 0xD000 if d > 0 else 0xF000, 0)
    sign, digits, exp = d.as_tuple()
    assert isinstance(exp, int)
    text = "".join(map(str, digits))
    if exp >= 0:
        whole, frac = text + "0" * exp, ""
    elif len(text) > -exp:
        whole, frac = text[:exp], text[exp:]
    else:
        whole, frac = "", "0" * (-exp - len(text)) + text
    whole = whole.lstrip("0")
    whole = "0" * (-len(whole) % 4) + whole
    frac += "0" * (-len(frac) % 4)
    groups = [int(whole[i:i + 4]) for i in range(0, len(whole), 4)]
    weight = len(groups) - 1
    groups += [int(frac[i:i + 4]) for i in range(0, len(frac), 4)]
    while groups and groups[0] == 0:
        groups.pop(0)
        weight -= 1
    while groups and groups[-1] == 0:
        groups.pop()
    if not groups:
        weight = 0
    negative = sign and bool(groups)  # (a numeric zero has no sign)
    return struct.pack(f"!hhHh{len(groups)}H", len(groups), weight, 0x4000 if negative else 0, max(0, -exp), *groups)


def _numeric_from_binary(data: bytes) -> Decimal:
    ndigits, weight, sign, dscale = struct.unpack_from("!hhHh", data)
    if sign in (0xC000, 0xD000, 0xF000):
        return Decimal({0xC000: "NaN", 0xD000: "Infinity", 0xF000: "-Infinity"}[sign])
    if sign not in (0, 0x4000) or ndigits < 0 or dscale < 0 or len(data) != 8 + 2 * ndigits:
        raise ValueError("malformed binary numeric")
    groups = struct.unpack_from(f"!{ndigits}H", data, 8)
    if any(g > 9999 for g in groups):
        raise ValueError("malformed binary numeric")
    whole = EXACT.scaleb(Decimal(int("".join(f"{g:04d}" for g in groups) or "0")), 4 * (weight - ndigits + 1))
    value = EXACT.quantize(whole, Decimal(1).scaleb(-dscale)) if dscale <= 1000 else whole
    return -value if sign == 0x4000 else value


def text_value(value: object) -> str:
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, Decimal):  # (a numeric zero has no sign in PostgreSQL)
        return "NaN" if value.is_nan() else format(value.copy_abs() if value.is_zero() else value, "f")
    if isinstance(value, float):
        return float_text(value)
    return str(value)


def float_text(value: float) -> str:
    """``float8out``: the shortest digits that read back as the same double (Python's ``repr`` finds the same
    ones), written out plainly for a decimal exponent from -4 to 14 and as ``d.ddde+XX`` otherwise; ``-0`` keeps
    its sign."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0" if str(value).startswith("-") else "0"
    sign, digit_tuple, exponent = Decimal(repr(value)).as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    exponent += len(digit_tuple) - len(digits)  # (the zeros cut off the end)
    exp10 = exponent + len(digits) - 1
    if -4 <= exp10 < 15:
        if exponent >= 0:
            text = digits + "0" * exponent
        elif exp10 >= 0:
            text = digits[:exp10 + 1] + "." + digits[exp10 + 1:]
        else:
            text = "0." + "0" * (-exp10 - 1) + digits
    else:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        text = f"{mantissa}e{'+' if exp10 >= 0 else '-'}{abs(exp10):02d}"
    return ("-" if sign else "") + text


def decode_param(data: bytes | None, oid: int, fmt: int) -> object:
    """A Bind parameter as a Python value: text of any type becomes int, float or str by its type OID, read as
    PostgreSQL's input functions read it (``muheam.sql.textinput``: a refusal is a ``textinput.InputError`` with
    its SQLSTATE; an unspecified type stays a string, coerced later where its use tells the type); binary for
    the common types."""
    if data is None:
        return None
    if fmt == 0:
        s = data.decode("utf-8")
        if oid in INT_TYPES:
            return textinput.parse_int(s, INT_BITS[oid])
        if oid in FLOAT_TYPES:
            return textinput.parse_float(s, single=oid == FLOAT4)
        if oid == NUMERIC:
            return parse_numeric(s)
        if oid == BOOL:
            return textinput.parse_bool(s)
        return s
    if oid == INT8 and len(data) == 8:
        return int(struct.unpack("!q", data)[0])
    if oid == INT4 and len(data) == 4:
        return int(struct.unpack("!i", data)[0])
    if oid == INT2 and len(data) == 2:
        return int(struct.unpack("!h", data)[0])
    if oid == FLOAT8 and len(data) == 8:
        return float(struct.unpack("!d", data)[0])
    if oid == FLOAT4 and len(data) == 4:
        return float(struct.unpack("!f", data)[0])
    if oid == BOOL and len(data) == 1:
        return data != b"\0"
    if oid == NUMERIC and len(data) >= 8:
        return _numeric_from_binary(data)
    if oid in (TEXT, VARCHAR, UNKNOWN, 0):
        return data.decode("utf-8")
    raise ValueError(f"binary parameter of type {oid} ({len(data)} bytes) is not supported")
