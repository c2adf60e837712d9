"""The SQL port with real binaries and processes: psql, psycopg 3 and pgbench against every node of a 3-node
cluster (shared by the tests of this module: starting one costs most of the time)."""

from __future__ import annotations

import json
import random
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlparse

import psycopg
import pytest
from psycopg import errors as pgerrors

from muheam.bench import pgbase
from muheam.client import ClientError, connect, request
from muheam.sql.plan import DEFAULT_BUCKETS
from tests.support.cluster import LocalCluster, _started_dirs, kill_leftovers, run_cli

pytestmark = pytest.mark.integration
if pgbase.available() is not None:
    pytestmark = [pytestmark, pytest.mark.skip(reason=str(pgbase.available()))]


def host_port(endpoint: str) -> tuple[str, int]:
    u = urlparse(endpoint)
    return str(u.hostname), int(u.port or 0)


def conninfo(endpoint: str, **extra: str) -> str:
    host, port = host_port(endpoint)
    return " ".join([f"host={host} port={port} user=postgres dbname=postgres connect_timeout=10",
                     *(f"{k}={v}" for k, v in extra.items())])


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, dict[int, str]]]:
    directory = tmp_path_factory.mktemp("sql") / "cluster"
    _started_dirs.append(directory)
    proc = run_cli("cluster", "up", "--nodes", "3", "--dir", str(directory), "--lease-ttl", "2", "--format", "json",
                   timeout=180, check=False)
    if proc.returncode != 0:
        kill_leftovers(directory)
        raise AssertionError(f"cluster up failed:\n{proc.stdout}\n{proc.stderr}")
    c = LocalCluster(directory, json.loads(proc.stdout))
    try:
        yield c, {int(n["node_id"]): str(n["sql_endpoint"]) for n in c.info["nodes"]}
    finally:
        c.down()


