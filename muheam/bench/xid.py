"""``muheam bench xid``: global XID allocation on real nodes, against a plain ZeroMQ round trip.

* ``xids_per_s``: cluster-wide XIDs per second with one pipelining client process per node asking for
  ``per_request`` XIDs per request (reported in the output); nodes take adaptive ranges of the counter.
* ``p50_us``/``p99_us``: a single unbatched allocation (count 1) where the ``xid`` lock must move from another
  node (allocations alternate between nodes), timed inside the node from request to XID, so the client hop is not
  counted.  ``msgs_per_alloc``: lock messages per allocation during the throughput phase.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

import zmq

from muheam.net import wire
from muheam.bench.harness import lock_messages, percentile, temp_cluster
from muheam.bench.zmqrtt import measure_rtt_us
from muheam.client import NodeUnavailable, request
from muheam.security.setup import resolve_client
from muheam.security.sockets import client_socket


def _load(endpoint: str, seconds: float, per_request: int, window: int,
          out: "mp.Queue[tuple[int, int, int]]") -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    # the cluster's client key (MUHEAM_CLIENT_KEY, set by temp_cluster): without it a CURVE node answers nothing
    sock: zmq.Socket[Any] = client_socket(ctx, zmq.DEALER, resolve_client())
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    frame = wire.pack({"op": "xid", "count": per_request})
    outstanding = xids = requests = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or outstanding:
        while outstanding < window and time.monotonic() < deadline:
            sock.send_multipart([b"", frame])
            outstanding += 1
        if not sock.poll(5000):
            break  # the node went silent: reported by run() as an error, not as a low rate
        reply = wire.unpack(sock.recv_multipart()[-1], wire.MAX_CLIENT_FRAME)
        outstanding -= 1
        if reply.get("ok"):
            requests += 1
            xids += sum(count for _, count in reply["result"]["ranges"])
    out.put((xids, requests, outstanding))
    sock.close(0)
    ctx.term()


def run(nodes: int = 3, seconds: float = 5.0, per_request: int = 16, window: int = 64,
        samples: int = 400) -> dict[str, Any]:
    rtt = measure_rtt_us()
    with temp_cluster(nodes) as eps:
        ids = sorted(eps)
        waits: list[float] = []
        request(eps[ids[0]], "xid", count=1)
        for i in range(samples):
            waits.append(float(request(eps[ids[(i + 1) % len(ids)]], "xid", count=1)["wait_us"]))

        before = lock_messages(eps)
        out: mp.Queue[tuple[int, int, int]] = mp.Queue()
        procs = [mp.Process(target=_load, args=(eps[n], seconds, per_request, window, out)) for n in ids]
        t0 = time.monotonic()
        for p in procs:
            p.start()
        results = [out.get(timeout=seconds + 60) for _ in procs]
        elapsed = time.monotonic() - t0
        for p in procs:
            p.join(timeout=10)
        msgs = lock_messages(eps) - before
    silent = sum(r[2] for r in results)
    if silent:
        raise NodeUnavailable(f"bench xid: {silent} requests of the throughput phase got no answer within 5 s; "
                              "see the node logs (muheam logs) for why, then run it again")
    xids = sum(r[0] for r in results)
    allocations = sum(r[1] for r in results)
    return {
        "nodes": nodes,
        "xids_per_s": round(xids / elapsed),
        "p50_us": round(percentile(waits, 0.5), 1),
        "p99_us": round(percentile(waits, 0.99), 1),
        "msgs_per_alloc": round(msgs / max(1, allocations), 4),
        "zmq_rtt_us": round(rtt, 1),
        "per_request": per_request,
        "allocations_per_s": round(allocations / elapsed),
    }
