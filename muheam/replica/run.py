"""The replicator's loop: subscriber -> decoder -> applier, resumed from PostgreSQL after any failure.

A new replica (no progress row) first makes its initial copy (``muheam.replica.copy``: the rows of one snapshot,
the progress row at the copy's stream position, in one PostgreSQL transaction; ``copy=False``, ``--no-copy``:
none, the stream from LSN 0).  A copy that fails for a reason that may pass (``CopyFailed``: a node away,
transactions still running) is retried like any session.

One *session* reads this replica's progress row and table registry from PostgreSQL, subscribes to the merged
stream at the row's ``restart_lsn`` (``walstream.subscriber.Subscriber``: whatever transport the stream uses, the
replicator uses it through that client), decodes with ``skip_through`` = the row's ``commit_lsn`` (and
``copy_sts``, the copy's snapshot), and applies.
When PostgreSQL goes away (``PostgresUnavailable``) or the publisher does (``PublisherUnavailable``, a broken
stream), the session is dropped whole and a new one starts from what PostgreSQL committed, after a pause that
doubles up to ``MAX_BACKOFF``: the replicator resumes by itself, and since the progress row commits with the
changes, the new session neither skips nor repeats a transaction.  A change PostgreSQL refuses, or a stream the
decoder cannot read, is not retried: it stops the replicator (exit 1) naming the problem.

**Positions and lag** (as ``pg_stat_replication``): ``received_lsn`` (end of the last record received),
``flushed_lsn`` and ``applied_lsn`` (end of the COMMIT record of the last transaction committed in PostgreSQL; one
position, because every replica transaction commits with ``synchronous_commit = on``, so applied is durable),
``applied_glsn`` (that transaction's commit timestamp: a node's commit with a GLSN at or below it is on the
replica), and ``write_lag``/``flush_lag``/``replay_lag`` in ms: from the transaction's commit time on the cluster
to its receipt, and to its commit in PostgreSQL (both wall clocks, so comparable only on one host or with synced
clocks).  ``report`` gets these every ``REPORT_EVERY`` seconds (``muheam replicas`` reads them back from etcd).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psycopg

from muheam.config import Config
from muheam.errors import MuheamError
from muheam.replica import apply
from muheam.replica.apply import Applier, PostgresUnavailable, ReplicaError
from muheam.replica.confirm import Confirmer
from muheam.replica.copy import CopyFailed, initial_copy
from muheam.replica.decode import DecodeError, Decoder, DroppedTable, TableDef, Txn
from muheam.walstream.publisher import PublisherUnavailable, StreamError
from muheam.walstream.subscriber import Subscriber
from walmerge.errors import format_lsn

log = logging.getLogger("muheam.replica")

MAX_BACKOFF = 5.0
REPORT_EVERY = 0.5
LAG_SAMPLES = 100_000


@dataclass
class Status:
    """What the replicator reports (see the module docstring)."""

    name: str
    workers: int
    state: str = "starting"
    received_lsn: int = 0
    applied_lsn: int = 0
    applied_glsn: int = 0
    applied_xid: int = 0
    applied_txns: int = 0
    received_glsn: int = 0
    """Commit GLSN of the last transaction decoded (``ON received`` of a commit scope)."""
    copy_lsn: int = 0
    """The initial copy's stream position (0: none, the stream from LSN 0), its snapshot and row count."""
    copy_sts: int = 0
    copy_rows: int = 0
    restarts: int = 0
    last_error: str = ""
    write_lag_ms: float | None = None
    replay_lag_ms: float | None = None
    replay_lags: deque[float] = field(default_factory=lambda: deque(maxlen=LAG_SAMPLES))
    started_at: float = field(default_factory=time.time)
    poke: Callable[[], None] | None = None
    """Called after each applied transaction (the confirmer sends the new positions to the nodes)."""

    def on_applied(self, txn: Txn) -> None:
        now = time.time()
        self.applied_lsn, self.applied_glsn, self.applied_xid = txn.end_lsn, txn.commit_glsn, txn.xid
        self.applied_txns += 1
        if self.poke is not None:
            self.poke()
        if txn.commit_time_us is not None and txn.changes:
            t = txn.commit_time_us / 1e6
            self.replay_lag_ms = (now - t) * 1e3
            self.write_lag_ms = (txn.received_at - t) * 1e3 if txn.received_at else None
            self.replay_lags.append(self.replay_lag_ms)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "workers": self.workers,
                "received_lsn": format_lsn(self.received_lsn), "flushed_lsn": format_lsn(self.applied_lsn),
                "applied_lsn": format_lsn(self.applied_lsn), "applied_glsn": self.applied_glsn, "received_glsn": self.received_glsn,
                "applied_xid": self.applied_xid, "applied_txns": self.applied_txns,
                "write_lag_ms": _r(self.write_lag_ms), "flush_lag_ms": _r(self.replay_lag_ms),
                "replay_lag_ms": _r(self.replay_lag_ms), "restarts": self.restarts, "last_error": self.last_error,
                "copy_lsn": format_lsn(self.copy_lsn), "copy_sts": self.copy_sts, "copy_rows": self.copy_rows,
                "updated_at": round(time.time(), 3), "started_at": round(self.started_at, 3)}


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


