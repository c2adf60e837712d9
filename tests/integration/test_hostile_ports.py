"""Hostile input on a node's peer, client and metrics ports that the other malformed-input tests did not cover,
found by an adversarial review with real node processes; every test here failed before its fix:

* one peer frame (a consistent-read request naming a table id above 2^32) stopped the node: the packing error
  was not taken for a malformed body;
* ``create_table`` with 2^24 buckets wrote 128 GiB of bucket pages in the node's loop (it answered nobody for
  minutes); a paged scan of an empty table with many chains walked them all in one turn, long enough for the
  peers to take the node for cut off;
* a second COMMIT of one transaction was answered "rolled back" while the first committed it;
* a metrics scraper that resets its connection left a traceback in the node's log per request, and one that sent
  half a request held the node's stop for as long as it stayed connected.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import time
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

import msgpack
import pytest
import zmq

from muheam.net import wire
from tests.support.cluster import LocalCluster, _started_dirs, kill_leftovers, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def pair2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Two nodes without CURVE (so a test may speak to the peer port as a made-up member), a 2 s lease."""
    directory = tmp_path_factory.mktemp("hostile") / "cluster"
    _started_dirs.append(directory)
    proc = run_cli("cluster", "up", "--nodes", "2", "--dir", str(directory), "--lease-ttl", "2", "--security",
                   "none", "--format", "json", timeout=180, check=False)
    if proc.returncode != 0:
        kill_leftovers(directory)
        raise AssertionError(f"cluster up failed:\n{proc.stdout}\n{proc.stderr}")
    c = LocalCluster(directory, json.loads(proc.stdout))
    try:
        yield c
    finally:
        c.down()


def pk(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def request(ctx: zmq.Context[Any], endpoint: str, obj: Any, timeout_ms: int = 3000) -> Any:
    """One request on a fresh plain DEALER; 'TIMEOUT' if no answer in time."""
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    try:
        s.send_multipart([b"", pk(obj)])
        if not s.poll(timeout_ms):
            return "TIMEOUT"
        return msgpack.unpackb(s.recv_multipart()[-1], raw=False, strict_map_key=False)
    finally:
        s.close()


def member(c: LocalCluster, node_id: int) -> dict[str, Any]:
    return next(m for m in c.members() if m["node_id"] == node_id)


def tracebacks(c: LocalCluster, node_id: int) -> int:
    log = c.log(node_id)
    return log.count("Traceback") + log.count("internal error")


def test_a_cr_request_naming_a_table_id_above_32_bits_is_a_malformed_body(pair2: LocalCluster) -> None:
    """``["q", rid, [[2**32, 0]]]`` from a made-up member: refused as malformed; the node answers on."""
    m = member(pair2, 1)
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        d = ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.LINGER, 1000)
        d.setsockopt(zmq.ROUTING_ID, b"n9e1")  # a made-up node 9, epoch 1, as tests/integration/test_malformed.py
        d.connect(m["peer_endpoint"])
        d.send(wire.encode_peer(9, 1, 5, "cr", ["q", 1, [[2**32, 0]]], dest_epoch=int(m["epoch"]), seq=1))
        time.sleep(1.0)
        d.close()
        answer = request(ctx, m["client_endpoint"], {"op": "ping"})
    finally:
        ctx.term()
    assert answer != "TIMEOUT", "node 1 stopped answering after one hostile 'cr' peer frame:\n" + pair2.log(1)[-600:]
    assert tracebacks(pair2, 1) == 0


def test_create_table_is_refused_more_chains_than_it_can_make_in_a_turn(pair2: LocalCluster) -> None:
    """``buckets`` 2^24 (and an ``expected_rows`` that would size that many) no longer stall the loop: the first is
    refused at once (SchemaError naming the bound), the second gets the bound's chains."""
    ep = member(pair2, 1)["client_endpoint"]
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        t0 = time.monotonic()
        huge = request(ctx, ep, {"op": "create_table", "name": "huge", "columns": {"a": "int64"}, "buckets": 1 << 24},
                       timeout_ms=10000)
        sized = request(ctx, ep, {"op": "create_table", "name": "sized", "columns": {"a": "int64"},
                                  "expected_rows": 1 << 62}, timeout_ms=30000)
        tables = request(ctx, ep, {"op": "tables"})
        waited = time.monotonic() - t0
    finally:
        ctx.term()
    assert huge != "TIMEOUT" and not huge["ok"] and huge["error"]["code"] == "SchemaError", huge
    assert "16384" in huge["error"]["message"]
    assert sized != "TIMEOUT" and sized["ok"], sized
    assert {t["name"]: t["buckets"] for t in tables["result"]}["sized"] == 1 << 14
    assert waited < 30


