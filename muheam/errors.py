"""Operator-facing errors: the one error hierarchy.

Every error the CLI can report is a ``MuheamError`` whose message names the problem and the next step; the CLI
prints it on one line and exits with the error's code, never with a traceback.  Exit codes follow patronictl
and pg tools: 0 success, 1 the operation failed, 2 bad usage or configuration (or input that cannot be used).

Errors of ``walmerge`` cannot be ``MuheamError``s (``walmerge`` never imports ``muheam``): ``operator_error``
gives their operator-facing form, and the CLI's ``main`` uses it for anything outside this tree.  Modules define
their own subclasses next to the code that raises them (``StreamError`` in ``walstream``, ``RestoreError`` ...);
what matters is that they are rooted here.
"""

from __future__ import annotations


class MuheamError(Exception):
    """An error with a message meant for an operator."""

    exit_code = 1


class ConfigError(MuheamError):
    """A configuration value is missing or wrong; the message names the key and the fix."""

    exit_code = 2


class EtcdUnavailable(MuheamError):
    """etcd could not be reached or did not answer in time."""


class ClusterStateError(MuheamError):
    """The cluster, the shared directory or etcd is not in the state the command needs."""


class NodeIdInUse(MuheamError):
    """Another live node holds the lease on this node id."""


class Fenced(MuheamError):
    """This node lost (or could not renew) its lease and must not touch shared storage."""

    exit_code = 3


class SerializationFailure(MuheamError):
    """First-updater-wins (REPEATABLE READ): a transaction the snapshot does not see changed the row and committed.

    The transaction must be rolled back and retried from the start with a new XID and snapshot.  The one class of
    this concept: the engine raises it with ``key`` and ``blocker``; the client's
    ``muheam.client.SerializationFailure`` (the same error received over the client port) derives from it, so
    ``except SerializationFailure`` catches both.
    """

    def __init__(self, message: str, *, key: int | None = None, blocker: int | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.blocker = blocker


class WalUnusable(MuheamError):
    """A ``walmerge.WalError`` (damaged, foreign or mismatched WAL; a record too large) as the CLI reports it."""

    exit_code = 2


class WalWriteFailed(MuheamError):
    """A ``walmerge.WalWriteError``: writing or syncing WAL failed (disk full, I/O error)."""


def operator_error(exc: BaseException) -> MuheamError | None:
    """The operator-facing form of an error raised outside the ``MuheamError`` tree, or None if it is a bug.

    Only ``walmerge``'s errors qualify: their messages are already written for operators (what, where, what to
    do), they just cannot derive from ``MuheamError``."""
    from walmerge.errors import WalError, WalWriteError  # muheam may import walmerge, never the reverse

    if isinstance(exc, WalWriteError):
        return WalWriteFailed(str(exc))
    if isinstance(exc, WalError):
        return WalUnusable(str(exc))
    return None
