"""Reading a node's metrics from outside (``muheam top``, ``muheam demo``, ``muheam bench bank -c``): one scrape
parsed with ``prometheus_client``'s own text parser, and per-second rates between two scrapes."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


@dataclass
class Sample:
    """One scrape of one node: every sample summed over its labels but ``cluster`` and ``node`` (so
    ``muheam_aborts_total`` is all reasons), the state, and the health answers."""

    endpoint: str
    at: float
    values: dict[str, float] = field(default_factory=dict)
    state: str = "stopped"
    error: str = ""
    health: dict[str, int] = field(default_factory=dict)

    def get(self, name: str) -> float:
        return self.values.get(name, 0.0)


def _get(url: str, timeout: float) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(endpoint: str, timeout: float = 2.0, health: bool = True) -> Sample:
    """Scrape ``endpoint`` (``http://HOST:PORT``); a node that does not answer is a sample in state ``stopped``
    with the error, never an exception."""
    sample = Sample(endpoint, time.monotonic())
    try:
        status, text = _get(endpoint + "/metrics", timeout)
        if status != 200:
            raise OSError(f"/metrics answered HTTP {status}")
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "muheam_node_state" and s.value == 1:
                    sample.state = s.labels.get("state", "unknown")
                    continue
                sample.values[s.name] = sample.values.get(s.name, 0.0) + float(s.value)
        if health:
            for path in ("health", "liveness", "readiness"):
                sample.health[path] = _get(f"{endpoint}/{path}", timeout)[0]
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        sample.state, sample.error = "stopped", f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
    return sample


RATES = (("commits_per_s", "muheam_commits_total", 1.0), ("aborts_per_s", "muheam_aborts_total", 1.0),
         ("lock_transfers_per_s", "muheam_lock_transfers_total", 1.0),
         ("messages_per_s", "muheam_peer_messages_sent_total", 1.0),
         ("wal_mb_per_s", "muheam_wal_written_bytes_total", 1e-6))


def rates(a: Sample, b: Sample) -> dict[str, Any]:
    """Per-second rates from ``a`` to ``b`` (same node), plus ``b``'s gauges; None where either is missing."""
    dt = b.at - a.at
    up = a.state != "stopped" and b.state != "stopped" and dt > 0
    out: dict[str, Any] = {}
    for key, name, scale in RATES:
        # a counter that went down is a restarted node: no rate for this interval
        delta = b.get(name) - a.get(name)
        out[key] = round(delta * scale / dt, 3) if up and delta >= 0 else None
    live = b.state != "stopped"
    out.update({
        "state": b.state, "epoch": int(b.get("muheam_epoch")) if live else None,
        "lease_ttl_left_s": round(b.get("muheam_lease_remaining_seconds"), 3) if live else None,
        "lamport": int(b.get("muheam_lamport_clock")) if live else None,
        "commits_total": int(b.get("muheam_commits_total")) if live else None,
        "health": b.health or None, "error": b.error or None,
    })
    return out
