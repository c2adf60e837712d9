"""A connection's startup and authentication, up to its first ReadyForQuery: a small state machine of its own.

Everything that can happen before a session runs statements lives here: SSLRequest/GSSENCRequest (answered
``N``), a CancelRequest (handed to the node, then the connection ends), the StartupMessage (protocol version
negotiation, the user, the database, settings from the packet and its ``options``), and SCRAM-SHA-256 when the
port does not trust the client (``muheam.sql.auth``).  Pure of I/O: ``handle`` takes one frontend event and
writes backend messages through ``send``; what it returns tells the session what became of the connection.
"""

from __future__ import annotations

import enum
import logging
from pathlib import Path
from typing import Callable

import scramp

from muheam.sql import plan, settings, wire
from muheam.sql.auth import MECHANISM, ScramExchange
from muheam.sql.expr import SqlError

log = logging.getLogger("muheam.sql")

DATABASE = "postgres"
"""The one database: every table of the cluster is in it, as on a fresh PostgreSQL's ``postgres``."""


class Phase(enum.Enum):
    STARTUP = "startup"          # waiting for the StartupMessage (or an SSL/GSS/Cancel request)
    SASL_FIRST = "sasl-first"    # SCRAM: waiting for the client-first message
    SASL_FINAL = "sasl-final"    # SCRAM: waiting for the client-final message (the proof)
    READY = "ready"              # authenticated: the session runs statements


class Outcome(enum.Enum):
    GOING_ON = "going on"        # the startup goes on with the next message
    READY = "ready"              # authenticated; the session sends its ReadyForQuery
    CLOSE = "close"              # the connection ends (a FATAL was sent, or it was a CancelRequest)


class Startup:
    """One connection's startup.  ``settings`` is the session's own dict: the packet's settings go into it."""

    def __init__(self, settings_: dict[str, str], auth_method: str, shared_dir: Path | None, peer_host: str,
                 backend_pid: int, send: Callable[[bytes], None],
                 cancel_other: Callable[[int, bytes], None]) -> None:
        self.settings = settings_
        self.auth_method, self.shared_dir, self.peer_host = auth_method, shared_dir, peer_host
        self.pid = backend_pid
        self.send = send
        self.cancel_other = cancel_other
        self.phase = Phase.STARTUP
        self.user = ""
        self.scram: ScramExchange | None = None

    def _fatal(self, code: str, message: str) -> Outcome:
        self.send(wire.msg_error(code, message, "FATAL"))
        return Outcome.CLOSE

    def handle(self, ev: wire.Event) -> Outcome:
        phase = self.phase
        if isinstance(ev, (wire.SSLRequest, wire.GSSENCRequest)) and phase is Phase.STARTUP:
            self.send(b"N")  # no encryption here: the client goes on in plain text or gives up
            return Outcome.GOING_ON
        if isinstance(ev, wire.CancelRequest) and phase is Phase.STARTUP:
            self.cancel_other(ev.pid, ev.key)
            return Outcome.CLOSE
        if isinstance(ev, wire.Startup) and phase is Phase.STARTUP:
            return self._startup(ev)
        if isinstance(ev, wire.Password) and phase is Phase.SASL_FIRST:
            return self._sasl_first(ev.data)
        if isinstance(ev, wire.Password) and phase is Phase.SASL_FINAL and self.scram is not None:
            return self._sasl_final(ev.data)
        return self._fatal("08P01", f"unexpected message {type(ev).__name__} during startup")

    def _startup(self, ev: wire.Startup) -> Outcome:
        if ev.minor > 0 or ev.unsupported:
            self.send(wire.msg_negotiate_version(0, ev.unsupported))
        self.user = ev.params["user"]
        self.settings["session_authorization"] = self.user
        self.settings["database"] = ev.params.get("database", self.user)
        self.settings["backend_pid"] = str(self.pid)
        try:
            for name, value in ev.params.items():
                if name == "options":
                    self._options(value)
                elif name not in ("user", "database", "replication"):
                    self._setting(plan._setting_name(name), value)
        except SqlError as exc:
            return self._fatal(exc.code, exc.message)
        if ev.params.get("replication") not in (None, "false", "0", "off"):
            return self._fatal("0A000", "replication connections are not supported by MUHEAM's SQL port")
        if self.auth_method == "trust":
            return self._ready()
        self.phase = Phase.SASL_FIRST
        self.send(wire.msg_auth_sasl([MECHANISM]))
        return Outcome.GOING_ON

    def _sasl_first(self, data: bytes) -> Outcome:
        try:
            mech, rest = data.split(b"\0", 1)
            if mech.decode() != MECHANISM or len(rest) < 4:
                raise ValueError(f"mechanism {mech!r}")
            self.scram = ScramExchange(self.shared_dir, self.user)
            self.send(wire.msg_auth_sasl_continue(self.scram.first(rest[4:].decode()).encode()))
        except (ValueError, UnicodeDecodeError, scramp.ScramException) as exc:
            return self._fatal("08P01", f"malformed SCRAM message: {exc}")
        self.phase = Phase.SASL_FINAL
        return Outcome.GOING_ON

    def _sasl_final(self, data: bytes) -> Outcome:
        assert self.scram is not None
        try:
            final = self.scram.final(data.decode())
        except (ValueError, UnicodeDecodeError, scramp.ScramException):
            log.info("SQL login of user %r from %s refused: wrong password or no such user", self.user,
                     self.peer_host)
            return self._fatal("28P01", f'password authentication failed for user "{self.user}"')
        self.send(wire.msg_auth_sasl_final(final.encode()))
        return self._ready()

    def _options(self, value: str) -> None:
        """``-c name=value`` pairs of the startup ``options`` parameter (psycopg's ``options=``)."""
        parts = value.replace("--", "-c ").split()
        for i, part in enumerate(parts):
            if part == "-c" and i + 1 < len(parts) and "=" in parts[i + 1]:
                name, _, v = parts[i + 1].partition("=")
                self._setting(plan._setting_name(name.replace("-", "_")), v)

    def _setting(self, name: str, value: str) -> None:
        """A setting from the startup packet: a transaction characteristic is checked and becomes the session's
        default (and so the first transaction's), as PostgreSQL takes ``-c default_transaction_read_only=on``."""
        base = name.removeprefix("default_")
        if base in settings.CHARACTERISTICS:
            v = settings.characteristic_value(base, name, value)
            self.settings["default_" + base] = self.settings[base] = v
        elif name in settings.TIMEOUTS:
            self.settings[name] = settings.show_ms(settings.parse_ms(name, value))
        elif name.lower() not in settings.CONTEXT and "." not in name:
            # as PostgreSQL: a parameter it does not know ends the connection (it was kept and shown by SHOW)
            raise SqlError("42704", f'unrecognized configuration parameter "{name}"')
        else:
            self.settings[name] = value

    def _ready(self) -> Outcome:
        """Authenticated: AuthenticationOk and the parameters a client expects (the session adds its cancel key
        and ReadyForQuery); a database other than the one there is ends it, after authentication, as in
        PostgreSQL (a connection to ``mydb`` must not seem to work: every name would see the same tables)."""
        database = self.settings.get("database", "")
        if database != DATABASE:
            return self._fatal("3D000", f'database "{database}" does not exist'
                               + f" (MUHEAM's SQL port has one database, {DATABASE}: connect with "
                               f"dbname={DATABASE}, psql -d {DATABASE})")
        self.phase = Phase.READY
        self.send(wire.msg_auth_ok())
        for name in settings.REPORTED:
            self.send(wire.msg_parameter_status(name, self.settings.get(name, "")))
        return Outcome.READY
