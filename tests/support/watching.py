"""Run ``muheam watch --format json`` as a real subprocess and collect its lines with arrival times."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from tests.support.cluster import MUHEAM


class Watcher:
    def __init__(self, config: Path, *extra: str) -> None:
        self.proc = subprocess.Popen([*MUHEAM, "watch", "-c", str(config), "--format", "json", "--timeout", "300",
                                      *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self._unclaimed: list[tuple[float, dict[str, Any]]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put((time.monotonic(), json.loads(line)))

    def wait_for(self, event: str, node_id: int, timeout: float) -> tuple[float, dict[str, Any]]:
        """The first not-yet-claimed line for ``event`` on ``node_id`` (lines may arrive in any order)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, (at, record) in enumerate(self._unclaimed):
                if record["event"] == event and record["node_id"] == node_id:
                    del self._unclaimed[i]
                    return at, record
            try:
                at, record = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {event!r} for node {node_id} within {timeout} s; saw {self.seen}") from None
            self.seen.append(record)
            self._unclaimed.append((at, record))

    def stop(self) -> str:
        self.proc.kill()
        _, err = self.proc.communicate(timeout=10)
        return err

    def __enter__(self) -> "Watcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
