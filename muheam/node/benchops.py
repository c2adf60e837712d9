"""Client-port requests that exist for benchmarks and tests only (``bench lock``): kept out of the agent so that
its module reads as the node's lifecycle."""

from __future__ import annotations

import time
from typing import Any

from locking.effects import Granted
from locking.messages import Mode
from muheam.cluster.locks import LockService
from muheam.net.clientport import Deferred, RequestError


def lock_cycle(locks: LockService | None, request: dict[str, Any]) -> Deferred:
    """Take a ``bench/...`` lock exclusively and release it (ownership stays cached); the reply says how long the
    grant took and how many messages the requester sent for it."""
    assert locks is not None
    resource = request.get("resource")
    if not isinstance(resource, bytes) or not resource.startswith(b"bench/") or len(resource) > 64:
        raise RequestError("bad_request", "resource must be bytes starting with b'bench/' (at most 64)")
    reply = Deferred()
    t0 = time.perf_counter_ns()
    sent0 = locks.counters["sent"]

    def granted(grant: Granted) -> None:
        locks.release(resource)
        reply.resolve({"wait_us": (time.perf_counter_ns() - t0) // 1000, "valid": grant.valid,
                       "sent_by_requester": locks.counters["sent"] - sent0})

    locks.acquire(resource, Mode.EXCLUSIVE, granted)
    return reply

