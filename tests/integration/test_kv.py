"""Tables, interactive transactions and single-node crash recovery, with a real node process."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import msgpack
import pytest
import zmq

from muheam import client
from muheam.client import connect
from muheam.errors import MuheamError
from muheam.ops.procs import pid_alive, wait_until
from tests.support.cluster import FULL, LocalCluster
from tests.support.keyed import client_dealer

pytestmark = pytest.mark.integration
Start = Callable[..., LocalCluster]
COLUMNS = {"balance": "int64", "score": "float64", "name": "text(12)"}


def endpoint(c: LocalCluster, node_id: int = 1) -> str:
    return next(m["client_endpoint"] for m in c.members() if m["node_id"] == node_id)


def table_state(ep: str, table: str = "t") -> dict[int, dict[str, Any]]:
    with connect(ep) as conn, conn.transaction() as tx:
        return dict(tx.scan(table))


def test_client_api_and_typed_errors(local_cluster: Start) -> None:
    c = local_cluster(1)
    with connect(endpoint(c)) as conn:
        conn.create_table("t", COLUMNS)
        with pytest.raises(client.TableExists):
            conn.create_table("t", COLUMNS)
        with conn.transaction() as tx:
            assert tx.xid is not None and tx.xid >= 3
            for k in range(10):
                tx.insert("t", k, {"balance": k, "score": k / 2, "name": f"n{k}"})
            assert tx.get("t", 3) == {"balance": 3, "score": 1.5, "name": "n3"}
        with conn.transaction() as tx:
            tx.update("t", 1, {"name": "one"})
            tx.add("t", 2, "balance", 40)
            tx.delete("t", 9)
        with pytest.raises(RuntimeError):
            with conn.transaction() as tx:
                tx.insert("t", 100, {"balance": 1, "score": 0.0, "name": "gone"})
                raise RuntimeError("rolled back by the with block")
        with pytest.raises(client.DuplicateKey):
            with conn.transaction() as tx:
                tx.insert("t", 1, {"balance": 1, "score": 0.0, "name": "dup"})
        with pytest.raises(client.NoSuchTable):
            with conn.transaction() as tx:
                tx.get("nope", 1)
        with pytest.raises(client.KeyNotFound):
            with conn.transaction() as tx:
                tx.update("t", 12345, {"balance": 1})
        state = table_state(endpoint(c))
    assert sorted(state) == list(range(9))
    assert state[1]["name"] == "one" and state[2]["balance"] == 42 and 100 not in state


def test_first_updater_wins_and_waiter_wakes(local_cluster: Start) -> None:
    c = local_cluster(1)
    ep = endpoint(c)
    with connect(ep) as a, connect(ep) as b:
        a.create_table("t", COLUMNS)
        with a.transaction() as tx:
            tx.insert("t", 1, {"balance": 0, "score": 0.0, "name": "x"})
        t1 = a.transaction().__enter__()
        t2 = b.transaction().__enter__()
        t1.add("t", 1, "balance", 1)
        result: list[BaseException | None] = []

        def second() -> None:
            try:
                t2.add("t", 1, "balance", 1)  # waits for t1, then loses (first updater wins)
                result.append(None)
            except BaseException as exc:  # noqa: BLE001
                result.append(exc)

        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.3)
        assert not result, "the second writer must wait for the first"
        t1.commit()
        waiter.join(10)
        assert result and isinstance(result[0], client.SerializationFailure)
    assert table_state(ep)[1]["balance"] == 1


class Writer(threading.Thread):
    """Random transactions; keeps the state every acknowledged commit implies, and the one in doubt."""

    def __init__(self, ep: str, model: dict[int, dict[str, Any]], seed: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.ep, self.model, self.rng, self.stop = ep, model, random.Random(seed), stop
        self.in_doubt: dict[int, dict[str, Any] | None] | None = None
        self.acked = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        conn = connect(self.ep, timeout=2)
        seq = 0
        while not self.stop.is_set():
            seq += 1
            changes: dict[int, dict[str, Any] | None] = {}
            try:
                tx = conn.transaction().__enter__()
                for _ in range(self.rng.randint(1, 4)):
                    key = self.rng.randrange(40)
                    current = changes[key] if key in changes else self.model.get(key)
                    if current is None:
                        row = {"balance": seq, "score": float(seq), "name": f"s{seq}"}
                        tx.insert("t", key, row)
                        changes[key] = row
                    elif self.rng.random() < 0.25:
                        tx.delete("t", key)
                        changes[key] = None
                    else:
                        tx.update("t", key, {"balance": seq, "name": f"u{seq}"})
                        changes[key] = {**current, "balance": seq, "name": f"u{seq}"}
                self.in_doubt = changes
                tx.commit()
            except MuheamError as exc:
                self.error = exc
                return  # the node died under us: stop; whatever was in doubt stays in doubt
            self.in_doubt = None
            self.acked += 1
            for key, row in changes.items():
                if row is None:
                    self.model.pop(key, None)
                else:
                    self.model[key] = row


def test_kill_9_under_write_load_loses_no_acknowledged_commit(local_cluster: Start) -> None:
    c = local_cluster(1)
    rounds = 60 if FULL else 6
    with connect(endpoint(c)) as conn:
        conn.create_table("t", COLUMNS)
    model: dict[int, dict[str, Any]] = {}
    rng = random.Random(2024)
    total_acked = 0
    for round_no in range(rounds):
        stop = threading.Event()
        writer = Writer(endpoint(c), model, round_no, stop)
        writer.start()
        time.sleep(rng.uniform(0.2, 1.2))
        pid = c.node_pid(1)
        assert pid
        os.kill(pid, signal.SIGKILL)
        writer.join(10)
        assert not writer.is_alive(), "a client of a dead node must not hang"
        assert isinstance(writer.error, client.NodeUnavailable), writer.error
        stop.set()
        assert wait_until(lambda: not pid_alive(pid), 5)
        total_acked += writer.acked
        c.cli("node", "start", "--node-id", "1", "--daemon", timeout=60)
        state = table_state(endpoint(c))
        if state != model:
            doubt = writer.in_doubt
            assert doubt is not None, f"round {round_no}: state differs from acknowledged commits"
            for key, row in doubt.items():
                if row is None:
                    model.pop(key, None)
                else:
                    model[key] = row
            assert state == model, f"round {round_no}: neither the acknowledged state nor it plus the commit in doubt"
    assert total_acked > rounds  # the load really ran
    assert "recovered" in c.log(1)


def test_corrupt_wal_byte_refuses_start_until_data_loss_is_accepted(local_cluster: Start) -> None:
    c = local_cluster(1)
    with connect(endpoint(c)) as conn:
        conn.create_table("t", COLUMNS)
        for k in range(200):
            with conn.transaction() as tx:
                tx.insert("t", k, {"balance": k, "score": 0.0, "name": "x" * 12})
    pid = c.node_pid(1)
    assert pid
    os.kill(pid, signal.SIGKILL)  # no shutdown checkpoint: redo must read the damaged part
    assert wait_until(lambda: not pid_alive(pid), 5)
    segment = sorted((Path(c.info["config"]["shared_dir"]) / "wal" / "node-1").glob("0*"))[0]
    size = segment.stat().st_size
    data = bytearray(segment.read_bytes())
    used = len(data.rstrip(b"\0"))
    offset = used // 2
    data[offset] ^= 0xFF
    segment.write_bytes(bytes(data))
    assert segment.stat().st_size == size
    proc = c.cli("node", "start", "--node-id", "1", "--daemon", check=False, timeout=90)
    assert proc.returncode != 0
    assert segment.name in proc.stderr and "offset" in proc.stderr, proc.stderr
    proc = c.cli("node", "start", "--node-id", "1", "--daemon", "--accept-data-loss", timeout=90)
    log = c.log(1)
    assert "lost" in log.lower() or "discard" in log.lower(), log[-2000:]
    state = table_state(endpoint(c))
    assert 0 < len(state) < 200  # what precedes the damage survives; what follows is gone, and said so


def test_malformed_client_requests_get_errors_and_change_nothing(local_cluster: Start) -> None:
    c = local_cluster(1)
    ep = endpoint(c)
    with connect(ep) as conn:
        conn.create_table("t", COLUMNS)
        with conn.transaction() as tx:
            for k in range(20):
                tx.insert("t", k, {"balance": k, "score": 1.0, "name": "ok"})
    before = table_state(ep)
    ctx: zmq.Context[Any] = zmq.Context()
    sock: zmq.Socket[Any] = client_dealer(ctx)  # an authenticated client sending garbage
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(ep)
    bad: list[Any] = [
        {"op": "get", "xid": 5, "table": "t", "key": "one"},
        {"op": "insert", "xid": "x", "table": "t", "key": 1, "row": [1, 2]},
        {"op": "begin", "extra": b"\0" * 100},
        {"op": "update", "table": 7, "key": 2**64 - 1},
        {"op": "create_table", "name": "bad name!", "columns": {"a": "int64"}},
        {"op": "create_table", "name": "u", "columns": {"a": "int65"}},
        {"op": "commit", "xid": 999999},
        {"op": "drop_everything"},
        [1, 2, 3],
        "just a string",
    ]
    rng = random.Random(1)
    frames = [msgpack.packb(b) for b in bad] + [bytes(rng.getrandbits(8) for _ in range(300)) for _ in range(5)]
    frames.append(msgpack.packb({"op": "insert", "row": {"name": "y" * (5 << 20)}}))  # huge
    for frame in frames:
        sock.send_multipart([b"", frame])
    replies = []
    while len(replies) < len(frames) - 1 and sock.poll(3000):  # 'begin' with an extra key is allowed
        replies.append(msgpack.unpackb(sock.recv_multipart()[-1]))
    sock.close(0)
    ctx.term()
    errors = [r for r in replies if not r["ok"]]
    assert len(errors) >= len(frames) - 2
    assert all(r["error"]["message"] for r in errors)
    assert table_state(ep) == before
    with connect(ep) as conn:
        assert [t["name"] for t in conn.tables()] == ["t"]


def test_a_paged_scan_returns_every_row_once_under_one_snapshot(local_cluster: Start) -> None:
    """A scan in pages (the client's default) crosses chains the other node holds and commits made between its
    pages: every row the snapshot sees comes exactly once, nothing committed after the snapshot does, and it
    equals the unpaged scan of the same transaction.  A bad page size is refused by name."""
    c = local_cluster(2)
    ep1, ep2 = endpoint(c, 1), endpoint(c, 2)
    with connect(ep1) as conn:
        conn.create_table("p", {"v": "int64"}, buckets=64)
        with conn.transaction() as tx:
            for k in range(-200, 300):
                tx.insert("p", k, {"v": k})
    with connect(ep2) as conn, conn.transaction() as tx:  # node 2 now holds some chains exclusively
        for k in range(0, 300, 3):
            tx.update("p", k, {"v": -k})
    expected = {k: {"v": -k if k >= 0 and k % 3 == 0 else k} for k in range(-200, 300)}
    with connect(ep1) as reader, connect(ep2) as writer:
        rtx = reader.transaction().__enter__()
        pages = rtx.scan("p", page_rows=7)
        got = [next(pages) for _ in range(20)]
        with writer.transaction() as wtx:  # between pages: a new key and a change, after the snapshot
            wtx.insert("p", 1000, {"v": 1})
            wtx.update("p", 299, {"v": 0})
        got += list(pages)
        keys = [k for k, _ in got]
        assert len(keys) == len(set(keys)) == len(expected)
        assert dict(got) == expected
        whole = {int(k): row for k, row in rtx._op("scan", table="p")}
        assert whole == expected
        # a page holds about page_rows rows (about 8 per chain here): it held all 64 chains' rows, since the
        # engine reads up to 256 chains per call and the page's size was checked only after each call
        first = rtx._op("scan", table="p", from_bucket=1, page_rows=7)
        assert 7 <= len(first["rows"]) < 60 and first["next"] is not None, (len(first["rows"]), first["next"])
        with pytest.raises(client.ClientError, match="page_rows must be an integer"):
            rtx._op("scan", table="p", from_bucket=1, page_rows=0)
        rtx.rollback()
    with connect(ep1) as conn, conn.transaction() as tx:
        after = dict(tx.scan("p", page_rows=50))
    assert after[1000] == {"v": 1} and after[299] == {"v": 0} and len(after) == len(expected) + 1


def test_a_scan_refused_after_an_ownership_wait_answers_and_the_node_serves_on(
        local_cluster: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unpaged scan that must first wait for the other node's chains is refused on its retry, which runs in
    a callback of the node's loop (failpoint ``sessions.scan_limit``: as if the table were over the limit).  The
    client gets the refusal by name at once, its transaction is rolled back, and the node keeps serving."""
    monkeypatch.setenv("MUHEAM_FAILPOINTS", "sessions.scan_limit@1=1*drop")
    c = local_cluster(2)
    ep1, ep2 = endpoint(c, 1), endpoint(c, 2)
    with connect(ep2) as conn:  # node 2 writes every chain: node 1's scan waits for it before its first row
        conn.create_table("q", {"v": "int64"}, buckets=8)
        with conn.transaction() as tx:
            for k in range(64):
                tx.insert("q", k, {"v": k})
    with connect(ep1, 5.0) as conn:
        tx = conn.transaction().__enter__()
        with pytest.raises(client.ClientError, match="exceeds") as refused:
            tx._op("scan", table="q")
        assert refused.value.code == "bad_request"
        assert conn.call("status")["counters"]["sessions"]["ownership_waits"] >= 1
        with conn.transaction() as tx2:
            assert dict(tx2.scan("q")) == {k: {"v": k} for k in range(64)}


def test_a_malformed_request_inside_a_transaction_ends_it_and_frees_its_rows(local_cluster: Start) -> None:
    """A key that is not an integer (or a bad page size) was refused without
    touching the transaction: the client took the error for its end, as for every other error, and so never
    sent a rollback, while the node kept it running with its row locks until the idle timeout; a writer of the
    same row on another node then ran into its 10 s lock timeout (a black-box test)."""
    c = local_cluster(2)
    ep1, ep2 = endpoint(c, 1), endpoint(c, 2)
    with connect(ep1, 10) as a, connect(ep2, 20) as b:
        a.create_table("q", {"v": "int64"})
        with a.transaction() as t:
            t.insert("q", 1, {"v": 1})
        bad_calls: list[Callable[[Any], Any]] = [lambda tx: tx.get("q", "1"), lambda tx: list(tx.scan("q", page_rows=0))]
        for bad in bad_calls:
            tx = a.transaction().__enter__()
            tx.update("q", 1, {"v": 2})
            with pytest.raises(client.ClientError) as err:
                bad(tx)
            assert "rolled back" in str(err.value), err.value
            assert tx.xid not in a.writers(), "the node kept the transaction running"
            t0 = time.monotonic()
            with b.transaction() as other:  # the row is free at once, not after the lock timeout
                other.update("q", 1, {"v": 3})
            assert time.monotonic() - t0 < 5
        with a.transaction() as t:
            assert t.get("q", 1) == {"v": 3}


def test_a_paged_scan_by_name_does_not_go_on_into_a_table_made_anew_under_that_name(local_cluster: Start) -> None:
    """A scan by name asked for each page by name: with the table dropped and made again between pages, it went
    on in the new table from the old one's position and returned some rows of the old table and not others,
    without an error (a black-box test)."""
    c = local_cluster(1)
    with connect(endpoint(c, 1), 10) as a, connect(endpoint(c, 1), 10) as b:
        a.create_table("e", {"v": "int64"}, buckets=4)
        with a.transaction() as t:
            for k in range(8):
                t.insert("e", k, {"v": k})
        reader = b.transaction().__enter__()
        pages = reader.scan("e", page_rows=1)
        first = next(pages)
        a.drop_table("e")
        a.create_table("e", {"v": "int64"}, buckets=4)
        with pytest.raises(client.NoSuchTable):
            rest = list(pages)
            raise AssertionError(f"the scan went on: {first} then {rest}")
