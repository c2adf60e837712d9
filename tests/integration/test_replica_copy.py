"""A new replica's initial copy (``muheam.replica.copy``) on a real 3-node cluster into a real PostgreSQL, with
``muheam replicate -c`` as an operator runs it, while the bank load commits transfers on every node.

* Before the replicator starts: committed rows, a rolled-back transaction, and transactions left open that wrote
  before the copy's stream position.  The copy waits for them ("waiting for ... transactions"): one is rolled back
  then, one committed.
* The first replicator is killed (SIGKILL, the ``replica.copy_commit`` failpoint) with the whole copy written and
  not committed: PostgreSQL holds nothing of it (no progress row, no table).  The second one copies again, with a
  transaction open across its copy, and goes on streaming.
* Afterwards the replica equals every node (the accounts' checksum, table ``t`` row for row); the copy started at
  a stream position > 0 (``muheam replicas`` and the progress row say where, and how many rows it copied); the
  replicator applied exactly the transactions the stream commits at or after the copy snapshot's timestamp, each
  once (``--audit``), and none of those the copy holds (the open ones committed before it, the accounts' creation).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest

from muheam.bench import pgbase
from muheam.bench.workloads import bank
from muheam.client import connect
from tests.integration.test_replica import Replicator, committed_in_stream, wait_equal
from tests.support.cluster import LocalCluster
from walmerge.lsn import parse_lsn

ACCOUNTS = 30
LOAD_SECONDS = 12.0

pytestmark = pytest.mark.skipif(pgbase.available() is not None, reason=str(pgbase.available()))


def wait_log(path: Path, text: str, count: int, proc: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text(errors="replace").count(text) >= count:
            return
        assert proc is None or proc.poll() is None, f"the replicator exited:\n{path.read_text()[-3000:]}"
        time.sleep(0.05)
    raise AssertionError(f"no {text!r} (#{count}) in the replicator's log:\n{path.read_text()[-3000:]}")


def replica_tables(conninfo: str) -> tuple[dict[str, list[tuple[Any, ...]]], list[str]]:
    """Every table in the replica database's ``public`` schema with its rows ordered by key, and the tables replica
    r1's registry lists."""
    with psycopg.connect(conninfo) as conn:
        names = [str(t) for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        try:
            tables = {n: sorted(tuple(r) for r in conn.execute(f'SELECT * FROM "{n}"')) for n in names}
        except psycopg.errors.UndefinedTable:  # the replicator dropped one between the two looks: not settled yet
            return {}, ["(a table was dropped while this looked)"]
        registry: list[str] = []
        if conn.execute("SELECT to_regclass('muheam_replica.tables')").fetchone() != (None,):
            registry = sorted(str(t) for (t,) in conn.execute(
                "SELECT table_name FROM muheam_replica.tables WHERE name = 'r1'"))
        return tables, registry


def pg_has_copy(conninfo: str) -> tuple[bool, bool]:
    """(progress row of r1 exists, table accounts exists) in the replica database."""
    with psycopg.connect(conninfo) as conn:
        row = conn.execute("SELECT to_regclass('muheam_replica.progress') IS NOT NULL").fetchone()
        progress = bool(row and row[0]) and conn.execute(
            "SELECT 1 FROM muheam_replica.progress WHERE name = 'r1'").fetchone() is not None
        table = conn.execute("SELECT to_regclass('public.accounts') IS NOT NULL").fetchone()
        return progress, bool(table and table[0])


@pytest.mark.timeout(240)
def test_a_new_replica_copies_the_rows_once_and_streams_from_the_copy_position(local_cluster: Any,
                                                                             pg: pgbase.Server) -> None:
    c: LocalCluster = local_cluster(nodes=3)
    eps = [m["client_endpoint"] for m in sorted(c.members(), key=lambda m: m["node_id"])]
    bank.create_accounts(eps[0], ACCOUNTS)
    conns = [connect(ep, 30.0) for ep in eps]
    conns[0].create_table("t", {"v": "int64", "s": "text(16)"})
    with conns[0].transaction() as tx:
        for k in range(20):
            tx.insert("t", k, {"v": k, "s": f"row {k}"})
    with conns[1].transaction() as tx:
        tx.update("t", 3, {"v": 33})
        tx.delete("t", 4)
    gone = conns[2].transaction().__enter__()  # rolled back before the replicator starts
    gone.insert("t", 500, {"v": 500, "s": "never"})
    gone.rollback()
    kept = conns[1].transaction().__enter__()  # open across the first copy's start: committed while it waits
    kept.insert("t", 100, {"v": 100, "s": "kept"})
    dropped = conns[2].transaction().__enter__()  # open across the first copy's start: rolled back then
    dropped.insert("t", 200, {"v": 200, "s": "dropped"})
    assert kept.xid in conns[1].writers() and dropped.xid in conns[2].writers()
    assert conns[0].writers() == []

    result: dict[str, Any] = {}
    load = threading.Thread(target=lambda: result.setdefault("bank", bank.run(
        eps, seconds=LOAD_SECONDS, transfer_clients=4, readers=1, accounts=ACCOUNTS, seed=5)), daemon=True)
    crashing = Replicator(c, pg.conninfo, "--workers", "2")
    rep = Replicator(c, pg.conninfo, "--workers", "2")
    t0 = time.monotonic()
    try:
        load.start()
        time.sleep(1.0)  # transfers are committing on every node when the copy starts
        os.environ["MUHEAM_FAILPOINTS"] = "replica.copy_commit=1*crash"
        try:
            crashing.start()
        finally:
            del os.environ["MUHEAM_FAILPOINTS"]
        wait_log(crashing.log, "transactions that have written to end", 1, crashing.proc)
        kept.commit()
        dropped.rollback()
        assert crashing.proc is not None
        assert crashing.proc.wait(30) == -9, "the failpoint did not kill the replicator in its copy"
        assert pg_has_copy(pg.conninfo) == (False, False), "a copy killed before its commit left something"
        assert "initial copy of" not in crashing.log.read_text()

        late = conns[0].transaction().__enter__()  # open across the second copy: in it, not applied
        late.update("t", 5, {"v": 55, "s": "late"})
        waits = rep.log.read_text(errors="replace").count("transactions that have written to end")
        rep.start()
        wait_log(rep.log, "transactions that have written to end", waits + 1, rep.proc)
        late.commit()
        wait_log(rep.log, "initial copy of", 1, rep.proc)
        assert load.is_alive(), "the bank load ended before the copy: make LOAD_SECONDS longer"
        with conns[2].transaction() as tx:  # after the copy: applied from the stream
            tx.insert("t", 300, {"v": 300, "s": "streamed"})
            tx.delete("t", 6)
        load.join(LOAD_SECONDS + 60)
        assert "bank" in result and result["bank"].sum_violations == 0
        want = sorted((k, v) for k, v in bank.MuheamSession(eps[0], 10.0).read_all())
        sums = {bank.checksum(ep) for ep in eps}
        assert len(sums) == 1, "the nodes disagree"
        got = wait_equal(pg.conninfo, want, 60)
        assert got == want and bank.checksum_rows(got) in sums, "the replica's accounts differ from the cluster's"
        with conns[1].transaction() as tx:
            want_t = sorted((k, row["v"], row["s"]) for k, row in tx.scan("t"))
        assert (100, 100, "kept") in want_t and (5, 55, "late") in want_t and 200 not in {r[0] for r in want_t}
        deadline = time.monotonic() + 30
        got_t: list[tuple[int, int, str]] = []
        while time.monotonic() < deadline and got_t != want_t:
            with psycopg.connect(pg.conninfo) as pgc:
                got_t = sorted((int(k), int(v), str(s)) for k, v, s in pgc.execute("SELECT key, v, s FROM t"))
            time.sleep(0.2)
        assert got_t == want_t

        reps = {r["name"]: r for r in json.loads(c.cli("replicas", "--format", "json").stdout)}
        assert reps["r1"]["state"] == "streaming" and parse_lsn(reps["r1"]["copy_lsn"]) > 0
        rep.stop()
        out = c.dir / "replica-r1" / "stream"
        with psycopg.connect(pg.conninfo) as pgc:
            row = pgc.execute("SELECT copy_lsn, copy_sts, copy_rows, restart_lsn FROM muheam_replica.progress "
                              "WHERE name = 'r1'").fetchone()
            assert row is not None
            copy_lsn, copy_sts, copy_rows, restart_lsn = (int(v) for v in row)
            applied = [int(x) for (x,) in pgc.execute("SELECT xid FROM muheam_replica.applied WHERE name = 'r1'")]
        assert copy_lsn > 0 and copy_sts > 0 and restart_lsn >= copy_lsn
        assert parse_lsn(reps["r1"]["copy_lsn"]) == copy_lsn and copy_rows == ACCOUNTS + 20
        assert len(applied) == len(set(applied)), "a transaction was applied twice"
        stream, after_copy = set(committed_in_stream(out)), set(committed_in_stream(out, copy_sts))
        assert set(applied) == after_copy, (f"missing {sorted(after_copy - set(applied))[:10]}, "
                                            f"in the copy or never committed {sorted(set(applied) - after_copy)[:10]}")
        assert kept.xid not in applied and late.xid not in applied and kept.xid in stream and late.xid in stream
        assert len(stream) > len(applied) > 0, "the copy held nothing, or the replicator applied nothing"
        print(f"copy at {copy_lsn:#x}: {copy_rows} rows; {len(applied)} transactions applied after it of "
              f"{len(stream)} in the stream; bank {result['bank'].transfers} transfers; "
              f"{time.monotonic() - t0:.1f} s")
    finally:
        for conn in conns:
            conn.close()
        crashing.stop()
        rep.stop()


class FakeSnapshotTx:
    """The copy's cluster transaction as ``copy._write`` uses it (``sts``, ``conn.tables()``, ``scan``), with a
    scan that can fail part-way (a node lost in the middle of the copy)."""

    def __init__(self, sts: int, fail_in: str | None = None) -> None:
        self.sts = sts
        self.conn = self
        self.fail_in = fail_in

    def tables(self) -> list[dict[str, Any]]:
        return [{"table_id": 1, "name": "a", "columns": [["v", "int64"], ["s", "text(8)"]]},
                {"table_id": 2, "name": "b", "columns": [["x", "float64"]]}]

    def scan(self, table: int) -> Iterator[tuple[int, dict[str, Any]]]:
        name = {t["table_id"]: t["name"] for t in self.tables()}[table]  # the copy scans by id
        for k in range(50):
            if name == self.fail_in and k == 25:
                raise RuntimeError("node lost")
            yield k, ({"v": k, "s": f"r{k}"} if name == "a" else {"x": k / 2})


def test_the_copy_commits_whole_or_not_at_all_and_old_replica_databases_are_migrated(pg: pgbase.Server) -> None:
    from muheam.replica import apply
    from muheam.replica.copy import CopyFailed, _write

    with psycopg.connect(pg.conninfo) as conn:  # a replica database as the code before the copy made it
        conn.execute("CREATE SCHEMA muheam_replica; CREATE TABLE muheam_replica.progress (name text PRIMARY KEY, "
                     "system_id numeric NOT NULL, commit_lsn numeric NOT NULL, restart_lsn numeric NOT NULL, "
                     "commit_glsn numeric NOT NULL, xid numeric NOT NULL, commit_time_us bigint, txns bigint NOT "
                     "NULL, applied_at timestamptz NOT NULL DEFAULT now())")
        conn.execute("INSERT INTO muheam_replica.progress VALUES ('old', 7, 4096, 2048, 99, 12, NULL, 3)")
    conn = apply.connect(pg.conninfo)
    try:
        old, _ = apply.setup(conn, "old", create=False)
        assert old == apply.Progress(4096, 2048, 99, 12, 3, 0, 0, 0), "an old replica resumes where it was"
        assert apply.setup(conn, "new", create=False) == (None, [])

        with pytest.raises(RuntimeError, match="node lost"):
            _write(conn, "new", FakeSnapshotTx(5000, fail_in="b"), 8192, 0)
        conn.rollback()  # what initial_copy does on any failure
        assert apply.setup(conn, "new", create=False) == (None, [])
        with pytest.raises(CopyFailed, match=r"tables \['gone'\] were dropped"):  # listed first, not under the snapshot
            _write(conn, "new", FakeSnapshotTx(5000), 8192, 0, {1: "a", 2: "b", 3: "gone"})
        conn.rollback()
        assert apply.setup(conn, "new", create=False) == (None, [])
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('public.a') IS NULL AND to_regclass('public.b') IS NULL")
            assert cur.fetchone() == (True,), "a failed copy left tables behind"
        conn.commit()

        result = _write(conn, "new", FakeSnapshotTx(5000), 8192, 3)
        assert result is not None and (result.lsn, result.sts, result.rows, result.tables) == (8192, 5000, 100, 2)
        progress, tables = apply.setup(conn, "new", create=False)
        assert progress == apply.Progress(-1, 8192, 4999, 0, 0, 8192, 5000, 100)
        assert sorted(t.name for t in tables) == ["a", "b"]
        with conn.cursor() as cur:
            cur.execute("SELECT count(*), sum(v), max(s) FROM a")
            assert cur.fetchone() == (50, sum(range(50)), "r9")
            cur.execute("SELECT sum(x) FROM b")
            assert cur.fetchone() == (sum(range(50)) / 2,)
        conn.commit()
        assert _write(conn, "new", FakeSnapshotTx(6000), 9000, 0) is None, "a second copy of one replica"
    finally:
        conn.close()


@pytest.mark.timeout(90)
def test_tables_dropped_while_the_initial_copy_runs_are_dropped_on_the_replica(local_cluster: Any,
                                                                              pg: pgbase.Server) -> None:
    """DROP TABLE by other clients, on either node, in each window of a new replica's initial copy (failpoints
    pause the replicator there):

    * ``d``: after the copy's snapshot, before its listing (``replica.copy_list``), with a transaction that wrote
      ``d`` committed after the snapshot: the stream from that copy's position would have the commit's changes of
      ``d``, then the drop, of a table the copy never registered (this stopped the replicator for good); the
      attempt fails and the next one starts;
    * ``a``: after the (second) copy listed the tables, before its scan (``replica.copy_table``): that attempt
      fails too;
    * ``b``: after the listing, before its scan, and made again under its name with other columns and rows: the
      copy scans by table id, so that attempt fails as for ``a`` (by name it scanned the new ``b`` with the old
      one's columns) and the fourth copies the new ``b``;
    * ``c``: scanned, before the copy commits (``replica.copy_commit``): for the stream this is also "between the
      copy and streaming", its drop record lies after the copy's position.

    The replica ends equal to the cluster (``b`` as made again, ``e``, nothing else, row for row; its registry
    lists those two) and the replicator goes on streaming."""
    c: LocalCluster = local_cluster(nodes=2)
    eps = [m["client_endpoint"] for m in sorted(c.members(), key=lambda m: m["node_id"])]
    conns = [connect(ep, 30.0) for ep in eps]
    rep = Replicator(c, pg.conninfo)
    try:
        for i, name in enumerate(("a", "b", "c", "d", "e")):
            conns[i % 2].create_table(name, {"v": "int64"})
            with conns[i % 2].transaction() as tx:
                for k in range(5):
                    tx.insert(name, k, {"v": k})
        os.environ["MUHEAM_FAILPOINTS"] = ("replica.copy_list=1*pause(2);replica.copy_table=2*pause(2);"
                                           "replica.copy_commit=1*pause(2)")
        try:
            rep.start()
        finally:
            del os.environ["MUHEAM_FAILPOINTS"]
        wait_log(rep.log, "failpoint replica.copy_list", 1, rep.proc)  # first attempt: d
        with conns[1].transaction() as tx:
            tx.insert("d", 100, {"v": 100})
            tx.insert("e", 100, {"v": 100})
        conns[0].drop_table("d")
        wait_log(rep.log, "were dropped while the initial copy began", 1, rep.proc)
        wait_log(rep.log, "failpoint replica.copy_table", 1, rep.proc)  # second attempt: a, the first table
        conns[1].drop_table("a")
        wait_log(rep.log, "the initial copy failed: no table 'a'", 1, rep.proc)
        wait_log(rep.log, "failpoint replica.copy_table", 2, rep.proc)
        conns[0].drop_table("b")
        conns[1].create_table("b", {"w": "text(8)"})
        with conns[0].transaction() as tx:
            for k in range(3):
                tx.insert("b", k, {"w": f"new {k}"})
        wait_log(rep.log, "the initial copy failed: no table 'b'", 1, rep.proc)  # scanned by id: not the new b
        wait_log(rep.log, "failpoint replica.copy_commit", 1, rep.proc)
        conns[1].drop_table("c")
        with conns[0].transaction() as tx:
            tx.insert("e", 101, {"v": 101})
        wait_log(rep.log, "initial copy of", 1, rep.proc)

        want: dict[str, list[tuple[Any, ...]]] = {}
        with conns[0].transaction() as tx:
            for t in conns[1].tables():
                cols = [col for col, _ in t["columns"]]
                want[t["name"]] = sorted((k, *(row[col] for col in cols)) for k, row in tx.scan(t["name"]))
        assert want == {"b": [(k, f"new {k}") for k in range(3)], "e": [(k, k) for k in (*range(5), 100, 101)]}
        got: tuple[dict[str, list[tuple[Any, ...]]], list[str]] = ({}, [])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and got != (want, ["b", "e"]):
            assert rep.proc is not None and rep.proc.poll() is None, \
                f"the replicator exited:\n{rep.log.read_text()[-3000:]}"
            got = replica_tables(pg.conninfo)
            time.sleep(0.2)
        assert got == (want, ["b", "e"]), f"the replica differs from the cluster:\n{rep.log.read_text()[-3000:]}"
        assert rep.log.read_text().count("initial copy from stream position") == 4
    finally:
        for conn in conns:
            conn.close()
        rep.stop()
