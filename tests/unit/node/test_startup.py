"""A joiner waits for recoveries in progress (``muheam.node.startup.await_pending_recoveries``), against a
recorder standing in for etcd's ``recovery/<id>`` keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from muheam import config
from muheam.node.fence import Fence
from muheam.node.startup import await_pending_recoveries

NODE = {"peer_endpoint": "tcp://127.0.0.1:{}", "client_endpoint": "tcp://127.0.0.1:{}"}


class Recoveries:
    """``get_recovery`` answers from a script: node 2 is being recovered for the first three looks."""

    def __init__(self) -> None:
        self.looks = 0

    def get_recovery(self, cluster: str, node_id: int) -> dict[str, Any] | None:
        if node_id != 2:
            return {"state": "recovered"} if node_id == 3 else None
        self.looks += 1
        return {"state": "recovering" if self.looks <= 3 else "recovered"}


def test_a_joiner_waits_until_no_recovery_runs(tmp_path: Path) -> None:
    nodes = {str(n): {k: v.format(7000 + 10 * n + i) for i, (k, v) in enumerate(NODE.items())} for n in (1, 2, 3)}
    cfg = config.validate({"shared_dir": str(tmp_path), "nodes": nodes})
    backend = Recoveries()
    waited = await_pending_recoveries(cfg, 1, backend, Fence(60, 0.0, clock=lambda: 1.0), poll=0.001)  # type: ignore[arg-type]
    assert waited == [2] and backend.looks == 4
