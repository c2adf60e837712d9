"""Block ownership (``muheam.cluster.ownership``) against a real one-node engine, with the lock service replaced by a
recorder that grants what the test says: what an invalid relation-extension grant does to the relation's size."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Callable

from locking.effects import Granted
from locking.glsn import Glsn
from locking.messages import Mode, Version
from muheam.engine import Engine, EngineConfig
from muheam.cluster.ownership import Ownership, extend_resource


class GrantingLocks:
    """The part of ``LockService`` that ``Ownership`` uses; ``acquire`` remembers the callback to call later."""

    def __init__(self) -> None:
        self.pending: dict[bytes, Callable[[Granted], None]] = {}

    def on_demand(self, prefix: bytes, fn: Callable[[bytes], None]) -> None:
        pass

    def acquire(self, resource: bytes, mode: Mode, on_grant: Callable[[Granted], None]) -> None:
        self.pending[resource] = on_grant

    def release(self, resource: bytes, value: bytes | None = None) -> None:
        pass


class DeadNodeBlocks:
    """A ``Repair`` whose dead node allocated blocks up to ``top`` of every table."""

    def __init__(self, engine: Engine, top: int) -> None:
        self.engine, self.top = engine, top

    def chain(self, table_id: int, head: int) -> int:
        return 0

    def extend(self, table_id: int) -> None:
        self.engine.cache.grow(table_id, self.top + 1)


def test_invalid_extension_grant_keeps_the_last_released_size(tmp_path: Path) -> None:
    """A live node grew the relation to 40 blocks and released the extension lock with that size; the node
    that took it next died without growing it further (its WAL's highest block is 20).  The invalid grant
    carries 40 as the last known value: the relation must be at least 40 blocks, or the next allocation here
    hands out a block that the live node's chain already uses."""
    shared = tmp_path / "shared"
    (shared / "global").mkdir(parents=True)
    (shared / "global" / "control").write_text("{}")
    engine = Engine.open(shared, 1, config=EngineConfig(segment_size=1 << 20))
    t = engine.create_table("t", {"v": "int64"}, buckets=2)
    locks = GrantingLocks()
    own = Ownership(locks, engine)  # type: ignore[arg-type]
    own.repair = DeadNodeBlocks(engine, top=20)
    size_before = engine.cache.nblocks(t.table_id)
    resource = extend_resource(t.table_id)
    own.acquire(resource, Mode.EXCLUSIVE, lambda: None)
    locks.pending[resource](Granted(resource, Mode.EXCLUSIVE, Glsn(5, 1), Version(Glsn(3, 2), 0),
                                    struct.pack("<Q", 40), valid=False))
    assert size_before < 21
    assert engine.cache.nblocks(t.table_id) == 40
    engine.close()
