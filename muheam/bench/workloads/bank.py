"""The bank workload (DESIGN.md section 9, seed 002): the test that a cluster never shows a half-done transfer.

``accounts`` rows (table ``accounts``, column ``balance``) all start at 0.  Transfer clients move 1 from one random
account to another in an interactive transaction (begin, add -1, add +1, commit), retrying on serialization
failures and deadlocks; the two updates are issued in random order so that opposite lock orders, hence deadlocks,
really happen.  Sum readers read every account in one transaction and check that the sum is exactly 0: a reader
that ever sees a nonzero sum has seen a transfer half applied (a broken snapshot, a lost update, a torn commit).
At the end :func:`checksum` hashes the sorted table so a test can check that every node reads the same data.

The driver is backend-neutral: a :class:`Session` does one transfer or one full read, and :func:`run` runs
clients in processes (the default: client-side Python would otherwise be the bottleneck behind the GIL) or
threads, spread round-robin over a list of endpoints, one per node.  ``muheam.bench.pgbase`` plugs standalone
PostgreSQL into the same driver so the benchmark compares the same workload shape.

Everything is bounded: client counts are capped, every client stops at a shared deadline, every request has a
client timeout, and the parent gives up on (and kills, by pid) a client that has not reported well after the
deadline.  A run therefore always returns, with a per-client error list rather than a hang.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import queue
import random
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from muheam.client import Connection, DeadlockDetected, LockTimeout, SerializationFailure, connect, request
from muheam.storage.heap import bucket_of

TABLE = "accounts"
COLUMN = "balance"
MAX_CLIENTS = 256
MAX_SECONDS = 3600.0
MAX_ERRORS_KEPT = 5  # per client: the first few messages say what went wrong, the count says how often
INSERT_BATCH = 500
MAX_TRACE = 2_000_000  # per client, with run(trace=True): bounds the memory of a long traced run


class Retry(Exception):
    """A transaction failed in a way the workload retries; ``kind`` names it for the retry counters."""

    def __init__(self, kind: str, message: str = "") -> None:
        super().__init__(message or kind)
        self.kind = kind


class Session(Protocol):
    """One client's connection to one backend.  Raise :class:`Retry` for a retryable failure."""

    def transfer(self, src: int, dst: int, debit_first: bool) -> None:
        """Move 1 from ``src`` to ``dst`` in one transaction; ``debit_first`` says which update goes first."""

    def read_all(self) -> list[tuple[int, int]]:
        """Every (key, balance) in one transaction (one snapshot)."""

    def close(self) -> None:
        """Release the connection."""


SessionFactory = Callable[[str, float], Session]


# --- MUHEAM backend --------------------------------------------------------------------------------------------

class MuheamSession:
    """The workload over ``muheam.client``: each call is one round trip, like an interactive SQL session."""

    def __init__(self, endpoint: str, timeout: float) -> None:
        self.conn: Connection = connect(endpoint, timeout)

    def transfer(self, src: int, dst: int, debit_first: bool) -> None:
        steps = [(src, -1), (dst, 1)] if debit_first else [(dst, 1), (src, -1)]
        try:
            with self.conn.transaction() as tx:
                for key, delta in steps:
                    tx.add(TABLE, key, COLUMN, delta)
        except SerializationFailure as exc:
            raise Retry("serialization", str(exc)) from exc
        except DeadlockDetected as exc:
            raise Retry("deadlock", str(exc)) from exc
        except LockTimeout as exc:
            raise Retry("lock_timeout", str(exc)) from exc

    def read_all(self) -> list[tuple[int, int]]:
        with self.conn.transaction() as tx:
            return [(key, int(row[COLUMN])) for key, row in tx.scan(TABLE)]

    def close(self) -> None:
        self.conn.close()


def muheam_session(endpoint: str, timeout: float) -> Session:
    return MuheamSession(endpoint, timeout)


