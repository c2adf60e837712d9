"""Typed engine errors.  Each message names the table, key, XID or WAL position and says what to do next."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from muheam.errors import SerializationFailure as SerializationFailure  # the one class, importable here too
from muheam.storage.errors import StorageError


class EngineError(StorageError):
    """Base class of every error raised by ``muheam.engine`` (storage errors pass through unchanged)."""


class NoSuchTable(EngineError, LookupError):
    """A table name or id is not in the catalog."""

    exit_code = 2


class TableExists(EngineError):
    """``create_table`` with a name that is already taken."""

    exit_code = 2


class CatalogWriteFailed(EngineError):
    """``global/catalog`` could not be written (e.g. a full file system): the create or drop did not happen."""


class TransactionError(EngineError):
    """A transaction was used wrongly: unknown or finished XID, XID reused, engine stopped, ..."""


class Deadlock(TransactionError):
    """Waiting for ``blocker`` would close a cycle of waiting transactions; abort this one and retry."""

    def __init__(self, message: str, *, xid: int, blocker: int) -> None:
        super().__init__(message)
        self.xid = xid
        self.blocker = blocker


class EngineStopped(EngineError):
    """An earlier WAL or data-file failure stopped the engine (like a PostgreSQL PANIC): restart the node."""


class StorageFailed(EngineStopped):
    """Writing the WAL or a data file just failed (disk full, I/O error): the engine stopped at this error."""


class WalDamaged(EngineError):
    """Recovery met corruption in the middle of this node's WAL and refused to open.

    ``path``/``offset``/``lsn`` say where; the message tells the operator the two ways on.
    """

    def __init__(self, message: str, *, path: Path, offset: int, lsn: int) -> None:
        super().__init__(message)
        self.path = path
        self.offset = offset
        self.lsn = lsn


class StateFileCorrupt(EngineError):
    """A catalog, checkpoint or xact status file failed its checksum or could not be parsed."""

    def __init__(self, message: str, *, path: Path) -> None:
        super().__init__(message)
        self.path = path


class NeedOwnership(Exception):
    """Raised inside an engine operation: acquire ``resource`` in ``mode`` and run the operation again."""

    def __init__(self, resource: bytes, mode: Any, keep: bytes | None = None) -> None:
        super().__init__(f"need {getattr(mode, 'name', mode)!s} ownership of {resource!r}")
        self.resource = resource
        self.mode = mode
        self.keep = keep
        """A chain the operation already holds and must keep until this grant (see ``Ownership.acquire``)."""
