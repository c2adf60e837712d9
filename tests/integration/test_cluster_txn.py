"""Cluster transactions (cache fusion) seen from outside: three real nodes, real clients, no internals.

Every test runs on a 3-node cluster started through the CLI and talks to the nodes only through
``muheam.client`` and ``muheam.bench.workloads.bank``; the bank test also reads the WAL files the nodes left behind.  What is
checked is what a user of the cluster relies on:

* the bank workload spread over all nodes never shows a half-done transfer, every node ends with the same data,
  and the WALs hold each XID's records on one node only, with one COMMIT per XID;
* a commit acknowledged on one node is visible to a transaction begun afterwards on any other node;
* a deadlock between transactions on different nodes is detected (one victim, well within the lock timeout);
* concurrent increments of one row from every node lose nothing;
* a table created on one node is usable from every node.

Until cluster transactions exist, data operations on more than one node are refused with ``NotSupported``, so
these tests fail with that error.  ``MUHEAM_FULL=1`` makes the runs longer.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest

from muheam.bench.workloads import bank
from muheam.client import (
    Connection, DeadlockDetected, LockTimeout, NoSuchTransaction, SerializationFailure, TableExists, connect, request,
)
from muheam.engine import walrec
from muheam.ops.walcheck import Waits, block_of
from walmerge import WalReader, verify
from walmerge.merge import detect_system_id
from tests.support.cluster import FULL, LocalCluster, run_cli

pytestmark = pytest.mark.integration
Start = Callable[..., LocalCluster]

LOCK_TIMEOUT = 10.0  # the node's lock timeout (sessions.py): a deadlock must be resolved well before it


def endpoints(c: LocalCluster, nodes: int = 3) -> list[str]:
    """Client endpoints of nodes 1, 2, 3 (index 0, 1, 2), or of nodes 1 .. ``nodes``."""
    members = sorted(c.members(), key=lambda m: int(m["node_id"]))
    assert [int(m["node_id"]) for m in members] == list(range(1, nodes + 1)), members
    return [str(m["client_endpoint"]) for m in members]


def sessions_counters(ep: str) -> dict[str, int]:
    return dict(request(ep, "status", timeout=5)["counters"]["sessions"])


def read_row(ep: str, table: str, key: int) -> dict[str, Any] | None:
    with connect(ep) as conn, conn.transaction() as tx:
        return tx.get(table, key)


class Call(threading.Thread):
    """Run one blocking client call in a thread; keep its outcome (None or the exception) and when it ended."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.outcome: BaseException | None = None
        self.finished: float | None = None

    def run(self) -> None:
        try:
            self.fn()
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            self.outcome = exc
        self.finished = time.monotonic()


# --- 1. the bank workload over all three nodes ---------------------------------------------------------------

def wal_xids(shared: Path) -> tuple[dict[int, Counter[int]], dict[int, set[int]], dict[int, set[int]], list[str]]:
    """Per node: COMMIT xids (counted), ABORT xids, every xid with any record; plus torn tails found."""
    commits: dict[int, Counter[int]] = {}
    aborts: dict[int, set[int]] = {}
    xids: dict[int, set[int]] = {}
    torn: list[str] = []
    dirs = sorted((shared / "wal").glob("node-*"))
    for directory in dirs:
        node_id = int(directory.name.split("-", 1)[1])
        system_id = detect_system_id(directory)
        assert system_id is not None, f"no WAL segments in {directory}"
        reader = WalReader(directory, node_id=node_id, system_id=system_id)
        commits[node_id], aborts[node_id], xids[node_id] = Counter(), set(), set()
        for rec in reader:
            if rec.xid:
                xids[node_id].add(rec.xid)
            if rec.kind == walrec.COMMIT:
                commits[node_id][rec.xid] += 1
            elif rec.kind == walrec.ABORT:
                aborts[node_id].add(rec.xid)
        if reader.torn is not None:
            torn.append(f"node {node_id}: {reader.torn}")
    return commits, aborts, xids, torn