def account_buckets(accounts: int) -> int:
    """Hash buckets of the accounts table: a few accounts per chain (see :func:`create_accounts`)."""
    return max(1, accounts // 4)


def shares(accounts: int, nodes: int) -> list[list[int]]:
    """Accounts split into ``nodes`` shares by hash chain (bucket modulo ``nodes``): a node that works only on
    its share keeps its chains, since no account of another share lives in them."""
    out: list[list[int]] = [[] for _ in range(nodes)]
    buckets = account_buckets(accounts)
    for key in range(accounts):
        out[bucket_of(key, buckets) % nodes].append(key)
    return out


def create_accounts(endpoint: str, accounts: int, balances: dict[int, int] | None = None,
                    timeout: float = 30.0) -> None:
    """Create ``accounts`` rows at 0 (or at ``balances[key]``: tests plant a violation that way).

    Raises ``NotSupported`` on a cluster that cannot serve data yet (more than one node before block ownership).
    """
    balances = balances or {}
    with connect(endpoint, timeout) as conn:
        # a few accounts per hash chain: in a cluster the chain is the unit of block ownership, so transfers on
        # different accounts seldom pull the same blocks back and forth between nodes, while a full read still
        # visits few pages
        conn.create_table(TABLE, {COLUMN: "int64"}, expected_rows=accounts, buckets=account_buckets(accounts))
        for start in range(0, accounts, INSERT_BATCH):
            with conn.transaction() as tx:
                for key in range(start, min(accounts, start + INSERT_BATCH)):
                    tx.insert(TABLE, key, {COLUMN: balances.get(key, 0)})


def checksum_rows(rows: Sequence[tuple[int, int]]) -> str:
    """SHA-256 over the sorted (key, balance) pairs: equal on two nodes iff they read the same table."""
    h = hashlib.sha256()
    for key, balance in sorted(rows):
        h.update(struct.pack("<qq", key, balance))
    return h.hexdigest()


def checksum(endpoint: str, timeout: float = 10.0) -> str:
    """The table checksum as node ``endpoint`` reads it, in one transaction."""
    session = MuheamSession(endpoint, timeout)
    try:
        return checksum_rows(session.read_all())
    finally:
        session.close()


def running_transactions(endpoint: str, timeout: float = 2.0) -> int:
    """Transactions begun on the node and not yet ended, from its status counters.

    Every ``begin`` takes exactly one XID allocation and ends in exactly one commit or abort, so the difference is
    what is still open.  (The ``xid`` benchmark op also allocates; do not use both on one node.)
    """
    counters = request(endpoint, "status", timeout=timeout)["counters"]
    return int(counters["xids"].get("allocations", 0)) - int(counters["sessions"].get("commits", 0)) \
        - int(counters["sessions"].get("aborts", 0))


# --- the driver ------------------------------------------------------------------------------------------------

@dataclass
class BankResult:
    """What one run did.  ``violations`` is the list that must be empty; ``errors`` the one that should be."""

    transfers: int = 0
    retries: dict[str, int] = field(default_factory=dict)
    sums: int = 0
    violations: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[str, list[str]] = field(default_factory=dict)
    error_count: int = 0
    elapsed: float = 0.0
    clients: int = 0
    readers: int = 0
    reports: list[dict[str, Any]] = field(default_factory=list)
    """Each client's own report, kept with ``run(trace=True)`` (its trace, acknowledged changes, unknowns)."""

    @property
    def tps(self) -> float:
        return self.transfers / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def sum_violations(self) -> int:
        return len(self.violations)

    def to_dict(self) -> dict[str, Any]:
        return {"transfers": self.transfers, "retries": dict(self.retries), "sums": self.sums,
                "sum_violations": self.sum_violations, "violations": self.violations[:20],
                "errors": self.errors, "error_count": self.error_count, "elapsed": round(self.elapsed, 3),
                "tps": round(self.tps, 1), "clients": self.clients, "readers": self.readers}


def _transfer_loop(session: Session, rng: random.Random, accounts: int, deadline: float,
                   report: dict[str, Any], share: Sequence[int] = (), affinity: float = 0.0) -> None:
    """``report["trace"]``, when present, records each acknowledged transfer (its end, monotonic, and latency),
    ``report["net"]`` the balance change it acknowledged per account, and ``report["unknown"]`` every transfer
    whose outcome the client could not learn (the node failed under it): what ``muheam demo`` checks against the
    final table to prove no acknowledged commit was lost.  With ``share``, a fraction ``affinity`` of the transfers
    move money between two accounts of that share (the node-affine load)."""
    trace = report.get("trace")
    while time.monotonic() < deadline:
        if len(share) >= 2 and rng.random() < affinity:
            src, dst = rng.sample(share, 2)
        else:
            src, dst = rng.sample(range(accounts), 2)
        debit_first = rng.random() < 0.5
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                session.transfer(src, dst, debit_first)
            except Retry as r:
                report["retries"][r.kind] = report["retries"].get(r.kind, 0) + 1
                continue
            except Exception:
                if trace is not None:
                    report["unknown"].append((src, dst))
                raise
            report["transfers"] += 1
            if trace is not None and len(trace) < MAX_TRACE:
                t1 = time.monotonic()
                trace.append((t1, t1 - t0))
                report["net"][src] = report["net"].get(src, 0) - 1
                report["net"][dst] = report["net"].get(dst, 0) + 1
            break


def _reader_loop(session: Session, accounts: int, deadline: float, report: dict[str, Any]) -> None:
    while time.monotonic() < deadline:
        rows = session.read_all()
        total = sum(balance for _, balance in rows)
        report["sums"] += 1
        if total != 0 or len(rows) != accounts:
            report["violations"].append({"sum": total, "rows": len(rows)})


def _close(session: Session | None) -> None:
    if session is not None:
        try:
            session.close()
        except Exception:  # noqa: BLE001 - closing a broken connection may fail; nothing to do about it
            pass


def _client(name: str, role: str, factory: SessionFactory, endpoint: str, accounts: int, seconds: float,
            timeout: float, seed: int, ready: Any, go: Any, out: Any, trace: bool = False, share: Sequence[int] = (),
            affinity: float = 0.0) -> None:
    """One client, in a thread or a process: connect, wait for the common start, work until the deadline.

    Errors other than :class:`Retry` are recorded and the client reconnects and goes on, so one failing node
    does not end the run for clients of the others; ``out`` always gets exactly one report.
    """
    report: dict[str, Any] = {"name": name, "transfers": 0, "retries": {}, "sums": 0, "violations": [],
                              "errors": [], "error_count": 0, "endpoint": endpoint}
    if trace and role == "transfer":
        report.update(trace=[], net={}, unknown=[])
    session: Session | None = None

    def failed(exc: BaseException) -> None:
        report["error_count"] += 1
        if len(report["errors"]) < MAX_ERRORS_KEPT:
            report["errors"].append(f"{type(exc).__name__}: {exc}")

    try:
        rng = random.Random(seed)
        try:
            session = factory(endpoint, timeout)  # before the barrier: connecting is not part of the measurement
        except Exception as exc:  # noqa: BLE001 - any backend's error is reported, not raised
            failed(exc)
        finally:
            ready.set()
        if not go.wait(timeout + 60):
            raise TimeoutError("the run never started")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if session is None:
                    session = factory(endpoint, timeout)
                if role == "transfer":
                    _transfer_loop(session, rng, accounts, deadline, report, share, affinity)
                else:
                    _reader_loop(session, accounts, deadline, report)
            except Exception as exc:  # noqa: BLE001
                failed(exc)
                _close(session)
                session = None
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    except Exception as exc:  # noqa: BLE001
        failed(exc)
    finally:
        _close(session)
        out.put(report)


def run(endpoints: Sequence[str], seconds: float, transfer_clients: int = 4, readers: int = 1,
        accounts: int = 100, factory: SessionFactory = muheam_session, mode: str = "process",
        timeout: float = 5.0, seed: int | None = None, trace: bool = False, affinity: float = 0.0) -> BankResult:
    """Run the workload for ``seconds`` against tables already made by :func:`create_accounts`.

    Clients are assigned to ``endpoints`` round-robin (transfer clients first, then readers, each starting at the
    first endpoint) so every node serves both kinds once there are enough clients.  ``factory`` must be a
    module-level function when ``mode`` is ``"process"``.  Returns when every client reported or was given up.
    ``affinity``: the probability that a transfer client picks both accounts from its node's share
    (:func:`shares`), as an application that routes by key would; otherwise (and at 0) uniformly.
    """
    if not endpoints:
        raise ValueError("need at least one endpoint")
    if not 0 <= transfer_clients <= MAX_CLIENTS or not 0 <= readers <= MAX_CLIENTS:
        raise ValueError(f"client counts must be between 0 and {MAX_CLIENTS}")
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"seconds must be in (0, {MAX_SECONDS:g}]")
    if transfer_clients and accounts < 2:
        raise ValueError("transfers need at least 2 accounts")
    if mode not in ("process", "thread"):
        raise ValueError("mode is 'process' or 'thread'")
    if not 0.0 <= affinity <= 1.0:
        raise ValueError("affinity is a probability in [0, 1]")
    split = shares(accounts, len(endpoints)) if affinity else [[] for _ in endpoints]
    base = seed if seed is not None else random.randrange(1 << 30)
    roles = [("transfer", i) for i in range(transfer_clients)] + [("reader", i) for i in range(readers)]
    result = BankResult(clients=transfer_clients, readers=readers)
    if not roles:
        return result

    ctx = mp.get_context("fork")
    go: Any = ctx.Event() if mode == "process" else threading.Event()
    out: Any = ctx.Queue() if mode == "process" else queue.Queue()
    workers: list[Any] = []
    readies: list[Any] = []
    for n, (role, i) in enumerate(roles):
        ready: Any = ctx.Event() if mode == "process" else threading.Event()
        args = (f"{role}-{i}", role, factory, endpoints[i % len(endpoints)], accounts, seconds, timeout,
                base + n, ready, go, out, trace, split[i % len(endpoints)], affinity)
        w: Any = ctx.Process(target=_client, args=args, daemon=True) if mode == "process" \
            else threading.Thread(target=_client, args=args, daemon=True)
        w.start()
        workers.append(w)
        readies.append(ready)
    for ready in readies:
        ready.wait(30)
    t0 = time.monotonic()
    go.set()
    # a client ends at the deadline plus at most one request (timeout), two with the rollback after a timeout
    give_up = t0 + seconds + 3 * timeout + 10
    reports: list[dict[str, Any]] = []
    while len(reports) < len(roles):
        try:
            reports.append(out.get(timeout=max(0.1, give_up - time.monotonic())))
        except queue.Empty:
            break
    result.elapsed = time.monotonic() - t0  # includes each client's last request after the deadline
    for w in workers:
        w.join(timeout=5 if mode == "process" else 0.1)
        if mode == "process" and w.is_alive():
            w.kill()  # by pid: this very child
            w.join(timeout=5)
    named = {r["name"] for r in reports}
    for role, i in roles:
        if f"{role}-{i}" not in named:
            result.errors[f"{role}-{i}"] = ["client did not report before the run's time limit; stopped"]
            result.error_count += 1
    result.reports = reports if trace else []
    for r in reports:
        result.transfers += r["transfers"]
        result.sums += r["sums"]
        for kind, count in r["retries"].items():
            result.retries[kind] = result.retries.get(kind, 0) + count
        result.violations.extend({**v, "reader": r["name"]} for v in r["violations"])
        if r["errors"]:
            result.errors[r["name"]] = r["errors"]
        result.error_count += r["error_count"]
    if mode == "process":
        out.close()
        out.join_thread()
    return result
