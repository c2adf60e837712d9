"""Fault windows inside a node's loop turn (issue 16): each test reaches one window through the public surface
(real etcd, real node processes, kill -9 / SIGSTOP, failpoints armed by ``MUHEAM_FAILPOINTS``) and checks what a
client of the cluster must see: no acknowledged commit lost, no row blocked for ever, no relation grown past
its blocks."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import psycopg
import pytest

from muheam.client import connect, request
from muheam.ops.procs import pid_alive, stop_pid, wait_until
from tests.support.cluster import MUHEAM, LocalCluster, run_cli
from muheam.storage.layout import BLOCK_SIZE, MAX_ROW_WIDTH, PAGE_HEADER_SIZE, SLOT_HEADER_SIZE
from tests.integration.test_cluster_txn import endpoints
from tests.faults.test_node_failure import wait_recovered
from tests.integration.test_sql import conninfo

pytestmark = pytest.mark.integration
Start = Callable[..., LocalCluster]


def epochs(c: LocalCluster) -> dict[int, int]:
    return {int(m["node_id"]): int(m["epoch"]) for m in c.members()}


def armed(local_cluster: Start, monkeypatch: pytest.MonkeyPatch, failpoints: str, nodes: int = 2) -> LocalCluster:
    """A cluster whose nodes start with ``MUHEAM_FAILPOINTS=failpoints`` (the test's own commands run without)."""
    monkeypatch.setenv("MUHEAM_FAILPOINTS", failpoints)
    c = local_cluster(nodes)
    monkeypatch.delenv("MUHEAM_FAILPOINTS")
    return c


def sql_endpoints(c: LocalCluster) -> dict[int, str]:
    return {int(m["node_id"]): str(m["sql_endpoint"]) for m in c.members()}


def kill_after_a_row(c: LocalCluster, eps: list[str], victim: int, *, writer: int, buckets: int,
                     timeout: float) -> dict[int, int]:
    """Table ``z`` with row 1 written through node ``writer``, then node ``victim`` killed (-9) and recovered by
    the others; returns the members' epochs from before the kill."""
    with connect(eps[0], 30) as conn:
        conn.create_table("z", {"v": "int64"}, buckets=buckets)
    with connect(eps[writer - 1], 30) as conn, conn.transaction() as tx:
        tx.insert("z", 1, {"v": 1})
    before = epochs(c)
    pid = c.node_pid(victim)
    assert pid is not None
    stop_pid(pid, signal.SIGKILL, 5)
    wait_recovered(c, victim, before[victim], timeout)
    return before


@pytest.mark.timeout(180)
def test_survivor_writes_above_a_dead_nodes_clock(local_cluster: Start) -> None:
    """A long transaction runs its node's Lamport clock ahead of everyone (local work sends no message); the
    node is killed before it commits.  The survivor that recovers it must log its FENCE/ABORT records and every
    later change above the dead node's last GLSN: a rebuilt page carries the dead node's GLSNs, and a change
    stamped below them is refused ("refusing to stamp GLSN ... over newer"), which left the row blocked for
    ever."""
    c = local_cluster(3)
    eps = endpoints(c)
    with connect(eps[0], 30) as conn:
        conn.create_table("ahead", {"v": "int64"}, buckets=1)
        with conn.transaction() as tx:
            tx.insert("ahead", 0, {"v": 0})
    before = epochs(c)
    conn2 = connect(eps[1], 30)
    tx2 = conn2.transaction().__enter__()
    for key in range(1, 3001):  # each change ticks node 2's clock; nobody else hears of it
        tx2.insert("ahead", key, {"v": key})
    pid = c.node_pid(2)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    conn2.close()
    stop_pid(pid, signal.SIGKILL, 5)
    wait_recovered(c, 2, before[2], 30)
    for ep in (eps[0], eps[2]):
        with connect(ep, 30) as conn, conn.transaction() as tx:
            tx.insert("ahead", 5000 + eps.index(ep), {"v": 1})
            tx.add("ahead", 0, "v", 1)
        with connect(ep, 30) as conn, conn.transaction() as tx:
            for key in (1, 2999, 3000):  # the dead node's keys: aborted, so free to insert again
                if tx.get("ahead", key) is None:
                    tx.insert("ahead", key, {"v": -key})
    with connect(eps[2], 30) as conn, conn.transaction() as tx:
        rows = dict(tx.scan("ahead"))
    assert rows[0] == {"v": 2}
    assert {k for k in rows if 0 < k <= 3000} == {1, 2999, 3000}
    assert rows[3000] == {"v": -3000}


@pytest.mark.timeout(180)
def test_relation_extension_after_the_extending_node_dies(local_cluster: Start) -> None:
    """A one-chain table of the widest rows (four to a page) is filled by node 3 to the last slot of its last
    page, so node 3 extended it last and holds ``ext:`` when it is killed.  The survivors' next inserts need a
    new block: the extension lock comes back marked invalid while node 3 is being recovered, and they must
    grow the relation only past the blocks node 3 really allocated.  Under numpy >= 2 a decoding slip took
    2^32 - 1 for one of them, the relation grew to 2^32 blocks on every node, and every insert needing a block
    failed with "block number 4294967296 out of range"."""
    c = local_cluster(3)
    eps = endpoints(c)
    pad = "p" * MAX_ROW_WIDTH
    with connect(eps[0], 30) as conn:
        conn.create_table("wide", {"pad": f"text({MAX_ROW_WIDTH})"}, buckets=1)
    per_page = (BLOCK_SIZE - PAGE_HEADER_SIZE) // (MAX_ROW_WIDTH + SLOT_HEADER_SIZE)
    with connect(eps[2], 30) as conn, conn.transaction() as tx:
        for key in range(3 * per_page):  # three full pages: two extensions, the last by node 3
            tx.insert("wide", key, {"pad": pad})
    before = epochs(c)
    pid = c.node_pid(3)
    assert pid is not None
    stop_pid(pid, signal.SIGKILL, 5)
    errors: list[str] = []

    def insert(node: int) -> None:
        try:
            with connect(eps[node - 1], 30) as conn:
                for i in range(2 * per_page):
                    with conn.transaction() as tx:
                        tx.insert("wide", node * 1000 + i, {"pad": pad})
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"node {node}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=insert, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    wait_recovered(c, 3, before[3], 30)
    assert not errors, errors
    with connect(eps[0], 30) as conn, conn.transaction() as tx:
        keys = {k for k, _ in tx.scan("wide")}
    assert keys == set(range(3 * per_page)) | {n * 1000 + i for n in (1, 2) for i in range(2 * per_page)}
    shared = Path(str(c.info["config"]["shared_dir"]))
    sizes = {p.name: p.stat().st_size for p in (shared / "base").iterdir() if p.is_file()}
    assert max(sizes.values()) < 64 << 20, sizes


def proc_state(pid: int) -> str:
    """The process state letter from /proc (``T`` stopped, ``Z`` zombie), or ``-`` when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "-"


def update_all(ep: str, keys: range, value: int, timeout: float = 30) -> None:
    with connect(ep, timeout) as conn, conn.transaction() as tx:
        for key in keys:
            tx.update("z", key, {"v": value})


@pytest.mark.timeout(240)
def test_paused_node_cannot_write_back_after_its_recovery(local_cluster: Start,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Node 2 holds a chain with committed changes not yet written to the shared file; node 1 demands it, and
    node 2 stops (SIGSTOP, failpoint ``ownership.export``) inside that loop turn, before it writes the chain
    through.  Its lease expires, the survivors rebuild the chain from its WAL and commit newer changes, which
    reach the shared file.  Then node 2 is resumed: it must not finish the turn and write its older images over
    theirs (I6), or a restart of the cluster shows the rows as node 2 left them and the later acknowledged
    commits are lost (I7)."""
    monkeypatch.setenv("MUHEAM_FAILPOINTS", "ownership.export@2=1*sigstop")
    c = local_cluster(3)
    monkeypatch.delenv("MUHEAM_FAILPOINTS")
    eps = endpoints(c)
    keys = range(10)
    with connect(eps[0], 30) as conn:
        conn.create_table("z", {"v": "int64"}, buckets=1)
        with conn.transaction() as tx:
            for key in keys:
                tx.insert("z", key, {"v": 0})
    update_all(eps[1], keys, 1)  # node 2 owns the chain now, its pages dirty in its cache
    before = epochs(c)
    pid = c.node_pid(2)
    assert pid is not None
    update_all(eps[0], keys, 2)  # demands the chain: node 2 stops mid-turn; node 1 goes on once it is recovered
    assert "failpoint ownership.export" in c.log(2)
    wait_recovered(c, 2, before[2], 30)
    update_all(eps[2], keys, 3)  # node 1 writes the chain through when node 3 takes it
    with connect(eps[0], 30) as conn, conn.transaction() as tx:  # and node 3 when node 1 reads it
        assert {tx.get("z", k)["v"] for k in keys} == {3}  # type: ignore[index]
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 15
    while proc_state(pid) not in ("-", "Z") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc_state(pid) in ("-", "Z"), "node 2 kept running after it resumed past its lease"
    down = run_cli("cluster", "down", "--dir", str(c.dir), "--mode", "fast", timeout=90, check=False)
    assert down.returncode == 0, down.stdout + down.stderr
    up = run_cli("cluster", "up", "--dir", str(c.dir), "--format", "json", timeout=180, check=False)
    assert up.returncode == 0, up.stdout + up.stderr
    for ep in endpoints(c):
        with connect(ep, 30) as conn, conn.transaction() as tx:
            values = {k: tx.get("z", k) for k in keys}
        assert values == {k: {"v": 3} for k in keys}, f"{ep}: {values}"


@pytest.mark.timeout(240)
def test_joiner_learns_the_outcomes_of_a_member_that_is_stopping(local_cluster: Start,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Node 3 joins while node 2 is ``stopping`` (failpoint ``node.finish_rounds`` holds node 2 there) with a
    transaction that changed a row and is then rolled back by the stop.  Node 2's outcome round goes to the
    members it knew, not to the joiner; node 3 must still learn the abort, or the row stays locked for it for
    ever (every update fails with a lock timeout)."""
    monkeypatch.setenv("MUHEAM_FAILPOINTS", "node.finish_rounds@2=1*pause(6)")
    c = local_cluster(3)
    monkeypatch.delenv("MUHEAM_FAILPOINTS")
    eps = endpoints(c)
    c.cli("node", "stop", "--node-id", "3", "--mode", "fast", timeout=60)
    with connect(eps[0], 30) as conn:
        conn.create_table("z", {"v": "int64"}, buckets=1)
        with conn.transaction() as tx:
            tx.insert("z", 0, {"v": 0})
    conn2 = connect(eps[1], 30)
    tx2 = conn2.transaction().__enter__()
    tx2.update("z", 0, {"v": 2})  # left open: the stop rolls it back
    stopper = subprocess.Popen([*MUHEAM, "node", "stop", "--node-id", "2", "--mode", "fast", "-c", str(c.config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and \
                not any(m["node_id"] == 2 and m["state"] == "stopping" for m in c.members()):
            time.sleep(0.05)
        assert "failpoint node.finish_rounds" in c.log(2)
        c.cli("node", "start", "--node-id", "3", "--daemon", timeout=60)
        stopper.wait(60)
    finally:
        stopper.kill()
        conn2.close()
    with connect(eps[2], 40) as conn, conn.transaction() as tx:
        tx.update("z", 0, {"v": 3})
    with connect(eps[0], 30) as conn, conn.transaction() as tx:
        assert tx.get("z", 0) == {"v": 3}


@pytest.mark.timeout(180)
def test_recovery_is_claimed_again_after_an_etcd_error(local_cluster: Start,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Both survivors' first claim of the dead node's recovery fails on an etcd error (failpoint
    ``survivors.claim``).  The claim must be retried until some survivor has recovered the node; before, the
    error was only logged and the node's chains and transactions stayed unrecovered for ever."""
    monkeypatch.setenv("MUHEAM_FAILPOINTS", "survivors.claim@1=1*drop;survivors.claim@3=1*drop")
    c = local_cluster(3)
    monkeypatch.delenv("MUHEAM_FAILPOINTS")
    eps = endpoints(c)
    kill_after_a_row(c, eps, 2, writer=2, buckets=1, timeout=30)
    assert all("cannot claim the recovery of node 2 now (failpoint survivors.claim)" in c.log(n) for n in (1, 3))
    with connect(eps[2], 30) as conn, conn.transaction() as tx:
        tx.update("z", 1, {"v": 3})
    with connect(eps[0], 30) as conn, conn.transaction() as tx:
        assert tx.get("z", 1) == {"v": 3}


@pytest.mark.timeout(240)
def test_joiner_whose_sync_peer_crashes_unanswered_sees_its_acknowledged_commit(local_cluster: Start,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Node 2 is stopped; node 1, alone, commits a row (only node 1 knows the outcome).  Node 2 starts and asks
    node 1 for its transaction table; node 1 crashes on that request before answering (failpoint
    ``commits.sync_answer``), and node 2's first claims of node 1's recovery fail (``survivors.claim``), so the
    recovery that would tell it the outcome comes late.  A transaction begun on node 2 meanwhile must see the
    acknowledged row: the joiner is not ready until node 1's recovery ended (the simulator's ``i_sync_loss``);
    before, it was ready as soon as node 1 left and its snapshot missed the commit (I5)."""
    c = local_cluster(2)
    eps = [m["client_endpoint"] for m in sorted(c.members(), key=lambda m: int(m["node_id"]))]
    with connect(eps[0], 30) as conn:
        conn.create_table("j", {"v": "int64"}, buckets=1)
        with conn.transaction() as tx:
            tx.insert("j", 1, {"v": 1})
    c.cli("node", "stop", "--node-id", "2", "--mode", "fast", timeout=60)
    c.cli("node", "stop", "--node-id", "1", "--mode", "fast", timeout=60)
    monkeypatch.setenv("MUHEAM_FAILPOINTS", "commits.sync_answer@1=1*crash;survivors.claim@2=3*drop")
    c.cli("node", "start", "--node-id", "1", "--daemon", timeout=60)
    with connect(eps[0], 30) as conn, conn.transaction() as tx:  # node 1 alone: nobody else learns this outcome
        tx.insert("j", 2, {"v": 2})
    before = epochs(c)
    c.cli("node", "start", "--node-id", "2", "--daemon", timeout=60)
    monkeypatch.delenv("MUHEAM_FAILPOINTS")
    with connect(eps[1], 60) as conn, conn.transaction() as tx:  # begins once node 2 may take a snapshot
        seen = {k: tx.get("j", k) for k in (1, 2)}
    assert seen == {1: {"v": 1}, 2: {"v": 2}}, seen
    wait_recovered(c, 1, before[1], 60)
    log2 = c.log(2)
    assert "cannot claim the recovery of node 1 now (failpoint survivors.claim)" in log2
    assert "the join may end" in log2


@pytest.mark.timeout(180)
def test_a_stalled_loop_loses_its_lease_not_its_healthy_peer(local_cluster: Start,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Node 1's event loop stalls inside a turn for longer than the peers' silence timeout (2 x TTL; failpoint
    ``engine.create_unlogged`` pauses a CREATE TABLE there) while its process lives on.  The stalled node must
    be the one the cluster removes.  Before, its lease keeper (a thread) renewed on, node 2 found node 1
    silent, node 1's last report (from before the stall) said it heard everyone, and the 2-node tie went to the smaller
    id: node 2, the healthy one, was evicted and node 1 went on alone once it woke."""
    monkeypatch.setenv("MUHEAM_FAILPOINTS", "engine.create_unlogged@1=1*pause(9)")
    c = local_cluster(2)
    monkeypatch.delenv("MUHEAM_FAILPOINTS")
    eps = endpoints(c, nodes=2)
    before = epochs(c)
    stalled_pid = c.node_pid(1)
    assert stalled_pid is not None

    def create() -> None:
        try:
            with connect(eps[0], 30) as conn:
                conn.create_table("stalled", {"v": "int64"}, buckets=1)
        except Exception:  # noqa: BLE001 - the node it asked is meant to go away mid-request
            pass

    threading.Thread(target=create, daemon=True).start()
    assert wait_until(lambda: "failpoint engine.create_unlogged" in c.log(1), 30)
    # the pause, then whatever the cluster decided, settled
    wait_until(lambda: epochs(c) != {1: before[1], 2: before[2]}, 40, 0.1)
    now = epochs(c)
    assert now.get(2) == before[2], f"the healthy node 2 was removed: members {now}, node 2's log:\n{c.log(2)[-3000:]}"
    assert now.get(1) != before[1], now
    wait_recovered(c, 1, before[1], 30)
    assert wait_until(lambda: not pid_alive(stalled_pid), 15), "the stalled incarnation of node 1 still runs"
    with connect(eps[1], 30) as conn:
        conn.create_table("after", {"v": "int64"}, buckets=1)
        with conn.transaction() as tx:
            tx.insert("after", 1, {"v": 1})
        with conn.transaction() as tx:
            assert tx.get("after", 1) == {"v": 1}


@pytest.mark.timeout(180)
def test_a_recoverer_busy_staging_longer_than_the_silence_timeout_keeps_its_peer(local_cluster: Start,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Node 3 dies; the survivor that recovers it stages its pages for longer than the peers' silence timeout
    (2 x TTL; failpoint ``survivors.stage`` pauses there: a WAL of a few hundred MiB takes seconds).  Its lease is
    kept meanwhile (the work is healthy, the loop watch is paused), so the other survivor found it silent, its last
    report said it heard everyone, and the tie removed one of the two survivors: one dead node cost two.  Now the
    busy node tells its peers before it starts, and both survivors stay."""
    monkeypatch.setenv("MUHEAM_FAILPOINTS", "survivors.stage=1*pause(6)")
    c = local_cluster(3)
    monkeypatch.delenv("MUHEAM_FAILPOINTS")
    eps = endpoints(c)
    before = kill_after_a_row(c, eps, 3, writer=3, buckets=4, timeout=60)
    busy = [n for n in (1, 2) if "failpoint survivors.stage" in c.log(n)]
    assert busy, "no survivor staged node 3's pages (the window was not reached)"
    time.sleep(1)  # a decision taken at the end of the pause would show by now
    now = epochs(c)
    assert {n: now.get(n) for n in (1, 2)} == {n: before[n] for n in (1, 2)}, \
        f"a survivor was removed: members {now}; logs:\n{c.log(1)[-2000:]}\n{c.log(2)[-2000:]}"
    with connect(eps[2 - busy[0]], 30) as conn, conn.transaction() as tx:  # the other survivor, and the row
        assert tx.get("z", 1) == {"v": 1}


@pytest.mark.timeout(180)
def test_a_long_create_table_keeps_its_node_in_the_cluster(local_cluster: Start,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Writing a new table's relation file (every bucket page: 128 MiB for the largest, 0.2 s on an idle machine)
    took 2.5 s on a loaded CI machine: the loop watch took the loop for stalled and the node fenced itself in the
    middle of the create.  The write is healthy work: the node excuses it as it does recovery work (the watch
    paused, the peers told); failpoint ``engine.create_file`` holds it 6 s, past the peers' silence timeout."""
    monkeypatch.setenv("MUHEAM_FAILPOINTS", "engine.create_file@1=1*pause(6)")
    c = local_cluster(2)
    monkeypatch.delenv("MUHEAM_FAILPOINTS")
    eps = endpoints(c, nodes=2)
    before = epochs(c)
    with connect(eps[0], 60) as conn:
        conn.create_table("slow", {"v": "int64"}, buckets=4)
        with conn.transaction() as tx:
            tx.insert("slow", 1, {"v": 1})
    assert "failpoint engine.create_file" in c.log(1)
    time.sleep(1)
    assert epochs(c) == before, (before, epochs(c), c.log(1)[-2000:], c.log(2)[-2000:])
    with connect(eps[1], 30) as conn, conn.transaction() as tx:
        assert tx.get("slow", 1) == {"v": 1}


@pytest.mark.timeout(180)
def test_a_long_sql_statement_runs_over_many_loop_turns(local_cluster: Start,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A SQL statement whose row operations all answer at once ran to its end in one loop turn: a 5,000-row INSERT
    under CI's load took longer than the loop watch allows (1 s at the default 2 s lease) and node 3 fenced itself
    (seen in a CI run).  Now it continues at the next turn once the turn's budget is spent.  Failpoint
    ``sql.operation`` makes 400 operations take 10 ms each (4 s in all): the node stays a member, its loop answers
    another client meanwhile, and every row is there."""
    c = armed(local_cluster, monkeypatch, "sql.operation@1=400*pause(0.01)")
    eps, sql1 = endpoints(c, nodes=2), sql_endpoints(c)[1]
    before = epochs(c)
    with psycopg.connect(conninfo(sql1), autocommit=True) as conn:
        conn.execute("CREATE TABLE big (id bigint PRIMARY KEY, v integer) WITH (buckets = 4)")
    outcome: dict[str, object] = {}

    def insert() -> None:
        try:
            with psycopg.connect(conninfo(sql1), autocommit=True) as conn:
                outcome["rows"] = conn.execute(
                    "INSERT INTO big (id, v) VALUES " + ", ".join(f"({i}, {i})" for i in range(500))).rowcount
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    writer = threading.Thread(target=insert)
    writer.start()
    assert wait_until(lambda: c.log(1).count("failpoint sql.operation") >= 40, 30), c.log(1)[-2000:]
    status = request(eps[0], "status", timeout=10, client_key=c.client_key)  # answered while the INSERT runs
    assert writer.is_alive(), "the INSERT was over before the status answer: the failpoint did not slow it"
    writer.join(60)
    assert not writer.is_alive() and outcome.get("rows") == 500, (outcome, c.log(1)[-2000:])
    assert status["counters"]["sql"]["statement_slices"] > 0, status["counters"]["sql"]
    assert epochs(c) == before, (before, epochs(c), c.log(1)[-2000:])
    with psycopg.connect(conninfo(sql1), autocommit=True) as conn:
        assert conn.execute("SELECT count(*), sum(v) FROM big").fetchone() == (500, sum(range(500)))


@pytest.mark.timeout(180)
def test_a_large_statements_parse_keeps_its_node_in_the_cluster(local_cluster: Start,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Parsing and compiling a statement run inside the loop before any of its operations, in proportion to its
    text: a 5,000-row INSERT (about 60 KiB) took most of a second on a loaded machine, and its node fenced itself
    (seen while the CI run went on beside).  From 32 KiB on it is long work (the loop watch paused, the peers told);
    failpoint ``sql.parse`` holds the first parse on node 1 for 3 s.  A text over 1 MiB is refused with 54000 and
    the connection goes on."""
    c = armed(local_cluster, monkeypatch, "sql.parse@1=1*pause(3)")
    eps, sql1 = endpoints(c, nodes=2), sql_endpoints(c)[1]
    before = epochs(c)
    with connect(eps[0], 30) as conn:
        conn.create_table("bulk", {"v": "int64"}, buckets=16)
    with psycopg.connect(conninfo(sql1), autocommit=True) as conn:
        text = "INSERT INTO bulk VALUES " + ", ".join(f"({i}, {i})" for i in range(5000))
        assert len(text) >= 32 << 10
        assert conn.execute(text).rowcount == 5000
        assert "failpoint sql.parse" in c.log(1)
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="more than MUHEAM parses at once"):
            conn.execute("INSERT INTO bulk VALUES " + ", ".join(f"({i}, {i})" for i in range(5000, 100_000)))
        assert conn.execute("SELECT count(*), sum(v) FROM bulk").fetchone() == (5000, sum(range(5000)))
    assert epochs(c) == before, (before, epochs(c), c.log(1)[-2000:])


@pytest.mark.timeout(180)
def test_a_large_statements_parse_holds_only_its_own_session(local_cluster: Start,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A large text (32 KiB and more) is parsed, and a single statement compiled, in a thread beside the node's
    loop (``muheam.sql.offloop``): in the loop, as long work, it held every other session of the node and every
    peer's round for as long (half a second for 1 MiB on an idle machine, and a client may send such texts one
    after the other).  Failpoint ``sql.parse`` holds the first parse on node 1 for 3 s; a short query sent to
    node 1 meanwhile, on another connection, is answered first, and the large one after it, correctly."""
    c = armed(local_cluster, monkeypatch, "sql.parse@1=1*pause(3)")
    sql1 = sql_endpoints(c)[1]
    finished: list[str] = []
    results: dict[str, object] = {}

    def large() -> None:
        with psycopg.connect(conninfo(sql1), autocommit=True) as conn:
            results["large"] = conn.execute("SELECT 41 + 1 AS answer /* " + "x" * (40 << 10) + " */").fetchone()
            finished.append("large")

    with psycopg.connect(conninfo(sql1), autocommit=True) as small:
        thread = threading.Thread(target=large)
        thread.start()
        assert wait_until(lambda: "failpoint sql.parse" in c.log(1), 30)  # the large text's parse has begun
        results["small"] = small.execute("SELECT 1").fetchone()
        finished.append("small")
        thread.join(60)
    assert finished == ["small", "large"], (finished, c.log(1)[-2000:])
    assert results == {"small": (1,), "large": (42,)}
    status = request(endpoints(c, nodes=2)[0], "status", timeout=10)
    assert status["counters"]["sql"]["parsed_off_loop"] >= 1, status["counters"]["sql"]


@pytest.mark.timeout(180)
def test_sql_reads_a_table_page_by_page(local_cluster: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SQL statement without a key in its WHERE scanned the whole table in one operation, which refuses more than
    200,000 rows ("page it") and runs in one loop turn however large the table.  It now reads page by page
    (5,000 rows, chain boundaries).  Failpoint ``sessions.scan_limit`` makes every unpaged scan fail as an
    oversized one would: 12,000 rows written through node 1 are counted, summed, filtered and sorted on node 2
    (whose pages are copies of node 1's chains, fetched page by page)."""
    sql = sql_endpoints(armed(local_cluster, monkeypatch, "sessions.scan_limit=fail"))
    with psycopg.connect(conninfo(sql[1]), autocommit=True) as conn:
        conn.execute("CREATE TABLE wide (id bigint PRIMARY KEY, v integer) WITH (buckets = 64)")
        for start in range(0, 12_000, 4_000):
            conn.execute("INSERT INTO wide VALUES " + ", ".join(f"({i}, {i % 97})" for i in range(start, start + 4_000)))
    with psycopg.connect(conninfo(sql[2])) as conn:
        assert conn.execute("SELECT count(*), sum(v), min(id), max(id) FROM wide").fetchone() == (
            12_000, sum(i % 97 for i in range(12_000)), 0, 11_999)
        assert conn.execute("SELECT count(*) FROM wide WHERE v = 5").fetchone() == (
            sum(1 for i in range(12_000) if i % 97 == 5),)
        assert conn.execute("SELECT id FROM wide WHERE v > 95 ORDER BY id DESC LIMIT 3").fetchall() == [
            (i,) for i in sorted((i for i in range(12_000) if i % 97 == 96), reverse=True)[:3]]
        conn.execute("UPDATE wide SET v = v + 1 WHERE v = 96")  # a change found by a scan, in the same transaction
        assert conn.execute("SELECT count(*) FROM wide WHERE v = 97").fetchone() == (
            sum(1 for i in range(12_000) if i % 97 == 96),)
        conn.commit()


@pytest.mark.timeout(180)
def test_the_last_survivor_recovers_a_node_that_held_many_chains(local_cluster: Start) -> None:
    """In a 2-node cluster node 1 changes rows in 600 chains and is killed.  Node 2, the only survivor, takes
    every chain node 1 touched; with no peer to ask, each lock is granted at once, and the sweep used to take the
    next chain from inside the previous grant's callback: the recursion ran out of stack after about 140
    chains and the recovery never ended."""
    c = local_cluster(2)
    eps = endpoints(c, nodes=2)
    before = epochs(c)
    with connect(eps[0], 60) as conn:
        conn.create_table("wide", {"v": "int64"}, buckets=600)
        for start in range(0, 1800, 300):
            with conn.transaction() as tx:
                for k in range(start, start + 300):
                    tx.insert("wide", k, {"v": k})
    pid = c.node_pid(1)
    assert pid is not None
    stop_pid(pid, signal.SIGKILL, 5)
    wait_recovered(c, 1, before[1], 60)
    with connect(eps[1], 60) as conn, conn.transaction() as tx:
        rows = dict(tx.scan("wide"))
    assert len(rows) == 1800 and all(rows[k] == {"v": k} for k in range(1800))


SLOW_ON_NODE_1 = """#!/bin/sh
# the fence agent: slow when node 1 runs it (found on the parent chain's command line), fast for the others
p=$PPID
for i in 1 2 3; do
  if tr '\\0' ' ' < /proc/$p/cmdline 2>/dev/null | grep -Eq -- '--node-id[= ]1( |$)'; then sleep 8; exit 0; fi
  p=$(awk '{print $4}' /proc/$p/stat 2>/dev/null)
done
exit 0
"""


@pytest.mark.timeout(240)
def test_survivors_keep_their_leases_while_a_slow_fence_agent_runs(local_cluster: Start) -> None:
    """Node 3 counts as another host's (``host`` in the config), so the survivors fence it with the
    ``fence_command``: 8 s when node 1 runs it, at once for node 2 (real fence agents take 2-30 s).  Both
    survivors must stay.  Run in node 1's loop, the agent made node 1 silent to node 2: under the loop watch it
    lost its lease; with the watch paused its lease lived on, and the 2-node tie removed node 2, the healthy one
    (one dead node cost two).  Now the agent runs in a thread and the loop turns on."""
    c = local_cluster(3)
    agent = c.dir / "fence-agent.sh"
    agent.write_text(SLOW_ON_NODE_1)
    agent.chmod(0o755)
    text = c.config.read_text()
    assert '[nodes.3]\nhost = "127.0.0.1"' in text
    text = text.replace('[nodes.3]\nhost = "127.0.0.1"', '[nodes.3]\nhost = "127.0.0.3"')
    c.config.write_text(f'fence_command = "{agent}"\n' + text)
    run_cli("cluster", "down", "--dir", str(c.dir), "--mode", "fast", timeout=90)
    run_cli("cluster", "up", "--dir", str(c.dir), "--format", "json", timeout=120)
    eps = endpoints(c)
    before = kill_after_a_row(c, eps, 3, writer=3, buckets=4, timeout=60)
    wait_until(lambda: "fenced node 3 (epoch" in c.log(1), 12, 0.2)  # past node 1's agent
    time.sleep(5)  # and past a silence timeout after it
    assert all("with the fence command" in c.log(n) for n in (1, 2))
    now = epochs(c)
    assert now.get(1) == before[1] and now.get(2) == before[2], (before, now)
    with connect(eps[1], 30) as conn, conn.transaction() as tx:
        assert tx.get("z", 1) == {"v": 1}