class Replicator:
    """``run()`` until ``stop`` is set (or ``duration`` passes); resumes across failures (module docstring)."""

    def __init__(self, conninfo: str, endpoint: str, name: str = "default", *, workers: int = 1,
                 audit: bool = False, report: Callable[[dict[str, Any]], None] | None = None,
                 stop: threading.Event | None = None, timeout: float = 10.0, confirm_to: list[str] | None = None,
                 client_key: Any = None, copy: bool = True, nodes: Callable[[], list[str]] | None = None) -> None:
        """``client_key``: the cluster's client key (``muheam.security.setup``) for the stream and the confirmations;
        None: found as ``muheam.client.connect`` finds it.  ``copy``: a new replica starts with an initial copy
        (``muheam.replica.copy``) from the nodes whose client endpoints ``nodes()`` gives (the live members);
        False: it replays the stream from LSN 0 (``--no-copy``)."""
        self.conninfo, self.endpoint, self.name, self.workers, self.audit = conninfo, endpoint, name, workers, audit
        self.report = report or (lambda _d: None)
        self.stop = stop or threading.Event()
        self.timeout = timeout
        self.status = Status(name, workers)
        self._reported = 0.0
        self.confirm_to = confirm_to or []
        self.client_key = client_key
        self.copy = copy
        self.nodes = nodes

    def run(self, duration: float | None = None) -> dict[str, Any]:
        confirmer = None
        if self.confirm_to:
            st = self.status
            confirmer = Confirmer(self.confirm_to, self.name, key=self.client_key,
                                  positions=lambda: (st.received_glsn, st.applied_glsn, st.applied_glsn))
            st.poke = confirmer.poke
        try:
            return self._run(duration)
        finally:
            if confirmer is not None:
                confirmer.close()

    def _run(self, duration: float | None) -> dict[str, Any]:
        deadline = None if duration is None else time.monotonic() + duration
        backoff = 0.2
        while not self.stop.is_set() and (deadline is None or time.monotonic() < deadline):
            try:
                self._session(deadline)
                backoff = 0.2
            except psycopg.OperationalError as exc:
                self._retry(PostgresUnavailable(f"lost PostgreSQL: {str(exc).strip()}"), backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
            except psycopg.Error as exc:
                raise ReplicaError(f"PostgreSQL refused the replica's bookkeeping: {str(exc).strip()}") from None
            except (PostgresUnavailable, PublisherUnavailable, StreamError, CopyFailed) as exc:
                self._retry(exc, backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
        self.status.state = "stopped"
        self._report(force=True)
        return self.status.to_dict()

    def _retry(self, exc: Exception, backoff: float) -> None:
        self.status.restarts += 1
        self.status.state = "retrying"
        self.status.last_error = str(exc)
        log.warning("replica %s: %s; resuming from PostgreSQL's progress in %.1f s", self.name, exc, backoff)
        self._report(force=True)
        self.stop.wait(backoff)

    def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._reported >= REPORT_EVERY:
            self._reported = now
            try:
                self.report(self.status.to_dict())
            except MuheamError as exc:  # etcd away: the replica goes on, the next report tries again
                log.debug("replica %s: report failed: %s", self.name, exc)

    def _session(self, deadline: float | None) -> None:
        conn = apply.connect(self.conninfo)
        applier: Applier | None = None
        sub: Subscriber | None = None
        try:
            progress, tables = apply.setup(conn, self.name, create=not self.copy)
            if progress is None:
                progress, tables = self._copy(conn)
            st = self.status
            st.applied_txns, st.applied_glsn = progress.txns, progress.commit_glsn
            st.received_glsn = max(st.received_glsn, progress.commit_glsn)  # a copy holds every commit below it
            st.copy_lsn, st.copy_sts, st.copy_rows = progress.copy_lsn, progress.copy_sts, progress.copy_rows
            sub = Subscriber(self.endpoint, progress.restart_lsn, timeout=self.timeout, key=self.client_key)
            dec = Decoder(tables, skip_through=progress.commit_lsn, copy_sts=progress.copy_sts)
            applier = Applier(self.conninfo, self.name, self.workers, audit=self.audit,
                              on_applied=self.status.on_applied)
            applier.add_tables(tables)
            checked = False
            self.status.state = "streaming"
            log.info("replica %s: resuming at %s (last applied commit %s)", self.name,
                     format_lsn(progress.restart_lsn), format_lsn(max(0, progress.commit_lsn)))
            while not self.stop.is_set() and (deadline is None or time.monotonic() < deadline):
                batch = sub.receive(0.2)
                if not checked and sub.info is not None:
                    apply.check_system(conn, self.name, sub.info.system_id)
                    checked = True
                if batch:
                    self.status.received_lsn = sub.next_lsn
                    now = time.time()
                    try:
                        for ev in dec.feed(batch):
                            if isinstance(ev, TableDef):
                                applier.create_table(ev)
                            elif isinstance(ev, DroppedTable):
                                applier.drop_table(ev.table_id, ev.name)
                            else:
                                ev.received_at = now
                                self.status.received_glsn = ev.commit_glsn
                                applier.submit(ev)
                    except DecodeError as exc:
                        raise ReplicaError(f"cannot decode the merged stream: {exc}") from None
                    if self.status.poke is not None:
                        self.status.poke()  # received moved
                elif sub.ended:
                    raise PublisherUnavailable(f"the publisher at {self.endpoint} ended the stream")
                applier.check()
                self._report()
            applier.drain(30)
        finally:
            if applier is not None:
                applier.close()
            if sub is not None:
                sub.close()
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - PostgreSQL may be gone already
                pass

    def _copy(self, conn: psycopg.Connection[Any]) -> tuple[apply.Progress, list[TableDef]]:
        """A new replica: the initial copy (``muheam.replica.copy``), then its progress and registry."""
        if self.nodes is None:
            raise ReplicaError(f"replica {self.name!r} is new and starts with a copy of the cluster's rows, which "
                               "needs the nodes: give -c CONFIG, or --no-copy to replay the stream from LSN 0")
        self.status.state = "copying"
        self._report(force=True)
        initial_copy(conn, self.name, self.endpoint, self.nodes, self.client_key, self.stop)
        progress, tables = apply.setup(conn, self.name, create=False)
        if progress is None:
            raise CopyFailed("the initial copy was not committed")
        return progress, tables


def follow_in_thread(cfg: Config, out: Path, endpoint: str, stop: threading.Event
                     ) -> tuple[threading.Thread, list[BaseException]]:
    """Follow the cluster's WAL and publish the merged stream on ``endpoint`` from a thread of this process (what
    ``muheam walmerge --follow --out OUT --publish ENDPOINT`` does), until ``stop`` is set.  A failure of the
    follower sets ``stop`` too and is left in the returned list."""
    from muheam.membership import connect
    from muheam.security.setup import publisher_security
    from muheam.walstream.follow import FollowRun, StopFlag

    out.mkdir(parents=True, exist_ok=True)
    flag = StopFlag()
    errors: list[BaseException] = []

    def run() -> None:
        backend = connect(cfg.etcd_endpoints)
        try:
            # published as 'muheam wal follow --publish' publishes it: under the cluster's security, so the
            # subscriber below (with the cluster's client key) is let in and nobody else is
            FollowRun(cfg.shared_dir, out, backend, cfg.cluster_name, publish=endpoint, stop=flag,
                      publish_security=lambda ctx: publisher_security(cfg, ctx)).run()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, which stops and reports it
            errors.append(exc)
            stop.set()
        finally:
            backend.close()

    def watch() -> None:
        stop.wait()
        flag.signal = signal.SIGTERM

    t = threading.Thread(target=run, name="replica-follow", daemon=True)
    t.start()
    threading.Thread(target=watch, name="replica-follow-stop", daemon=True).start()
    return t, errors


__all__ = ["Replicator", "Status", "follow_in_thread"]
