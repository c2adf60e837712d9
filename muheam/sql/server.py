"""The SQL port's sockets: a listening TCP socket and one non-blocking socket per client, in the node's loop.

No threads: the node registers the listening socket with its ``zmq.Poller`` (which takes raw file descriptors),
and the server registers each accepted connection there too, for reading, and for writing only while it has
bytes the kernel would not take.  ``handle(ready)`` is called with the poller's result every loop turn; each
connection's protocol lives in a ``Session`` (no I/O of its own), whose ``on_output`` pushes what it produced.

One connection's misbehaviour (malformed bytes, a flood) ends that connection only: a protocol violation is
answered with a FATAL error and a close, a client that stops reading is cut off once ``MAX_PENDING`` bytes of
answers wait for it, and every other connection is served meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping
from urllib.parse import urlparse

import zmq

from muheam.sql import wire
from muheam.sql.auth import is_loopback
from muheam.sql.catalog import Catalog
from muheam.sql.execute import Operation
from muheam.sql.session import Session
from muheam.sql.offloop import Job, ParseWorker
from muheam.sql.turns import Turns

log = logging.getLogger("muheam.sql")

MAX_PENDING = 64 << 20
"""Bytes of answers a connection may leave unread before it is closed."""
MAX_CONNECTIONS = 500
READ_CHUNK = 1 << 16
_POLLOUT, _READABLE = int(zmq.POLLOUT), int(zmq.POLLIN | zmq.POLLERR)
"""As plain ints: testing a poll result against pyzmq's flag enums runs ``enum`` code on every event."""


class _Conn:
    def __init__(self, sock: socket.socket, session: Session) -> None:
        self.sock = sock
        self.session = session
        self.pending = bytearray()
        self.writing = False


