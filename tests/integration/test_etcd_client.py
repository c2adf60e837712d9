"""A new etcd client meets an etcd that is slow to answer its connection (issue 16's fault suites, CI).

Twice in CI a fresh client -- a starting node's lease keeper, a ``muheam list`` right after ``cluster up`` -- got
``UNAVAILABLE`` from an etcd that served every other client at the same moment.  The channel options asked for a
100 ms minimum reconnect backoff, and gRPC takes that value also as the minimum time it gives a connection
attempt (TCP connect and the HTTP/2 handshake): an etcd or a machine busy for 100 ms failed the attempt, the
channel went to TRANSIENT_FAILURE, and a call without ``wait_for_ready`` fails at once there, long before its own
deadline.  Clients that were connected already were not touched, as seen.  Here etcd is paused (SIGSTOP: the
kernel still accepts the TCP connection, nothing answers the handshake) while a new client calls, and resumed
well within the call's timeout: the call must succeed.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from muheam.errors import EtcdUnavailable
from muheam.membership.etcd import EtcdBackend
from muheam.ops.etcd_server import EtcdServer
from muheam.ops.procs import free_port

pytestmark = pytest.mark.integration


def test_a_new_client_waits_out_a_slow_handshake_within_its_timeout(tmp_path: Path) -> None:
    server = EtcdServer(tmp_path / "etcd" / "data", f"http://127.0.0.1:{free_port()}",
                        f"http://127.0.0.1:{free_port()}")
    pid = server.start()
    try:
        os.kill(pid, signal.SIGSTOP)
        resume = threading.Timer(0.6, os.kill, (pid, signal.SIGCONT))
        resume.start()
        backend = EtcdBackend([server.client_url], timeout=3.0)
        t0 = time.monotonic()
        try:
            members, _ = backend.members("c")
        except EtcdUnavailable as exc:
            pytest.fail(f"after {time.monotonic() - t0:.2f} s, with etcd back after 0.6 s of a 3 s timeout: {exc}")
        finally:
            resume.join()
            backend.close()
        assert members == []
    finally:
        os.kill(pid, signal.SIGCONT)
        server.stop()
