"""One SQL connection: the simple query protocol, running statements, and its transactions; the startup and
authentication before them are ``muheam.sql.startup``, the transaction block and settings ``muheam.sql.block``, the
extended query protocol ``muheam.sql.extended``.

Pure of I/O: ``feed(bytes)`` parses (``muheam.sql.wire``) and acts; backend bytes collect in ``out`` and the
owner (``muheam.sql.server``) is told through ``on_output`` that there is something to send, also when a statement
finishes later, from a session operation's callback.  Messages that arrive while a statement waits are queued and
handled in order once it is done, so a pipelined client (psycopg sends Parse/Bind/Describe/Execute/Sync at once)
sees its answers in order.

Transactions: outside BEGIN each statement of a simple Query is its own transaction (``begin`` ... ``commit``
through the session operations), and the extended-protocol messages up to a Sync are one (an implicit block,
committed at the Sync, as in PostgreSQL); inside BEGIN the first statement that touches a table takes the XID (as
PostgreSQL takes the snapshot at the first statement).  An error inside BEGIN rolls the transaction back and leaves the connection in
the failed state (``E``) until COMMIT or ROLLBACK, which both answer ``ROLLBACK``; statements meanwhile get
``25P02``.  After an error in the extended protocol, messages are skipped until Sync, as in PostgreSQL.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, ContextManager, Generator, Mapping

from pglast import ast

from muheam.errors import MuheamError
from muheam.net.clientport import RequestError
from muheam.sql import execute, plan, settings, wire
from muheam.sql.plancache import PlanCache
from muheam.sql.block import IMPLICIT_COMMIT, aborted
from muheam.sql.extended import ExtendedProtocol, Portal, Prepared
from muheam.sql.offloop import Job, OffLoop, Parsed, ParseWorker
from muheam.sql.startup import Outcome, Phase, Startup
from muheam.sql.catalog import Catalog
from muheam.sql.execute import Gen, Operation, Result, Task
from muheam.sql.expr import SqlError
from muheam.sql.plan import Compiled, CreateTable, DropTable, Utility
from muheam.sql.turns import Turns

log = logging.getLogger("muheam.sql")

def _write_verb(p: Any) -> str:
    """What a read-only transaction refuses to run, by name ("" for a statement it may run)."""
    if isinstance(p, CreateTable):
        return "CREATE TABLE"
    if isinstance(p, DropTable):
        return "DROP TABLE"
    if isinstance(p, plan.Select):
        return f"SELECT {p.lock_clause}" if p.lock else ""
    return {plan.Insert: "INSERT", plan.Update: "UPDATE", plan.Delete: "DELETE"}.get(type(p), "")


class Session(ExtendedProtocol, OffLoop):
    def __init__(self, ops: Mapping[str, Operation], catalog: Catalog, peer_host: str, auth_method: str,
                 shared_dir: Path | None, backend_pid: int, cancel: Callable[[int, bytes], None],
                 turns: Turns | None = None,
                 long_work: Callable[[], ContextManager[None]] = contextlib.nullcontext,
                 offloop: ParseWorker | None = None) -> None:
        """``long_work``: a context for work that holds the node's loop for long (parsing and compiling a
        large statement: ``plan.LONG_STATEMENT_BYTES``), the node's ``_long_work``; ``offloop``: the thread that
        does that work beside the loop instead (``muheam.sql.offloop``; long work is then what it left undone)."""
        self.ops, self.catalog, self.turns, self.long_work = ops, catalog, turns, long_work
        self.offloop = offloop
        self.parsing: Job | None = None
        self.preparsed: Parsed | None = None
        self.pid, self.key = backend_pid, secrets.token_bytes(4)
        self.parser = wire.FrontendParser()
        self.out = bytearray()
        self.on_output: Callable[[], None] = lambda: None
        self.closing = False
        self.user = ""
        self.settings: dict[str, str] = dict(settings.DEFAULTS)
        self.startup = Startup(self.settings, auth_method, shared_dir, peer_host, backend_pid, self._send, cancel)
        self.queue: deque[wire.Event] = deque()
        self.task: Task | None = None
        self.statement_deadline: float | None = None
        """When the running statement exceeds the session's statement_timeout (None: no limit)."""
        self.skip_to_sync = False
        self.tx = "I"
        self.explicit = False
        self.implicit = False
        """The open block is a Query's implicit one (``explicit`` is set too): an error rolls it back and the
        session is idle again; a BEGIN in the Query makes it a regular block; its COMMIT/ROLLBACK warn."""
        self.pipeline = False
        self.pipelined = 0
        self.ending_implicit = False
        self.xid: int | None = None
        self.queried = False
        """A statement ran in this transaction block (its characteristics are fixed from then on)."""
        self.saved: dict[str, str] = {}
        """The settings at BEGIN: ROLLBACK undoes the block's SETs, COMMIT its SET LOCALs (``local``)."""
        self.local: set[str] = set()
        self.rc = False
        """The running transaction's level, fixed when it took its XID: READ COMMITTED (or REPEATABLE READ)."""
        self.statements: dict[str, Prepared] = {}
        self.portals: dict[str, Portal] = {}
        self.counters = {"statements": 0, "errors": 0, "replanned": 0}
        self._draining = False
        self.running_simple = False
        self.plans = PlanCache()
        self.plans_generation = catalog.generation
        self.drops: dict[str, int] = {}
        """DROP TABLEs of the open transaction block (name -> the table id it meant), run when it commits
        (MUHEAM's catalog is not transactional, so a drop that ROLLBACK must undo cannot happen before COMMIT)."""
        self.tx_tables: dict[str, int] = {}
        """Table name -> the table id this transaction's statements used: a later statement planned against
        another table of that name (dropped and made again since, anywhere) fails with 42P01 instead of going on
        against the new table, where the transaction's own changes are not; a DROP of that name in the block
        would drop that other table, and a CREATE of it make one this transaction did not see gone."""

    # input ------------------------------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        self.queue.extend(self.parser.feed(data))
        self._drain()

    def _drain(self) -> None:
        if self._draining:
            return  # a statement finished synchronously inside the loop below: it goes on by itself
        self._draining = True
        try:
            while self.queue and self.task is None and self.parsing is None and not self.closing:
                ev = self.queue.popleft()
                if self._off_loop(ev, self.startup.phase is Phase.READY):
                    self.queue.appendleft(ev)  # it waits for the worker's parse (``_parsed`` drains again)
                    break
                self._handle(ev)
                self.preparsed = None
        finally:
            self._draining = False
        self.on_output()

    def _send(self, data: bytes) -> None:
        self.out += data

    def _notice(self, code: str, message: str) -> None:
        """A NOTICE, unless the client asked for fewer messages (``client_min_messages`` above notice)."""
        if self.settings.get("client_min_messages", "notice").lower() not in ("warning", "error"):
            self._send(wire.msg_notice(code, message, "NOTICE"))

    def _fatal(self, code: str, message: str) -> None:
        self._send(wire.msg_error(code, message, "FATAL"))
        self.closing = True
        self.queue.clear()

    def _handle(self, ev: wire.Event) -> None:
        if isinstance(ev, wire.ProtocolViolation):
            self._fatal(ev.code, ev.message)
        elif self.startup.phase is not Phase.READY:
            self._startup(ev)
        elif isinstance(ev, wire.Terminate):
            self.closing = True
        elif isinstance(ev, wire.Password):  # outside authentication: PostgreSQL's FATAL, not an ERROR that
            self._fatal("08P01", "invalid frontend message type 112 (a password message after authentication)")
        elif isinstance(ev, wire.Sync):     # waits for a Sync the client has no reason to send
            self.skip_to_sync = False
            if self.implicit:  # the implicit transaction of the messages since the last Sync: committed now
                self._end_pipeline()
            else:
                self._synced()
        elif self.skip_to_sync:
            return
        elif isinstance(ev, wire.Query):
            self._simple(ev.sql)
        elif isinstance(ev, wire.Flush):
            return
        else:
            try:
                self._extended(ev)
            except SqlError as exc:  # as any error: it ends the transaction (a block's: failed, E)
                self._failed(exc)
                self.skip_to_sync = True

    # startup and authentication (muheam.sql.startup) -------------------------------------------------------------
    def _startup(self, ev: wire.Event) -> None:
        outcome = self.startup.handle(ev)
        if outcome is Outcome.CLOSE:
            self.closing = True
            self.queue.clear()
        elif outcome is Outcome.READY:
            self.user = self.startup.user
            self._send(wire.msg_backend_key(self.pid, self.key))
            self._send(wire.msg_ready(self.tx))

    # errors -------------------------------------------------------------------------------------------------------
    def _error(self, exc: SqlError) -> None:
        self.counters["errors"] += 1
        self._send(wire.msg_error(exc.code, exc.message, hint=exc.hint))

    def _failed(self, exc: SqlError) -> None:
        """A statement failed: its transaction is over (rolled back here if the node has not already)."""
        if self.xid is not None:
            xid, self.xid = self.xid, None
            try:
                self.ops["rollback"]({"xid": xid})
            except Exception:  # noqa: BLE001 - already rolled back by the node after its error
                pass
        if self.implicit:  # the Query's own block ends with it: rolled back, idle, its SETs undone
            self.drops = {}
            saved, _ = self._leave_block()
            self._end_block(saved, saved.keys())
        elif self.explicit:
            self.tx = "E"
        self._error(exc)

    # the simple query protocol ------------------------------------------------------------------------------------
    def _current_plans(self) -> PlanCache:
        """The plan cache, a new one when the SQL catalog moved to a new generation (a table is gone: plans made
        before may name it)."""
        if self.plans_generation != self.catalog.generation:
            self.plans, self.plans_generation = PlanCache(), self.catalog.generation
        return self.plans

    def _work(self, long: bool) -> ContextManager[None]:
        """Long work (``long_work``) for a statement from a large text, else nothing."""
        return self.long_work() if long else contextlib.nullcontext()

    def _parse(self, sql: str, long: bool) -> tuple[Any, ...]:
        done = self._preparsed_stmts(sql)
        if done is not None:
            return done
        with self._work(long):
            return plan.parse(sql)

    def _simple(self, sql: str) -> None:
        try:
            hit = self._current_plans().lookup(sql, self._compile)
        except SqlError:
            hit = None  # the ordinary path below reports it
        if hit is not None:
            compiled, params = hit

            def replan() -> Compiled:  # (after the catalog looked again: a new generation)
                again = self._current_plans().lookup(sql, self._compile)
                if again is None:
                    raise SqlError("42P01", "the statement's table is gone")
                return again[0]
            self._run(compiled, params, None, describe=True, then=lambda ok: self._send(wire.msg_ready(self.tx)),
                      replan=replan)
            return
        try:
            long = plan.is_long(sql)  # parsed, and its statements compiled, as long work
            stmts = list(self._parse(sql, long))
        except SqlError as exc:
            self._failed(exc)
            self._send(wire.msg_ready(self.tx))
            return
        if not stmts:
            self._send(wire.msg_empty_query())
            self._send(wire.msg_ready(self.tx))
            return
        if _one_transaction(stmts):
            # several statements in one Query outside a block run as one transaction, as in PostgreSQL: all of
            # them commit at the end, or an error rolls back the ones before it and the session is idle (an
            # implicit block, ended by a COMMIT the client does not see)
            self._next_simple([*stmts, IMPLICIT_COMMIT], implicit=True, long=long)
            return
        self._next_simple(list(stmts), long=long)

    def _next_simple(self, stmts: list[Any], implicit: bool = False, long: bool = False) -> None:
        if not stmts:
            self._send(wire.msg_ready(self.tx))
            return
        stmt = stmts.pop(0)
        if implicit:
            if stmt is IMPLICIT_COMMIT and not self.implicit:
                self._next_simple(stmts)  # (a COMMIT, ROLLBACK or BEGIN of the Query ended or took over the block)
                return
            if not self.explicit:  # at the Query's start, or after its COMMIT/ROLLBACK: a new implicit block
                self._open_block(implicit=True)
        try:
            compiled = self._compile(stmt, [], long and stmt is not IMPLICIT_COMMIT)
        except SqlError as exc:
            self._failed(exc)
            self._send(wire.msg_ready(self.tx))
            return

        def done(ok: bool) -> None:
            self.ending_implicit = False
            if ok:
                self._next_simple(stmts, implicit, long)
            else:
                self._send(wire.msg_ready(self.tx))

        self.ending_implicit = stmt is IMPLICIT_COMMIT
        self._run(compiled, [], None, describe=True, then=done, replan=lambda: self._compile(stmt, [], long),
                  silent=stmt is IMPLICIT_COMMIT)

    def _compile(self, stmt: Any, param_oids: list[int], long: bool = False) -> Compiled:
        """``long``: the statement comes from a large text (``plan.is_long``): compiled as long work."""
        done = self._preparsed_plan(stmt, param_oids)
        if done is not None:
            return done
        with self._work(long):
            try:
                return plan.compile_statement(stmt, self.catalog.lookup, param_oids, self._setting)
            except SqlError as exc:  # against a table dropped and made again elsewhere (other columns)?
                if exc.code not in ("42703", "42P01") or not self.catalog.revalidate():
                    raise
                return plan.compile_statement(stmt, self.catalog.lookup, param_oids, self._setting)

    def _setting(self, name: str) -> str:
        return self.settings.get(name, "")

    # running a statement ------------------------------------------------------------------------------------------
    def _run(self, compiled: Compiled, params: list[Any], formats: list[int] | None, describe: bool,
             then: Callable[[bool], None], replan: Callable[[], Compiled] | None = None,
             silent: bool = False, portal: Portal | None = None, max_rows: int = 0) -> None:
        """Run a statement; ``silent``: no rows or CommandComplete (an implicit block's own COMMIT or ROLLBACK;
        its errors are still sent); ``portal``: keep its rows there and send at most ``max_rows`` of them."""
        self.counters["statements"] += 1
        self.running_simple = describe
        fields = compiled.fields

        def done(result: Result | None, error: SqlError | None) -> None:
            self.task, self.statement_deadline = None, None
            rows: list[bytes] = []
            if error is None:
                assert result is not None
                if fields and result.encoded is not None:
                    rows = result.encoded
                elif fields:
                    try:
                        rows = execute.encode_rows(result.rows, [f[1] for f in fields], formats)
                    except SqlError as exc:
                        error = exc
            if error is not None:
                self._failed(error)
                then(False)
            elif silent:
                then(True)
            elif portal is not None and fields is not None:
                assert result is not None
                portal.rows, portal.tag = rows, result.tag
                self._fetch(portal, max_rows)
                then(True)
            else:
                assert result is not None
                if describe and fields is not None:
                    self._send(wire.msg_row_description(fields))
                for row in rows:
                    self._send(row)
                self._send(wire.msg_command_complete(result.tag))
                then(True)
            if self.task is None:
                self._drain()

        encode: Callable[[Gen], Gen] | None = None
        if fields and not silent:  # rows encoded by the statement, slice by slice, not all at once in ``done``
            oids = [f[1] for f in fields]
            encode = lambda run: execute.encoded(run, oids, formats)  # noqa: E731
        task = Task(self._statement_gen(compiled, params, replan, encode), self.ops, done, lambda: self.xid,
                    self.catalog.revalidate, self._internal_error, self.turns,
                    lock_timeout=settings.seconds("lock_timeout", self.settings.get("lock_timeout", "0")))
        timeout = settings.seconds("statement_timeout", self.settings.get("statement_timeout", "0"))
        self.statement_deadline = time.monotonic() + timeout if timeout else None
        self.task = task
        task.start()

    def check_timeout(self, now: float) -> None:
        """``statement_timeout``: a statement still running past it ends as a cancel does, with PostgreSQL's
        words (checked a few times a second by the server: it may end up to a fifth of a second late)."""
        if self.task is not None and self.statement_deadline is not None and now >= self.statement_deadline:
            self.statement_deadline = None
            self.cancel("canceling statement due to statement timeout")

    def _statement_gen(self, compiled: Compiled, params: list[Any], replan: Callable[[], Compiled] | None = None,
                       encode: Callable[[Gen], Gen] | None = None) -> Gen:
        """``encode``: wraps the plan's run to encode its rows, before an autocommit's COMMIT (as PostgreSQL sends
        the rows before it commits: an error encoding them fails the statement, and a cancel while they are
        encoded meets a transaction not yet committed)."""
        p = compiled.plan
        if isinstance(p, Utility):
            return (yield from self._utility(p))
        if self.tx == "E":
            raise aborted()
        if self.explicit:
            self.queried = True
        if self.settings["transaction_read_only"] == "on":
            verb = _write_verb(p)
            if verb:
                raise SqlError("25006", f"cannot execute {verb} in a read-only transaction")
        if isinstance(p, CreateTable):
            if self.xid is not None and p.info.name in self.tx_tables:  # it exists, as far as this transaction knows
                raise SqlError("42P07", f'relation "{p.info.name}" already exists',
                               "this transaction used it (another node may have dropped it since: roll back first)")
            if p.info.name in self.drops:
                raise SqlError("0A000", f'CREATE TABLE "{p.info.name}" after its DROP TABLE in the same transaction '
                               "block is not supported: the drop takes effect at COMMIT",
                               "commit the block first, then create the table")
            if p.if_not_exists:
                self.catalog.revalidate()
                try:
                    self.catalog.lookup(p.info.name)
                except SqlError:
                    pass
                else:
                    self._notice("42P07", f'relation "{p.info.name}" already exists, skipping')
                    return Result("CREATE TABLE")
            return (yield from self.catalog.create(p))
        if isinstance(p, DropTable):
            return (yield from self._drop(p))
        if self.drops and p.table is not None and p.table.name in self.drops:
            raise SqlError("42P01", f'relation "{p.table.name}" does not exist',
                           "this transaction block dropped it (the drop takes effect at COMMIT)")
        if isinstance(p, plan.Select) and p.table is None:
            return (yield from execute.run_select(p, params))
        began = self.xid is None
        if began:
            self.tx_tables = {}
            self.rc = self.settings["transaction_isolation"] in plan.ISOLATION_LEVELS[:2]
            started = yield ("begin", {"isolation": "read committed" if self.rc else "repeatable read"})
            self.xid = int(started["xid"])
            if self.explicit:
                self.tx = "T"
        elif self.rc:  # READ COMMITTED: each statement sees what committed before it began
            yield ("snapshot", {})
        if p.table is not None:
            self._same_table(p.table.name, p.table.table_id, use=True,
                             hint="roll back; a new transaction sees the table of that name made since")
        run = self._run_plan(p, compiled, params, replan if began else None)
        result = yield from (run if encode is None else encode(run))
        if not self.explicit:
            xid, self.xid = self.xid, None
            if xid is not None:
                yield from self._commit(xid)
        return result

    def _commit(self, xid: int) -> Generator[execute.Request, Any, None]:
        """COMMIT of ``xid``; a cancel meanwhile only ends a wait for replicas (``cancel``), after which PostgreSQL's
        warning says the transaction is committed."""
        answer = yield ("commit", {"xid": xid})
        if isinstance(answer, dict) and answer.get("scope") == "cancelled":
            self._send(wire.msg_notice("01000", "canceling wait for synchronous replication due to user request",
                                       detail="The transaction has already committed locally, but might not "
                                       "have been replicated to the standby."))

    def _run_plan(self, p: plan.Select | plan.Insert | plan.Update | plan.Delete, compiled: Compiled,
                  params: list[Any], replan: Callable[[], Compiled] | None) -> Gen:
        """Run the plan; if its first row operation finds the table gone (dropped, and made again, on another node
        since this session planned), plan the statement again and run that, as PostgreSQL plans again after a
        DROP TABLE.  Only when nothing was done yet (a table dropped in the middle of a statement fails it), the
        new plan names another table, and the result columns and parameters are the same (the client may have
        them already, as PostgreSQL's "cached plan must not change result type")."""
        answered = [0]
        try:
            return (yield from execute.answers_counted(execute.run_plan(p, params, self.rc), answered))
        except execute.OpFailed as exc:
            if exc.code != "NoSuchTable" or answered[0] or replan is None or p.table is None:
                raise
            self.catalog.revalidate()
            try:
                again = replan()
            except SqlError:
                raise exc from None  # gone for good: the statement fails with 42P01 as it was going to
            new = again.plan
            if not isinstance(new, type(p)) or new.table is None or new.table.table_id == p.table.table_id \
                    or again.fields != compiled.fields or again.param_types != compiled.param_types:
                raise
        self.counters["replanned"] += 1
        if new.table is not None:
            self.tx_tables[new.table.name] = new.table.table_id
        return (yield from execute.run_plan(new, params, self.rc))

    def _same_table(self, name: str, table_id: int, hint: str, use: bool = False) -> None:
        """42P01 (with ``hint``) if this transaction used another table of that name (``tx_tables``); ``use``:
        remember this one as used."""
        used = self.tx_tables.setdefault(name, table_id) if use else self.tx_tables.get(name, table_id)
        if used != table_id:
            raise SqlError("42P01", f'relation "{name}" was dropped since this transaction used it', hint)

    def _drop(self, p: DropTable) -> Gen:
        """Outside a block: drop now.  Inside one: check the tables exist now and drop them at COMMIT (with IF
        EXISTS then: one another session dropped meanwhile is gone either way, and a committed block must not
        report an error; by id: a new table of that name is not the one this block meant).  Every table is
        checked before any is dropped, so ``DROP TABLE a, missing`` drops nothing, as in PostgreSQL."""
        found: dict[str, int] = {}
        self.catalog.revalidate()  # a table dropped (and made again) on another node since this node looked
        for name in p.names:
            try:
                found[name] = self.catalog.lookup(name).table_id
            except SqlError:
                if not p.if_exists:
                    raise SqlError("42P01", f'table "{name}" does not exist') from None
                self._notice("00000", f'table "{name}" does not exist, skipping')
        if not self.explicit or self.implicit:  # (an implicit block's: at once, like its CREATE TABLE)
            for name, table_id in found.items():
                yield from self.catalog.drop(name, p.if_exists, table_id)
            return Result("DROP TABLE")
        if self.xid is not None:
            for name, table_id in found.items():
                self._same_table(name, table_id, hint="the table of that name now is another one: roll back")
        for name, table_id in found.items():
            self.drops.setdefault(name, table_id)
        return Result("DROP TABLE")

    def _utility(self, u: Utility) -> Gen:
        if u.kind == "begin":
            if self.tx == "E":
                raise aborted()
            was = self.implicit, self.pipeline
            if self.implicit:  # inside a Query's or a pipeline's implicit block: it becomes a regular one, as in
                self.implicit = self.pipeline = False  # PostgreSQL
            elif self.explicit:  # PostgreSQL warns and still applies the modes
                self._send(wire.msg_notice("25001", "there is already a transaction in progress"))
            else:
                self._open_block()
            try:
                for setting, val in u.settings:
                    self._characteristic(setting, val)
            except SqlError:
                self.implicit, self.pipeline = was  # a BEGIN that failed did not make the block a regular one
                raise
            return Result(u.tag)
        if u.kind in ("commit", "rollback"):
            if not self.explicit:
                self._send(wire.msg_notice("25P01", "there is no transaction in progress"))
                return Result(u.tag)
            if self.implicit and not self.ending_implicit:  # the Query's own COMMIT/ROLLBACK ends its implicit
                self._send(wire.msg_notice("25P01", "there is no transaction in progress"))  # block (with a warning)
            failed = self.tx == "E"
            xid, self.xid = self.xid, None
            saved, local = self._leave_block()
            self._end_block(saved, saved.keys() if u.kind == "rollback" or failed else local)
            drops, self.drops = self.drops, {}
            if xid is not None:
                if u.kind == "commit" and not failed:
                    try:
                        yield from self._commit(xid)
                    except execute.OpFailed:
                        self._end_block(saved, saved.keys())  # not committed: its SETs are undone too
                        raise
                else:
                    try:
                        yield ("rollback", {"xid": xid})
                    except execute.OpFailed:
                        pass  # the node rolled it back already
            if u.kind == "commit" and not failed:
                for name, table_id in drops.items():  # the block committed: now its drops, of the tables it meant
                    yield from self.catalog.drop(name, True, table_id)
            return Result("ROLLBACK" if failed else u.tag)
        if self.tx == "E":
            raise aborted()
        return self._setting_statement(u)

    # cancel and close ---------------------------------------------------------------------------------------------
    def _internal_error(self, exc: BaseException) -> None:
        """A bug in a statement's continuation (it runs from another operation's answer, inside the node's
        loop): it costs this connection (FATAL XX000, then closed: its transaction rolls back), never the node."""
        log.error("SQL port: internal error in a statement of connection %d; closing it", self.pid, exc_info=exc)
        self.task = None
        self._fatal("XX000", f"internal error in MUHEAM's SQL port ({type(exc).__name__}: {exc}); the connection is "
                    "closed and its transaction rolled back")
        self.on_output()

    def cancel(self, why: str = "canceling statement due to user request") -> None:
        """A CancelRequest with our key: a statement waiting (a row lock, a begin's snapshot) ends with 57014.

        The transaction is rolled back through the session layer, which drops its waits; a statement that is
        not waiting has nothing to cancel (the request is ignored, as PostgreSQL does between statements), and
        neither has one whose commit, CREATE or DROP is under way (``_NOT_CANCELLABLE``)."""
        task = self.task
        if task is None:
            if self._cancel_parse():
                self._drain()
            return
        if task.waiting in _NOT_CANCELLABLE:
            self._release_commit(task)
            return
        task.cancelled = True
        self.task = None
        self._failed(SqlError("57014", why))
        if self.running_simple:
            self._send(wire.msg_ready(self.tx))
        else:
            self.skip_to_sync = True
        self._drain()

    def _release_commit(self, task: Task) -> None:
        """End the wait for replicas of the commit ``task`` waits for, if it gets one (it may have no end)."""
        release = self.ops.get("release_commit")
        if task.waiting == "commit" and release is not None:
            try:
                release({"xid": task.waiting_args["xid"]})
            except (RequestError, MuheamError):  # committed or failed meanwhile: its answer is on its way
                pass  # (anything else is a bug in the statement's rest, which runs in here: the server sees it)

    def close(self) -> None:
        """The connection is gone: roll back what it had running (a commit under way goes on, without waiting
        for replicas for a client that left)."""
        task, self.task = self.task, None
        if task is not None:
            task.cancelled = True
            self._release_commit(task)
        if self.parsing is not None:
            self.parsing.cancelled, self.parsing = True, None
        if self.xid is not None:
            xid, self.xid = self.xid, None
            try:
                self.ops["rollback"]({"xid": xid})
            except Exception:  # noqa: BLE001 - rolled back already
                pass


_NOT_CANCELLABLE = ("commit", "rollback", "create_table", "drop_table")
"""Operations that take effect once sent, whatever the client does: a cancel while one waits (a commit round, the
catalog lock) does not end it, as PostgreSQL lets a COMMIT under way finish.  Answering 57014 there told the client
its change did not happen when it did (a review found it).  Only a commit's wait for replicas under a commit
scope, which may have no end, is ended (``release_commit``), and the client warned that it committed."""


def _one_transaction(stmts: list[Any]) -> bool:
    """Several statements: one implicit transaction, as PostgreSQL runs a multi-statement Query (row statements,
    SET/SHOW, and transaction statements, which end or take over the block as there).  Not with CREATE/DROP TABLE
    or another utility: MUHEAM's catalog is not transactional, and ``DROP TABLE IF EXISTS t; CREATE TABLE t ...``
    in one Query must keep working, each statement on its own."""
    return len(stmts) > 1 and all(isinstance(s, (ast.SelectStmt, ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt,
                                                 ast.VariableSetStmt, ast.VariableShowStmt, ast.TransactionStmt))
                                  for s in stmts)
