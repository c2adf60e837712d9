"""A session's transaction block and settings: what BEGIN, COMMIT/ROLLBACK, SET, SET LOCAL, SHOW, RESET and the
transaction characteristics do to them, as PostgreSQL does it (checked against it in
``tests/integration/test_sql_vs_postgres.py``).

``TransactionBlock`` is mixed into ``muheam.sql.session.Session``: the block's state (``tx``: the ReadyForQuery
status I/T/E, ``explicit``/``implicit``, ``queried``, the settings at BEGIN and the SET LOCAL names) lives on the
session, and these methods are the only ones that open or leave a block and change a setting.
"""

from __future__ import annotations

from typing import Any

import pglast
from pglast import ast, enums

from muheam.sql import settings, wire
from muheam.sql.execute import Result
from muheam.sql.expr import SqlError, unsupported
from muheam.sql.plan import Utility


class TransactionBlock:
    """The block and settings half of a session (see the module docstring)."""

    settings: dict[str, str]
    statements: dict[str, Any]
    tx: str
    explicit: bool
    implicit: bool
    queried: bool
    saved: dict[str, str]
    local: set[str]
    portals: dict[str, Any]
    pipeline: bool
    """The open block is the implicit transaction of extended-protocol messages up to a Sync: PostgreSQL's
    TBLOCK_STARTED, not a transaction block (SET LOCAL and SET TRANSACTION warn in it)."""
    pipelined: int
    """Statements executed in that pipeline so far (DISCARD ALL may only be its first)."""

    def _send(self, data: bytes) -> None:
        raise NotImplementedError

    def _setting_statement(self, u: Utility) -> Result:
        """SET [LOCAL], SHOW, RESET, DISCARD ALL and DEALLOCATE, outside a failed block."""
        if u.kind == "set_local":
            if not self.explicit or self.pipeline:
                self._send(wire.msg_notice("25P01", "SET LOCAL can only be used in transaction blocks"))
            if not self.explicit:
                return Result(u.tag)
            self.local.add(u.name)
            u = Utility("set", u.tag, u.name, u.value)
        if u.kind == "show":
            if u.name == "all":
                raise unsupported("SHOW ALL")
            value = self.settings.get(u.name)
            if value is None and u.name.lower() in settings.CONTEXT:  # PostgreSQL's, but MUHEAM keeps no value
                raise SqlError("0A000", f'parameter "{u.name}" has no value in MUHEAM\'s SQL port',
                               "it does not act on this parameter; SET stores a value that SHOW then shows")
            if value is None:
                raise SqlError("42704", f'unrecognized configuration parameter "{u.name}"')
            return Result("SHOW", [[value]])
        if u.kind == "set":
            for setting, val in u.settings or ((u.name, u.value),):
                if setting.removeprefix("default_") in settings.CHARACTERISTICS:
                    self._characteristic(setting, val)
                else:
                    self._set(setting, settings.check(setting, val, self.settings.get(setting, "")))
        elif u.kind == "reset":
            if u.tag == "DISCARD ALL":
                if self.pipeline and self.pipelined > 1:
                    raise SqlError("25001", "DISCARD ALL cannot be executed within a pipeline")
                if self.explicit and not self.pipeline:
                    raise SqlError("25001", "DISCARD ALL cannot run inside a transaction block")
                self.statements = {k: v for k, v in self.statements.items() if not k}
            # RESET ALL leaves the running transaction's characteristics alone (as PostgreSQL does); they and
            # their defaults go through the same checks as SET
            for name in [u.name] if u.name else [n for n in settings.DEFAULTS if n not in ("server_version",
                                                                                 *settings.CHARACTERISTICS)]:
                if name in settings.CHARACTERISTICS:
                    self._characteristic(name, self.settings["default_" + name])
                elif name.removeprefix("default_") in settings.CHARACTERISTICS:
                    self._characteristic(name, settings.DEFAULTS[name])
                elif name in settings.DEFAULTS:
                    self._set(name, settings.DEFAULTS[name])
        elif u.kind == "deallocate":
            if u.tag == "DEALLOCATE ALL":
                self.statements = {k: v for k, v in self.statements.items() if not k}
            elif self.statements.pop(u.name, None) is None:
                raise SqlError("26000", f'prepared statement "{u.name}" does not exist')
        return Result(u.tag)

    def _characteristic(self, name: str, value: str) -> None:
        """A transaction characteristic (isolation level, read-only) or its session default (``default_...``), as
        PostgreSQL takes them: the transaction's own only inside a transaction block and, but for making it
        read-only, before its first query; a default from the next transaction on (at once outside one)."""
        base = name.removeprefix("default_")
        v = settings.characteristic_value(base, name, value)
        if name != base:
            self._set(name, v)
            if not self.explicit:
                self._set(base, v)
        elif not self.explicit:
            self._send(wire.msg_notice("25P01", "SET TRANSACTION can only be used in transaction blocks"))
        else:
            if self.pipeline:  # a pipeline's implicit transaction is no block: PostgreSQL warns, and it applies
                self._send(wire.msg_notice("25P01", "SET TRANSACTION can only be used in transaction blocks"))
            if self.queried and v != self.settings[base] and (base == "transaction_isolation" or v == "off"):
                raise SqlError("25001", "SET TRANSACTION ISOLATION LEVEL must be called before any query"
                               if base == "transaction_isolation" else
                               "transaction read-write mode must be set before any query")
            self._set(base, v)

    def _open_block(self, implicit: bool = False, pipeline: bool = False) -> None:
        """A transaction block begins (BEGIN, or a multi-statement Query's ``implicit`` one, or a ``pipeline``'s)."""
        self.explicit, self.implicit, self.tx, self.saved, self.local = True, implicit, "T", dict(self.settings), set()
        self.pipeline, self.pipelined = pipeline, 0

    def _leave_block(self) -> tuple[dict[str, str], set[str]]:
        """The block is over: the session is idle; returns its settings at BEGIN and its SET LOCAL names."""
        saved, local = self.saved, self.local
        self.explicit, self.implicit, self.tx, self.queried, self.saved, self.local = False, False, "I", False, {}, set()
        self.portals.clear()  # a portal lives as long as its transaction (PostgreSQL's are not holdable either)
        self.pipeline = False
        return saved, local

    def _end_block(self, saved: dict[str, str], undo: Any) -> None:
        """The block ended: the settings named in ``undo`` go back to their value at BEGIN, and the transaction's
        characteristics to the session's defaults."""
        for name in undo:
            if name in saved and self.settings.get(name) != saved[name]:
                self._set(name, saved[name])
        for name in settings.CHARACTERISTICS:
            self._set(name, self.settings["default_" + name])

    def _set(self, name: str, value: str) -> None:
        self.settings[name] = value
        if name in settings.REPORTED:
            self._send(wire.msg_parameter_status(name, value))


def aborted() -> SqlError:
    return SqlError("25P02", "current transaction is aborted, commands ignored until end of transaction block")


IMPLICIT_COMMIT = pglast.parse_sql("COMMIT")[0].stmt
"""An implicit block's own end, told apart by identity (not through ``plan.parse``, whose cache would hand the
same node to a client's COMMIT)."""


def is_tx_end(stmt: Any) -> bool:
    return isinstance(stmt, ast.TransactionStmt) and stmt.kind in (
        enums.TransactionStmtKind.TRANS_STMT_COMMIT, enums.TransactionStmtKind.TRANS_STMT_ROLLBACK)
