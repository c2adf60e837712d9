"""Talking to a node's client port.

``request(endpoint, op, ...)`` is the one-shot form the CLI uses (status for ``muheam list``).  Every call has a
deadline: a node that died gives ``NodeUnavailable``, never a hang.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import zmq

from muheam.net import wire
from muheam import errors
from muheam.errors import MuheamError


class NodeUnavailable(MuheamError):
    """The node did not answer in time (down, paused, or unreachable)."""


class RequestFailed(MuheamError):
    """The node answered with an error; ``code`` says which."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


_ctx: zmq.Context[Any] | None = None
_ctx_pid = 0


def _context() -> zmq.Context[Any]:
    """One context per process: a context inherited across fork() must not be used (its I/O thread is gone)."""
    global _ctx, _ctx_pid
    if _ctx is None or _ctx_pid != os.getpid():
        _ctx = zmq.Context()
        _ctx_pid = os.getpid()
    return _ctx


def request(endpoint: str, op: str, timeout: float = 2.0, **args: Any) -> Any:
    """One request on a throw-away connection (the CLI's ``status`` for ``muheam list``)."""
    with Connection(endpoint, timeout) as conn:
        return conn.call(op, **args)


# --- the client library ----------------------------------------------------------------------------------------

class ClientError(RequestFailed):
    """Base of the typed errors a node reports for a request."""


class SerializationFailure(ClientError, errors.SerializationFailure):
    """Another transaction changed the row first (REPEATABLE READ); retry the whole transaction."""


class DeadlockDetected(ClientError):
    """This transaction was chosen as a deadlock victim; retry it."""


class NoSuchTable(ClientError):
    """The table does not exist; create it or check the name."""


class TableExists(ClientError):
    """A table of that name exists already."""


class DuplicateKey(ClientError):
    """A row with that key exists already."""


class KeyNotFound(ClientError):
    """No row with that key is visible to the transaction."""


class LockTimeout(ClientError):
    """A row stayed locked by another transaction for longer than the lock timeout."""


class NoSuchTransaction(ClientError):
    """The transaction is not running on that node (it ended, or was rolled back after an error or timeout)."""


class NotSupported(ClientError):
    """The node cannot do this in its current configuration; the message says why."""


_ERRORS: dict[str, type[ClientError]] = {
    cls.__name__: cls for cls in (SerializationFailure, DeadlockDetected, NoSuchTable, TableExists, DuplicateKey,
                                  KeyNotFound, LockTimeout, NoSuchTransaction, NotSupported)
}


def _raise(code: str, message: str) -> None:
    raise _ERRORS.get(code, ClientError)(code, message)


class Connection:
    """One client connection to one node's client port.  Not thread-safe: use one per thread."""

    def __init__(self, endpoint: str, timeout: float = 10.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._sock: zmq.Socket[Any] | None = None

    def _socket(self) -> zmq.Socket[Any]:
        if self._sock is None:
            self._sock = _context().socket(zmq.DEALER)
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.connect(self.endpoint)
        return self._sock

    def call(self, op: str, **args: Any) -> Any:
        """Send one request and wait for its reply; a node that does not answer in time is ``NodeUnavailable``."""
        sock = self._socket()
        sock.send_multipart([b"", wire.pack({"op": op, **args})])
        if not sock.poll(int(self.timeout * 1000)):
            self.close()  # a late reply must not be taken for the answer to the next request
            raise NodeUnavailable(f"node at {self.endpoint} did not answer {op!r} within {self.timeout:g} s")
        reply = wire.unpack(sock.recv_multipart()[-1], wire.MAX_CLIENT_FRAME)
        if not isinstance(reply, dict):
            raise ClientError("malformed", f"node at {self.endpoint} sent a malformed reply")
        if not reply.get("ok"):
            err = reply.get("error") or {}
            _raise(str(err.get("code", "error")), str(err.get("message", "unknown error")))
        return reply.get("result")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create_table(self, name: str, columns: dict[str, str], expected_rows: int = 0, buckets: int = 0) -> Any:
        """``buckets``: hash chains (0: sized from ``expected_rows``); chains are the unit of block ownership."""
        return self.call("create_table", name=name, columns=columns, expected_rows=expected_rows, buckets=buckets)

    def tables(self) -> Any:
        return self.call("tables")

    def transaction(self) -> "ClientTransaction":
        return ClientTransaction(self)


class ClientTransaction:
    """``with conn.transaction() as tx:`` commits on normal exit and rolls back on an exception."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.xid: int | None = None
        self.done = False

    def __enter__(self) -> "ClientTransaction":
        self.xid = int(self.conn.call("begin")["xid"])
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if self.done:
            return
        if exc_type is None:
            self.commit()
        else:
            self.rollback()

    def _op(self, op: str, **args: Any) -> Any:
        try:
            return self.conn.call(op, xid=self.xid, **args)
        except ClientError:
            self.done = True  # the node rolled the transaction back
            raise

    def get(self, table: str, key: int) -> dict[str, Any] | None:
        result: dict[str, Any] | None = self._op("get", table=table, key=key)
        return result

    def insert(self, table: str, key: int, row: dict[str, Any]) -> None:
        self._op("insert", table=table, key=key, row=row)

    def update(self, table: str, key: int, changes: dict[str, Any]) -> None:
        self._op("update", table=table, key=key, changes=changes)

    def add(self, table: str, key: int, column: str, delta: int | float) -> None:
        self._op("add", table=table, key=key, column=column, delta=delta)

    def delete(self, table: str, key: int) -> None:
        self._op("delete", table=table, key=key)

    def lock(self, table: str, key: int) -> None:
        self._op("lock", table=table, key=key)

    def scan(self, table: str) -> Iterator[tuple[int, dict[str, Any]]]:
        for key, row in self._op("scan", table=table):
            yield int(key), row

    def commit(self) -> None:
        self.done = True
        self.conn.call("commit", xid=self.xid)

    def rollback(self) -> None:
        if not self.done:
            self.done = True
            try:
                self.conn.call("rollback", xid=self.xid)
            except ClientError:
                pass  # already rolled back by the node


def connect(endpoint: str, timeout: float = 10.0) -> Connection:
    """A connection to the node whose client endpoint is ``endpoint`` (e.g. from ``muheam list --format json``)."""
    return Connection(endpoint, timeout)