def test_a_page_of_an_empty_wide_table_ends_after_so_many_chains(pair2: LocalCluster) -> None:
    """A paged scan with ``page_rows: 1`` of an empty table of 16,384 chains: each page ends after at most
    ``MAX_PAGE_CHAINS`` chains (it walked them all in one turn), the loop answers meanwhile, and the pages together
    cover the table; node 2 stays a member."""
    before = {m["node_id"]: m for m in pair2.members()}
    ep1 = before[1]["client_endpoint"]
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        made = request(ctx, ep1, {"op": "create_table", "name": "wide", "columns": {"a": "int64"},
                                  "buckets": 1 << 14}, timeout_ms=60000)
        assert made != "TIMEOUT" and made["ok"], made
        xid = request(ctx, ep1, {"op": "begin"})["result"]["xid"]
        pages, at = 0, 1
        while at is not None and pages < 100:
            t0 = time.monotonic()
            page = request(ctx, ep1, {"op": "scan", "xid": xid, "table": "wide", "from_bucket": at, "page_rows": 1},
                           timeout_ms=30000)
            assert page != "TIMEOUT" and page["ok"] and page["result"]["rows"] == [], page
            assert time.monotonic() - t0 < 2.0
            nxt = page["result"]["next"]
            assert nxt is None or at < nxt <= at + 1024
            at, pages = nxt, pages + 1
        assert at is None and pages >= 16
    finally:
        ctx.term()
    after = {m["node_id"]: m for m in pair2.members()}
    assert set(after) == {1, 2} and after[2]["epoch"] == before[2]["epoch"], pair2.log(2)[-800:]


def test_a_second_commit_of_a_transaction_is_refused_not_answered_rolled_back(pair2: LocalCluster) -> None:
    """Two pipelined ``commit`` requests for one XID: the first commits, the second is a ``bad_request`` saying a
    COMMIT is under way (it was "rolled back before it could commit", of a transaction that committed).  Node 2
    is paused meanwhile, so the first commit's round waits and the second meets it under way (a CI run under load
    read the second request only after the first had finished: ``NoSuchTransaction``, also a refusal, but not the
    case this test is for)."""
    ep = member(pair2, 1)["client_endpoint"]
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        assert request(ctx, ep, {"op": "create_table", "name": "dup", "columns": {"a": "int64"}})["ok"]
        xid = request(ctx, ep, {"op": "begin"})["result"]["xid"]
        assert request(ctx, ep, {"op": "insert", "xid": xid, "table": "dup", "key": 1, "row": {"a": 1}})["ok"]
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(ep)
        p2 = pair2.node_pid(2)
        assert p2
        os.kill(p2, signal.SIGSTOP)  # (well inside its 2 s lease)
        try:
            s.send_multipart([b"", pk({"op": "commit", "xid": xid})])
            s.send_multipart([b"", pk({"op": "commit", "xid": xid})])
            replies = [msgpack.unpackb(s.recv_multipart()[-1])] if s.poll(5000) else []  # the refusal, at once
        finally:
            os.kill(p2, signal.SIGCONT)
        replies += [msgpack.unpackb(s.recv_multipart()[-1])] if s.poll(5000) else []  # the commit, after the round
        s.close()
        reader = request(ctx, ep, {"op": "begin"})["result"]["xid"]
        row = request(ctx, ep, {"op": "get", "xid": reader, "table": "dup", "key": 1})
    finally:
        ctx.term()
    assert row["result"] == {"a": 1}  # it did commit
    assert [r["ok"] for r in replies] == [False, True], replies
    refused = replies[0]
    assert refused["error"]["code"] == "bad_request" and "under way" in refused["error"]["message"], refused


def _metrics_addr(c: LocalCluster, node_id: int) -> tuple[str, int]:
    url = urlparse(member(c, node_id)["metrics_endpoint"])
    assert url.hostname and url.port
    return url.hostname, url.port


def test_a_scraper_that_resets_its_connection_leaves_no_traceback(pair2: LocalCluster) -> None:
    addr = _metrics_addr(pair2, 1)
    before = tracebacks(pair2, 1)
    for _ in range(5):
        s = socket.create_connection(addr, timeout=2)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        s.close()
    time.sleep(1.0)
    assert tracebacks(pair2, 1) == before, pair2.log(1)[-1500:]


def test_half_a_request_does_not_hold_the_node_stop(local_cluster: Callable[..., LocalCluster]) -> None:
    """A probe that sent half a request line: the node still stops at SIGTERM within the request timeout (its
    stop answers every probe already connected, and waited for this one for as long as it stayed)."""
    c = local_cluster(1, security="none")
    addr = _metrics_addr(c, 1)
    pid = c.node_pid(1)
    assert pid is not None
    slow = socket.create_connection(addr, timeout=2)
    try:
        slow.sendall(b"GET /health HTTP/1.1\r\n")
        time.sleep(0.5)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        alive = True
        while alive and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
                time.sleep(0.2)
            except ProcessLookupError:
                alive = False
    finally:
        slow.close()
    assert not alive, "node 1 did not stop within 15 s of SIGTERM while an idle HTTP connection was open:\n" + \
        c.log(1)[-400:]
