"""Prometheus metric families built from a node's published status snapshot.

Names follow Prometheus' conventions: the ``muheam_`` prefix, base units (seconds, bytes), ``_total`` on counters
(``prometheus_client`` adds it to a counter family's samples), and the labels ``cluster`` and ``node`` on every
sample; ``reason`` (abort) and ``kind`` (peer message) are the only other labels, each from a small fixed set, so
the series count per node stays bounded.  Counters restart at zero with the node process, as Prometheus expects
of a restarted target.
"""

from __future__ import annotations

import re
import time
from typing import Any, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily

LABELS = ["cluster", "node"]

# (name, help, section of status()["counters"], key): one counter each
_COUNTERS: tuple[tuple[str, str, str, str], ...] = (
    ("muheam_commits", "Transactions committed on this node.", "sessions", "commits"),
    ("muheam_commit_batches", "Commit rounds (a round commits a batch of transactions).", "sessions",
     "commit_batches"),
    ("muheam_begin_waits", "Begins that waited for the outcome of prepared transactions.", "sessions", "begin_waits"),
    ("muheam_row_lock_waits", "Row-lock waits on another transaction.", "sessions", "waits"),
    ("muheam_deadlocks", "Transactions chosen as a deadlock victim here.", "sessions", "deadlocks"),
    ("muheam_lock_requests", "Chain ownership requests (block locks) made by this node.", "ownership", "acquires"),
    ("muheam_lock_transfers", "Chain ownership grants that brought the chain's image from another node.",
     "ownership", "images_received"),
    ("muheam_chain_images_shipped", "Chain images this node shipped to the next owner.", "ownership", "images_sent"),
    ("muheam_lock_messages", "Lock-protocol messages sent.", "locks", "sent"),
    ("muheam_xid_allocations", "Global XID allocations (one per begin).", "xids", "allocations"),
    ("muheam_peer_retransmissions", "Peer frames sent again after no acknowledgement.", "peer", "retransmitted"),
    ("muheam_peer_acks_sent", "Acknowledgement-only peer frames sent.", "peer", "ack_sent"),
    ("muheam_peer_messages_received", "Peer messages delivered to a protocol.", "peer", "received"),
    ("muheam_client_requests", "Client-port requests served.", "client", "requests"),
    ("muheam_wal_fsyncs", "fsync calls on the WAL.", "wal", "fsyncs"),
    ("muheam_wal_records", "WAL records appended.", "wal", "records"),
    ("muheam_recoveries", "Dead peers this node recovered (as the recoverer).", "survivors", "recovered"),
    ("muheam_chains_repaired", "Chains of dead peers rebuilt on this node.", "survivors", "repaired_chains"),
)


