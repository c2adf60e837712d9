"""The Python client without a cluster: endpoint checks, int64 range checks, a refused connection fails fast."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import zmq

from muheam.client import ClientTransaction, Connection, NodeUnavailable, ValueOutOfRange, connect, request
from muheam.net import wire
from muheam.ops.procs import free_port


def test_connect_without_tcp_scheme_says_so() -> None:
    with pytest.raises(ValueError, match=r"needs tcp://.*'tcp://127\.0\.0\.1:8001'"):
        connect("127.0.0.1:8001")
    with pytest.raises(ValueError, match="tcp://"):
        connect("tcp://127.0.0.1")  # no port


def test_closed_port_is_node_unavailable_within_a_second() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(NodeUnavailable, match=f"{endpoint} refused the connection"):
        with connect(endpoint, timeout=20) as conn:
            conn.tables()
    assert time.monotonic() - t0 < 1.0
    t0 = time.monotonic()
    with pytest.raises(NodeUnavailable, match="refused"):
        request(endpoint, "status", timeout=20)
    assert time.monotonic() - t0 < 1.0


def test_silent_peer_is_node_unavailable_after_the_timeout_and_a_reply_still_comes_through() -> None:
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    try:
        with pytest.raises(NodeUnavailable, match="did not answer 'status' within 0.3 s"):
            request(f"tcp://127.0.0.1:{port}", "status", timeout=0.3)
        while router.poll(0):
            router.recv_multipart()

        def answer() -> None:
            ident, empty, _ = router.recv_multipart()
            router.send_multipart([ident, empty, wire.reply_ok({"hello": 1})])

        thread = threading.Thread(target=answer)
        thread.start()
        assert request(f"tcp://127.0.0.1:{port}", "status", timeout=5) == {"hello": 1}
        thread.join()
    finally:
        router.close(0)


@pytest.mark.parametrize("call", [
    lambda tx: tx.get("t", 1 << 63),
    lambda tx: tx.insert("t", -(1 << 63) - 1, {"v": 1}),
    lambda tx: tx.insert("t", 1, {"balance": 1 << 64}),
    lambda tx: tx.update("t", 1, {"balance": -(1 << 70)}),
    lambda tx: tx.add("t", 1, "balance", 1 << 63),
    lambda tx: tx.delete("t", 1 << 80),
])
def test_int64_out_of_range_is_a_clear_value_error_before_sending(call: Any) -> None:
    conn = Connection(f"tcp://127.0.0.1:{free_port()}")
    tx = ClientTransaction(conn)
    tx.xid = 1
    with pytest.raises(ValueOutOfRange, match=r"out of the int64 range \(-9223372036854775808 \.\. "
                                              r"9223372036854775807\)") as info:
        call(tx)
    assert isinstance(info.value, ValueError)
    assert "key" in str(info.value) or "balance" in str(info.value)
    assert conn._req is None  # nothing was sent
