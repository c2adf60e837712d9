"""Decoded transactions into PostgreSQL: exactly once, in commit order, on one or several connections.

**Exactly once.**  Every replicated transaction is one PostgreSQL transaction that also updates this replica's row
of ``muheam_replica.progress`` to the transaction's ``commit_lsn`` and ``restart_lsn``.  PostgreSQL commits both or
neither, so after a crash of the replicator, of PostgreSQL or of the cluster, the row names exactly the last
transaction the replica holds; the replicator decodes again from its ``restart_lsn`` and skips every commit at or
below its ``commit_lsn`` (``decode``).  Nothing is lost (the stream keeps every record) and nothing is applied
twice.  With ``audit``, each transaction also inserts ``(xid, commit_lsn)`` into ``muheam_replica.applied``
(primary key: a second apply of the same transaction would fail), for tests and audits.

**Parallel apply, commits in order** (Galera's ``depends_seqno``).  Transactions get sequence numbers in stream
order.  Each one depends on the latest earlier transaction that wrote any of its keys (``last_writer``); with
``workers`` > 1 they are dealt round-robin to worker threads, each with its own connection.  A worker starts a
transaction's statements once its dependency has committed on the replica (so it never waits on a row lock
another worker holds), and commits it only once its predecessor in the stream has committed, so commits on the
replica happen in the stream's commit order and a reader never sees a state the cluster never had.  The progress
row is updated just before that commit, after the predecessor's commit: it is never a lock conflict.  No deadlock:
the lowest unfinished transaction waits for nothing unfinished (each worker takes its transactions in order).

Replica tables have the cluster's table and column names, ``key bigint PRIMARY KEY`` and one NOT NULL column per
cluster column (``int64`` -> ``bigint``, ``float64`` -> ``double precision``, ``text(N)`` -> ``text``).  They are
registered in ``muheam_replica.tables``; a table of that name that the registry does not list is refused rather
than overwritten.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from muheam.errors import MuheamError
from muheam.replica.decode import DELETE, TableDef, Txn

SCHEMA = "muheam_replica"
MAX_WORKERS = 64
IN_FLIGHT_PER_WORKER = 16
"""Transactions dealt out but not committed, per worker (bounds the memory the replicator holds)."""

_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.progress (
    name text PRIMARY KEY, system_id numeric NOT NULL, commit_lsn numeric NOT NULL, restart_lsn numeric NOT NULL,
    commit_glsn numeric NOT NULL, xid numeric NOT NULL, commit_time_us bigint, txns bigint NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS {SCHEMA}.tables (
    name text NOT NULL, table_id integer NOT NULL, table_name text NOT NULL, columns jsonb NOT NULL,
    PRIMARY KEY (name, table_id));
CREATE TABLE IF NOT EXISTS {SCHEMA}.applied (
    name text NOT NULL, xid numeric NOT NULL, commit_lsn numeric NOT NULL, PRIMARY KEY (name, xid));
"""
_MIGRATE = f"""
ALTER TABLE {SCHEMA}.progress ADD COLUMN IF NOT EXISTS copy_lsn numeric NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS copy_sts numeric NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS copy_rows bigint NOT NULL DEFAULT 0;
"""
"""The copy_* columns came with the initial copy: a replica database made before it gets them (all 0: "no copy").
Run only when missing, since ALTER TABLE locks the table against the other replicas' appliers."""
_PG_TYPES = {"int64": "bigint", "float64": "double precision"}


class ReplicaError(MuheamError):
    """The replica cannot go on (PostgreSQL refused a change, a table clash, another stream's replica)."""


class PostgresUnavailable(ReplicaError):
    """PostgreSQL is down or unreachable; the replicator retries (its progress is safe in PostgreSQL)."""


@dataclass(frozen=True)
class Progress:
    """The replica's position: its last applied transaction (all zero before the first)."""

    commit_lsn: int = -1
    restart_lsn: int = 0
    commit_glsn: int = 0
    xid: int = 0
    txns: int = 0
    copy_lsn: int = 0
    """Where the initial copy's stream starts (``muheam.replica.copy``; 0: no copy, the stream from its start)."""
    copy_sts: int = 0
    """The copy snapshot's timestamp: commits with a GLSN below it are in the copy (0: no copy)."""
    copy_rows: int = 0


