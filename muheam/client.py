"""Talking to a node's client port.

``request(endpoint, op, ...)`` is the one-shot form the CLI uses (status for ``muheam list``).  Every call has a
deadline: a node that died gives ``NodeUnavailable``, never a hang.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Union

import zmq

from muheam.net.request import Requester, check_endpoint
from muheam import errors
from muheam.errors import MuheamError
from muheam.security.setup import resolve_client
from muheam.security.sockets import ClientSecurity

KeyArg = Union[str, "os.PathLike[str]", ClientSecurity, None]
"""A client key: a path to a ``.key_secret`` file, a loaded ``ClientSecurity``, or None (find it)."""

#: a little longer than a node's lock and idle-in-transaction timeouts (10 s by default), so that a row-lock wait
#: ends as ``LockTimeout`` from the node, not as ``NodeUnavailable`` here
DEFAULT_TIMEOUT = 30.0
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


class NodeUnavailable(MuheamError):
    """The node did not answer in time (down, paused, or unreachable) or refused the connection (not running)."""


class AuthenticationFailed(NodeUnavailable):
    """The node refused this client's CURVE key (none, revoked, or another cluster's), or its key was revoked
    while connected.  Known from the handshake within a second, not after the timeout."""


class ValueOutOfRange(ValueError):
    """An integer key or value does not fit in int64 (rejected before anything is sent)."""


def _check_int64(what: str, value: object) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
        raise ValueOutOfRange(f"{what} {value} is out of the int64 range ({INT64_MIN} .. {INT64_MAX})")


def _check_row(table: str, row: dict[str, Any]) -> None:
    for column, value in row.items():
        _check_int64(f"{table}.{column}:", value)


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


def request(endpoint: str, op: str, timeout: float = 2.0, client_key: KeyArg = None, **args: Any) -> Any:
    """One request on a throw-away connection (the CLI's ``status`` for ``muheam list``); ``client_key`` as
    ``connect``'s ``key``."""
    with Connection(endpoint, timeout, key=client_key) as conn:
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


class ReplicaNotConfirmed(ClientError):
    """The transaction IS committed on the cluster, but its commit scope's replicas did not confirm it before the
    scope's ``ABORT ON`` timeout (``muheam.cluster.scopes``): nothing is rolled back; it reaches them later."""


_ERRORS: dict[str, type[ClientError]] = {
    cls.__name__: cls for cls in (SerializationFailure, DeadlockDetected, NoSuchTable, TableExists, DuplicateKey,
                                  KeyNotFound, LockTimeout, NoSuchTransaction, NotSupported, ReplicaNotConfirmed)
}


def _raise(code: str, message: str) -> None:
    raise _ERRORS.get(code, ClientError)(code, message)


class Connection:
    """One client connection to one node's client port.  Not thread-safe: use one per thread."""

    def __init__(self, endpoint: str, timeout: float = DEFAULT_TIMEOUT, key: KeyArg = None) -> None:
        self.endpoint = check_endpoint(endpoint, "client endpoint")
        self.timeout = timeout
        self.security = resolve_client(key)
        self._req: Requester | None = None

    def call(self, op: str, **args: Any) -> Any:
        """Send one request and wait for its reply; a node that does not answer in time, or refuses the
        connection (nothing listens: known within about 0.1 s), is ``NodeUnavailable``; one that refuses this
        client's key is ``AuthenticationFailed``."""
        if self._req is None:
            self._req = Requester(_context(), self.endpoint, NodeUnavailable, who="node", envelope=True,
                                  security=self.security, refused=AuthenticationFailed,
                                  key_source=self.security.pair.source if self.security else "")
        try:
            reply = self._req.request({"op": op, **args}, self.timeout, op)
        except NodeUnavailable:
            self.close()  # a late reply must not be taken for the answer to the next request
            raise
        if not isinstance(reply, dict):
            raise ClientError("malformed", f"node at {self.endpoint} sent a malformed reply")
        if not reply.get("ok"):
            err = reply.get("error") or {}
            if err.get("code") == "unauthorized":
                self.close()
                raise AuthenticationFailed(f"node at {self.endpoint}: {err.get('message', 'unauthorized')}")
            _raise(str(err.get("code", "error")), str(err.get("message", "unknown error")))
        return reply.get("result")

    def close(self) -> None:
        if self._req is not None:
            self._req.close()
            self._req = None

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create_table(self, name: str, columns: dict[str, str], expected_rows: int = 0, buckets: int = 0) -> Any:
        """``buckets``: hash chains (0: sized from ``expected_rows``); chains are the unit of block ownership."""
        return self.call("create_table", name=name, columns=columns, expected_rows=expected_rows, buckets=buckets)

    def drop_table(self, name: str, if_exists: bool = False) -> Any:
        """Drop a table for the whole cluster, at once (not part of any transaction: changes to it by running
        transactions go with it).  Raises ``NoSuchTable`` unless ``if_exists``."""
        return self.call("drop_table", name=name, if_exists=if_exists)

    def tables(self) -> Any:
        return self.call("tables")

    def writers(self) -> list[int]:
        """XIDs of this node's transactions that wrote and have not ended (running, or committing until their
        COMMIT is durable)."""
        result = self.call("writers")
        xids = result.get("xids") if isinstance(result, dict) else None
        if not isinstance(xids, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in xids):
            raise ClientError("malformed", f"node at {self.endpoint} sent a malformed writers reply")
        return xids

    def transaction(self) -> "ClientTransaction":
        return ClientTransaction(self)


class ClientTransaction:
    """``with conn.transaction() as tx:`` commits on normal exit and rolls back on an exception."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.xid: int | None = None
        self.sts: int | None = None
        """The snapshot's timestamp (a GLSN): the transaction sees exactly the commits whose commit timestamp, the
        GLSN of their COMMIT record, is below it (``muheam.cluster.txstate``)."""
        self.done = False

    def __enter__(self) -> "ClientTransaction":
        reply = self.conn.call("begin")
        self.xid = int(reply["xid"])
        sts = reply.get("sts")
        self.sts = sts if isinstance(sts, int) and not isinstance(sts, bool) else None
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if self.done:
            return
        if exc_type is None:
            self.commit()
        else:
            try:
                self.rollback()
            except ClientError:
                pass  # the exception that ended the block is the one to see (the node stopping raises again next)

    def _op(self, op: str, **args: Any) -> Any:
        try:
            return self.conn.call(op, xid=self.xid, **args)
        except ClientError:
            self.done = True  # the node rolled the transaction back
            raise

    def get(self, table: str, key: int) -> dict[str, Any] | None:
        _check_int64(f"{table} key", key)
        result: dict[str, Any] | None = self._op("get", table=table, key=key)
        return result

    def insert(self, table: str, key: int, row: dict[str, Any]) -> None:
        _check_int64(f"{table} key", key)
        _check_row(table, row)
        self._op("insert", table=table, key=key, row=row)

    def update(self, table: str, key: int, changes: dict[str, Any]) -> None:
        _check_int64(f"{table} key", key)
        _check_row(table, changes)
        self._op("update", table=table, key=key, changes=changes)

    def add(self, table: str, key: int, column: str, delta: int | float) -> None:
        _check_int64(f"{table} key", key)
        _check_int64(f"{table}.{column}: delta", delta)
        self._op("add", table=table, key=key, column=column, delta=delta)

    def delete(self, table: str, key: int) -> None:
        _check_int64(f"{table} key", key)
        self._op("delete", table=table, key=key)

    def lock(self, table: str, key: int) -> None:
        _check_int64(f"{table} key", key)
        self._op("lock", table=table, key=key)

    def scan(self, table: str | int, page_rows: int = 10_000) -> Iterator[tuple[int, dict[str, Any]]]:
        """Every row the transaction sees, a page of about ``page_rows`` at a time (one request each, all under
        the transaction's one snapshot), so a table of any size can be read.  ``table``: its name, or its id
        (``tables()``), which no other table ever gets: a scan by id of a table dropped meanwhile fails with
        ``NoSuchTable`` rather than read a new table of that name.  A scan by name goes on by the id its first
        page names: a table dropped and made anew under the name between pages is another table (its next page
        read the new one from the old one's position: rows went missing without a word)."""
        at: int | None = 1
        while at is not None:
            page = self._op("scan", table=table, from_bucket=at, page_rows=page_rows)
            for key, row in page["rows"]:
                yield int(key), row
            at = page["next"]
            pinned = page.get("table_id")
            if type(pinned) is int and pinned > 0:  # (a node of an older version does not name it)
                table = pinned

    def commit(self, scope: str | None = None) -> dict[str, Any]:
        """Commit; ``scope`` (e.g. 'ANY 1 (replicas) ON applied ABORT ON 2s') overrides the cluster's
        ``commit_scope``.  The reply's ``scope`` is ``confirmed`` or ``degraded`` under a scope; raises
        ``ReplicaNotConfirmed`` when its timeout passed (the transaction is committed all the same)."""
        self.done = True
        args = {} if scope is None else {"scope": scope}
        result: dict[str, Any] = self.conn.call("commit", xid=self.xid, **args)
        return result

    def rollback(self) -> None:
        """Roll back.  Raises ``ClientError`` when the node could not answer it normally, e.g. ``StorageFailed``
        or ``engine_stopped`` when the node stops (the transaction is rolled back all the same, but the work must
        go to another node); an already ended transaction (``NoSuchTransaction``) is not an error here."""
        if not self.done:
            self.done = True
            try:
                self.conn.call("rollback", xid=self.xid)
            except NoSuchTransaction:
                pass  # already rolled back by the node


def connect(endpoint: str, timeout: float = DEFAULT_TIMEOUT, key: KeyArg = None) -> Connection:
    """A connection to the node whose client endpoint is ``endpoint`` (``tcp://HOST:PORT``, e.g. from ``muheam list
    --format json``).  ``timeout``: seconds to wait for each reply (longer than the node's lock timeout, so a
    row-lock wait ends as ``LockTimeout``).  A malformed endpoint is a ``ValueError`` at once; keys and integer
    values outside int64 are ``ValueOutOfRange`` (a ``ValueError``) before anything is sent.

    ``key``: the CURVE client key file (``.key_secret``, made by ``cluster init`` or ``muheam keys add-client``);
    without it, ``$MUHEAM_CLIENT_KEY``, else the config named by ``$MUHEAM_CONFIG`` or ``./muheam.toml`` (see
    ``muheam.security.setup``).  A node that refuses the key raises ``AuthenticationFailed`` at the first call."""
    return Connection(endpoint, timeout, key)
