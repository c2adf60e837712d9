"""Outputs of the lock manager: plain records the caller acts on (send, tell the client, start recovery)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Union

from locking.glsn import Glsn
from locking.messages import Message, Mode, Version


@dataclass(frozen=True, slots=True)
class Send:
    """Transmit ``msg`` to ``dest`` with Lamport ``stamp`` (already taken from the shared clock).

    The transport must deliver the Sends for one destination in the order they were drained (FIFO).
    """

    dest: int
    stamp: int
    msg: Message

    def wire(self) -> list[object]:
        return self.msg.to_wire()


@dataclass(frozen=True, slots=True)
class Granted:
    """The local client now holds ``resource`` in ``mode`` (which may be stronger than asked).

    ``glsn`` is the queue entry the grant is ordered by (for a cached re-acquire: the cached entry's).
    ``value``/``version`` are the latest value block known; ``valid`` is False when a dead member may have
    changed the resource without telling anyone (or the bytes could not be fetched): the holder must rebuild
    the value (recovery: shared disk + the dead node's WAL) and should release with the rebuilt value.
    """

    resource: bytes
    mode: Mode
    glsn: Glsn
    version: Version
    value: bytes | None
    valid: bool


@dataclass(frozen=True, slots=True)
class ReleaseDemanded:
    """Another node waits for ``resource``: finish (flush WAL, etc.) and call ``release`` soon."""

    resource: bytes


@dataclass(frozen=True, slots=True)
class NeedsRecovery:
    """``dead_node`` was removed while holding, or possibly holding, ``resource`` exclusively under entry
    ``glsn``; ``known_version`` is what this node knew.  The value stays marked until a later exclusive holder
    writes a rebuilt one; grants meanwhile report ``valid=False``."""

    resource: bytes
    dead_node: int
    glsn: Glsn
    known_version: Version


Effect = Union[Send, Granted, ReleaseDemanded, NeedsRecovery]


class Ticket(NamedTuple):
    """What ``acquire`` returns: the entry GLSN, or None while a joining node waits to learn the queues."""

    resource: bytes
    mode: Mode
    glsn: Glsn | None
