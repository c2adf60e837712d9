"""The replicator tells the nodes how far it is (``replica_confirm`` on each node's client port), so that commits
under a commit scope (``muheam.cluster.scopes``) can be answered once this replica has them.

One thread per node, each sending the newest positions as soon as they move (coalesced: a burst of applied
transactions is one message per round trip) and every ``RESEND_EVERY`` seconds anyway, so a node that restarted
learns them.  A node that does not answer is retried after ``RETRY_AFTER``; it never holds up the others or the
replicator.  Requests go through ``muheam.client`` like any client's.
"""

from __future__ import annotations

import threading
from typing import Callable

from muheam.client import ClientError, Connection, KeyArg, NodeUnavailable

RESEND_EVERY = 0.5
RETRY_AFTER = 1.0
TIMEOUT = 2.0


class Confirmer:
    def __init__(self, endpoints: list[str], name: str, positions: Callable[[], tuple[int, int, int]],
                 key: KeyArg = None) -> None:
        self.key = key
        self.name = name
        self.positions = positions
        self.cv = threading.Condition()
        self.version = 0
        self.stopping = False
        self.sent = 0
        self.failed = 0
        self.threads = [threading.Thread(target=self._run, args=(ep,), name=f"replica-confirm-{i}", daemon=True)
                        for i, ep in enumerate(endpoints)]
        for t in self.threads:
            t.start()

    def poke(self) -> None:
        with self.cv:
            self.version += 1
            self.cv.notify_all()

    def _run(self, endpoint: str) -> None:
        conn: Connection | None = None
        seen = -1
        while True:
            with self.cv:
                if self.version == seen and not self.stopping:
                    self.cv.wait(RESEND_EVERY)
                if self.stopping:
                    break
                seen = self.version
            received, flushed, applied = self.positions()
            try:
                if conn is None:
                    conn = Connection(endpoint, TIMEOUT, self.key)
                conn.call("replica_confirm", name=self.name, received_glsn=received, flushed_glsn=flushed,
                          applied_glsn=applied)
                self.sent += 1
            except (NodeUnavailable, ClientError, ValueError):
                self.failed += 1
                if conn is not None:
                    conn.close()
                    conn = None
                with self.cv:
                    self.cv.wait_for(lambda: self.stopping, RETRY_AFTER)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        with self.cv:
            self.stopping = True
            self.cv.notify_all()
        for t in self.threads:
            t.join(TIMEOUT + 1)


__all__ = ["Confirmer"]