def _pg_type(t: str) -> str:
    return _PG_TYPES.get(t, "text")


def connect(conninfo: str) -> psycopg.Connection[Any]:
    try:
        conn = psycopg.connect(conninfo, autocommit=False, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise PostgresUnavailable(f"cannot connect to PostgreSQL ({conninfo}): {str(exc).strip()}") from None
    with conn.cursor() as cur:
        cur.execute("SET synchronous_commit = on")  # the progress row is what the replica confirms as flushed
    conn.commit()
    return conn


def setup(conn: psycopg.Connection[Any], name: str, create: bool = True) -> tuple[Progress | None, list[TableDef]]:
    """Create (or bring up to date) the bookkeeping tables; read this replica's progress and table registry.

    A replica without a progress row is new: with ``create`` its row is made at once (it replays the stream from
    LSN 0, ``--no-copy``); without, None is returned and the row comes with the initial copy (``copy.write``),
    in the copy's own PostgreSQL transaction."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('muheam_replica_setup'))")
        cur.execute(_DDL)
        cur.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = %s AND table_name = 'progress' "
                    "AND column_name = 'copy_rows'", (SCHEMA,))
        if cur.fetchone() is None:
            cur.execute(_MIGRATE)
        cur.execute(f"SELECT commit_lsn, restart_lsn, commit_glsn, xid, txns, copy_lsn, copy_sts, copy_rows "
                    f"FROM {SCHEMA}.progress WHERE name = %s", (name,))
        row = cur.fetchone()
        progress: Progress | None = None
        if row is not None:
            progress = Progress(*(int(v) for v in row))
        elif create:
            cur.execute(f"INSERT INTO {SCHEMA}.progress (name, system_id, commit_lsn, restart_lsn, commit_glsn, "
                        "xid, txns) VALUES (%s, 0, -1, 0, 0, 0, 0)", (name,))
            progress = Progress()
        cur.execute(f"SELECT table_id, table_name, columns FROM {SCHEMA}.tables WHERE name = %s", (name,))
        tables = [TableDef(int(tid), str(tn), tuple((str(c), str(t)) for c, t in cols)) for tid, tn, cols in cur]
    conn.commit()
    return progress, tables


def check_system(conn: psycopg.Connection[Any], name: str, system_id: int) -> None:
    """A replica follows one stream: record its system id on first contact, refuse another one later."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT system_id FROM {SCHEMA}.progress WHERE name = %s", (name,))
        row = cur.fetchone()
        known = int(row[0]) if row is not None else 0
        if known == 0:
            cur.execute(f"UPDATE {SCHEMA}.progress SET system_id = %s WHERE name = %s", (system_id, name))
    conn.commit()
    if known not in (0, system_id):
        raise ReplicaError(f"replica {name!r} in this database follows another stream (system id {known:#x}, this "
                           f"one is {system_id:#x}); use another --name or another database")


def create_table(conn: psycopg.Connection[Any], name: str, tdef: TableDef) -> None:
    """``CREATE TABLE`` with the cluster's names, registered in the same transaction (idempotent)."""
    try:
        define_table(conn, name, tdef)
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


