"""Consistent-read answers (``muheam.cluster.reads``) from a real one-node engine, with the mesh replaced by a
recorder: an answer never exceeds its byte budget, so it always fits in one mesh message."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from locking.messages import Mode
from muheam.cluster import reads
from muheam.cluster.ownership import Ownership, chain_resource, decode_images
from muheam.engine import Engine, EngineConfig
from muheam.storage.layout import BLOCK_SIZE
from tests.unit.cluster.test_ownership import GrantingLocks


class RecordingMesh:
    def __init__(self) -> None:
        self.sent: list[tuple[int, str, Any]] = []

    def on(self, kind: str, fn: Callable[..., None]) -> None:
        pass

    def send(self, node: int, kind: str, body: Any, label: str = "") -> bool:
        self.sent.append((node, kind, body))
        return True


class Locks(GrantingLocks):
    removal_hooks: list[Callable[[int], None]] = []


def test_an_answer_stops_at_its_byte_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three one-page chains held exclusively, a budget for two: the first two are copied, the third (and every
    chain after a refused one) answered None, so the asker takes the lock for it instead of getting a message
    too big for the mesh (ZeroMQ drops a connection that receives one)."""
    shared = tmp_path / "shared"
    (shared / "global").mkdir(parents=True)
    (shared / "global" / "control").write_text("{}")
    engine = Engine.open(shared, 1, config=EngineConfig(segment_size=1 << 20))
    t = engine.create_table("t", {"v": "int64"}, buckets=4)
    own = Ownership(Locks(), engine)  # type: ignore[arg-type]
    for bucket in (1, 2, 3):
        own.held[chain_resource(t.table_id, bucket)] = Mode.EXCLUSIVE
    mesh = RecordingMesh()
    cr = reads.ConsistentReads(mesh, Locks(), own, engine)  # type: ignore[arg-type]
    monkeypatch.setattr(reads, "ANSWER_BYTES", 2 * BLOCK_SIZE + 100)
    cr._answer(2, 7, [[t.table_id, 1], [t.table_id, 2], [t.table_id, 3], [t.table_id, 4]])
    [(node, kind, body)] = mesh.sent
    assert (node, kind, body[0], body[1]) == (2, reads.KIND, "r", 7)
    answers = {bucket: value for _, bucket, value in body[2]}
    assert [b for b, _ in decode_images(answers[1])] == [1] and [b for b, _ in decode_images(answers[2])] == [2]
    assert answers[3] is None and answers[4] is None
    assert cr.counters["copies_sent"] == 2 and cr.counters["copies_refused"] == 2
    engine.close()
