"""Messages of the commit rounds (mesh kind ``tx``) as frozen dataclasses with a validated wire form.

As ``locking.messages``: ``to_wire()`` gives exactly the msgpack-friendly lists the nodes exchanged before this
module existed (so nodes of either version understand each other), and ``from_wire()`` checks untrusted input
and raises ``ValueError`` naming what is wrong, which the mesh counts as ``rejected_body`` and drops.

    ["prep", round, [xid...]]                       prepare: mark the XIDs prepared, then ack
    ["done", round, [[xid, cts]...], [xid...]]      outcomes: committed with their CTS, aborted; then ack
    ["ack", round]                                  the sender has applied round ``round``
    ["sync"]                                        a joining node asks for the transaction table
    ["state", {floor, committed, aborted, prepared}] the answer (``TxTable.export``)
    ["hz", glsn]                                    the sender's pruning horizon
    ["wfg", [[waiter, blocker]...]]                 the sender's long row waits
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

MAX_ITEMS = 1_000_000
"""Items in any list of a message (a round never carries more XIDs than one loop turn decides)."""


@dataclass(frozen=True, slots=True)
class Prep:
    round: int
    xids: tuple[int, ...]

    def to_wire(self) -> list[object]:
        return ["prep", self.round, list(self.xids)]


@dataclass(frozen=True, slots=True)
class Done:
    round: int
    committed: tuple[tuple[int, int], ...]
    aborted: tuple[int, ...]

    def to_wire(self) -> list[object]:
        return ["done", self.round, [list(c) for c in self.committed], list(self.aborted)]


@dataclass(frozen=True, slots=True)
class Ack:
    round: int

    def to_wire(self) -> list[object]:
        return ["ack", self.round]


@dataclass(frozen=True, slots=True)
class Sync:
    def to_wire(self) -> list[object]:
        return ["sync"]


@dataclass(frozen=True, slots=True)
class State:
    """A transaction table as ``TxTable.export`` gives it and ``TxTable.merge`` takes it."""

    floor: int
    committed: tuple[tuple[int, int], ...]
    aborted: tuple[int, ...]
    prepared: tuple[int, ...]

    @classmethod
    def of(cls, export: dict[str, object]) -> "State":
        return _state(export)

    def table(self) -> dict[str, object]:
        return {"floor": self.floor, "committed": [list(c) for c in self.committed], "aborted": list(self.aborted),
                "prepared": list(self.prepared)}

    def to_wire(self) -> list[object]:
        return ["state", self.table()]


@dataclass(frozen=True, slots=True)
class Horizon:
    glsn: int

    def to_wire(self) -> list[object]:
        return ["hz", self.glsn]


@dataclass(frozen=True, slots=True)
class Waits:
    pairs: tuple[tuple[int, int], ...]

    def to_wire(self) -> list[object]:
        return ["wfg", [list(p) for p in self.pairs]]


TxMessage = Union[Prep, Done, Ack, Sync, State, Horizon, Waits]


def from_wire(body: object) -> TxMessage:
    """Decode and validate a ``tx`` body; anything malformed raises ``ValueError``."""
    if not isinstance(body, (list, tuple)) or not body or not isinstance(body[0], str):
        raise ValueError("tx message must be [op, ...]")
    op, n = body[0], len(body)
    if op == "ack" and n == 2:
        return Ack(_uint(body[1], "round"))
    if op == "prep" and n == 3:
        return Prep(_uint(body[1], "round"), _xids(body[2], "xids"))
    if op == "done" and n == 4:
        return Done(_uint(body[1], "round"), _pairs(body[2], "committed"), _xids(body[3], "aborted"))
    if op == "sync" and n == 1:
        return Sync()
    if op == "state" and n == 2:
        return _state(body[1])
    if op == "hz" and n == 2:
        return Horizon(_uint(body[1], "horizon"))
    if op == "wfg" and n == 2:
        return Waits(_pairs(body[1], "waits"))
    raise ValueError(f"malformed tx message {op!r}")


def _uint(x: object, what: str) -> int:
    if not isinstance(x, int) or isinstance(x, bool) or x < 0:
        raise ValueError(f"{what}: expected a non-negative int, got {x!r:.40}")
    return x


def _list(x: object, what: str) -> list[object] | tuple[object, ...]:
    if not isinstance(x, (list, tuple)):
        raise ValueError(f"{what}: expected a list, got {type(x).__name__}")
    if len(x) > MAX_ITEMS:
        raise ValueError(f"{what}: {len(x)} items is too many")
    return x


def _xids(x: object, what: str) -> tuple[int, ...]:
    return tuple(_uint(v, what) for v in _list(x, what))


def _pairs(x: object, what: str) -> tuple[tuple[int, int], ...]:
    out = []
    for p in _list(x, what):
        items = _list(p, what)
        if len(items) != 2:
            raise ValueError(f"{what}: expected pairs")
        out.append((_uint(items[0], what), _uint(items[1], what)))
    return tuple(out)


def _state(x: object) -> State:
    if not isinstance(x, dict):
        raise ValueError("state: expected a map")
    floor = x.get("floor")
    return State(_uint(floor, "state.floor"), _pairs(x.get("committed"), "state.committed"),
                 _xids(x.get("aborted"), "state.aborted"), _xids(x.get("prepared"), "state.prepared"))
