"""``muheam.obs``: the metric families from a snapshot, parsed back by prometheus_client, and the health checks
(each 200 or 503 for the right reason), served by the real HTTP server on a free loopback port."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from muheam.obs.metrics import families
from muheam.obs.server import ObsServer, _reasons
from muheam.ops.procs import free_port

SNAP = {"node_id": 2, "state": "running", "epoch": 5, "lamport": 77, "lease_ttl": 2, "synced": True,
        "recovering": [], "peers": [1, 3], "abort_reasons": {"SerializationFailure": 3},
        "peer_kinds": {"tx": [10, 400], "lock": [4, 80]}, "wal_start_lsn": 100,
        "counters": {"sessions": {"commits": 9, "aborts": 5}, "wal": {"end_lsn": 1100, "flushed_lsn": 1000},
                     "survivors": {"recovered": 1, "recovery_us": 250_000}}}


def test_families_follow_the_conventions_and_parse_back() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    class One:
        def collect(self):  # type: ignore[no-untyped-def]
            return list(families({**SNAP, "published_at": time.monotonic()}, "c1"))

    reg = CollectorRegistry(auto_describe=False)
    reg.register(One())  # type: ignore[arg-type]
    text = generate_latest(reg).decode()
    samples = {(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("cluster", "node")))): s
               for f in text_string_to_metric_families(text) for s in f.samples}
    for s in samples.values():
        assert s.name.startswith("muheam_") and s.labels["cluster"] == "c1" and s.labels["node"] == "2"
    assert samples[("muheam_commits_total", ())].value == 9
    assert samples[("muheam_aborts_total", (("reason", "serialization_failure"),))].value == 3
    assert samples[("muheam_aborts_total", (("reason", "rollback"),))].value == 2
    assert samples[("muheam_peer_sent_bytes_total", (("kind", "tx"),))].value == 400
    assert samples[("muheam_wal_written_bytes_total", ())].value == 1000
    assert samples[("muheam_recovery_duration_seconds_sum", ())].value == 0.25


def test_health_reasons() -> None:
    now = 100.0
    snap = {**SNAP, "published_at": 99.9}
    ok = _reasons(snap, deadline=101.0, fenced=None, now=now)
    assert ok["health"] == ok["liveness"] == ok["readiness"] == []
    past = _reasons(snap, deadline=99.0, fenced=None, now=now)
    assert past["liveness"] and "lease past due" in past["liveness"][0] and past["readiness"]
    stale = _reasons({**snap, "published_at": 90.0}, deadline=101.0, fenced=None, now=now)
    assert "event loop" in stale["liveness"][0] and stale["health"]
    recovering = _reasons({**snap, "recovering": [3]}, deadline=101.0, fenced=None, now=now)
    assert recovering["liveness"] == [] and "recovering" in recovering["readiness"][0]
    assert _reasons({**snap, "synced": False}, 101.0, None, now)["readiness"]
    assert _reasons({**snap, "state": "starting"}, 101.0, None, now)["health"]
    assert "fenced" in _reasons(snap, 101.0, "lease gone", now)["liveness"][0]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_server_answers_and_closes_with_the_final_state() -> None:
    deadline = [time.monotonic() + 10]
    server = ObsServer(f"http://127.0.0.1:{free_port()}", "c1", lambda: (deadline[0], None))
    server.publish(SNAP)
    server.start()
    try:
        base = server.endpoint
        assert _get(base + "/readiness")[0] == 200
        assert "muheam_commits_total" in _get(base + "/metrics")[1]
        assert _get(base + "/nope")[0] == 404
        deadline[0] = time.monotonic() - 1
        status, body = _get(base + "/liveness")
        assert status == 503 and json.loads(body)["reasons"]
    finally:
        server.close({**SNAP, "state": "fenced"})
