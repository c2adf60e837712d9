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
from muheam.cluster.ownership import Ownership, decode_images, extend_resource
from tests.support.engines import open_engines, shared_dir


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


class RecordingLocks(GrantingLocks):
    """Also keeps the value of each release (what the next owner's grant carries)."""

    def __init__(self) -> None:
        super().__init__()
        self.released: dict[bytes, bytes | None] = {}

    def release(self, resource: bytes, value: bytes | None = None) -> None:
        self.released[resource] = value


def test_a_stale_overflow_page_never_outlives_a_grant(tmp_path: Path) -> None:
    """Node B read a long chain in shared mode and its cache evicted the chain's bucket page (the least recently
    used); it then asked to write.  Node A took the chain first, changed the last page and handed the chain over
    with the images of the first pages that fit in a value block.  B must read A's last page from the file: its
    old frame of that page survived because forgetting a chain walked only the cached pages from the bucket on,
    and B then read A's committed row as it was before and wrote the old page back over A's change."""
    from muheam.cluster.ownership import CATALOG, chain_resource
    from muheam.storage import mvcc

    shared = shared_dir(tmp_path)
    a, b = open_engines(shared, EngineConfig(segment_size=1 << 22), EngineConfig(segment_size=1 << 22, cache_pages=100))
    t = a.create_table("t", {"v": "int64", "pad": "text(200)"}, buckets=1)
    b.reload_catalog()

    def status(x: int) -> int:
        if x in a.committed or x in b.committed:
            return mvcc.COMMITTED
        return mvcc.IN_PROGRESS if x in a.running or x in b.running else mvcc.ABORTED

    a.status = b.status = status  # type: ignore[method-assign]
    la, lb = RecordingLocks(), RecordingLocks()
    own_a, own_b = Ownership(la, a), Ownership(lb, b)  # type: ignore[arg-type]
    chain, ext = chain_resource(t.table_id, 1), extend_resource(t.table_id)
    seq = iter(range(2, 1 << 30))
    value: list[bytes | None] = [None]

    def grant(locks: RecordingLocks, resource: bytes, mode: Mode) -> None:
        n = next(seq)
        locks.pending.pop(resource)(Granted(resource, mode, Glsn(n, 1), Version(Glsn(n, 1), 0),
                                            value[0] if resource == chain else None, True))

    for r in (chain, ext):
        own_a.acquire(r, Mode.EXCLUSIVE, lambda: None)
        grant(la, r, Mode.EXCLUSIVE)
    for own, locks in ((own_a, la), (own_b, lb)):  # every row operation needs the catalog lock (shared)
        own.acquire(CATALOG, Mode.SHARED, lambda: None)
        grant(locks, CATALOG, Mode.SHARED)
    rows = 5000
    tx = a.begin(100)
    for key in range(rows):
        tx.insert("t", key, {"v": key, "pad": "x"})
    tx.commit()
    last = own_a._chain_blocks(chain)[1][-1]
    own_a._demanded(chain)
    own_a._demanded(ext)
    value[0] = la.released[chain]

    own_b.acquire(chain, Mode.SHARED, lambda: None)
    grant(lb, chain, Mode.SHARED)
    assert sum(1 for _ in b.begin(200, b.local_snapshot(200)).scan("t")) == rows
    b.cache.trim()
    assert not b.cache.cached(t.table_id, 1) and b.cache.cached(t.table_id, last)  # the window
    own_b.acquire(chain, Mode.EXCLUSIVE, lambda: None)  # an upgrade: B lets its shared hold go

    own_a.acquire(chain, Mode.EXCLUSIVE, lambda: None)
    grant(la, chain, Mode.EXCLUSIVE)
    ta = a.begin(300)
    ta.update("t", rows - 1, {"v": -1})
    ta.commit()
    own_a._demanded(chain)
    value[0] = la.released[chain]
    assert value[0] is not None and len(decode_images(value[0])) < len(own_a._chain_blocks(chain)[1])

    grant(lb, chain, Mode.EXCLUSIVE)
    tb = b.begin(400, b.local_snapshot(400))
    assert tb.get("t", rows - 1) == {"v": -1, "pad": "x"}
    tb.update("t", rows - 2, {"v": -2})
    tb.commit()
    own_b._demanded(chain)
    c = Engine.open(shared, 3, config=EngineConfig(segment_size=1 << 22))
    c.reload_catalog()
    c.status = status  # type: ignore[method-assign]
    tc = c.begin(500, c.local_snapshot(500))
    assert tc.get("t", rows - 1)["v"] == -1 and tc.get("t", rows - 2)["v"] == -2
    for e in (a, b, c):
        e.close()


