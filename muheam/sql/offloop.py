"""A large SQL text is parsed, and its statement compiled, in a thread beside the node's loop.

Why: parsing a 1 MiB INSERT with pglast takes about half a second and compiling it as long again, more on a
loaded machine, and a client may send such texts one after the other.  Done in the loop, every other session of
the node and every peer's lock or commit round waited for it (the loop's watch was paused and the peers told
the node was busy, so nobody was fenced, but the whole cluster's commits stood still).  In a thread, the loop
keeps the GIL for its own turns (the interpreter hands it over every few milliseconds; pglast's C parse is a
small part of the work, the Python objects it builds are the rest) and only the session that sent the text waits.

While the thread works, the interpreter's switch interval is 0.5 ms instead of 5: each of the loop's system
calls gives the GIL away and waits for the worker to hand it back, so with the default a loop turn took tens of
milliseconds beside a large parse (about 50 times fewer system calls a second than idle; measured with a
socketpair ping-pong beside the parse of a 969 KB INSERT: 7,900 round trips a second at 5 ms, 24,000 at 0.2 ms;
the worst gap, about 60 ms, is pglast's C parse, which keeps the GIL).

What runs in the thread is a pure function of what it is given: ``plan.parse`` of the text and, for a text of
exactly one statement, ``plan.compile_statement`` against a copy of the session's known tables and settings
taken when the job was handed over (the compile never asks the node: a table not in the copy fails the compile,
and the session then compiles in the loop as before).  The session uses a compiled plan only if its catalog is
still of the generation the copy came from; everything else (errors, a statement list, a text of several
statements) is parsed here and handled by the session in the loop exactly as its own parse would be.

Threads: ``submit`` and ``drain`` run in the loop, the thread only takes jobs; results come back through a deque
and a socketpair the loop's poller watches (``fd``), so every callback runs in the loop (as ``WalFlusher``).
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from muheam.sql import plan, wire
from muheam.sql.expr import SqlError, TableInfo
from muheam.sql.plan import Compiled
from muheam.wakeup import Wakeup

log = logging.getLogger("muheam.sql")

SWITCH_INTERVAL = 0.0005
"""Seconds the worker holds the GIL before it must offer it to the loop, while it works (see above)."""


@dataclass(frozen=True)
class Parsed:
    """A text's parse (``stmts``, or the ``error`` a parse in the loop would raise; both ``None``: the thread
    failed unexpectedly, and the loop parses again itself) and, for one statement, its plan (or ``None``)."""

    sql: str
    stmts: tuple[Any, ...] | None
    error: SqlError | None
    compiled: Compiled | None
    param_oids: tuple[int, ...]
    generation: int


@dataclass
class Job:
    sql: str
    param_oids: list[int]
    tables: dict[str, TableInfo]
    settings: dict[str, str]
    generation: int
    done: Callable[[Parsed], None]
    owner: object = None
    """The session that asked (``SqlServer`` closes its connection if ``done`` raises)."""
    cancelled: bool = False
    """Set by the loop (a cancel, the connection's end): the result is dropped, ``done`` never runs."""
    result: Parsed | None = field(default=None, repr=False)


class _NotKnown(Exception):
    """A table the copy of the catalog does not have: compiled in the loop instead."""


def work(job: Job) -> Parsed:
    """The thread's part, a pure function of ``job`` (callable in tests without a thread)."""
    try:
        stmts = plan.parse(job.sql)
    except SqlError as exc:
        return Parsed(job.sql, None, exc, None, tuple(job.param_oids), job.generation)
    except Exception:  # noqa: BLE001 - a bug: the loop parses again and reports it as it always did
        log.exception("SQL port: parsing a large statement off the loop failed; parsing it in the loop")
        return Parsed(job.sql, None, None, None, tuple(job.param_oids), job.generation)
    compiled = None
    if len(stmts) == 1 and not job.cancelled:
        def lookup(name: str) -> TableInfo:
            info = job.tables.get(name)
            if info is None:
                raise _NotKnown(name)
            return info
        try:
            compiled = plan.compile_statement(stmts[0], lookup, list(job.param_oids),
                                              lambda name: job.settings.get(name, ""))
        except Exception:  # noqa: BLE001 - _NotKnown, an error, a bug: the loop compiles and reports as before
            compiled = None
    return Parsed(job.sql, stmts, None, compiled, tuple(job.param_oids), job.generation)


_switches = threading.Lock()
_working = 0
_normal_interval = 0.0


def _quicker_switches(working: bool) -> None:
    """Lower the interpreter's switch interval while any worker of the process works, and put back what it was
    before the first began once the last ends (each worker restoring what it found left it lowered for good when
    two overlapped)."""
    global _working, _normal_interval
    with _switches:
        if working:
            if _working == 0:
                _normal_interval = sys.getswitchinterval()
                sys.setswitchinterval(SWITCH_INTERVAL)
            _working += 1
        else:
            _working -= 1
            if _working == 0:
                sys.setswitchinterval(_normal_interval)


class ParseWorker:
    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._done: deque[Job] = deque()
        self._wakeup = Wakeup()
        self.counters = {"parsed_off_loop": 0, "compiled_off_loop": 0}
        self._thread = threading.Thread(target=self._run, name="sql-parse", daemon=True)
        self._thread.start()

    @property
    def fd(self) -> int:
        """Readable when jobs have finished: register it with the loop's poller, then call ``drain``."""
        return self._wakeup.fd

    def submit(self, job: Job) -> None:
        self._jobs.put(job)

    def drain(self, failed: Callable[[Job, Exception], None]) -> None:
        """Run the callbacks of the finished jobs (in the loop).  A callback goes on to run the statement, and a
        bug there is handed to ``failed`` (which closes that connection) and the other jobs still run: raised, it
        left the node's loop (a review's reproducer: ``SELECT nope`` padded to 40 KiB, before it was 42703)."""
        self._wakeup.clear()
        while self._done:
            job = self._done.popleft()
            if job.cancelled or job.result is None:
                continue
            self.counters["parsed_off_loop"] += 1
            self.counters["compiled_off_loop"] += job.result.compiled is not None
            try:
                job.done(job.result)
            except Exception as exc:  # noqa: BLE001 - a bug costs its connection, never the node
                try:
                    failed(job, exc)
                except Exception:  # noqa: BLE001 - nor may closing it strand the jobs behind it
                    log.exception("SQL port: handling a failed statement failed too")

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(1)  # (a daemon: a parse under way is not waited for)
        self._wakeup.close()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if job.cancelled:
                continue
            _quicker_switches(True)
            try:
                job.result = work(job)
            finally:
                _quicker_switches(False)
            self._done.append(job)
            if not self._wakeup.notify():
                return  # closed: the node is going away


class OffLoop:
    """The session's half (mixed into ``muheam.sql.session.Session``): a Query or Parse of a large text waits at
    the head of the session's queue while the worker parses it; the session handles it when the result is back,
    taking the parse (and the plan) from ``preparsed`` instead of making them in the loop."""

    offloop: ParseWorker | None
    parsing: Job | None
    preparsed: Parsed | None
    queue: deque[Any]
    settings: dict[str, str]
    catalog: Any
    skip_to_sync: bool
    tx: str

    def _drain(self) -> None:
        raise NotImplementedError

    def _failed(self, exc: SqlError) -> None:
        raise NotImplementedError

    def _send(self, data: bytes) -> None:
        raise NotImplementedError

    def _off_loop(self, ev: Any, ready: bool) -> bool:
        """Hand ``ev``'s text to the worker if it is a large one not parsed yet: True (``ev`` must wait)."""
        if self.offloop is None or not ready or self.skip_to_sync:
            return False
        if isinstance(ev, wire.Query):
            sql, oids = ev.sql, []
        elif isinstance(ev, wire.Parse):
            sql, oids = ev.sql, list(ev.param_types)
        else:
            return False
        if not plan.is_long(sql) or (self.preparsed is not None and self.preparsed.sql is sql):
            return False
        self.parsing = Job(sql, oids, self.catalog.known(), dict(self.settings), self.catalog.generation,
                           self._parsed, self)
        self.offloop.submit(self.parsing)
        return True

    def _parsed(self, result: Parsed) -> None:
        self.parsing, self.preparsed = None, result
        self._drain()

    def _preparsed_stmts(self, sql: str) -> tuple[Any, ...] | None:
        """The worker's parse of ``sql`` (or its error, raised), if it made one."""
        done = self.preparsed
        if done is None or done.sql is not sql:
            return None
        if done.error is not None:
            raise done.error
        return done.stmts

    def _preparsed_plan(self, stmt: Any, param_oids: list[int]) -> Compiled | None:
        """The worker's plan of ``stmt``, if it made one against the tables the session still knows."""
        done = self.preparsed
        if (done is None or done.compiled is None or done.stmts is None or stmt is not done.stmts[0]
                or tuple(param_oids) != done.param_oids or done.generation != self.catalog.generation):
            return None
        return done.compiled

    def _cancel_parse(self) -> bool:
        """A cancel (True) or the connection's end while the worker parses: the statement is over."""
        job, self.parsing = self.parsing, None
        if job is None:
            return False
        job.cancelled = True
        ev = self.queue.popleft() if self.queue else None
        self._failed(SqlError("57014", "canceling statement due to user request"))
        if isinstance(ev, wire.Query):
            self._send(wire.msg_ready(self.tx))
        else:
            self.skip_to_sync = True
        return True
