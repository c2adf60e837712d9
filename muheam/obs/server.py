"""The node's HTTP endpoint: Prometheus ``/metrics`` and Patroni-style health checks, served from a thread.

``/health``: 200 while the node serves (state running, event loop turning); ``/liveness``: 200 while its lease
is fresh (the fence deadline, renewed by the lease keeper, not passed) and its event loop turned within a lease
TTL; ``/readiness``: 200 when it is a running member, synced (every member it knows from etcd connected on the
mesh) and not recovering (no dead peer whose recovery is unfinished).  Otherwise 503.  Each answers a small JSON
object saying why, as Patroni's do.

The handler reads only what the loop published (:meth:`ObsServer.publish`) and the fence deadline (a float the
lease keeper writes), never the loop's live state, so a scrape cannot race the loop and a stuck loop cannot block
a scrape: it shows as a snapshot growing old.  Closing the server answers every connection already waiting (a
probe sent while the process was stopped) with the final state, then stops listening.
"""

from __future__ import annotations

import json
import logging
import select
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import urlparse

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from muheam.obs.metrics import SnapshotCollector

log = logging.getLogger("muheam.obs")

HEALTH_PATHS = ("/health", "/liveness", "/readiness")


def _reasons(snap: dict[str, Any] | None, deadline: float | None, fenced: str | None, now: float) -> dict[str, Any]:
    """What each check says for ``snap`` now: ``{check: [why not, ...]}`` (empty list: passes) plus the numbers."""
    if snap is None:
        return {"health": ["starting"], "liveness": ["starting"], "readiness": ["starting"], "state": "starting"}
    state = str(snap.get("state", "unknown"))
    ttl = float(snap.get("lease_ttl", 10))
    age = now - float(snap.get("published_at", now))
    remaining = None if deadline is None else deadline - now
    loop: list[str] = [f"event loop has not turned for {age:.1f} s"] if age > ttl else []
    live = list(loop)
    if fenced:
        live.append(f"fenced: {fenced}")
    elif remaining is not None and remaining <= 0:
        live.append(f"lease past due by {-remaining:.1f} s (not renewed)")
    health = ([] if state == "running" else [f"state {state}"]) + loop + ([f"fenced: {fenced}"] if fenced else [])
    ready = list(health) + [r for r in live if r not in health]
    if not snap.get("synced", False):
        ready.append("not synced with every member")
    if snap.get("recovering"):
        ready.append(f"recovering dead peer(s) {snap['recovering']}")
    return {"health": health, "liveness": live, "readiness": ready, "state": state,
            "lease_remaining_s": None if remaining is None else round(remaining, 3),
            "snapshot_age_s": round(age, 3), "epoch": snap.get("epoch"), "node_id": snap.get("node_id")}


REQUEST_TIMEOUT = 5.0
"""Seconds a connection may take to send its request: a stop joins the request threads (every probe that came
is answered), and one idle connection held the node stopping, its lease taken, for as long as it stayed open."""


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that resets mid-request is its own business (it got a traceback in the node's log per
        request); anything else is logged, without the traceback socketserver prints on stderr."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        log.warning("metrics/health request from %s failed: %s: %s", client_address, type(exc).__name__, exc)


class ObsServer:
    """Serves one node's metrics and health on ``http://HOST:PORT``; bound at construction (a taken port fails the
    node's start), serving once :meth:`start` runs."""

    def __init__(self, endpoint: str, cluster: str, lease_deadline: Callable[[], tuple[float, str | None]]) -> None:
        """``lease_deadline()``: the fence's (monotonic deadline, reason it fenced or None), read per request."""
        parsed = urlparse(endpoint)
        self.endpoint = endpoint
        self._snap: dict[str, Any] | None = None
        self._lease = lease_deadline
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(lambda: self._snap, cluster))
        owner = self

        class Handler(BaseHTTPRequestHandler):
            timeout = REQUEST_TIMEOUT  # (a client that sends half a request must not hold the node's stop)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                owner._handle(self)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - scrapes are not worth a log line
                return

        self.httpd = _Server((parsed.hostname or "127.0.0.1", int(parsed.port or 0)), Handler)
        self.httpd.daemon_threads = False
        self.httpd.block_on_close = True
        self._thread: threading.Thread | None = None

    def publish(self, snap: dict[str, Any]) -> None:
        """Called by the event loop: the snapshot every later request reads (one reference swap)."""
        self._snap = {**snap, "published_at": time.monotonic()}

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="metrics-http", daemon=True)
        self._thread.start()

    def checks(self) -> dict[str, Any]:
        try:
            deadline, fenced = self._lease()
        except Exception:  # noqa: BLE001 - before the lease exists
            deadline, fenced = None, None
        return _reasons(self._snap, deadline, fenced, time.monotonic())

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        path = urlparse(req.path).path.rstrip("/") or "/"
        if path == "/metrics":
            encoder, content_type = choose_encoder(req.headers.get("Accept", ""))
            body, status = encoder(self.registry), 200
        elif path in HEALTH_PATHS:
            checks = self.checks()
            failed = checks[path[1:]]
            status = 503 if failed else 200
            body = json.dumps({"status": "fail" if failed else "ok", "reasons": failed,
                               **{k: v for k, v in checks.items() if k not in ("health", "liveness", "readiness")}}
                              ).encode()
            content_type = "application/json"
        else:
            body, status, content_type = b"not found: try /metrics, /health, /liveness, /readiness\n", 404, \
                "text/plain"
        try:
            req.send_response(status)
            req.send_header("Content-Type", content_type)
            req.send_header("Content-Length", str(len(body)))
            req.end_headers()
            req.wfile.write(body)
        except OSError:  # the client went (a reset, a closed socket): nothing to answer, nothing to log
            req.close_connection = True

    def close(self, final: dict[str, Any] | None = None) -> None:
        """Stop serving: publish ``final`` (e.g. state fenced), answer every connection already waiting, close."""
        if final is not None:
            self.publish(final)
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        sock = self.httpd.socket
        for _ in range(64):  # bounded: the probes that queued while we were stopped, not a new stream
            if not select.select([sock], [], [], 0)[0]:
                break
            self.httpd.timeout = 0
            self.httpd.handle_request()
        self.httpd.server_close()  # joins the request threads (block_on_close)
