"""TCP resets between nodes under the bank load (issue 16, item 3: a lost peer message must not stall the cluster).

Node 3's peer traffic, both directions, goes through TCP proxies in the test process (``ProxiedNode`` of
tests/faults/test_faults.py).  ``TcpProxy.reset()`` aborts the connections with an RST on both ends: ZeroMQ reconnects by
itself, but the frames that were in the dead connections are gone, and before the mesh's links had sequence
numbers and retransmission a lock or commit round then waited for ever for a message that would never come.

Checked after every reset: every node gets commits acknowledged again within a few seconds.  After the load: bank
sums were 0, every acknowledged insert is on every node, the nodes agree on every table, no round is left open and
no XID prepared without outcome, and ``walmerge.verify`` accepts the whole run's WAL.

CI form: four resets of every peer connection in about half a minute.  ``MUHEAM_FULL=1``: more resets, of random
subsets of the connections, at random moments (some before ZeroMQ has even reconnected).
"""

from __future__ import annotations

import json
import random
import time
from typing import Any, Callable

import pytest

from muheam.client import request
from muheam.errors import MuheamError
from tests.support.cluster import FULL, LocalCluster
from tests.support.faults import Load, check_round, final_verify, setup_tables, wait_for
from tests.integration.test_cluster_recovery import endpoints
from tests.faults.test_faults import NODES, ProxiedNode, acked_progress

pytestmark = pytest.mark.integration

RESETS = 20 if FULL else 4
RECOVER_S = 10.0  # "within a few seconds": generous for two shared cores


def open_work(c: LocalCluster) -> dict[int, dict[str, Any]]:
    """Per node: commit rounds still waiting for acknowledgements and XIDs prepared without a known outcome."""
    return {int(m["node_id"]): {k: m["counters"]["commits"].get(k) for k in ("rounds_open", "prepared_now")}
            for m in c.members() if m.get("answering")}


def link_counters(c: LocalCluster) -> dict[int, dict[str, int]]:
    keys = ("retransmitted", "rto_expired", "redialed", "duplicate", "held_back", "ack_sent", "send_deferred", "sent")
    return {int(m["node_id"]): {k: int(m["counters"]["peer"].get(k, 0)) for k in keys}
            for m in c.members() if m.get("answering")}


def links(eps: list[str]) -> dict[int, Any]:
    """Each node's view of its links (sequence numbers, acknowledgements, held frames): what a stall looks like."""
    out = {}
    for n, ep in enumerate(eps, 1):
        try:
            out[n] = request(ep, "status", timeout=2).get("links")
        except MuheamError as e:
            out[n] = str(e)
    return out


@pytest.mark.timeout(900 if FULL else 240)
def test_peer_connections_reset_under_load_lose_nothing_and_stall_nothing(
        local_cluster: Callable[..., LocalCluster]) -> None:
    c = local_cluster(2)
    node = ProxiedNode(c)
    seed = int(time.time()) if FULL else 16
    rng = random.Random(seed)
    resets: list[dict[str, Any]] = []
    try:
        node.start()
        eps = endpoints(c)
        assert len(eps) == 3
        setup_tables(eps[0])
        load = Load(eps, 60 if FULL else 14, seed=700, base=10_000_000).start()
        time.sleep(2)
        for i in range(RESETS):
            proxies = node.peer_proxies()
            if FULL:
                proxies = rng.sample(proxies, rng.randint(1, len(proxies)))
            count = sum(p.reset() for p in proxies)
            if FULL and rng.random() < 0.3:  # again, before or while ZeroMQ reconnects
                time.sleep(rng.uniform(0.0, 0.15))
                count += sum(p.reset() for p in proxies)
            assert count > 0, "the proxies had no connection to reset"
            # every node serves again: the frames lost in the reset are resent, the rounds complete
            try:
                ack_ms = {n: acked_progress(load, (n,), RECOVER_S) for n in NODES}
            except AssertionError as e:
                raise AssertionError(f"after reset {i}: {e}; open work {open_work(c)}; "
                                     f"link counters {link_counters(c)}; links {links(eps)}") from None
            resets.append({"reset": i, "connections": count, "first_ack_ms": ack_ms})
            time.sleep(rng.uniform(0.1, 2.0) if FULL else 0.5)
        res = load.finish()
        # nothing is left waiting: every round acknowledged, every prepared XID decided, on every node
        assert wait_for(lambda: all(v == {"rounds_open": 0, "prepared_now": 0} for v in open_work(c).values())
                        and len(open_work(c)) == 3, RECOVER_S, 0.2), open_work(c)
        counters = link_counters(c)
        summary = check_round(c, load.acked, res, "peer resets")
        print(f"\npeer resets (seed {seed}): {json.dumps({'resets': resets, 'links': counters, **summary})}")
        final_verify(c)
    finally:
        node.close()