def define_table(conn: psycopg.Connection[Any], name: str, tdef: TableDef) -> bool:
    """``CREATE TABLE`` and its registry row in the connection's open transaction; False if the registry has the
    table already.  The caller commits (or rolls back, e.g. on the ``ReplicaError`` of a clash)."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT table_id FROM {SCHEMA}.tables WHERE name = %s AND table_name = %s", (name, tdef.name))
        if cur.fetchone() is not None:
            return False
        cur.execute("SELECT 1 FROM pg_tables WHERE schemaname = current_schema() AND tablename = %s", (tdef.name,))
        if cur.fetchone() is not None:
            raise ReplicaError(f"PostgreSQL already has a table {tdef.name!r} that replica {name!r} did not create; "
                               "drop it, or replicate into another database")
        cols = [sql.SQL("key bigint PRIMARY KEY")] + [
            sql.SQL("{} {} NOT NULL").format(sql.Identifier(c), sql.SQL(_pg_type(t))) for c, t in tdef.columns]
        cur.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(tdef.name), sql.SQL(", ").join(cols)))
        cur.execute(f"INSERT INTO {SCHEMA}.tables (name, table_id, table_name, columns) VALUES (%s, %s, %s, %s)",
                    (name, tdef.table_id, tdef.name, Jsonb([list(c) for c in tdef.columns])))
    return True


class _Statements:
    """The upsert and delete text of each table, built once."""

    def __init__(self) -> None:
        self.upsert: dict[int, tuple[sql.Composed, tuple[str, ...]]] = {}
        self.delete: dict[int, sql.Composed] = {}

    def add(self, tdef: TableDef) -> None:
        names = tuple(c for c, _ in tdef.columns)
        ident = sql.Identifier(tdef.name)
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in ("key", *names))
        marks = sql.SQL(", ").join(sql.Placeholder() * (len(names) + 1))
        conflict: sql.Composable = sql.SQL("DO NOTHING")
        if names:
            sets = sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in names)
            conflict = sql.SQL("DO UPDATE SET {}").format(sets)
        self.upsert[tdef.table_id] = (sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (key) {}").format(
            ident, cols, marks, conflict), names)
        self.delete[tdef.table_id] = sql.SQL("DELETE FROM {} WHERE key = %s").format(ident)


class Applier:
    """Applies ``Txn``s in order on ``workers`` connections (see the module docstring); thread-safe for one
    submitting thread.  ``on_applied(txn, seconds)`` is called (under a lock) after each transaction commits."""

    def __init__(self, conninfo: str, name: str, workers: int = 1, *, audit: bool = False,
                 on_applied: Callable[[Txn], None] | None = None) -> None:
        if not 1 <= workers <= MAX_WORKERS:
            raise ReplicaError(f"--workers must be between 1 and {MAX_WORKERS}, got {workers}")
        self.conninfo, self.name, self.nworkers, self.audit = conninfo, name, workers, audit
        self.on_applied = on_applied or (lambda _t: None)
        self.stmts = _Statements()
        self.cv = threading.Condition()
        self.next_seq = 1
        self.committed_seq = 0
        self.last_writer: dict[tuple[int, int], int] = {}
        self.queues: list[deque[tuple[int, int, Txn]]] = [deque() for _ in range(workers)]
        self.error: BaseException | None = None
        self.stopping = False
        self.applied = 0
        self.conns = [connect(conninfo) for _ in range(workers)]
        self.threads = [threading.Thread(target=self._work, args=(i,), name=f"replica-apply-{i}", daemon=True)
                        for i in range(workers)]
        for t in self.threads:
            t.start()

    def add_tables(self, tables: Iterable[TableDef]) -> None:
        for t in tables:
            self.stmts.add(t)

    def create_table(self, tdef: TableDef) -> None:
        """DDL waits for every transaction dealt out before it (it is ordered in the stream like them)."""
        self.drain()
        create_table(self.conns[0], self.name, tdef)
        self.stmts.add(tdef)

    def drop_table(self, table_id: int, name: str) -> None:
        """DROP TABLE once every transaction dealt out before it is applied, with its registry row, in one
        PostgreSQL transaction; a table this replica did not create is left alone."""
        self.drain()
        conn = self.conns[0]
        try:
            with conn.cursor() as cur:
                cur.execute(f"DELETE FROM {SCHEMA}.tables WHERE name = %s AND table_id = %s RETURNING table_name",
                            (self.name, table_id))
                row = cur.fetchone()
                if row is not None:
                    cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(str(row[0]))))
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
        self.stmts.upsert.pop(table_id, None)
        self.stmts.delete.pop(table_id, None)

    def submit(self, txn: Txn) -> None:
        with self.cv:
            while self.error is None and self.next_seq - self.committed_seq > IN_FLIGHT_PER_WORKER * self.nworkers:
                self.cv.wait(0.5)
            self._raise()
            seq = self.next_seq
            self.next_seq += 1
            dep = 0
            for k in txn.keys():
                dep = max(dep, self.last_writer.get(k, 0))
                self.last_writer[k] = seq
            if len(self.last_writer) > 1_000_000:  # entries at or below the committed point constrain nothing
                self.last_writer = {k: s for k, s in self.last_writer.items() if s > self.committed_seq}
            self.queues[seq % self.nworkers].append((seq, dep, txn))
            self.cv.notify_all()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted has committed; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cv:
            while self.error is None and self.committed_seq < self.next_seq - 1:
                left = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
                if left <= 0:
                    return False
                self.cv.wait(left)
            self._raise()
        return True

    def check(self) -> None:
        """Raise what a worker failed with, if any."""
        with self.cv:
            self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            if isinstance(self.error, MuheamError):
                raise self.error
            raise ReplicaError(f"applying into PostgreSQL failed: {self.error}") from self.error

    def _wait_for(self, seq: int) -> bool:
        with self.cv:
            while self.committed_seq < seq and self.error is None and not self.stopping:
                self.cv.wait(0.5)
            return self.committed_seq >= seq

    def _work(self, i: int) -> None:
        conn = self.conns[i]
        q = self.queues[i]
        try:
            while True:
                with self.cv:
                    while not q and not self.stopping and self.error is None:
                        self.cv.wait(0.5)
                    if self.stopping or self.error is not None:
                        return
                    seq, dep, txn = q.popleft()
                if not self._wait_for(dep):
                    return
                if txn.changes:
                    self._execute(conn, txn)
                if not self._wait_for(seq - 1):
                    conn.rollback()
                    return
                if txn.changes:
                    self._commit(conn, txn)
                with self.cv:
                    self.committed_seq = seq
                    self.applied += 1
                    self.on_applied(txn)
                    self.cv.notify_all()
        except psycopg.OperationalError as exc:
            self._fail(PostgresUnavailable(f"lost PostgreSQL while applying: {str(exc).strip()}"))
        except psycopg.Error as exc:
            self._fail(ReplicaError(f"PostgreSQL refused a replicated change: {str(exc).strip()}"))
        except BaseException as exc:  # noqa: BLE001 - reported to the submitting thread, which raises it
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        with self.cv:
            if self.error is None:
                self.error = exc
            self.cv.notify_all()

    def _execute(self, conn: psycopg.Connection[Any], txn: Txn) -> None:
        with conn.pipeline(), conn.cursor() as cur:
            for ch in txn.changes:
                if ch.op == DELETE:
                    cur.execute(self.stmts.delete[ch.table_id], (ch.key,))
                else:
                    stmt, names = self.stmts.upsert[ch.table_id]
                    row = ch.row or {}
                    cur.execute(stmt, (ch.key, *(row[c] for c in names)))

    def _commit(self, conn: psycopg.Connection[Any], txn: Txn) -> None:
        with conn.pipeline(), conn.cursor() as cur:
            cur.execute(f"UPDATE {SCHEMA}.progress SET commit_lsn = %s, restart_lsn = %s, commit_glsn = %s, "
                        "xid = %s, commit_time_us = %s, txns = txns + 1, applied_at = now() WHERE name = %s",
                        (txn.commit_lsn, txn.restart_lsn, txn.commit_glsn, txn.xid, txn.commit_time_us, self.name))
            if self.audit:
                cur.execute(f"INSERT INTO {SCHEMA}.applied (name, xid, commit_lsn) VALUES (%s, %s, %s)",
                            (self.name, txn.xid, txn.commit_lsn))
        conn.commit()

    def close(self) -> None:
        with self.cv:
            self.stopping = True
            self.cv.notify_all()
        for t in self.threads:
            t.join(10)
        for c in self.conns:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - closing a connection PostgreSQL already dropped
                pass


__all__ = ["Applier", "PostgresUnavailable", "Progress", "ReplicaError", "check_system", "connect", "create_table",
           "define_table", "setup"]
