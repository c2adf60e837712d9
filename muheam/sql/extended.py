"""The extended query protocol of one connection (Parse, Bind, Describe, Execute, Close, and what a Sync ends):
mixed into ``muheam.sql.session.Session``, which runs the statements (``_run``) and plans them (``_compile``).

As PostgreSQL: the messages up to a Sync outside BEGIN are one implicit transaction (``_open_block(pipeline=
True)`` at the first Execute, committed at the Sync); an error in any message fails it (inside BEGIN, the block);
a portal keeps its result's rows, so an Execute with a row limit sends that many and PortalSuspended, and a
portal of a statement without rows runs once (55000 after); portals end with their transaction; Bind checks the
format codes and reads text parameters by PostgreSQL's input rules (``muheam.sql.textinput``).  Checked message
by message against PostgreSQL 18 in ``tests/integration/test_sql_protocol_vs_postgres.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from muheam.sql import plan, textinput, wire
from muheam.sql.block import IMPLICIT_COMMIT, TransactionBlock, aborted, is_tx_end
from muheam.sql.catalog import Catalog
from muheam.sql.expr import SqlError
from muheam.sql.plan import Compiled


@dataclass
class Prepared:
    compiled: Compiled | None  # None: an empty query
    stmt: Any = None
    param_oids: list[int] = field(default_factory=list)
    generation: int = 0
    """The SQL catalog's generation it was planned in: planned again once a table is gone (``Session._statement``)."""
    long: bool = False
    """From a large text (``plan.is_long``): planned again as long work."""


@dataclass
class Portal:
    compiled: Compiled | None
    params: list[Any]
    formats: list[int]
    replan: Callable[[], Compiled] | None = None
    """Its prepared statement planned afresh (``Session._run_plan``)."""
    ran: bool = False
    """Executed once: the statement ran to completion then (MUHEAM computes a result whole); a later Execute
    fetches what is left of its rows, or, for a statement without rows, is refused (55000) as in PostgreSQL."""
    rows: list[bytes] | None = None
    """Its result's DataRow messages not sent yet (an Execute with a row limit sends some and suspends)."""
    tag: str = ""