def psql(endpoint: str, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    host, port = host_port(endpoint)
    return subprocess.run([str(pgbase._bin_dir() / "psql"), "-X", "-h", host, "-p", str(port), "-U", "postgres",
                           "-d", "postgres", "-v", "ON_ERROR_STOP=1", *args], capture_output=True, text=True,
                          timeout=60, input=input)


def test_psql_on_every_node(cluster3: tuple[LocalCluster, dict[int, str]], tmp_path: Path) -> None:
    c, sql = cluster3
    rows = [r for r in c.members() if r["sql_endpoint"]]
    assert sorted(r["sql_endpoint"] for r in rows) == sorted(sql.values())  # muheam list --format json
    assert sql[1] in c.cli("list").stdout
    made = psql(sql[1], "-c", "CREATE TABLE people (id bigint PRIMARY KEY, name varchar(20), age integer)")
    assert made.returncode == 0 and "CREATE TABLE" in made.stdout, made.stderr
    script = tmp_path / "insert.sql"
    script.write_text("BEGIN;\nINSERT INTO people VALUES (1, 'ann', 31), (2, 'bob', 42) RETURNING id;\n"
                      "COMMIT;\n\\q\n")
    ins = psql(sql[2], "-f", str(script))
    assert ins.returncode == 0 and "INSERT 0 2" in ins.stdout and "COMMIT" in ins.stdout, ins.stderr
    out = psql(sql[3], "-A", "-t", "-c", "SELECT id, name, age FROM people ORDER BY id",
               "-c", "SELECT count(*), sum(age) FROM people WHERE id IN (1, 2)", "-c", "SHOW server_version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1|ann|31", "2|bob|42", "2|73", "18.0", "(MUHEAM)"]
    ended = psql(sql[3], input="SELECT version();\n\\q\n")
    assert ended.returncode == 0 and "MUHEAM" in ended.stdout


def test_psycopg_bank_on_three_nodes(cluster3: tuple[LocalCluster, dict[int, str]]) -> None:
    _, sql = cluster3
    accounts = 20
    with psycopg.connect(conninfo(sql[1])) as conn:
        conn.execute("CREATE TABLE bank (id bigint PRIMARY KEY, balance bigint)")
        conn.execute("INSERT INTO bank (id, balance) VALUES " + ", ".join(f"({i}, 0)" for i in range(accounts)))
        conn.commit()
    stop = time.monotonic() + 8
    counts = {"commits": 0, "serialization": 0, "deadlock": 0, "violations": 0, "reads": 0}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def transfers(endpoint: str, seed: int) -> None:
        rng = random.Random(seed)
        try:
            with psycopg.connect(conninfo(endpoint)) as conn:  # default mode: not autocommit
                while time.monotonic() < stop:
                    a, b = rng.sample(range(accounts), 2)
                    try:
                        conn.execute("UPDATE bank SET balance = balance + %s WHERE id = %s", (-1, a))
                        conn.execute("UPDATE bank SET balance = balance + %s WHERE id = %s", (1, b))
                        conn.commit()
                        kind = "commits"
                    except pgerrors.SerializationFailure:
                        conn.rollback()
                        kind = "serialization"
                    except pgerrors.DeadlockDetected:
                        conn.rollback()
                        kind = "deadlock"
                    with lock:
                        counts[kind] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def reader(endpoint: str) -> None:
        try:
            with psycopg.connect(conninfo(endpoint)) as conn:
                while time.monotonic() < stop:
                    total = conn.execute("SELECT sum(balance), count(*) FROM bank").fetchone()
                    rows = conn.execute("SELECT id, balance FROM bank").fetchall()
                    conn.commit()
                    with lock:
                        counts["reads"] += 1
                        if total is None or total[0] != 0 or total[1] != accounts or sum(b for _, b in rows) != 0:
                            counts["violations"] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=transfers, args=(sql[n], n * 10 + i)) for n in (1, 2, 3) for i in range(2)]
    threads += [threading.Thread(target=reader, args=(sql[n],)) for n in (1, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert counts["violations"] == 0 and counts["reads"] > 0 and counts["commits"] > 20, counts

    # under REPEATABLE READ a serialization failure reaches the client as psycopg's SerializationFailure
    with psycopg.connect(conninfo(sql[1])) as slow, psycopg.connect(conninfo(sql[2])) as fast:
        slow.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        assert slow.execute("SELECT balance FROM bank WHERE id = 0").fetchone() is not None  # snapshot taken
        fast.execute("UPDATE bank SET balance = balance + 1 WHERE id = 0")
        fast.execute("UPDATE bank SET balance = balance - 1 WHERE id = 1")
        fast.commit()
        with pytest.raises(pgerrors.SerializationFailure):
            slow.execute("UPDATE bank SET balance = balance + 5 WHERE id = 0")
        with pytest.raises(pgerrors.InFailedSqlTransaction):
            slow.execute("SELECT 1")
        slow.rollback()
        assert slow.execute("SELECT sum(balance) FROM bank").fetchone() == (0,)


PGBENCH_SCRIPT = """\\set a random(0, 49)
\\set b random(0, 49)
BEGIN;
UPDATE pgb SET balance = balance - 1 WHERE id = :a;
UPDATE pgb SET balance = balance + 1 WHERE id = :b;
COMMIT;
"""


def test_pgbench_on_every_node(cluster3: tuple[LocalCluster, dict[int, str]], tmp_path: Path) -> None:
    _, sql = cluster3
    made = psql(sql[1], "-c", "CREATE TABLE pgb (id bigint PRIMARY KEY, balance bigint)",
                "-c", "INSERT INTO pgb VALUES " + ", ".join(f"({i}, 0)" for i in range(50)))
    assert made.returncode == 0, made.stderr
    script = tmp_path / "transfer.sql"
    script.write_text(PGBENCH_SCRIPT)
    procs = []
    for n in (1, 2, 3):
        host, port = host_port(sql[n])
        procs.append(subprocess.Popen([str(pgbase._bin_dir() / "pgbench"), "-n", "-h", host, "-p", str(port),
                                       "-U", "postgres", "-f", str(script), "-T", "10", "-c", "2",
                                       "--max-tries", "100", "postgres"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=90) for p in procs]
    for (out, err), p in zip(outs, procs):
        assert p.returncode == 0, out + err
        assert "number of failed transactions: 0 " in out, out + err
        assert int(re.search(r"actually processed: (\d+)", out).group(1)) > 0  # type: ignore[union-attr]
    total = psql(sql[2], "-A", "-t", "-c", "SELECT sum(balance), count(*) FROM pgb")
    assert total.stdout.split() == ["0|50"], total.stdout + total.stderr


def test_errors_name_the_problem(cluster3: tuple[LocalCluster, dict[int, str]]) -> None:
    _, sql = cluster3
    with psycopg.connect(conninfo(sql[2]), autocommit=True) as conn:
        conn.execute("CREATE TABLE errs (id bigint PRIMARY KEY, v bigint)")
        conn.execute("INSERT INTO errs VALUES (1, 1)")
        cases: list[tuple[str, type[Exception], str]] = [
            ("SELECT * FROM nowhere", pgerrors.UndefinedTable, "nowhere"),
            ("SELECT nope FROM errs", pgerrors.UndefinedColumn, "nope"),
            ("INSERT INTO errs VALUES (1, 2)", pgerrors.UniqueViolation, "duplicate key"),
            ("SELECT a.id FROM errs a JOIN errs b ON a.id = b.id", pgerrors.FeatureNotSupported, "join"),
            ("DROP VIEW errs", pgerrors.FeatureNotSupported, "DROP"),
            ("DROP TABLE elsewhere.errs", pgerrors.InvalidSchemaName, "schema"),
            ("SELEC 1", pgerrors.SyntaxError, "syntax"),
            ("SELECT v FROM errs WHERE id = " + "9" * 5000, pgerrors.NumericValueOutOfRange, "out of range"),
            ("CREATE TABLE b0 (id bigint PRIMARY KEY) WITH (buckets = 0)", pgerrors.InvalidParameterValue,
             "buckets must be"),
            ("CREATE TABLE av (id bigint PRIMARY KEY) WITH (autovacuum_enabled = false)",
             pgerrors.FeatureNotSupported, 'storage parameter "autovacuum_enabled"'),
        ]
        for query, exc, words in cases:
            with pytest.raises(exc) as info:
                conn.execute(query)
            assert words.lower() in str(info.value).lower(), (query, str(info.value))
        assert conn.execute("SELECT v FROM errs WHERE id = 1").fetchone() == (1,)
        for refused in ("b0", "av"):  # nothing was created
            with pytest.raises(pgerrors.UndefinedTable):
                conn.execute(f"SELECT count(*) FROM {refused}")


def test_drop_table_is_seen_by_every_node_and_waits_for_commit_in_a_block(
        cluster3: tuple[LocalCluster, dict[int, str]]) -> None:
    """A table dropped on node 1 is gone on node 2 at once, even for the plans node 2 made and the transaction it
    has open; a new table of that name (other columns) is never confused with it; inside a transaction block the
    drop waits for COMMIT, and ROLLBACK keeps the table."""
    c, sql = cluster3
    endpoint = str(c.info["nodes"][0]["client_endpoint"])

    def table_ids() -> dict[str, int]:
        return {t["name"]: t["table_id"] for t in request(endpoint, "tables", timeout=10, client_key=c.client_key)}

    with psycopg.connect(conninfo(sql[1]), autocommit=True) as one, \
            psycopg.connect(conninfo(sql[2]), autocommit=True) as two, \
            psycopg.connect(conninfo(sql[2])) as open_tx, psycopg.connect(conninfo(sql[3]), autocommit=True) as three:
        one.execute("CREATE TABLE dt (id bigint PRIMARY KEY, v bigint)")
        one.execute("INSERT INTO dt VALUES (1, 10), (2, 20)")
        assert two.execute("SELECT v FROM dt WHERE id = 1").fetchone() == (10,)  # node 2 plans and caches dt
        open_tx.execute("INSERT INTO dt VALUES (3, 30)")                        # and has a change in flight
        old_id = table_ids()["dt"]
        assert one.execute("DROP TABLE dt").statusmessage == "DROP TABLE"
        assert not (Path(c.info["config"]["shared_dir"]) / "base" / str(old_id)).exists()
        for _ in range(2):  # the cached plan, then a fresh one
            with pytest.raises(pgerrors.UndefinedTable):
                two.execute("SELECT v FROM dt WHERE id = 1")
        with pytest.raises(pgerrors.UndefinedTable):
            open_tx.execute("INSERT INTO dt VALUES (4, 40)")
        open_tx.rollback()
        three.execute("CREATE TABLE dt (k bigint PRIMARY KEY, w text)")
        three.execute("INSERT INTO dt VALUES (1, 'new')")
        assert table_ids()["dt"] > old_id
        with pytest.raises(pgerrors.UndefinedColumn):  # the old columns are not read from the new table
            two.execute("SELECT v FROM dt WHERE id = 1")
        assert two.execute("SELECT w FROM dt WHERE k = 1").fetchone() == ("new",)
        # psycopg's default mode wraps the drop in a transaction block: it happens at COMMIT, not at ROLLBACK
        open_tx.execute("DROP TABLE dt")
        with pytest.raises(pgerrors.UndefinedTable, match="dt"):
            open_tx.execute("SELECT count(*) FROM dt")
        open_tx.rollback()
        assert three.execute("SELECT count(*) FROM dt").fetchone() == (1,)
        open_tx.execute("DROP TABLE IF EXISTS dt, never_made")
        assert three.execute("SELECT count(*) FROM dt").fetchone() == (1,)  # not before the COMMIT
        open_tx.commit()
        with pytest.raises(pgerrors.UndefinedTable):
            three.execute("SELECT count(*) FROM dt")
        assert "dt" not in table_ids()
        assert three.execute("DROP TABLE IF EXISTS dt").statusmessage == "DROP TABLE"
        with pytest.raises(pgerrors.UndefinedTable, match='table "dt" does not exist'):
            three.execute("DROP TABLE dt")
    out = psql(sql[2], "-c", "CREATE TABLE dt (id bigint PRIMARY KEY)", "-c", "DROP TABLE dt")
    assert out.returncode == 0 and out.stdout.split() == ["CREATE", "TABLE", "DROP", "TABLE"], out.stderr


def test_drop_table_edges_found_by_a_review(cluster3: tuple[LocalCluster, dict[int, str]]) -> None:
    """Node 2 planned against a table that node 1 dropped and made again with other columns: node 2 compiles
    against the new one (it had cached the old columns and failed with 42703 for ever).  A block's deferred drop
    drops the table it meant, not a newer one of that name.  ``DROP TABLE a, missing`` drops nothing."""
    _, sql = cluster3
    with psycopg.connect(conninfo(sql[1]), autocommit=True) as one, \
            psycopg.connect(conninfo(sql[2]), autocommit=True) as two, psycopg.connect(conninfo(sql[3])) as block:
        one.execute("CREATE TABLE re (id bigint PRIMARY KEY, v bigint)")
        assert two.execute("SELECT count(*) FROM re").fetchone() == (0,)  # node 2 caches re(id, v)
        one.execute("DROP TABLE re")
        one.execute("CREATE TABLE re (k bigint PRIMARY KEY, w bigint)")
        one.execute("INSERT INTO re VALUES (1, 7)")
        assert two.execute("SELECT w FROM re WHERE k = 1").fetchone() == (7,)

        block.execute("DROP TABLE re")                     # meant: the re of (k, w)
        one.execute("DROP TABLE re")
        one.execute("CREATE TABLE re (id bigint PRIMARY KEY, v bigint)")
        one.execute("INSERT INTO re VALUES (1, 100)")
        block.commit()                                     # its drop finds another table: left alone
        assert two.execute("SELECT v FROM re WHERE id = 1").fetchone() == (100,)

        with pytest.raises(pgerrors.UndefinedTable, match="missing"):
            one.execute("DROP TABLE re, missing")
        assert one.execute("SELECT count(*) FROM re").fetchone() == (1,)
        with pytest.raises(pgerrors.FeatureNotSupported, match="after its DROP TABLE"):
            block.execute("DROP TABLE re; CREATE TABLE re (id bigint PRIMARY KEY)")
        block.rollback()
        assert one.execute("SELECT count(*) FROM re").fetchone() == (1,)

        # DDL on node 2 looks afresh: its cache still has re (id, v), which node 1 drops here
        one.execute("DROP TABLE re")
        two.execute("CREATE TABLE re (id bigint PRIMARY KEY, v bigint)")  # not "already exists"
        one.execute("INSERT INTO re VALUES (5, 50)")
        assert two.execute("DROP TABLE IF EXISTS re").statusmessage == "DROP TABLE"
        with pytest.raises(pgerrors.UndefinedTable):
            one.execute("SELECT count(*) FROM re")


def test_a_plan_made_before_a_drop_and_create_elsewhere_is_made_again(
        cluster3: tuple[LocalCluster, dict[int, str]]) -> None:
    """Node 1 drops a table and makes it again with the same columns; node 2's sessions planned against the old
    one.  PostgreSQL plans such a statement again; node 2's first statement failed once with 42P01 (each path:
    the simple protocol's plan cache, its ordinary path, a prepared statement, a write, a transaction block).  A
    table dropped for good still gets 42P01."""
    _, sql = cluster3
    with psycopg.connect(conninfo(sql[1]), autocommit=True) as one, \
            psycopg.connect(conninfo(sql[2]), autocommit=True) as two:
        def remake(v: int) -> None:
            one.execute("DROP TABLE rp")
            one.execute("CREATE TABLE rp (id bigint PRIMARY KEY, v bigint)")
            one.execute("INSERT INTO rp VALUES (1, %s)" % v)

        one.execute("CREATE TABLE rp (id bigint PRIMARY KEY, v bigint)")
        one.execute("INSERT INTO rp VALUES (1, 10)")
        assert two.execute("SELECT v FROM rp WHERE id = 1").fetchone() == (10,)           # plan cache
        assert two.execute("SELECT count(*), sum(v) FROM rp").fetchone() == (1, 10)       # ordinary path
        assert two.execute("SELECT v FROM rp WHERE id = %s", (1,), prepare=True).fetchone() == (10,)
        remake(11)
        assert two.execute("SELECT v FROM rp WHERE id = 1").fetchone() == (11,)
        remake(12)
        assert two.execute("SELECT count(*), sum(v) FROM rp").fetchone() == (1, 12)
        remake(13)
        assert two.execute("SELECT v FROM rp WHERE id = %s", (1,), prepare=True).fetchone() == (13,)
        remake(14)
        assert two.execute("UPDATE rp SET v = v + 1 WHERE id = 1").rowcount == 1
        assert one.execute("SELECT v FROM rp WHERE id = 1").fetchone() == (15,)
        with psycopg.connect(conninfo(sql[2])) as block:  # psycopg's default: a transaction block
            assert block.execute("SELECT v FROM rp WHERE id = 1").fetchone() == (15,)
            block.commit()
            remake(16)
            assert block.execute("SELECT v FROM rp WHERE id = 1").fetchone() == (16,)
            block.execute("UPDATE rp SET v = v + 1 WHERE id = 1")
            block.commit()
        assert one.execute("SELECT v FROM rp WHERE id = 1").fetchone() == (17,)
        one.execute("DROP TABLE rp")
        with pytest.raises(pgerrors.UndefinedTable):
            two.execute("SELECT v FROM rp WHERE id = 1")


def test_a_transaction_that_used_a_dropped_table_is_not_planned_onto_its_successor(
        cluster3: tuple[LocalCluster, dict[int, str]]) -> None:
    """Planning again is only for the statement that began its transaction (a review found two wrong results
    otherwise): a block that wrote the old table saw its own insert vanish and then committed "successfully" a
    write that went with the dropped table, and a REPEATABLE READ block read one row as 10, then as missing.  Both
    fail with 42P01 and roll back, as before.  A raw client naming a table by its id keeps PostgreSQL's rule: any
    error rolls its transaction back (it used to stay open, row locks and all, for 300 s)."""
    c, sql = cluster3
    with psycopg.connect(conninfo(sql[1]), autocommit=True) as one, \
            psycopg.connect(conninfo(sql[2]), autocommit=True) as other, psycopg.connect(conninfo(sql[2])) as block:
        def remake(name: str, v: int) -> None:
            one.execute(f"DROP TABLE {name}")
            one.execute(f"CREATE TABLE {name} (id bigint PRIMARY KEY, v bigint)")
            one.execute(f"INSERT INTO {name} VALUES (1, {v})")

        one.execute("CREATE TABLE ow (id bigint PRIMARY KEY, v bigint)")
        one.execute("INSERT INTO ow VALUES (1, 10)")
        block.execute("INSERT INTO ow VALUES (2, 20)")
        remake("ow", 11)
        with pytest.raises(pgerrors.UndefinedTable):
            block.execute("SELECT id, v FROM ow ORDER BY id")
        block.rollback()
        assert one.execute("SELECT id, v FROM ow ORDER BY id").fetchall() == [(1, 11)]

        one.execute("CREATE TABLE rr (id bigint PRIMARY KEY, v bigint)")
        one.execute("INSERT INTO rr VALUES (1, 10)")
        block.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert block.execute("SELECT v FROM rr WHERE id = 1").fetchall() == [(10,)]
        remake("rr", 11)
        with pytest.raises(pgerrors.UndefinedTable):
            block.execute("SELECT v FROM rr WHERE id = 1")
        block.rollback()

        # ... nor when the statement is simply planned anew: another session on node 2 (or the block's own DDL)
        # made the node look at its catalog again, so the block's next statement compiled against the new table
        # (a third review; no error at all, and the block's own insert gone with the old table)
        block.execute("INSERT INTO ow VALUES (2, 20)")
        remake("ow", 12)
        assert other.execute("SELECT id, v FROM ow ORDER BY id").fetchall() == [(1, 12)]
        with pytest.raises(pgerrors.UndefinedTable, match="dropped since this transaction used it"):
            block.execute("SELECT id, v FROM ow ORDER BY id")
        block.rollback()
        block.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert block.execute("SELECT v FROM rr WHERE id = 1").fetchall() == [(11,)]
        remake("rr", 12)
        block.execute("DROP TABLE IF EXISTS no_such_table")  # deferred, but it looks at the catalog again
        with pytest.raises(pgerrors.UndefinedTable):
            block.execute("SELECT v FROM rr WHERE id = 1")
        block.rollback()
        # a block's DROP of a name it used would drop another client's new table at COMMIT (a fourth review), and
        # its CREATE of that name make a table it cannot undo
        assert block.execute("SELECT v FROM rr WHERE id = 1").fetchall() == [(12,)]
        remake("rr", 13)
        with pytest.raises(pgerrors.UndefinedTable, match="dropped since this transaction used it"):
            block.execute("DROP TABLE rr")
        block.rollback()
        assert block.execute("SELECT v FROM rr WHERE id = 1").fetchall() == [(13,)]
        one.execute("DROP TABLE rr")
        with pytest.raises(pgerrors.DuplicateTable):
            block.execute("CREATE TABLE rr (id bigint PRIMARY KEY, v bigint)")
        block.rollback()
        with pytest.raises(pgerrors.UndefinedTable):
            one.execute("SELECT v FROM rr WHERE id = 1")  # the block made no table

    ep = str(c.info["nodes"][0]["client_endpoint"])
    with connect(ep, key=c.client_key) as conn:
        conn.create_table("keep", {"v": "int64"})
        gone = int(conn.create_table("gone", {"v": "int64"})["table_id"])
        conn.drop_table("gone")
        opened = request(ep, "status", timeout=5, client_key=c.client_key)["counters"]["sessions"]["open"]
        with pytest.raises(ClientError, match="dropped"):
            with conn.transaction() as tx:
                tx.insert("keep", 1, {"v": 1})
                tx.get(gone, 1)  # type: ignore[arg-type]
        assert request(ep, "status", timeout=5, client_key=c.client_key)["counters"]["sessions"]["open"] == opened
        with conn.transaction() as tx:
            tx.insert("keep", 1, {"v": 2})  # no row lock left behind
        # release_commit is for a commit under way: one sent before (or for no commit) leaves nothing behind,
        # and a commit with no scope is never answered "cancelled" (the SQL port would warn of a replication wait)
        tx = conn.transaction().__enter__()
        tx.insert("keep", 2, {"v": 2})
        assert request(ep, "release_commit", xid=tx.xid, client_key=c.client_key)["released"] is False
        assert tx.commit().get("scope") is None
        conn.drop_table("keep")


def test_update_by_key_without_a_read_matches_the_read_path(cluster3: tuple[LocalCluster, dict[int, str]]) -> None:
    """``UPDATE t SET v = v + x WHERE id = k`` is one add, without reading the row first, only where that
    gives what the read would (a review found two differences): a fractional key matches no row, and a NULL or
    out-of-range delta is an error only for a row that exists."""
    _, sql = cluster3
    with psycopg.connect(conninfo(sql[1]), autocommit=True) as setup:
        setup.execute("CREATE TABLE fa (id bigint PRIMARY KEY, v bigint)")
        setup.execute("INSERT INTO fa VALUES (5, 100)")
    with psycopg.connect(conninfo(sql[2])) as conn:
        assert conn.execute("UPDATE fa SET v = v + 1 WHERE id = 5.4").rowcount == 0
        assert conn.execute("UPDATE fa SET v = v + %s WHERE id = %s", (1, 5.4)).rowcount == 0
        assert conn.execute("UPDATE fa SET v = v + NULL WHERE id = 999").rowcount == 0
        assert conn.execute("UPDATE fa SET v = v + 99999999999999999999 WHERE id = 999").rowcount == 0
        assert conn.execute("UPDATE fa SET v = v + 1 WHERE id = 5").rowcount == 1
        assert conn.execute("UPDATE fa SET v = v - 2 WHERE id = NULL").rowcount == 0
        conn.commit()
        assert conn.execute("SELECT v FROM fa WHERE id = 5").fetchone() == (101,)
        with pytest.raises(pgerrors.NotNullViolation):
            conn.execute("UPDATE fa SET v = v + NULL WHERE id = 5")
        conn.rollback()


def test_create_table_sets_the_hash_chains(cluster3: tuple[LocalCluster, dict[int, str]]) -> None:
    """``WITH (buckets = N)`` reaches the engine; without it a table gets ``DEFAULT_BUCKETS`` chains, not the
    engine's one chain (every lookup read the whole table, every writer elsewhere took all of it)."""
    c, sql = cluster3
    with psycopg.connect(conninfo(sql[1]), autocommit=True) as conn:
        conn.execute("CREATE TABLE chains8 (id bigint PRIMARY KEY, v bigint) WITH (buckets = 8, fillfactor = 90)")
        conn.execute("CREATE TABLE chainsdefault (id bigint PRIMARY KEY, v bigint)")
    endpoint = str(c.info["nodes"][0]["client_endpoint"])
    buckets = {t["name"]: t["buckets"] for t in request(endpoint, "tables", timeout=10, client_key=c.client_key)}
    assert buckets["chains8"] == 8 and buckets["chainsdefault"] == DEFAULT_BUCKETS > 1


def test_cancel_ends_a_waiting_statement(cluster3: tuple[LocalCluster, dict[int, str]]) -> None:
    _, sql = cluster3
    with psycopg.connect(conninfo(sql[1]), autocommit=True) as setup:
        setup.execute("CREATE TABLE locked (id bigint PRIMARY KEY, v bigint)")
        setup.execute("INSERT INTO locked VALUES (1, 0)")
    with psycopg.connect(conninfo(sql[1])) as holder, psycopg.connect(conninfo(sql[1])) as waiter:
        holder.execute("UPDATE locked SET v = v + 1 WHERE id = 1")  # holds the row
        threading.Timer(0.5, waiter.cancel).start()
        with pytest.raises(pgerrors.QueryCanceled):
            waiter.execute("UPDATE locked SET v = v + 1 WHERE id = 1")
        waiter.rollback()
        assert waiter.execute("SELECT 1").fetchone() == (1,)
        holder.rollback()


def test_a_cancel_ends_a_waiting_begin_and_not_a_commit_under_way(local_cluster: Callable[..., LocalCluster],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """While node 2 pauses (its loop stopped for 3 s between a prepare and its COMMIT), node 1's begins wait for
    that outcome and its commits for node 2's acknowledgement.

    * A statement's first row operation begins the transaction.  A cancel (or a closed connection) in that wait
      used to drop the begin's late answer, so the node kept a transaction nobody could end, holding back
      pruning until the idle timeout (300 s).
    * A cancel during a COMMIT's round answered 57014, and the commit went on and committed (a review found
      it): the client was told its change did not happen.  A commit under way is not cancelled."""
    # a 3 s pause of node 2's loop is a slow node under a 4 s lease; under the default 2 s one
    # its loop watch takes it out of the cluster (node.fence.LoopWatch)
    monkeypatch.setenv("MUHEAM_FAILPOINTS", "sessions.commit_prepared@2=1*pause(3)")
    c = local_cluster(2, security="none", lease_ttl=4)
    sql = {int(n["node_id"]): str(n["sql_endpoint"]) for n in c.info["nodes"]}
    client = {int(n["node_id"]): str(n["client_endpoint"]) for n in c.info["nodes"]}
    with psycopg.connect(conninfo(sql[1]), autocommit=True) as setup:
        setup.execute("CREATE TABLE w (id bigint PRIMARY KEY, v bigint)")
        setup.execute("INSERT INTO w VALUES (1, 0), (2, 0)")
    with psycopg.connect(conninfo(sql[2]), autocommit=True) as other, \
            psycopg.connect(conninfo(sql[1])) as committer:
        assert other.execute("SELECT v FROM w WHERE id = 2").fetchone() == (0,)   # node 2 holds the catalog lock
        committer.execute("UPDATE w SET v = 5 WHERE id = 1")   # begun before node 2 prepares: no wait
        writer = threading.Thread(target=other.execute, args=("UPDATE w SET v = 1 WHERE id = 2",))
        writer.start()   # node 2 prepares, then pauses 3 s before its COMMIT (the failpoint)
        time.sleep(1.0)
        with psycopg.connect(conninfo(sql[1])) as waiter:
            threading.Timer(0.5, waiter.cancel).start()
            with pytest.raises(pgerrors.QueryCanceled):
                waiter.execute("SELECT v FROM w WHERE id = 1")   # its begin waits for node 2's outcome
            waiter.rollback()
            threading.Timer(0.5, committer.cancel).start()
            committer.commit()   # its prepare round waits for node 2, which still pauses
            writer.join(30)
            deadline = time.monotonic() + 10
            while (opened := request(client[1], "status", timeout=5)["counters"]["sessions"]["open"]) and \
                    time.monotonic() < deadline:
                time.sleep(0.2)
            assert opened == 0
            assert waiter.execute("SELECT id, v FROM w ORDER BY id").fetchall() == [(1, 5), (2, 1)]


def test_a_statement_of_thousands_of_row_operations(cluster3: tuple[LocalCluster, dict[int, str]]) -> None:
    """One INSERT of 5,000 rows, and a full-table UPDATE-by-key loop in one transaction, each answered at once by
    the node: the node closed the connection with a RecursionError at a few hundred rows (pgbench's load)."""
    _, sql = cluster3
    with psycopg.connect(conninfo(sql[3]), autocommit=True) as conn:
        conn.execute("CREATE TABLE many (id bigint PRIMARY KEY, v integer)")
        assert conn.execute("INSERT INTO many (id, v) VALUES " + ", ".join(f"({i}, {i % 7})" for i in range(5000))
                            ).rowcount == 5000
        assert conn.execute("DELETE FROM many WHERE id IN (" + ", ".join(str(i) for i in range(0, 5000, 2)) + ")"
                            ).rowcount == 2500
        assert conn.execute("SELECT count(*), sum(v) FROM many").fetchone() == (
            2500, sum(i % 7 for i in range(1, 5000, 2)))


def sessions_counter(c: LocalCluster, node: int, name: str) -> int:
    ep = next(str(n["client_endpoint"]) for n in c.info["nodes"] if int(n["node_id"]) == node)
    return int(request(ep, "status", timeout=10, client_key=c.client_key)["counters"]["sessions"][name])


def test_read_committed_is_the_default_and_redoes_a_lost_change(
        cluster3: tuple[LocalCluster, dict[int, str]]) -> None:
    """PostgreSQL's default level: each statement sees what committed before it, and a change that waited for a
    concurrent one which then committed is redone on the new version, WHERE checked again (no 40001), across
    nodes.  REPEATABLE READ keeps its snapshot and fails instead."""
    c, sql = cluster3
    with psycopg.connect(conninfo(sql[1]), autocommit=True) as setup:
        setup.execute("CREATE TABLE rc (id bigint PRIMARY KEY, v bigint)")
        setup.execute("INSERT INTO rc VALUES (1, 10), (2, 10), (3, 10), (4, 10)")
        assert setup.execute("SHOW transaction_isolation").fetchone() == ("read committed",)
    with psycopg.connect(conninfo(sql[2])) as reader, psycopg.connect(conninfo(sql[3])) as rr, \
            psycopg.connect(conninfo(sql[1]), autocommit=True) as writer:
        rr.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        assert reader.execute("SELECT v FROM rc WHERE id = 1").fetchone() == (10,)
        assert rr.execute("SELECT v FROM rc WHERE id = 1").fetchone() == (10,)
        writer.execute("UPDATE rc SET v = 11 WHERE id = 1")
        assert reader.execute("SELECT v FROM rc WHERE id = 1").fetchone() == (11,)  # a new statement, a new snapshot
        assert rr.execute("SELECT v FROM rc WHERE id = 1").fetchone() == (10,)      # the transaction's snapshot
        with pytest.raises(pgerrors.SerializationFailure):
            rr.execute("UPDATE rc SET v = v + 1 WHERE id = 1")
        rr.rollback()
        reader.commit()

    def blocked(node: int, statement: str) -> tuple[threading.Thread, list[object]]:
        """Run ``statement`` in a READ COMMITTED transaction on ``node`` that commits; it waits for a row lock."""
        out: list[object] = []

        def run() -> None:
            try:
                with psycopg.connect(conninfo(sql[node])) as conn:
                    out.append(conn.execute(statement).rowcount)
                    conn.commit()
            except BaseException as exc:  # noqa: BLE001 - asserted below
                out.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        return thread, out

    redone = sum(sessions_counter(c, n, "rows_changed") for n in (2, 3))
    with psycopg.connect(conninfo(sql[1])) as holder:
        holder.execute("UPDATE rc SET v = v + 1 WHERE id = 2")        # holds row 2 ...
        holder.execute("UPDATE rc SET v = 0 WHERE id = 3")            # ... and row 3
        holder.execute("DELETE FROM rc WHERE id = 4")                 # ... and row 4
        waits = [blocked(2, "UPDATE rc SET v = v + 100 WHERE id = 2"),       # redone on 11: 111
                 blocked(3, "UPDATE rc SET v = v + 1 WHERE id = 3 AND v > 5"),  # 0 no longer qualifies
                 blocked(2, "UPDATE rc SET v = 7 WHERE id = 4"),              # the row is gone
                 blocked(3, "UPDATE rc SET v = v + 1 WHERE id = 4")]          # gone too (an add, no read)
        time.sleep(1.0)  # every one of them waits for the holder's row locks now
        holder.commit()
        for thread, _ in waits:
            thread.join(30)
    assert [out for _, out in waits] == [[1], [0], [0], [0]]
    with psycopg.connect(conninfo(sql[3])) as check:
        assert check.execute("SELECT id, v FROM rc ORDER BY id").fetchall() == [(1, 11), (2, 111), (3, 0)]
    assert sum(sessions_counter(c, n, "rows_changed") for n in (2, 3)) >= redone + 4
    with psycopg.connect(conninfo(sql[2])) as conn:  # no such row: UPDATE 0, and the transaction goes on
        assert conn.execute("UPDATE rc SET v = v + 1 WHERE id = 99").rowcount == 0
        assert conn.execute("UPDATE rc SET v = v - %s WHERE id = %s", (1, 1)).rowcount == 1
        assert conn.execute("SELECT v FROM rc WHERE id = 1").fetchone() == (10,)
        conn.commit()

    with psycopg.connect(conninfo(sql[1])) as conn:
        conn.execute("SELECT 1 FROM rc WHERE id = 1")
        with pytest.raises(pgerrors.ActiveSqlTransaction):
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        conn.rollback()
        with pytest.raises(pgerrors.InvalidParameterValue):
            conn.execute("SET default_transaction_isolation = 'sometimes'")
        conn.rollback()
        conn.execute("SET default_transaction_isolation = 'repeatable read'")
        conn.commit()
        assert conn.execute("SHOW transaction_isolation").fetchone() == ("repeatable read",)


def test_read_committed_reads_the_other_rows_again_after_a_redo(
        cluster3: tuple[LocalCluster, dict[int, str]]) -> None:
    """A statement over rows 5 and 6 waits for row 5; meanwhile row 6 is changed (or deleted) and committed.
    When row 5's change is redone under a new snapshot, row 6 must be read again under it: computed from the
    old read, the UPDATE overwrote the committed 50 (a lost update), the DELETE case aborted on a key that was
    gone, and FOR UPDATE returned the old value of the row it locked.  And the level is the transaction's:
    RESET inside a REPEATABLE READ transaction does not move its snapshot."""
    c, sql = cluster3

    def scenario(table: str, statement: str, meanwhile: str) -> tuple[object, list[tuple[int, int]]]:
        with psycopg.connect(conninfo(sql[1]), autocommit=True) as setup:
            setup.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, v bigint)")
            setup.execute(f"INSERT INTO {table} VALUES (5, 10), (6, 10)")
        out: list[object] = []

        def run() -> None:
            try:
                with psycopg.connect(conninfo(sql[2])) as conn:
                    cur = conn.execute(statement)
                    out.append((cur.rowcount, sorted(cur.fetchall()) if cur.description else None))
                    conn.commit()
            except BaseException as exc:  # noqa: BLE001 - asserted below
                out.append(exc)

        with psycopg.connect(conninfo(sql[1])) as holder:
            holder.execute(f"UPDATE {table} SET v = 20 WHERE id = 5")
            thread = threading.Thread(target=run)
            thread.start()
            time.sleep(1.0)  # it read both rows and waits for row 5
            with psycopg.connect(conninfo(sql[3]), autocommit=True) as other:
                other.execute(meanwhile)
            holder.commit()
            thread.join(30)
        with psycopg.connect(conninfo(sql[3])) as check:
            return out[0], check.execute(f"SELECT id, v FROM {table} ORDER BY id").fetchall()

    assert scenario("ru", "UPDATE ru SET v = v * 2 WHERE id IN (5, 6) RETURNING id, v",
                    "UPDATE ru SET v = 50 WHERE id = 6") == ((2, [(5, 40), (6, 100)]), [(5, 40), (6, 100)])
    assert scenario("rd", "UPDATE rd SET v = v * 2 WHERE id IN (5, 6) RETURNING id, v",
                    "DELETE FROM rd WHERE id = 6") == ((1, [(5, 40)]), [(5, 40)])
    assert scenario("rl", "SELECT id, v FROM rl WHERE id IN (5, 6) FOR UPDATE",
                    "UPDATE rl SET v = 50 WHERE id = 6") == ((2, [(5, 20), (6, 50)]), [(5, 20), (6, 50)])

    with psycopg.connect(conninfo(sql[1])) as rr, psycopg.connect(conninfo(sql[2]), autocommit=True) as writer:
        rr.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        assert rr.execute("SELECT v FROM ru WHERE id = 5").fetchone() == (40,)
        writer.execute("UPDATE ru SET v = 41 WHERE id = 5")
        rr.execute("RESET ALL")
        assert rr.execute("SELECT v FROM ru WHERE id = 5").fetchone() == (40,)
        with pytest.raises(pgerrors.ActiveSqlTransaction):
            rr.execute("RESET transaction_isolation")
        rr.rollback()
    # the node refuses to move the snapshot of a transaction that is not READ COMMITTED
    ep = next(str(n["client_endpoint"]) for n in c.info["nodes"] if int(n["node_id"]) == 1)
    with connect(ep, key=c.client_key) as conn:
        xid = conn.call("begin")["xid"]
        with pytest.raises(ClientError, match="read committed"):
            conn.call("snapshot", xid=xid)
        conn.call("rollback", xid=xid)


def test_a_read_only_transaction_refuses_to_write(cluster3: tuple[LocalCluster, dict[int, str]]) -> None:
    """BEGIN READ ONLY, SET TRANSACTION READ ONLY and default_transaction_read_only were accepted and ignored:
    the transaction then wrote.  Now its writes fail with 25006 and nothing is written."""
    _, sql = cluster3
    with psycopg.connect(conninfo(sql[2]), autocommit=True) as conn:
        conn.execute("CREATE TABLE ro (id bigint PRIMARY KEY, v bigint)")
        conn.execute("INSERT INTO ro VALUES (1, 1)")
        conn.execute("BEGIN READ ONLY")
        assert conn.execute("SELECT v FROM ro WHERE id = 1").fetchone() == (1,)
        with pytest.raises(pgerrors.ReadOnlySqlTransaction, match="cannot execute INSERT"):
            conn.execute("INSERT INTO ro VALUES (2, 2)")
        conn.execute("ROLLBACK")
        conn.execute("BEGIN")
        conn.execute("SET TRANSACTION READ ONLY")
        with pytest.raises(pgerrors.ReadOnlySqlTransaction, match="cannot execute SELECT FOR UPDATE"):
            conn.execute("SELECT v FROM ro WHERE id = 1 FOR UPDATE")
        conn.execute("ROLLBACK")
        conn.execute("SET default_transaction_read_only = on")
        assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
        for statement, verb in (("UPDATE ro SET v = 5 WHERE id = 1", "UPDATE"), ("DELETE FROM ro", "DELETE"),
                                ("CREATE TABLE ro2 (id bigint PRIMARY KEY)", "CREATE TABLE"),
                                ("DROP TABLE ro", "DROP TABLE"),
                                ("SELECT v FROM ro WHERE id = 1 FOR SHARE", "SELECT FOR SHARE")):
            with pytest.raises(pgerrors.ReadOnlySqlTransaction, match=f"cannot execute {verb}"):
                conn.execute(statement)
        conn.execute("BEGIN")
        assert conn.execute("SELECT count(*) FROM ro").fetchone() == (1,)
        with pytest.raises(pgerrors.ActiveSqlTransaction):
            conn.execute("SET TRANSACTION READ WRITE")
        conn.execute("ROLLBACK")
        conn.execute("RESET default_transaction_read_only")
        conn.execute("UPDATE ro SET v = 5 WHERE id = 1")
        assert conn.execute("SELECT id, v FROM ro").fetchall() == [(1, 5)]
        with pytest.raises(pgerrors.InvalidParameterValue):
            conn.execute("SET default_transaction_read_only = sometimes")


def test_transaction_settings_follow_postgresql(cluster3: tuple[LocalCluster, dict[int, str]]) -> None:
    """Ways a read-only session still wrote, or a setting outlived what should have undone it (found by an
    adversarial review): a startup ``-c default_transaction_read_only=on`` (or ``=true``), a second BEGIN READ ONLY
    inside a block, a ROLLBACK that kept the block's SET, SET LOCAL outside a block or after its block, SET
    transaction_read_only = off after a first query, and DISCARD ALL (what connection poolers send)."""
    _, sql = cluster3
    with psycopg.connect(conninfo(sql[1]), autocommit=True) as setup:
        setup.execute("CREATE TABLE st (id bigint PRIMARY KEY, v bigint)")
    for flag in ("on", "true"):
        with psycopg.connect(conninfo(sql[1], options=f"'-c default_transaction_read_only={flag}'"),
                             autocommit=True) as ro:
            with pytest.raises(pgerrors.ReadOnlySqlTransaction):
                ro.execute("INSERT INTO st VALUES (1, 1)")
            ro.execute("BEGIN")
            with pytest.raises(pgerrors.ReadOnlySqlTransaction):
                ro.execute("INSERT INTO st VALUES (1, 1)")
            ro.execute("ROLLBACK")
    with pytest.raises(psycopg.OperationalError, match="Boolean"):
        psycopg.connect(conninfo(sql[1], options="'-c default_transaction_read_only=maybe'"))
    with psycopg.connect(conninfo(sql[1]), autocommit=True) as conn:
        def refused(statement: str = "INSERT INTO st VALUES (2, 2)") -> None:
            with pytest.raises(pgerrors.ReadOnlySqlTransaction):
                conn.execute(statement)

        conn.execute("BEGIN")
        conn.execute("BEGIN READ ONLY")  # a warning, and the mode applies
        refused()
        conn.execute("ROLLBACK")
        conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        conn.execute("BEGIN")
        conn.execute("SET default_transaction_read_only = off")
        conn.execute("ROLLBACK")  # undoes the SET
        refused()
        conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE")
        conn.execute("SET LOCAL default_transaction_read_only = on")  # outside a block: a warning, no effect
        conn.execute("INSERT INTO st VALUES (3, 3)")
        conn.execute("BEGIN")
        conn.execute("SET LOCAL default_transaction_read_only = on")
        conn.execute("COMMIT")  # a SET LOCAL ends with its block
        conn.execute("INSERT INTO st VALUES (4, 4)")
        conn.execute("BEGIN READ ONLY")
        conn.execute("SELECT 1")
        with pytest.raises(pgerrors.ActiveSqlTransaction):
            conn.execute("SET transaction_read_only = off")
        conn.execute("ROLLBACK")
        conn.execute("BEGIN")
        with pytest.raises(pgerrors.DivisionByZero):
            conn.execute("SELECT 1 / 0")
        with pytest.raises(pgerrors.InFailedSqlTransaction):
            conn.execute("BEGIN")
        conn.execute("ROLLBACK")
        conn.execute("SET default_transaction_read_only = on")
        conn.execute("DISCARD ALL")
        conn.execute("INSERT INTO st VALUES (5, 5)")
        assert [k for (k,) in conn.execute("SELECT id FROM st ORDER BY id").fetchall()] == [3, 4, 5]


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_stopping_node_ends_its_sql_connections_with_admin_shutdown(local_cluster: Callable[..., LocalCluster],
                                                                     mode: str) -> None:
    """``muheam node stop`` ends every SQL connection as PostgreSQL's shutdown does: FATAL 57P01
    (admin_shutdown), so a driver raises its usual ``AdminShutdown``, both for a session that is idle in a
    transaction and for one whose statement waits for a row lock; neither transaction's change is kept."""
    c = local_cluster(2, security="none")
    sql = {int(n["node_id"]): str(n["sql_endpoint"]) for n in c.info["nodes"]}
    with psycopg.connect(conninfo(sql[2]), autocommit=True) as setup:
        setup.execute("CREATE TABLE sd (id bigint PRIMARY KEY, v bigint)")
        setup.execute("INSERT INTO sd VALUES (1, 0), (2, 0)")
    idle, waiting = psycopg.connect(conninfo(sql[1])), psycopg.connect(conninfo(sql[1]))
    holder = psycopg.connect(conninfo(sql[2]))
    try:
        idle.execute("UPDATE sd SET v = 1 WHERE id = 1")
        holder.execute("UPDATE sd SET v = 2 WHERE id = 2")
        failed: list[BaseException] = []

        def wait() -> None:
            try:
                waiting.execute("UPDATE sd SET v = 3 WHERE id = 2")   # waits for the holder's row lock
            except psycopg.Error as exc:
                failed.append(exc)
        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(1.0)
        c.cli("node", "stop", "--node-id", "1", "--mode", mode, timeout=90)
        waiter.join(30)
        assert not waiter.is_alive() and len(failed) == 1
        assert isinstance(failed[0], pgerrors.AdminShutdown), repr(failed[0])
        with pytest.raises(pgerrors.AdminShutdown):
            idle.execute("SELECT 1")
        holder.rollback()
        deadline = time.monotonic() + 30   # node 1's transactions end with it (immediate: by its recovery)
        while True:
            try:
                assert holder.execute("SELECT id, v FROM sd ORDER BY id").fetchall() == [(1, 0), (2, 0)]
                break
            except (psycopg.Error, AssertionError):
                holder.rollback()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        for conn in (idle, waiting, holder):
            conn.close()
