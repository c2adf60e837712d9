"""Typed WAL errors.  Each message says what went wrong, where, and what the operator should do next."""

from __future__ import annotations

from pathlib import Path

from walmerge.lsn import format_lsn as format_lsn  # re-exported: its old home


class WalError(Exception):
    """Base class of every error raised by ``walmerge``."""


class RecordTooLarge(WalError, ValueError):
    """A record cannot fit in one segment (records never span segments)."""


class WalWriteError(WalError):
    """Writing, syncing or creating a WAL file failed (disk full, I/O error...).

    After this the writer refuses further appends: records already reported durable by ``flush`` are safe on
    disk, anything later is in doubt.  The node must stop and reopen the writer (restart), which re-reads the
    WAL from disk and resumes after the last valid record.
    """

    def __init__(self, message: str, *, path: Path | None = None, lsn: int | None = None,
                 errno: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.lsn = lsn
        self.errno = errno


class WalMismatch(WalError):
    """A segment belongs to another cluster, node or format (wrong system id, node id, size or version).

    This is not damage: somebody pointed the node at the wrong directory or copied foreign files into it.
    """

    def __init__(self, message: str, *, path: Path) -> None:
        super().__init__(message)
        self.path = path


class WalCorruption(WalError):
    """Damage in the middle of a WAL stream: data that had been made durable no longer reads back.

    ``lsn`` is where the valid stream ends (the damaged record's position).  Records before it are intact.
    To start anyway, an operator can accept losing everything from ``lsn`` on with
    ``walmerge.truncate_at(directory, lsn, ...)`` (the node agent exposes this behind an explicit flag).
    """

    def __init__(self, reason: str, *, path: Path, offset: int, lsn: int) -> None:
        self.reason = reason
        self.path = path
        self.offset = offset
        self.lsn = lsn
        super().__init__(
            f"WAL corruption in segment {path} at offset {offset} (LSN {format_lsn(lsn)}): {reason}. "
            f"Records before LSN {format_lsn(lsn)} are intact; what follows cannot be trusted. Restore the "
            f"segment from a copy, or accept losing everything from that LSN: start the node with "
            f"'muheam node start --accept-data-loss' (from Python: walmerge.truncate_at(<wal dir>, {lsn:#x}))."
        )


class WalMissingSegment(WalCorruption):
    """A segment file in the middle of the stream is missing (the writer never skips a segment)."""

    def __init__(self, *, path: Path, lsn: int) -> None:
        self.missing = path
        super().__init__(f"first missing WAL segment is {path.name}", path=path, offset=0, lsn=lsn)