class ExtendedProtocol(TransactionBlock):
    """The extended-protocol half of a session (see the module docstring)."""

    statements: dict[str, Prepared]
    portals: dict[str, Portal]
    catalog: Catalog
    skip_to_sync: bool
    ending_implicit: bool

    def _parse(self, sql: str, long: bool) -> tuple[Any, ...]:
        raise NotImplementedError

    def _compile(self, stmt: Any, param_oids: list[int], long: bool = False) -> Compiled:
        raise NotImplementedError

    def _run(self, compiled: Compiled, params: list[Any], formats: list[int] | None, describe: bool,
             then: Callable[[bool], None], replan: Callable[[], Compiled] | None = None,
             silent: bool = False, portal: Portal | None = None, max_rows: int = 0) -> None:
        raise NotImplementedError

    def _extended(self, ev: wire.Event) -> None:
        if isinstance(ev, wire.Parse):
            if ev.name and ev.name in self.statements:
                raise SqlError("42P05", f'prepared statement "{ev.name}" already exists')
            long = plan.is_long(ev.sql)
            stmts = self._parse(ev.sql, long)
            if len(stmts) > 1:
                raise SqlError("42601", "cannot insert multiple commands into a prepared statement")
            if stmts and self.tx == "E" and not is_tx_end(stmts[0]):
                raise aborted()
            compiled = self._compile(stmts[0], ev.param_types, long) if stmts else None
            self.statements[ev.name] = Prepared(compiled, stmts[0] if stmts else None, list(ev.param_types),
                                                self.catalog.generation, long)
            self._send(wire.msg_parse_complete())
        elif isinstance(ev, wire.Bind):
            prepared = self._statement(ev.statement)
            compiled = prepared.compiled
            types = compiled.param_types if compiled else []
            fmts = ev.param_formats
            if len(fmts) > 1 and len(fmts) != len(ev.params):
                raise SqlError("08P01", f"bind message has {len(fmts)} parameter formats but {len(ev.params)} "
                               "parameters")
            if len(ev.params) != len(types):
                raise SqlError("08P01", f"bind message supplies {len(ev.params)} parameters, but prepared "
                               f'statement "{ev.statement}" requires {len(types)}')
            if self.tx == "E" and not (prepared.stmt is not None and is_tx_end(prepared.stmt)):
                raise aborted()
            formats = [fmts[0] if len(fmts) == 1 else fmts[i] if fmts else 0 for i in range(len(ev.params))]
            bad = [f for v, f in zip(ev.params, formats) if v is not None and f not in (0, 1)]
            if bad:
                raise SqlError("22023", f"unsupported format code: {bad[0]}")
            try:
                params = [wire.decode_param(v, oid, f) for v, oid, f in zip(ev.params, types, formats)]
            except textinput.InputError as exc:
                raise SqlError(exc.code, str(exc)) from None
            except (ValueError, UnicodeDecodeError, ArithmeticError) as exc:
                raise SqlError("22P02", f"invalid parameter: {exc!r}") from None
            fields = compiled.fields if compiled else None
            if fields is not None and len(ev.result_formats) > 1 and len(ev.result_formats) != len(fields):
                raise SqlError("08P01", f"bind message has {len(ev.result_formats)} result formats but query has "
                               f"{len(fields)} columns")
            stmt, oids, long = prepared.stmt, prepared.param_oids, prepared.long
            self.portals[ev.portal] = Portal(compiled, params, ev.result_formats,
                                             lambda: self._compile(stmt, oids, long))
            self._send(wire.msg_bind_complete())
        elif isinstance(ev, wire.Describe):
            # in a failed block only what returns no rows is described (PostgreSQL: rows need the catalog)
            if ev.kind == "S":
                compiled = self._statement(ev.name).compiled
                if self.tx == "E" and compiled is not None and compiled.fields is not None:
                    raise aborted()
                self._send(wire.msg_parameter_description(compiled.param_types if compiled else []))
                self._describe(compiled, None)
            else:
                portal = self._portal(ev.name)
                if self.tx == "E" and portal.compiled is not None and portal.compiled.fields is not None:
                    raise aborted()
                self._describe(portal.compiled, portal.formats)
        elif isinstance(ev, wire.Execute):
            portal = self._portal(ev.portal)
            if portal.compiled is None:
                self._send(wire.msg_empty_query())
                return
            bad = [f for f in portal.formats if f not in (0, 1)]
            if bad and portal.compiled.fields is not None:
                raise SqlError("22023", f"unsupported format code: {bad[0]}")
            if portal.ran:
                if self.tx == "E":
                    raise aborted()
                if portal.rows is None:
                    raise SqlError("55000", f'portal "{ev.portal}" cannot be run')
                self._fetch(portal, ev.max_rows)
                return
            portal.ran = True
            if not self.explicit:  # what runs until the next Sync is one transaction, as in PostgreSQL
                self._open_block(implicit=True, pipeline=True)
            self.pipelined += 1

            def done(ok: bool) -> None:
                if not ok:
                    self.skip_to_sync = True
            self._run(portal.compiled, portal.params, portal.formats, describe=False, then=done,
                      replan=portal.replan, portal=portal, max_rows=ev.max_rows)
        elif isinstance(ev, wire.Close):
            (self.statements if ev.kind == "S" else self.portals).pop(ev.name, None)
            self._send(wire.msg_close_complete())
        else:
            raise SqlError("08P01", f"unexpected message {type(ev).__name__}")

    def _statement(self, name: str) -> Prepared:
        """The prepared statement, planned again if a table was dropped since (its plan may name it), as
        PostgreSQL re-plans; like PostgreSQL, refused if that changes its parameters or result columns."""
        if name not in self.statements:
            raise SqlError("26000", f'prepared statement "{name}" does not exist')
        prepared = self.statements[name]
        old = prepared.compiled
        if old is not None and prepared.generation != self.catalog.generation:
            new = self._compile(prepared.stmt, prepared.param_oids, prepared.long)
            if new.fields != old.fields or new.param_types != old.param_types:
                raise SqlError("0A000", "cached plan must not change result type",
                               "prepare the statement again (its table was dropped and made again)")
            prepared.compiled, prepared.generation = new, self.catalog.generation
        return prepared

    def _portal(self, name: str) -> Portal:
        if name not in self.portals:
            raise SqlError("34000", f'portal "{name}" does not exist')
        return self.portals[name]

    def _fetch(self, portal: Portal, max_rows: int) -> None:
        """The portal's next rows: all of them (``max_rows`` <= 0), or at most ``max_rows`` and PortalSuspended
        when that many were sent (PostgreSQL learns it is at the end only from a fetch that comes up short); the
        tag counts the rows of this Execute."""
        rows = portal.rows
        assert rows is not None
        n = len(rows) if max_rows <= 0 else min(max_rows, len(rows))
        for row in rows[:n]:
            self._send(row)
        del rows[:n]
        if 0 < max_rows == n:
            self._send(wire.msg_portal_suspended())
            return
        head, sep, count = portal.tag.rpartition(" ")
        self._send(wire.msg_command_complete(f"{head} {n}" if sep and count.isdigit() else portal.tag))

    def _synced(self) -> None:
        """ReadyForQuery after a Sync; outside a block the transaction is over, and its portals with it."""
        if not self.explicit:
            self.portals.clear()
        self._send(wire.msg_ready(self.tx))

    def _end_pipeline(self) -> None:
        """Commit the implicit transaction of the extended-protocol messages since the last Sync (its errors
        are reported; it was rolled back at the first one), then ReadyForQuery."""
        self.ending_implicit = True

        def done(_ok: bool) -> None:
            self.ending_implicit = False
            self._synced()
        self._run(self._compile(IMPLICIT_COMMIT, []), [], None, describe=False, then=done, silent=True)

    def _describe(self, compiled: Compiled | None, formats: list[int] | None) -> None:
        if compiled is None or compiled.fields is None:
            self._send(wire.msg_no_data())
        else:
            self._send(wire.msg_row_description(compiled.fields, formats))
