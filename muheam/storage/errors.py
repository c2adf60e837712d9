"""Typed storage errors.

They subclass ``MuheamError`` so the CLI prints them on one line; each message names the table, column, block or
key involved and says what the operator (or the calling layer) should do next.
"""

from __future__ import annotations

from pathlib import Path

from muheam.errors import MuheamError


class StorageError(MuheamError):
    """Base class of every error raised by ``muheam.storage``."""


class SchemaError(StorageError, ValueError):
    """A table definition is invalid (bad name, unknown type, row too wide for a page)."""

    exit_code = 2


class RowValueError(StorageError, ValueError):
    """A row does not match its table's schema; ``column`` names the offending column (or ``None``)."""

    exit_code = 2

    def __init__(self, message: str, *, table: str, column: str | None) -> None:
        super().__init__(message)
        self.table = table
        self.column = column


class ValueOutOfRange(RowValueError):
    """A number outside what its column (or the bounds its caller set) can hold: SQL's 22003."""


class PageCorrupt(StorageError):
    """A block read from a relation file failed verification (checksum, magic, block number, layout).

    Do not overwrite it: restore the block from the merged WAL (redo from the last checkpoint) or from a backup.
    """

    def __init__(self, message: str, *, block: int, path: Path | None = None) -> None:
        super().__init__(message)
        self.block = block
        self.path = path


class PageZeroed(PageCorrupt):
    """A block is all zeros: it was never written (for example an extension torn by a crash).

    Redo may legitimately initialise it; any other reader should treat it as corruption.
    """


class PageFull(StorageError):
    """No free tuple slot on this page; the caller prunes or moves on to (or allocates) an overflow block."""


class SlotError(StorageError, IndexError):
    """A tuple slot number is out of range, or is free/used when the operation needs the opposite."""


class GlsnRegression(StorageError):
    """A change would stamp a page with a GLSN not above its current one, violating invariant I2.

    This is a bug in the caller (ownership or clock handling); stop the node rather than write the page.
    """


class RowConflict(StorageError):
    """Another transaction already deleted, updated or locked this row version.

    If ``committed`` is false the blocker may still abort: wait for ``blocker`` to finish and retry.  If it is
    true the row changed after the snapshot was taken: under REPEATABLE READ the transaction must roll back and
    be retried (PostgreSQL's "could not serialize access due to concurrent update").
    """

    def __init__(self, message: str, *, key: int, blocker: int, committed: bool) -> None:
        super().__init__(message)
        self.key = key
        self.blocker = blocker
        self.committed = committed


class KeyNotFound(StorageError, KeyError):
    """No version of the key is visible to the snapshot (for update, delete or lock)."""

    def __init__(self, message: str, *, key: int) -> None:
        super().__init__(message)
        self.key = key

    def __str__(self) -> str:
        return str(self.args[0])


class DuplicateKey(StorageError):
    """An insert found a live version of the same primary key; the statement fails (unique violation)."""

    def __init__(self, message: str, *, key: int) -> None:
        super().__init__(message)
        self.key = key


class RelationFileError(StorageError):
    """A relation file is missing, of the wrong size, or belongs to another table; the message names it."""

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path