def test_a_node_that_gave_up_the_catalog_lock_never_touches_a_table_dropped_meanwhile(tmp_path: Path) -> None:
    """Node B holds the catalog lock shared and a chain of ``t`` exclusively, with a dirty page.  Node A's DROP
    TABLE needs the catalog lock exclusively, so B gives it up; B's next row operation must ask for it again, and
    the grant makes B read the catalog, so the operation fails with ``NoSuchTable`` instead of writing into the
    dropped table.  B's dirty page goes unwritten and a later demand for the chain hands over nothing."""
    import pytest
    from muheam.cluster.ownership import CATALOG, chain_resource
    from muheam.engine import NoSuchTable
    from muheam.engine.errors import NeedOwnership

    shared = shared_dir(tmp_path)
    a, b = open_engines(shared, EngineConfig(segment_size=1 << 20), EngineConfig(segment_size=1 << 20))
    la, lb = RecordingLocks(), RecordingLocks()
    own_a, own_b = Ownership(la, a), Ownership(lb, b)  # type: ignore[arg-type]
    seq = iter(range(2, 1 << 30))

    def grant(locks: RecordingLocks, resource: bytes, mode: Mode) -> None:
        n = next(seq)
        locks.pending.pop(resource)(Granted(resource, mode, Glsn(n, 1), Version(Glsn(n, 1), 0), None, True))

    own_a.acquire(CATALOG, Mode.EXCLUSIVE, lambda: None)
    grant(la, CATALOG, Mode.EXCLUSIVE)
    t = a.create_table("t", {"v": "int64"}, buckets=1)
    own_a._demanded(CATALOG)
    chain = chain_resource(t.table_id, 1)
    for r, mode in ((CATALOG, Mode.SHARED), (chain, Mode.EXCLUSIVE)):
        own_b.acquire(r, mode, lambda: None)
        grant(lb, r, mode)
    assert b.table("t") == t  # learnt from the catalog at the grant
    tx = b.begin(100)
    tx.insert("t", 1, {"v": 1})
    assert b.cache.dirty_count

    own_b._demanded(CATALOG)  # A asks for it exclusively
    own_a.acquire(CATALOG, Mode.EXCLUSIVE, lambda: None)
    grant(la, CATALOG, Mode.EXCLUSIVE)
    a.drop_table("t")
    with pytest.raises(NeedOwnership) as need:
        tx.insert("t", 2, {"v": 2})
    assert need.value.resource == CATALOG and need.value.mode is Mode.SHARED
    own_a._demanded(CATALOG)
    own_b.acquire(CATALOG, Mode.SHARED, lambda: None)
    grant(lb, CATALOG, Mode.SHARED)
    with pytest.raises(NoSuchTable):
        tx.insert("t", 2, {"v": 2})
    assert not b.cache.dirty_count and t.table_id in b.dropped
    own_b._demanded(chain)  # someone asks for the dead table's chain: released empty, nothing written
    assert lb.released[chain] is None
    assert not (shared / "base" / str(t.table_id)).exists()
    a.close()
    b.close()


def test_an_invalid_extension_grant_of_a_table_dropped_meanwhile_completes(tmp_path: Path) -> None:
    """Node B waits for ``ext:t``, which node X held when it died; node A drops ``t`` at X's expiry.  The invalid
    grant makes B read X's WAL, which re-reads the catalog and forgets ``t``: growing ``t``'s relation then raised
    KeyError inside the grant (a review found it), so the grant was never held and B's operation never ran
    again.  It must complete; the operation then fails cleanly on the dropped table."""
    from types import SimpleNamespace

    from muheam.recovery.survivors import Survivors

    cfg = EngineConfig(segment_size=1 << 20)
    a, b, x = open_engines(shared_dir(tmp_path), cfg, cfg, cfg)
    t = a.create_table("t", {"v": "int64"}, buckets=1)
    for e in (b, x):
        e.reload_catalog()
    tx = x.begin(100)
    for k in range(400):  # overflow blocks: X held ext:t
        tx.insert("t", k, {"v": k})
    x.commit(tx)
    x.crash()
    lb = RecordingLocks()
    own_b = Ownership(lb, b)  # type: ignore[arg-type]
    survivors = Survivors(2, "c", b, own_b, SimpleNamespace(prepared_from={}), lambda: None, None,  # type: ignore[arg-type]
                          lambda _s: None)
    survivors.expired(3, 0)
    res = extend_resource(t.table_id)
    ran: list[int] = []
    own_b.acquire(res, Mode.EXCLUSIVE, lambda: ran.append(1))
    a.drop_table("t")
    lb.pending.pop(res)(Granted(res, Mode.EXCLUSIVE, Glsn(9, 1), Version(Glsn(8, 3), 0), None, valid=False))
    assert res in own_b.held and ran == [1]
    assert t.table_id in b.dropped
    a.close()
    b.close()