@pytest.mark.timeout(900 if FULL else 240)
def test_bank_three_nodes(local_cluster: Start) -> None:
    c = local_cluster(3)
    eps = endpoints(c)
    accounts = 30
    seconds = 300 if FULL else 15
    bank.create_accounts(eps[0], accounts)
    # the client waits longer than the node's lock timeout (10 s): a row wait is the node's to end, with
    # LockTimeout; only a node that does not answer at all may show up as NodeUnavailable
    result = bank.run(eps, seconds=seconds, transfer_clients=6, readers=3, accounts=accounts, seed=3,
                      timeout=15.0)
    summary = result.to_dict()
    assert result.violations == [] and result.sum_violations == 0, summary
    assert result.errors == {} and result.error_count == 0, summary
    assert result.transfers > 0 and result.sums > 0, summary

    sums = {ep: bank.checksum(ep) for ep in eps}
    assert len(set(sums.values())) == 1, f"nodes read different tables: {sums}"
    with connect(eps[2]) as conn, conn.transaction() as tx:
        rows = dict(tx.scan(bank.TABLE))
    assert sorted(rows) == list(range(accounts))
    assert sum(r[bank.COLUMN] for r in rows.values()) == 0
    assert any(r[bank.COLUMN] != 0 for r in rows.values()), "no transfer landed"
    for ep in eps:
        assert bank.running_transactions(ep) == 0, f"{ep} still has open transactions"

    # clean stop (not the fixture's 'immediate'): every node shuts down and leaves a complete WAL
    proc = run_cli("cluster", "down", "--dir", str(c.dir), "--mode", "fast", timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shared = Path(c.info["config"]["shared_dir"])
    commits, aborts, xids, torn = wal_xids(shared)
    assert sorted(commits) == [1, 2, 3], f"WAL directories found: {sorted(commits)}"
    assert torn == [], f"torn WAL tail after a clean stop: {torn}"

    all_commits: Counter[int] = Counter()
    for per_node in commits.values():
        all_commits.update(per_node)
    twice = {x: n for x, n in all_commits.items() if n > 1}
    assert not twice, f"{len(twice)} XIDs committed more than once, e.g. {dict(itertools.islice(twice.items(), 10))}"
    both = set(all_commits) & set().union(*aborts.values())
    assert not both, f"XIDs with both COMMIT and ABORT: {sorted(both)[:10]}"
    for i, j in itertools.combinations(sorted(xids), 2):
        shared_xids = xids[i] & xids[j]
        assert not shared_xids, (f"{len(shared_xids)} XIDs have records in the WALs of both node {i} and node "
                                 f"{j}, e.g. {sorted(shared_xids)[:10]}")
    for node_id, per_node in commits.items():
        assert per_node, f"node {node_id} committed nothing although it served transfer clients"
    assert len(all_commits) >= result.transfers, (len(all_commits), result.transfers)

    # the consolidator's own checks over the inputs (XID rules, GLSN order, CRCs), per-block modification order
    # and waited-on outcomes first (I4)
    report = verify(shared, block_of=block_of, waits_of=Waits())
    assert report.exit_code == 0, [str(p) for p in report.problems[:10]] + report.unusable


# --- 2. causal reads across nodes ----------------------------------------------------------------------------

def test_causal_reads(local_cluster: Start) -> None:
    c = local_cluster(3)
    eps = endpoints(c)
    iterations = 5000 if FULL else 1000
    conns = [connect(ep) for ep in eps]
    try:
        conns[0].create_table("causal", {"v": "int64"})
        with conns[0].transaction() as tx:
            tx.insert("causal", 1, {"v": -1})
        misses: list[tuple[int, int, int, Any]] = []
        pairs: Counter[tuple[int, int]] = Counter()
        t0 = time.monotonic()
        for i in range(iterations):
            a = i % 3
            b = (a + 1 + (i // 3) % 2) % 3  # every ordered pair of distinct nodes in turn
            pairs[(a + 1, b + 1)] += 1
            with conns[a].transaction() as tx:
                tx.update("causal", 1, {"v": i})
            with conns[b].transaction() as tx:  # begun after the commit was acknowledged
                row = tx.get("causal", 1)
            if row is None or row["v"] != i:
                misses.append((i, a + 1, b + 1, row))
        elapsed = time.monotonic() - t0
    finally:
        for conn in conns:
            conn.close()
    assert len(pairs) == 6
    assert not misses, (f"{len(misses)} of {iterations} reads on another node missed the acknowledged commit "
                        f"(iteration, writer node, reader node, row read): {misses[:10]}; {elapsed:.1f} s")


# --- 3. a deadlock across nodes ------------------------------------------------------------------------------

@pytest.mark.parametrize("nodes", [(1, 2), (3, 1)], ids=["n1-n2", "n3-n1"])
def test_cross_node_deadlock(local_cluster: Start, nodes: tuple[int, int]) -> None:
    c = local_cluster(3)
    eps = endpoints(c)
    ep1, ep2 = eps[nodes[0] - 1], eps[nodes[1] - 1]
    with connect(eps[1]) as conn:
        conn.create_table("dl", {"v": "int64"})
        with conn.transaction() as tx:
            tx.insert("dl", 1, {"v": 0})
            tx.insert("dl", 2, {"v": 0})
    # client timeouts above the lock timeout: a node that only times the wait out answers LockTimeout, not silence
    c1: Connection = connect(ep1, timeout=LOCK_TIMEOUT + 20)
    c2: Connection = connect(ep2, timeout=LOCK_TIMEOUT + 20)
    try:
        t1 = c1.transaction().__enter__()
        t2 = c2.transaction().__enter__()
        t1.update("dl", 1, {"v": 11})
        t2.update("dl", 2, {"v": 22})
        waits0 = sessions_counters(ep1).get("waits", 0)
        first = Call(lambda: t1.update("dl", 2, {"v": 12}))  # waits for t2
        first.start()
        deadline = time.monotonic() + 3  # a hint only: the deadlock forms whichever request arrives first
        while time.monotonic() < deadline and first.finished is None \
                and sessions_counters(ep1).get("waits", 0) <= waits0:
            time.sleep(0.02)
        t_closed = time.monotonic()
        second = Call(lambda: t2.update("dl", 1, {"v": 21}))  # waits for t1: the cycle is closed
        second.start()
        first.join(LOCK_TIMEOUT + 25)
        second.join(LOCK_TIMEOUT + 25)
        assert not first.is_alive() and not second.is_alive(), "a deadlocked request never returned"
        outcomes = {"T1": first.outcome, "T2": second.outcome}
        victims = [n for n, o in outcomes.items() if isinstance(o, DeadlockDetected)]
        assert len(victims) == 1, f"expected exactly one DeadlockDetected, got {outcomes!r}"
        victim = victims[0]
        winner = "T2" if victim == "T1" else "T1"
        assert outcomes[winner] is None, f"the survivor's update must succeed once the victim is gone: {outcomes!r}"
        ended = (first if victim == "T1" else second).finished
        assert ended is not None and ended - t_closed < LOCK_TIMEOUT, \
            f"deadlock resolved after {ended - t_closed if ended else None} s, not before the lock timeout"
        win_tx, win_conn = (t1, c1) if winner == "T1" else (t2, c2)
        lose_tx, lose_conn = (t2, c2) if winner == "T1" else (t1, c1)
        win_tx.commit()
        with pytest.raises(NoSuchTransaction):  # the victim was rolled back by its node
            lose_conn.call("commit", xid=lose_tx.xid)
    finally:
        c1.close()
        c2.close()
    expected = {1: 11, 2: 12} if winner == "T1" else {1: 21, 2: 22}
    for ep in eps:
        with connect(ep) as conn, conn.transaction() as tx:
            got = {k: row["v"] for k, row in tx.scan("dl")}
        assert got == expected, f"node {ep}: {got} but only {winner} committed ({expected})"
    for ep in eps:
        assert bank.running_transactions(ep) == 0


# --- 4. no lost update under increments from every node ------------------------------------------------------

class Incrementer(threading.Thread):
    """``count`` committed increments of one counter row, retrying serialization failures and deadlocks."""

    def __init__(self, ep: str, count: int, deadline: float) -> None:
        super().__init__(daemon=True)
        self.ep, self.count, self.deadline = ep, count, deadline
        self.seen: list[int] = []  # the counter value each committed transaction wrote
        self.retries: Counter[str] = Counter()
        self.errors: list[str] = []

    def run(self) -> None:
        conn = connect(self.ep, timeout=LOCK_TIMEOUT + 10)
        try:
            while len(self.seen) < self.count and time.monotonic() < self.deadline:
                try:
                    with conn.transaction() as tx:
                        tx.add("ctr", 1, "n", 1)
                        row = tx.get("ctr", 1)
                        assert row is not None
                        value = int(row["n"])
                    self.seen.append(value)  # only after the commit was acknowledged
                except (SerializationFailure, DeadlockDetected, LockTimeout) as exc:
                    self.retries[type(exc).__name__] += 1
                except Exception as exc:  # noqa: BLE001 - reported by the test
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    return
        finally:
            conn.close()


@pytest.mark.timeout(600 if FULL else 180)
def test_lost_update(local_cluster: Start) -> None:
    c = local_cluster(3)
    eps = endpoints(c)
    per_thread = 200 if FULL else 50
    with connect(eps[0]) as conn:
        conn.create_table("ctr", {"n": "int64"})
        with conn.transaction() as tx:
            tx.insert("ctr", 1, {"n": 0})
    deadline = time.monotonic() + (480 if FULL else 100)
    workers = [Incrementer(ep, per_thread, deadline) for ep in eps for _ in range(2)]
    t0 = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join(max(1.0, deadline - time.monotonic() + LOCK_TIMEOUT + 15))
    elapsed = time.monotonic() - t0
    assert not any(w.is_alive() for w in workers), "an incrementer hung"
    errors = {f"{w.ep}#{n}": w.errors for n, w in enumerate(workers) if w.errors}
    assert not errors, errors
    retries = sum((w.retries for w in workers), Counter())
    committed = sum(len(w.seen) for w in workers)
    assert committed == len(workers) * per_thread, \
        f"only {committed} increments committed in {elapsed:.0f} s (retries {dict(retries)})"
    for ep in eps:
        row = read_row(ep, "ctr", 1)
        assert row is not None and row["n"] == committed, f"{ep} reads {row}, {committed} increments committed"
    # each committed increment read its own result: together they must be exactly 1..committed
    values = sorted(v for w in workers for v in w.seen)
    duplicates = [v for v, n in Counter(values).items() if n > 1]
    assert values == list(range(1, committed + 1)), \
        f"committed increments saw duplicate values {duplicates[:10]} (lost updates) or gaps"
    for ep in eps:
        assert bank.running_transactions(ep) == 0


# --- 5. the catalog is cluster-wide --------------------------------------------------------------------------

def test_catalog_visible_everywhere(local_cluster: Start) -> None:
    c = local_cluster(3)
    eps = endpoints(c)
    cols = {"qty": "int64", "label": "text(8)"}
    with connect(eps[1]) as conn:
        made = conn.create_table("items", cols)
    with connect(eps[2]) as conn:
        with conn.transaction() as tx:  # the first thing node 3 does with the table
            tx.insert("items", 7, {"qty": 3, "label": "from3"})
            tx.insert("items", 8, {"qty": 4, "label": "from3"})
    with connect(eps[0]) as conn:
        with conn.transaction() as tx:
            assert tx.get("items", 7) == {"qty": 3, "label": "from3"}
            assert dict(tx.scan("items")) == {7: {"qty": 3, "label": "from3"}, 8: {"qty": 4, "label": "from3"}}
        with pytest.raises(TableExists):  # the name is taken cluster-wide
            conn.create_table("items", cols)
    # tables created on different nodes get different ids, and every node lists all of them
    with connect(eps[0]) as conn:
        other1 = conn.create_table("other1", {"x": "int64"})
    with connect(eps[2]) as conn:
        other3 = conn.create_table("other3", {"x": "int64"})
    ids = {made["table_id"], other1["table_id"], other3["table_id"]}
    assert len(ids) == 3, (made, other1, other3)
    for ep in eps:
        with connect(ep) as conn:
            listed = {t["name"]: t["table_id"] for t in conn.tables()}
        assert listed == {"items": made["table_id"], "other1": other1["table_id"], "other3": other3["table_id"]}, \
            f"{ep} lists {listed}"
    with connect(eps[1]) as conn, conn.transaction() as tx:  # a table made on node 3, written on node 2
        tx.insert("other3", 1, {"x": 42})
    assert read_row(eps[2], "other3", 1) == {"x": 42}
    assert read_row(eps[0], "other3", 1) == {"x": 42}


@pytest.mark.timeout(120)
def test_a_row_operation_pipelined_behind_a_waiting_snapshot_is_refused(local_cluster: Start,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """READ COMMITTED ``snapshot`` waits for transactions prepared elsewhere whose outcome is not known yet, and
    takes the snapshot again when one committed above it (``SnapshotWaits._retake``: "nothing has used it
    yet").  A raw client that sends a ``get`` of another row right behind it, before the answer, read under the
    snapshot that was then thrown away: a change committed meanwhile by a third transaction would be missing
    from that read and present in the next one of the same statement.  The node must refuse it."""
    import zmq

    from muheam.net import wire

    # a 3 s pause of node 2's loop is a slow node under a 4 s lease; under the default 2 s one
    # its loop watch takes it out of the cluster (node.fence.LoopWatch)
    monkeypatch.setenv("MUHEAM_FAILPOINTS", "sessions.commit_prepared@2=1*pause(3)")
    c = local_cluster(2, security="none", lease_ttl=4)
    ep1, ep2 = (str(n["client_endpoint"]) for n in sorted(c.info["nodes"], key=lambda n: int(n["node_id"])))
    with connect(ep1) as conn:
        conn.create_table("p", {"v": "int64"}, buckets=8)
        with conn.transaction() as tx:
            tx.insert("p", 1, {"v": 1})
            tx.insert("p", 2, {"v": 1})
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(ep1)

    def send(**req: Any) -> None:
        sock.send_multipart([b"", wire.pack(req)])

    def receive(timeout: float = 15.0) -> dict[str, Any]:
        assert sock.poll(int(timeout * 1000)), "no answer"
        return dict(wire.unpack(sock.recv_multipart()[-1], wire.MAX_CLIENT_FRAME))

    try:
        with connect(ep2) as conn2, conn2.transaction() as tx2:  # both nodes hold the catalog lock (shared) now:
            assert tx2.get("p", 2) == {"v": 1}                   # no lock round with node 2 while it pauses
        send(op="begin", isolation="read committed")
        xid = receive()["result"]["xid"]
        send(op="get", xid=xid, table="p", key=1)
        assert receive()["result"] == {"v": 1}

        def writer() -> None:  # node 2 prepares, then pauses 3 s before its COMMIT (the failpoint)
            with connect(ep2) as conn2, conn2.transaction() as tx2:
                tx2.update("p", 2, {"v": 2})

        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(1.0)
        send(op="snapshot", xid=xid)  # waits for node 2's outcome
        send(op="get", xid=xid, table="p", key=1)  # a row node 2 does not hold: nothing makes it wait
        send(op="snapshot", xid=xid)  # a second wait on top of the first is refused too
        first, second, third = receive(), receive(), receive()
        thread.join(30)
        assert not first["ok"] and "snapshot" in first["error"]["message"], (first, second, third)
        assert not second["ok"] and "previous snapshot" in second["error"]["message"], (first, second, third)
        assert third["ok"] and set(third["result"]) == {"xid", "sts"}
        send(op="get", xid=xid, table="p", key=2)
        assert receive()["result"] == {"v": 2}
        send(op="rollback", xid=xid)
        receive()
    finally:
        sock.close()
        ctx.term()
