"""``muheam bench lock``: a lock bouncing between two nodes, against a plain ZeroMQ round trip.

``reacquire_msgs``: messages the cluster sends when the owner takes its cached lock again (goal 0).
``transfer_p50_us``: from the request on one node to its grant, when the lock is cached on the other node,
measured inside the requesting node (the client hop is not part of the protocol).  ``transfer_msgs``: messages
the cluster sends per transfer.  The same figures with ``security = "none"`` are under ``nosec``
(``transfer_p50_us_nosec``): the price of CURVE on the peer links.
"""

from __future__ import annotations

from typing import Any

from muheam.bench.harness import lock_messages, percentile, temp_cluster
from muheam.bench.zmqrtt import measure_rtt_us
from muheam.client import request


def run(transfers: int = 500, reacquires: int = 200) -> dict[str, Any]:
    """With CURVE (the default) and, as ``nosec``, with ``security = "none"``: what encryption costs a transfer."""
    result = _run(transfers, reacquires, "curve")
    nosec = _run(transfers, reacquires, "none")
    result["security"] = "curve"
    result["nosec"] = nosec
    result["transfer_p50_us_nosec"] = nosec["transfer_p50_us"]
    return result


def _run(transfers: int, reacquires: int, security: str) -> dict[str, Any]:
    rtt = measure_rtt_us()
    with temp_cluster(2, security=security) as eps:
        a, b = eps[1], eps[2]
        resource = b"bench/bounce"
        request(a, "lock_cycle", resource=resource)
        before = lock_messages(eps)
        for _ in range(reacquires):
            request(a, "lock_cycle", resource=resource)
        reacquire_msgs = (lock_messages(eps) - before) / reacquires
        waits: list[float] = []
        before = lock_messages(eps)
        for i in range(transfers):
            waits.append(float(request(b if i % 2 == 0 else a, "lock_cycle", resource=resource)["wait_us"]))
        transfer_msgs = (lock_messages(eps) - before) / transfers
    return {
        "reacquire_msgs": reacquire_msgs,
        "transfer_p50_us": round(percentile(waits, 0.5), 1),
        "transfer_p99_us": round(percentile(waits, 0.99), 1),
        "transfer_msgs": transfer_msgs,
        "zmq_rtt_us": round(rtt, 1),
        "transfers": transfers,
    }
