"""The merged WAL stream's messages as frozen dataclasses, and their msgpack maps (protocol version 1).

Why typed: the publisher and the subscriber each built and picked apart the same maps by hand, so a field's
name, type and range were checked (or not) in several places.  Here every message is one class;
``to_wire()`` gives the exact map sent before (same keys in the same order, so the same bytes on the wire) and
``from_wire()`` checks an untrusted map and raises ``BadMessage`` naming what is wrong, as
``locking.messages`` does for the lock protocol.  A request the publisher cannot parse is answered with an
``Error`` of code ``malformed`` and counted; a reply the subscriber cannot parse is a ``StreamError``.

Requests (maps with an ``op``)::

    {"op": "subscribe", "from_lsn": L, "credit": C}   credit optional on the wire (DEFAULT_CREDIT)
    {"op": "credit", "n": K}
    {"op": "ping"}  {"op": "status"}  {"op": "unsubscribe"}

Replies (maps with a ``type``)::

    {"type": "subscribed", "version", "from_lsn", "end_lsn", "system_id", "segment_size", "credit"}
    {"type": "batch", "records": [[lsn, bytes], ...], "next_lsn", "end_lsn"}
    {"type": "pong", "end_lsn", "subscribed"}
    {"type": "status", "endpoint", "end_lsn", "subscribers", "counters"}
    {"type": "unsubscribed"}  {"type": "end", "end_lsn"}  {"type": "error", "code", "message"}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Self, Union

PROTOCOL_VERSION = 1
DEFAULT_CREDIT = 8
MAX_CREDIT_FIELD = 1 << 31
"""Credit above this in one message is refused (the publisher caps what it keeps at ``MAX_CREDIT`` anyway)."""
_U64 = 1 << 64
HEADER_BYTES = 56
"""A merged record is at least its header."""


class BadMessage(ValueError):
    """A map that is not a valid message of this protocol; the text says what is wrong."""


def _uint(value: Any, limit: int = _U64) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < limit


def _need(msg: Mapping[Any, Any], key: str, what: str, ok: Callable[[Any], bool], where: str) -> Any:
    value = msg.get(key)
    if not ok(value):
        raise BadMessage(f"{where} needs {what} '{key}'")
    return value


# --- requests --------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Subscribe:
    """Send every record with LSN >= ``from_lsn`` (a position: 0, a record's LSN or a record's end)."""

    from_lsn: int
    credit: int = DEFAULT_CREDIT

    def __post_init__(self) -> None:
        if not _uint(self.from_lsn) or not _uint(self.credit, MAX_CREDIT_FIELD) or self.credit == 0:
            raise BadMessage("subscribe needs an unsigned integer 'from_lsn' and, optionally, a positive integer "
                             "'credit'")

    def to_wire(self) -> dict[str, Any]:
        return {"op": "subscribe", "from_lsn": self.from_lsn, "credit": self.credit}

    @classmethod
    def from_wire(cls, msg: Mapping[Any, Any]) -> Subscribe:
        from_lsn: Any = msg.get("from_lsn")
        credit: Any = msg.get("credit", DEFAULT_CREDIT)
        return cls(from_lsn, credit)  # type-checked by __post_init__


@dataclass(frozen=True, slots=True)
class Credit:
    """``n`` more batches may be sent."""

    n: int

    def __post_init__(self) -> None:
        if not _uint(self.n, MAX_CREDIT_FIELD) or self.n == 0:
            raise BadMessage("credit needs a positive integer 'n'")

    def to_wire(self) -> dict[str, Any]:
        return {"op": "credit", "n": self.n}

    @classmethod
    def from_wire(cls, msg: Mapping[Any, Any]) -> Credit:
        n: Any = msg.get("n")
        return cls(n)


@dataclass(frozen=True, slots=True)
class _Bare:
    """A message with no field but its name (``KEY: NAME``); other keys a peer adds are ignored."""

    KEY: ClassVar[str] = "op"
    NAME: ClassVar[str] = ""

    def to_wire(self) -> dict[str, Any]:
        return {self.KEY: self.NAME}

    @classmethod
    def from_wire(cls, msg: Mapping[Any, Any]) -> Self:
        return cls()


@dataclass(frozen=True, slots=True)
class Ping(_Bare):
    NAME = "ping"


@dataclass(frozen=True, slots=True)
class StatusRequest(_Bare):
    NAME = "status"


@dataclass(frozen=True, slots=True)
class Unsubscribe(_Bare):
    NAME = "unsubscribe"


Request = Union[Subscribe, Credit, Ping, StatusRequest, Unsubscribe]
_REQUESTS: dict[str, Callable[[Mapping[Any, Any]], Request]] = {
    "subscribe": Subscribe.from_wire, "credit": Credit.from_wire, "ping": Ping.from_wire,
    "status": StatusRequest.from_wire, "unsubscribe": Unsubscribe.from_wire,
}


def request_from_wire(msg: Any) -> Request:
    """The request an untrusted, already unpacked frame holds; ``BadMessage`` if it is none."""
    if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
        raise BadMessage("a request is a msgpack map with a string 'op'")
    parse = _REQUESTS.get(msg["op"])
    if parse is None:
        raise BadMessage(f"unknown op {msg['op'][:40]!r}; ops: {', '.join(_REQUESTS)}")
    return parse(msg)


# --- replies ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Subscribed:
    from_lsn: int
    end_lsn: int
    system_id: int
    segment_size: int
    credit: int
    version: int = PROTOCOL_VERSION

    def to_wire(self) -> dict[str, Any]:
        return {"type": "subscribed", "version": self.version, "from_lsn": self.from_lsn, "end_lsn": self.end_lsn,
                "system_id": self.system_id, "segment_size": self.segment_size, "credit": self.credit}

    @classmethod
    def from_wire(cls, msg: Mapping[Any, Any]) -> Subscribed:
        w = "a 'subscribed' reply"
        return cls(*(_need(msg, k, "an unsigned integer", _uint, w)
                     for k in ("from_lsn", "end_lsn", "system_id", "segment_size", "credit", "version")))


@dataclass(frozen=True, slots=True)
class Batch:
    """Whole merged records ``(lsn, bytes)`` in LSN order; ``next_lsn`` is the end of the last one."""

    records: tuple[tuple[int, bytes], ...]
    next_lsn: int
    end_lsn: int

    def to_wire(self) -> dict[str, Any]:
        return {"type": "batch", "records": [[lsn, data] for lsn, data in self.records],
                "next_lsn": self.next_lsn, "end_lsn": self.end_lsn}

    @classmethod
    def from_wire(cls, msg: Mapping[Any, Any]) -> Batch:
        records: Any = msg.get("records")
        nxt: Any = msg.get("next_lsn")
        end: Any = msg.get("end_lsn")
        if not isinstance(records, list) or not _uint(nxt) or not _uint(end):
            raise BadMessage("a batch from the publisher lacks records, next_lsn or end_lsn")
        out = []
        for item in records:
            if not (isinstance(item, list) and len(item) == 2 and _uint(item[0]) and isinstance(item[1], bytes)):
                raise BadMessage("a batch record is not [lsn, bytes]")
            out.append((item[0], item[1]))
        return cls(tuple(out), nxt, end)


@dataclass(frozen=True, slots=True)
class Pong:
    end_lsn: int
    subscribed: bool

    def to_wire(self) -> dict[str, Any]:
        return {"type": "pong", "end_lsn": self.end_lsn, "subscribed": self.subscribed}

    @classmethod
    def from_wire(cls, msg: Mapping[Any, Any]) -> Pong:
        return cls(_need(msg, "end_lsn", "an unsigned integer", _uint, "a pong"),
                   _need(msg, "subscribed", "a boolean", lambda v: isinstance(v, bool), "a pong"))


@dataclass(frozen=True, slots=True)
class Status:
    endpoint: str
    end_lsn: int
    subscribers: int
    counters: dict[str, int] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {"type": "status", "endpoint": self.endpoint, "end_lsn": self.end_lsn,
                "subscribers": self.subscribers, "counters": dict(sorted(self.counters.items()))}

    @classmethod
    def from_wire(cls, msg: Mapping[Any, Any]) -> Status:
        w = "a status reply"
        counters = _need(msg, "counters", "a map of counts",
                         lambda v: isinstance(v, dict) and all(isinstance(k, str) and _uint(n) for k, n in v.items()),
                         w)
        return cls(_need(msg, "endpoint", "a string", lambda v: isinstance(v, str), w),
                   _need(msg, "end_lsn", "an unsigned integer", _uint, w),
                   _need(msg, "subscribers", "an unsigned integer", _uint, w), dict(counters))


@dataclass(frozen=True, slots=True)
class Unsubscribed(_Bare):
    KEY = "type"
    NAME = "unsubscribed"


@dataclass(frozen=True, slots=True)
class End:
    """The publisher stops; ``end_lsn`` is the end of the stream it published."""

    end_lsn: int

    def to_wire(self) -> dict[str, Any]:
        return {"type": "end", "end_lsn": self.end_lsn}

    @classmethod
    def from_wire(cls, msg: Mapping[Any, Any]) -> End:
        return cls(_need(msg, "end_lsn", "an unsigned integer", _uint, "an end message"))


ERROR_CODES = frozenset({"malformed", "bad_lsn", "not_subscribed", "busy", "replay_failed"})


@dataclass(frozen=True, slots=True)
class Error:
    """A refused request: ``code`` is one of ``ERROR_CODES`` (a client treats an unknown one as fatal)."""

    code: str
    message: str

    def to_wire(self) -> dict[str, Any]:
        return {"type": "error", "code": self.code, "message": self.message}

    @classmethod
    def from_wire(cls, msg: Mapping[Any, Any]) -> Error:
        return cls(_need(msg, "code", "a string", lambda v: isinstance(v, str), "an error reply"),
                   _need(msg, "message", "a string", lambda v: isinstance(v, str), "an error reply"))


Reply = Union[Subscribed, Batch, Pong, Status, Unsubscribed, End, Error]
_REPLIES: dict[str, Callable[[Mapping[Any, Any]], Reply]] = {
    "subscribed": Subscribed.from_wire, "batch": Batch.from_wire, "pong": Pong.from_wire,
    "status": Status.from_wire, "unsubscribed": Unsubscribed.from_wire, "end": End.from_wire,
    "error": Error.from_wire,
}


def reply_from_wire(msg: Any) -> Reply:
    """The reply an unpacked frame from the publisher holds; ``BadMessage`` if it is none."""
    kind = msg.get("type") if isinstance(msg, dict) else None
    parse = _REPLIES.get(kind) if isinstance(kind, str) else None
    if parse is None:
        raise BadMessage(f"unexpected message from the publisher: {str(msg)[:80]}")
    return parse(msg)


__all__ = ["Batch", "BadMessage", "Credit", "DEFAULT_CREDIT", "End", "ERROR_CODES", "Error", "PROTOCOL_VERSION",
           "Ping", "Pong", "Reply", "Request", "Status", "StatusRequest", "Subscribe", "Subscribed", "Unsubscribe",
           "Unsubscribed", "reply_from_wire", "request_from_wire"]