class SqlServer:
    def __init__(self, endpoint: str, ops: Mapping[str, Operation], shared_dir: Path | None, node_id: int,
                 auth: str = "trust", long_work: Callable[[], ContextManager[None]] = contextlib.nullcontext) -> None:
        """``long_work``: the node's context for work that holds its loop for long (``Session.long_work``)."""
        self.long_work = long_work
        parsed = urlparse(endpoint)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 5432
        self.endpoint = endpoint
        self.ops, self.shared_dir, self.auth = ops, shared_dir, auth
        self.catalog = Catalog(ops, shared_dir)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(128)
        self.listener.setblocking(False)
        self.conns: dict[int, _Conn] = {}
        self.poller: zmq.Poller | None = None
        self.next_pid = node_id * 100_000
        self.turns = Turns()
        self.offloop = ParseWorker()
        self.counters = {"connections": 0, "closed": 0, "refused": 0, "violations": 0}

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def attach(self, poller: zmq.Poller) -> None:
        self.poller = poller
        poller.register(self.listener.fileno(), zmq.POLLIN)
        poller.register(self.offloop.fd, zmq.POLLIN)

    def begin_turn(self) -> None:
        """The node's loop turn begins: its statements' time budget starts now (``muheam.sql.turns``), and the
        statements the last turn's budget parked go on first, before peers' answers resume others (which then
        get what is left, at least one operation each)."""
        self.turns.start()
        if self.turns.pending:
            self.turns.run()

    def tick(self, now: float) -> None:
        """A few times a second: statements past their session's ``statement_timeout`` end (57014)."""
        for conn in list(self.conns.values()):
            if conn.session.statement_deadline is not None:
                try:  # the cancelled statement's rest, and the next one, run here: as ``_cancel``
                    conn.session.check_timeout(now)
                except Exception:  # noqa: BLE001 - a bug costs its connection, never the node
                    log.exception("SQL port: internal error while ending a statement at its statement_timeout; "
                                  "closing its connection")
                    self._close(conn)
                    continue
                self._flush(conn)

    @property
    def pending(self) -> bool:
        """Statements wait to continue: the loop must not sleep."""
        return self.turns.pending

    def handle(self, ready: Mapping[Any, int]) -> None:
        if ready.get(self.listener.fileno()):
            self._accept()
        if ready.get(self.offloop.fd):
            self.offloop.drain(self._parse_failed)  # large texts parsed beside the loop: their sessions go on
        for fd in [fd for fd in self.conns if fd in ready]:
            conn = self.conns.get(fd)
            if conn is None:
                continue
            events = ready[fd]
            if events & _POLLOUT:
                self._write(conn)
            if events & _READABLE and fd in self.conns:
                self._read(conn)

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("SQL port: accept failed: %s", exc)
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if len(self.conns) >= MAX_CONNECTIONS:
                self.counters["refused"] += 1
                sock.close()
                continue
            host = str(addr[0])
            method = "trust" if self.auth == "trust" and is_loopback(host) else "scram-sha-256"
            self.next_pid += 1
            session = Session(self.ops, self.catalog, host, method, self.shared_dir, self.next_pid, self._cancel,
                              self.turns, self.long_work, self.offloop)
            conn = _Conn(sock, session)
            session.on_output = lambda c=conn: self._flush(c)  # type: ignore[misc]
            self.conns[sock.fileno()] = conn
            self.counters["connections"] += 1
            if self.poller is not None:
                self.poller.register(sock.fileno(), zmq.POLLIN)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        try:
            conn.session.feed(data)
        except Exception:  # noqa: BLE001 - a bug must cost one connection, never the node
            log.exception("SQL port: internal error on a connection; closing it")
            self._close(conn)

    def _parse_failed(self, job: Job, exc: Exception) -> None:
        """A statement that went on from its parse beside the loop failed with a bug: as in ``_read``."""
        log.error("SQL port: internal error on a connection; closing it", exc_info=exc)
        for conn in list(self.conns.values()):
            if conn.session is job.owner:
                self._close(conn)

    def _flush(self, conn: _Conn) -> None:
        session = conn.session
        if session.out:
            conn.pending += session.out
            session.out.clear()
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if fd not in self.conns:
            return
        while conn.pending:
            try:
                sent = conn.sock.send(conn.pending)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close(conn)
                return
            del conn.pending[:sent]
        if conn.pending and len(conn.pending) > MAX_PENDING:
            log.warning("SQL port: a client left %d bytes unread; closing it", len(conn.pending))
            self._close(conn)
            return
        want = bool(conn.pending)
        if want != conn.writing and self.poller is not None:
            conn.writing = want
            self.poller.modify(fd, zmq.POLLIN | (zmq.POLLOUT if want else 0))
        if not conn.pending and conn.session.closing:
            self._close(conn)

    def _close(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if self.conns.pop(fd, None) is None:
            return
        self.counters["closed"] += 1
        if conn.session.parser.phase == "closed":
            self.counters["violations"] += 1
        if self.poller is not None:
            try:
                self.poller.unregister(fd)
            except KeyError:
                pass
        try:
            conn.sock.close()
        finally:
            conn.session.close()

    def _cancel(self, pid: int, key: bytes) -> None:
        for conn in list(self.conns.values()):
            if conn.session.pid == pid and conn.session.key == key:
                try:  # the cancelled statement's rest runs here: a bug in it costs its own connection
                    conn.session.cancel()
                except Exception:  # noqa: BLE001 - never the cancelling connection's, nor the node
                    log.exception("SQL port: internal error while cancelling a statement; closing its connection")
                    self._close(conn)
                return

    def stats(self) -> dict[str, int]:
        return {**self.counters, "open": len(self.conns), "statement_slices": self.turns.slices,
                **self.offloop.counters}

    def terminate(self, message: str, code: str = "57P01") -> None:
        """The node stops: every connection ends as PostgreSQL's shutdown ends its backends, with FATAL 57P01
        (admin_shutdown, so drivers raise their ``AdminShutdown``; 57P02 crash_shutdown when the node stops
        because its engine failed, as PostgreSQL's backends end after a crash) and what its socket takes of it now;
        closing rolls back its transaction (a COMMIT under way goes on, and its client learns no outcome, as
        there)."""
        for conn in list(self.conns.values()):
            conn.session.out += wire.msg_error(code, message, "FATAL")
            self._flush(conn)
            self._close(conn)

    def close(self) -> None:
        for conn in list(self.conns.values()):
            self._close(conn)
        if self.poller is not None:
            for fd in (self.listener.fileno(), self.offloop.fd):
                try:
                    self.poller.unregister(fd)
                except KeyError:
                    pass
        self.listener.close()
        self.offloop.close()
