"""A new replica's initial copy: the cluster's rows as of one snapshot, consistent with one stream position.

A replica whose progress row does not exist yet starts with a copy instead of the stream from LSN 0 (issue 20):

1. ``L0`` = the publisher's ``end_lsn`` (``status``): the stream up to ``L0`` is fixed (the merged stream is only
   ever appended to), so every record before ``L0`` was written before this moment.
2. Every live member (etcd) lists its *writers*: transactions that wrote and have not ended (running, or committing
   until their COMMIT is durable; the node op ``writers``).  The copy polls until every one of them has ended,
   at most ``WRITERS_WAIT`` seconds (then ``CopyFailed``, and the replicator tries again after its back-off).  A
   transaction with a record before ``L0`` had written before step 2, so it is among these writers or had ended
   already: after this step every such transaction has ended.  (A member that dies meanwhile makes the poll fail;
   the attempt is retried.  A member that died earlier has no writer left that can still commit unless every
   member acknowledged its prepare, and then the snapshot of step 3 waits for its outcome.)
3. A transaction on one node gives the copy snapshot: ``begin`` answers its timestamp ``sts``.  MUHEAM snapshots
   are commit-timestamp snapshots (``muheam.cluster.txstate``), not PostgreSQL's (xmin, xmax, running XIDs): a
   transaction is visible iff it committed with a commit timestamp -- the GLSN of its COMMIT record -- below
   ``sts``.  A transaction that ended before the snapshot was taken and committed is visible: its node answered
   the commit only after every member acknowledged its prepare, so the snapshot either knew the outcome (its
   clock then passed the CTS) or waited for it at begin and was retaken if the CTS was not below it (I5).
4. In that transaction: the tables (``tables``) and a scan of each, written into PostgreSQL in ONE PostgreSQL
   transaction with the table definitions (the replica's registry) and the progress row: ``restart_lsn`` =
   ``copy_lsn`` = ``L0``, ``copy_sts`` = ``sts``, ``commit_glsn`` = ``sts - 1`` (every commit below ``sts`` is on
   the replica, which is what a commit scope asks).  A crash before that commit leaves nothing (PostgreSQL's DDL
   is transactional); the next session copies again from scratch.

Decoding then starts at ``L0`` and drops every COMMIT whose GLSN is below ``sts`` (``Decoder(copy_sts=...)``).
"COMMIT in the stream with GLSN < sts" is exactly "visible to the copy snapshot" (the rule of step 3), so its rows
are in the copy and nothing is applied twice; every later commit is applied, and each of those has all its
records at or after ``L0``: had it written before ``L0``, it would have ended before the snapshot (step 2) and so
be visible or aborted.  Table definitions created before ``L0`` come from the registry the copy wrote; a table
created later also has its catalog record after ``L0``.

Each table is read in pages (``ClientTransaction.scan``: one request per page of about 10,000 rows, every page
under the one snapshot) and streamed into PostgreSQL's ``COPY``, so no table is too big for one message.  A new
replica needs the nodes (``-c``);
``--no-copy`` replays the stream from LSN 0 instead, which works while the nodes keep their whole WAL and is what
``bench replicate`` measures.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import psycopg
from psycopg import sql

from muheam import failpoints
from muheam.client import ClientError, Connection, KeyArg, NodeUnavailable, NoSuchTable
from muheam.errors import MuheamError
from muheam.replica.apply import SCHEMA, ReplicaError, define_table
from muheam.replica.decode import TableDef
from muheam.walstream import subscriber

log = logging.getLogger("muheam.replica")

WRITERS_WAIT = 60.0
"""Seconds one copy attempt waits for the writers it saw to end; then it fails and the replicator tries again
after its back-off.  An abandoned transaction that wrote ends only at the node's ``idle_in_transaction_timeout``
(300 s by default), so until then attempts keep failing, and writers that never pause for 60 s keep a copy from
ever starting (use ``--no-copy`` there)."""
POLL = 0.1
TIMEOUT = 10.0


class CopyFailed(ReplicaError):
    """This attempt at the initial copy failed for a reason that may pass (a node away, writers still running);
    the replicator tries again after its back-off."""


@dataclass(frozen=True)
class CopyResult:
    lsn: int
    sts: int
    rows: int
    tables: int
    waited_for: int
    """Writers the copy waited for (step 2)."""


def stream_end(endpoint: str, key: KeyArg, timeout: float = TIMEOUT) -> int:
    """The publisher's ``end_lsn`` (``PublisherUnavailable`` if it does not answer).  A publisher that has
    published nothing yet is still starting (``replicate -c`` starts its follower with the replicator): its first
    records are waited for, up to ``timeout``, since a cluster's stream is never empty (checkpoints, heartbeats).
    A follower still catching up gives a lower ``L0``: more of the stream to decode (and drop), never a wrong copy."""
    deadline = time.monotonic() + timeout
    while True:
        end = int(subscriber.request(endpoint, "status", timeout=timeout, client_key=key)["end_lsn"])
        if end > 0 or time.monotonic() > deadline:
            return end
        time.sleep(POLL)


def wait_for_writers(conns: list[Connection], stop: threading.Event, wait: float = WRITERS_WAIT) -> int:
    """Step 2: poll each node until none of the writers it listed first is still there; returns how many."""
    seen = {c.endpoint: set(c.writers()) for c in conns}
    total = sum(len(x) for x in seen.values())
    if total:
        log.info("initial copy: waiting for %d transactions that have written to end (%s)", total,
                 {ep: sorted(x)[:10] for ep, x in seen.items() if x})
    deadline = time.monotonic() + wait
    while any(seen.values()):
        if stop.is_set():
            raise CopyFailed("stopped while the initial copy waited for running transactions")
        if time.monotonic() > deadline:
            left = {ep: sorted(x)[:10] for ep, x in seen.items() if x}
            raise CopyFailed(f"the initial copy waited {wait:g} s for transactions that wrote before its stream "
                             f"position to end; still running: {left}")
        stop.wait(POLL)
        for c in conns:
            if seen[c.endpoint]:
                seen[c.endpoint] &= set(c.writers())
    return total


def initial_copy(pg: psycopg.Connection[Any], name: str, endpoint: str, nodes: Callable[[], list[str]],
                 key: KeyArg, stop: threading.Event, wait: float = WRITERS_WAIT) -> CopyResult | None:
    """Steps 1-4 of the module docstring into the open connection ``pg``; None if another replicator of this name
    made the progress row meanwhile (nothing written)."""
    l0 = stream_end(endpoint, key)
    log.info("replica %s: initial copy from stream position %#x", name, l0)
    conns: list[Connection] = []
    try:
        try:
            endpoints = nodes()
        except MuheamError as exc:
            raise CopyFailed(f"the initial copy cannot list the cluster's members: {exc}") from None
        if not endpoints:
            raise CopyFailed("the initial copy found no live member to copy from")
        conns = [Connection(ep, TIMEOUT, key) for ep in endpoints]
        before = {int(t["table_id"]): str(t["name"]) for t in conns[0].tables()}
        waited = wait_for_writers(conns, stop, wait)
        tx = conns[0].transaction().__enter__()
        try:
            if tx.sts is None:
                raise ReplicaError(f"node at {conns[0].endpoint} does not tell its snapshot's timestamp: it runs "
                                   "an older muheam; upgrade it, or replicate with --no-copy")
            result = _write(pg, name, tx, l0, waited, before)
        finally:
            try:
                tx.rollback()  # it only read
            except (NodeUnavailable, ClientError):
                pass  # the node ends it (idle timeout), stops or is gone; what PostgreSQL committed stands
    except (NodeUnavailable, ClientError) as exc:
        pg.rollback()
        if isinstance(exc, ClientError) and exc.code == "bad_request":
            raise ReplicaError(f"the initial copy failed: {exc}; replicate with --no-copy") from None
        raise CopyFailed(f"the initial copy failed: {exc}") from None
    except BaseException:
        pg.rollback()
        raise
    finally:
        for c in conns:
            c.close()
    if result is not None:
        log.info("replica %s: initial copy of %d rows in %d tables at stream position %#x (snapshot %d, waited for "
                 "%d writers)", name, result.rows, result.tables, result.lsn, result.sts, result.waited_for)
    return result


def _write(pg: psycopg.Connection[Any], name: str, tx: Any, l0: int, waited: int,
           before: dict[int, str] | None = None) -> CopyResult | None:
    """Step 4, in one PostgreSQL transaction that commits the tables, rows and progress row together.

    ``before``: the tables listed before step 2 (id -> name).  One of them missing from the listing here was
    dropped during this attempt, and that fails it (``CopyFailed``; the next attempt starts after the drop).
    Why: a transaction that wrote the table after step 2 may commit after the snapshot and before the drop; the
    decoder then meets its changes after ``L0`` with the table neither in the registry nor created by a catalog
    record after ``L0`` -- a ``DecodeError`` that stopped the replicator at every start.  A table dropped before
    that first listing had no such writer (any writer of it was waited for, so its commit is in the snapshot),
    and one dropped after the listing here is in the registry: the decoder applies such changes, then drops it."""
    sts: int = tx.sts
    rows = 0
    with pg.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('muheam_replica_copy:' || %s))", (name,))
        cur.execute(f"SELECT 1 FROM {SCHEMA}.progress WHERE name = %s", (name,))
        if cur.fetchone() is not None:
            pg.rollback()
            return None
        cur.execute(f"SELECT table_name FROM {SCHEMA}.tables WHERE name = %s", (name,))
        stale = [str(r[0]) for r in cur]
        if stale:
            raise ReplicaError(f"replica {name!r} has no progress row but its registry lists tables {stale}: "
                               f"drop them and their rows in {SCHEMA}.tables, or use another --name")
        failpoints.hit("replica.copy_list")  # tests: a table dropped between the snapshot and the listing
        tables = [TableDef.from_dict(t) for t in tx.conn.tables()]
        gone = sorted(set(before or {}) - {t.table_id for t in tables})
        if gone and before:
            raise CopyFailed(f"tables {[before[i] for i in gone]} were dropped while the initial copy began; it "
                             "starts again")
        for tdef in tables:
            failpoints.hit("replica.copy_table")  # tests: a table dropped between the listing and its scan
            define_table(pg, name, tdef)
            names = [c for c, _ in tdef.columns]
            cols = sql.SQL(", ").join(sql.Identifier(c) for c in ("key", *names))
            with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(tdef.name), cols)) as cp:
                try:  # by id: a table made since under that name is another one, with other columns perhaps
                    for k, row in tx.scan(tdef.table_id):
                        cp.write_row((k, *(row[c] for c in names)))
                        rows += 1
                except NoSuchTable:
                    raise CopyFailed(f"the initial copy failed: no table {tdef.name!r} (id {tdef.table_id}) any "
                                     "more: dropped while the copy ran; it starts again") from None
        failpoints.hit("replica.copy_commit")  # tests: a crash with the whole copy written but not committed
        cur.execute(f"INSERT INTO {SCHEMA}.progress (name, system_id, commit_lsn, restart_lsn, commit_glsn, xid, "
                    "txns, copy_lsn, copy_sts, copy_rows) VALUES (%s, 0, -1, %s, %s, 0, 0, %s, %s, %s)",
                    (name, l0, max(0, sts - 1), l0, sts, rows))
    pg.commit()
    return CopyResult(l0, sts, rows, len(tables), waited)


__all__ = ["CopyFailed", "CopyResult", "initial_copy", "stream_end", "wait_for_writers"]