def _snake(name: str) -> str:
    """``SerializationFailure`` -> ``serialization_failure`` (error class names as label values)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _num(section: dict[str, Any], key: str) -> float:
    value = section.get(key, 0)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def families(snap: dict[str, Any], cluster: str, now: float | None = None) -> Iterator[Metric]:
    """Every family for one snapshot (``now``: monotonic time, for the lease and staleness gauges)."""
    now = time.monotonic() if now is None else now
    node = str(snap.get("node_id", ""))
    lv = [cluster, node]
    counters: dict[str, dict[str, Any]] = snap.get("counters", {})

    def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
        g = GaugeMetricFamily(name, doc, labels=LABELS)
        g.add_metric(lv, value)
        return g

    for name, doc, section, key in _COUNTERS:
        c = CounterMetricFamily(name, doc, labels=LABELS)
        c.add_metric(lv, _num(counters.get(section, {}), key))
        yield c

    sessions = counters.get("sessions", {})
    aborts = CounterMetricFamily("muheam_aborts", "Transactions rolled back, by reason (the error that ended them; "
                                 "'rollback' for client rollbacks, idle and shutdown aborts).",
                                 labels=LABELS + ["reason"])
    reasons: dict[str, int] = snap.get("abort_reasons", {})
    for reason, n in sorted(reasons.items()):
        aborts.add_metric(lv + [_snake(reason)], float(n))
    aborts.add_metric(lv + ["rollback"], max(0.0, _num(sessions, "aborts") - sum(reasons.values())))
    yield aborts

    kinds: dict[str, list[int]] = snap.get("peer_kinds", {})
    msgs = CounterMetricFamily("muheam_peer_messages_sent", "Peer messages sent, by purpose (lock, image, round, gossip, read, ack, retransmit, ...).",
                               labels=LABELS + ["kind"])
    sent_bytes = CounterMetricFamily("muheam_peer_sent_bytes", "Bytes of peer messages sent, by purpose.",
                                     labels=LABELS + ["kind"])
    for kind, (count, nbytes) in sorted(kinds.items()):
        msgs.add_metric(lv + [kind], float(count))
        sent_bytes.add_metric(lv + [kind], float(nbytes))
    yield msgs
    yield sent_bytes

    wal = counters.get("wal", {})
    written = CounterMetricFamily("muheam_wal_written_bytes", "WAL bytes appended since the node started.",
                                  labels=LABELS)
    written.add_metric(lv, max(0.0, _num(wal, "end_lsn") - float(snap.get("wal_start_lsn", 0))))
    yield written
    yield gauge("muheam_wal_flushed_lsn_bytes", "WAL position flushed to disk (bytes into the node's WAL).",
                _num(wal, "flushed_lsn"))
    yield gauge("muheam_wal_end_lsn_bytes", "WAL position appended (bytes into the node's WAL).", _num(wal, "end_lsn"))
    yield gauge("muheam_lamport_clock", "The node's Lamport clock.", float(snap.get("lamport", 0)))
    yield gauge("muheam_epoch", "The node's membership epoch (bumped at every join).", float(snap.get("epoch", 0)))
    deadline = snap.get("fence_deadline")
    yield gauge("muheam_lease_remaining_seconds", "Seconds before the node fences itself unless its etcd lease is "
                "renewed (negative: past due).", float(deadline) - now if deadline is not None else 0.0)
    published = float(snap.get("published_at", now))
    yield gauge("muheam_snapshot_age_seconds", "Seconds since the event loop last published these numbers.",
                now - published)
    yield gauge("muheam_peers", "Peers connected on the mesh.", float(len(snap.get("peers", []))))
    yield gauge("muheam_transactions_open", "Transactions begun on this node and not ended yet.",
                _num(sessions, "open"))
    survivors = counters.get("survivors", {})
    yield gauge("muheam_dead_peers_unrecovered", "Dead peers whose recovery has not finished.",
                _num(survivors, "dead"))
    rec = SummaryMetricFamily("muheam_recovery_duration_seconds", "Recoveries of dead peers this node ran, and "
                              "their total duration.", labels=LABELS)
    rec.add_metric(lv, count_value=int(_num(survivors, "recovered")), sum_value=_num(survivors, "recovery_us") / 1e6)
    yield rec
    yield gauge("muheam_compiled_redo_loaded", "1 once the node loaded its compiled redo of a dead peer's pages "
                "(compiled in the background at the first start of an installation).",
                1.0 if snap.get("compiled_redo") else 0.0)
    up = GaugeMetricFamily("muheam_node_state", "1 for the node's current state.", labels=LABELS + ["state"])
    up.add_metric(lv + [str(snap.get("state", "unknown"))], 1.0)
    yield up


class SnapshotCollector:
    """A ``prometheus_client`` collector over the last published snapshot (``source()`` returns it)."""

    def __init__(self, source: Any, cluster: str) -> None:
        self.source = source
        self.cluster = cluster

    def collect(self) -> Iterable[Metric]:
        snap = self.source()
        if snap is None:
            return []
        return list(families(snap, self.cluster))

    def describe(self) -> Iterable[Metric]:
        return []  # no fixed description: the registry must call collect at every scrape
