"""Lock-manager messages as plain data, and their msgpack-friendly wire form.

Every message is a frozen dataclass; ``to_wire()`` turns it into nested lists of ints, bytes, bools and None
(exactly what msgpack round-trips), and ``from_wire()`` validates untrusted input and raises ``ValueError`` with a
reason, so a node can count and drop malformed frames instead of crashing.  The Lamport stamp is not part of the
message: it travels beside it (see ``locking.manager``).

Wire form (first element is the kind):

    REQUEST  [1, resource, glsn, mode, have]
    ACK      [2, resource, req_glsn, version, value, marks, others]
    RELEASE  [3, resource, glsn, version, value]
    HELLO    [4, entries, marks, global_marks, values]

where ``glsn`` is a packed GLSN (uint64), ``mode`` is 0 (shared) or 1 (exclusive), ``version`` is
``[packed_glsn, seq]``, ``have`` is a version or None, ``value`` is bytes or None, ``marks`` is a list of packed
GLSNs, ``others`` a list of ``[owner, packed_glsn]``, HELLO ``entries`` a list of
``[resource, owner, glsn, mode, pending, have]``, HELLO ``marks`` a list of ``[resource, packed_glsn]`` and
``global_marks`` a list of packed GLSNs, and HELLO ``values`` a list of ``[resource, version, value]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple, Union

from locking.glsn import MAX_NODE_ID, ZERO, Glsn

MAX_RESOURCE = 1024          # bytes in a resource name
MAX_VALUE = 1 << 20          # bytes in a value block (an 8 KiB page image fits easily)
MAX_LIST = 100_000           # items in any list of a message
_U64 = (1 << 64) - 1
_MAX_SEQ = (1 << 63) - 1


class Mode(IntEnum):
    SHARED = 0
    EXCLUSIVE = 1

    def conflicts(self, other: "Mode") -> bool:
        """Two modes conflict unless both are shared."""
        return self is Mode.EXCLUSIVE or other is Mode.EXCLUSIVE

    def covers(self, wanted: "Mode") -> bool:
        """Holding ``self`` is enough to serve a request for ``wanted``."""
        return self is Mode.EXCLUSIVE or wanted is Mode.SHARED


class Version(NamedTuple):
    """Value-block version: the GLSN of the exclusive grant that wrote it, then a counter within that grant.

    Exclusive grants happen in GLSN order, so ordering versions by ``(glsn, seq)`` orders them by history even
    when a recovering holder never learned what a dead holder wrote (a plain counter could go backwards there).
    """

    glsn: Glsn
    seq: int

    def to_wire(self) -> list[int]:
        return [self.glsn.pack(), self.seq]

    def __str__(self) -> str:
        return f"{self.glsn}#{self.seq}"


ZERO_VERSION = Version(ZERO, 0)


@dataclass(frozen=True, slots=True)
class Request:
    """Ask for ``resource`` in ``mode``; ordered by ``glsn``.  ``have`` is the version whose bytes the asker
    already holds (None: none), so peers ship a value only if the asker lacks it."""

    resource: bytes
    glsn: Glsn
    mode: Mode
    have: Version | None

    def to_wire(self) -> list[object]:
        return [1, self.resource, self.glsn.pack(), int(self.mode), _v_out(self.have)]


@dataclass(frozen=True, slots=True)
class Ack:
    """Acknowledge request ``req_glsn`` and tell the asker what the acker knows of the resource: its best
    version (with the bytes only when useful), its unresolved recovery marks, and the exclusive entries of
    third parties that precede the request (the asker marks those whose owner it does not see alive)."""

    resource: bytes
    req_glsn: Glsn
    version: Version
    value: bytes | None
    marks: tuple[Glsn, ...] = ()
    others: tuple[tuple[int, Glsn], ...] = ()

    def to_wire(self) -> list[object]:
        return [2, self.resource, self.req_glsn.pack(), self.version.to_wire(), self.value,
                [m.pack() for m in self.marks], [[o, g.pack()] for o, g in self.others]]


@dataclass(frozen=True, slots=True)
class Release:
    """Give up the sender's queue entry ``glsn`` for ``resource``; carries the latest version (and its bytes
    where the receiver needs them)."""

    resource: bytes
    glsn: Glsn
    version: Version
    value: bytes | None

    def to_wire(self) -> list[object]:
        return [3, self.resource, self.glsn.pack(), self.version.to_wire(), self.value]


@dataclass(frozen=True, slots=True)
class HelloEntry:
    resource: bytes
    owner: int
    glsn: Glsn
    mode: Mode
    pending: bool
    have: Version | None

    def to_wire(self) -> list[object]:
        return [self.resource, self.owner, self.glsn.pack(), int(self.mode), self.pending, _v_out(self.have)]


@dataclass(frozen=True, slots=True)
class Hello:
    """First message on a new channel: the sender's whole queue state (its own entries, which the receiver
    adopts, and third parties' exclusive entries, which tell a newcomer about holders it never saw), its
    recovery marks, and the versions it knows (bytes only when small), so that what a released lock's last
    writer knew is not lost with it when it dies."""

    entries: tuple[HelloEntry, ...]
    marks: tuple[tuple[bytes, Glsn], ...]
    global_marks: tuple[Glsn, ...]
    values: tuple[tuple[bytes, Version, bytes | None], ...] = ()

    def to_wire(self) -> list[object]:
        return [4, [e.to_wire() for e in self.entries], [[r, g.pack()] for r, g in self.marks],
                [g.pack() for g in self.global_marks], [[r, v.to_wire(), b] for r, v, b in self.values]]


Message = Union[Request, Ack, Release, Hello]


def from_wire(obj: object) -> Message:
    """Decode and validate a wire message; any malformation raises ``ValueError``."""
    items = _list(obj, "message")
    if not items:
        raise ValueError("empty message")
    kind = items[0]
    if kind == 1 and _is_int(kind):
        _arity(items, 5, "REQUEST")
        return Request(_resource(items[1]), _glsn(items[2]), _mode(items[3]), _v_in(items[4], "have", True))
    if kind == 2 and _is_int(kind):
        _arity(items, 7, "ACK")
        version = _v_in(items[3], "version", False)
        assert version is not None
        marks = tuple(_glsn(m) for m in _list(items[5], "marks"))
        others = tuple(_owner_glsn(o) for o in _list(items[6], "others"))
        return Ack(_resource(items[1]), _glsn(items[2]), version, _value(items[4]), marks, others)
    if kind == 3 and _is_int(kind):
        _arity(items, 5, "RELEASE")
        version = _v_in(items[3], "version", False)
        assert version is not None
        return Release(_resource(items[1]), _glsn(items[2]), version, _value(items[4]))
    if kind == 4 and _is_int(kind):
        _arity(items, 5, "HELLO")
        entries = tuple(_hello_entry(e) for e in _list(items[1], "entries"))
        res_marks = tuple(_res_glsn(m) for m in _list(items[2], "marks"))
        gmarks = tuple(_glsn(g) for g in _list(items[3], "global_marks"))
        values = tuple(_res_value(v) for v in _list(items[4], "values"))
        return Hello(entries, res_marks, gmarks, values)
    raise ValueError(f"unknown message kind {kind!r}")


def _v_out(v: Version | None) -> list[int] | None:
    return None if v is None else v.to_wire()


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _list(x: object, what: str) -> list[object] | tuple[object, ...]:
    if not isinstance(x, (list, tuple)):
        raise ValueError(f"{what}: expected a list, got {type(x).__name__}")
    if len(x) > MAX_LIST:
        raise ValueError(f"{what}: {len(x)} items is too many")
    return x


def _arity(items: list[object] | tuple[object, ...], n: int, kind: str) -> None:
    if len(items) != n:
        raise ValueError(f"{kind}: expected {n} fields, got {len(items)}")


def _int(x: object, what: str, hi: int) -> int:
    if not _is_int(x):
        raise ValueError(f"{what}: expected an int, got {type(x).__name__}")
    assert isinstance(x, int)
    if not 0 <= x <= hi:
        raise ValueError(f"{what}: {x} out of range 0..{hi}")
    return x


def _resource(x: object) -> bytes:
    if not isinstance(x, bytes):
        raise ValueError(f"resource: expected bytes, got {type(x).__name__}")
    if len(x) > MAX_RESOURCE:
        raise ValueError(f"resource: {len(x)} bytes is too long")
    return x


def _value(x: object) -> bytes | None:
    if x is None:
        return None
    if not isinstance(x, bytes):
        raise ValueError(f"value: expected bytes or None, got {type(x).__name__}")
    if len(x) > MAX_VALUE:
        raise ValueError(f"value: {len(x)} bytes is too long")
    return x


def _glsn(x: object) -> Glsn:
    return Glsn.unpack(_int(x, "glsn", _U64))


def _mode(x: object) -> Mode:
    return Mode(_int(x, "mode", 1))


def _owner(x: object) -> int:
    return _int(x, "node", MAX_NODE_ID)


def _v_in(x: object, what: str, optional: bool) -> Version | None:
    if x is None and optional:
        return None
    items = _list(x, what)
    if len(items) != 2:
        raise ValueError(f"{what}: expected [glsn, seq]")
    return Version(_glsn(items[0]), _int(items[1], f"{what}.seq", _MAX_SEQ))


def _owner_glsn(x: object) -> tuple[int, Glsn]:
    items = _list(x, "others item")
    if len(items) != 2:
        raise ValueError("others item: expected [owner, glsn]")
    return _owner(items[0]), _glsn(items[1])


def _res_glsn(x: object) -> tuple[bytes, Glsn]:
    items = _list(x, "mark")
    if len(items) != 2:
        raise ValueError("mark: expected [resource, glsn]")
    return _resource(items[0]), _glsn(items[1])


def _res_value(x: object) -> tuple[bytes, Version, bytes | None]:
    items = _list(x, "values item")
    if len(items) != 3:
        raise ValueError("values item: expected [resource, version, value]")
    version = _v_in(items[1], "values item.version", False)
    assert version is not None
    return _resource(items[0]), version, _value(items[2])


def _hello_entry(x: object) -> HelloEntry:
    items = _list(x, "entry")
    if len(items) != 6:
        raise ValueError("entry: expected 6 fields")
    if not isinstance(items[4], bool):
        raise ValueError("entry.pending: expected a bool")
    return HelloEntry(_resource(items[0]), _owner(items[1]), _glsn(items[2]), _mode(items[3]), items[4],
                      _v_in(items[5], "entry.have", True))
