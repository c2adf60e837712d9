"""Cluster block ownership (cache fusion): bucket-chain locks whose value block is the chain's page images.

A heap table is a set of bucket chains (a bucket page and its overflow pages), and every row operation touches
exactly one chain, so the unit of ownership is the chain: lock resource ``blk:<table>:<bucket>``.  Exclusive
ownership allows changing the chain's pages (I2); shared ownership allows reading them.  The grant carries the
latest images (value block, DESIGN.md section 5), so the new owner never reads a stale page; when no image
travels (first use, or after a failure) the shared file is current, because an exclusive owner writes its dirty
pages through to the file -- after flushing its WAL up to them (I3) -- before it lets go.  For the same reason a
chain longer than one value block (``MAX_VALUE``) ships the images of its first pages that fit and the new owner
reads the rest from the file.

Ownership is kept until another node asks (no messages for repeated local work): the lock stays *held* and is
given up only on ``ReleaseDemanded``.  Allocating a new overflow block takes the relation-extension lock
``ext:<table>`` (value: the relation's length in blocks).  Creating or dropping a table takes ``catalog``
exclusively; every row operation needs it at least shared, and each grant of it re-reads ``global/catalog``, so a
node that had to give it up for a DROP TABLE learns of the drop before its next operation (a cache invalidation
by lock, as in Oracle's library cache or PostgreSQL's relation locks).  Holding it shared costs nothing until
the next create or drop.

The engine asks through the ``Owner`` protocol (``chain``/``extend``/``catalog``); if this node does not own what
is needed it raises ``NeedOwnership`` before changing anything, and the session layer calls ``acquire`` and
re-runs the operation from the grant callback.  Every operation needs at most one chain (plus the extension
lock), so a retry runs as soon as its one lock is granted: no operation waits holding one lock for another.
"""

from __future__ import annotations

import logging
import struct
from collections import Counter
from typing import Callable, Protocol

from locking.effects import Granted
from locking.messages import MAX_VALUE, Mode
from muheam import failpoints
from muheam.errors import MuheamError
from muheam.engine import Engine
from muheam.engine.errors import NeedOwnership, NoSuchTable
from muheam.engine.heapops import Table
from muheam.cluster.locks import LockService

log = logging.getLogger("muheam.ownership")

CHAIN = b"blk:"
EXTEND = b"ext:"
CATALOG = b"catalog"
_CHAIN = struct.Struct(">II")
_U32 = struct.Struct(">I")
_U64 = struct.Struct("<Q")
_IMAGE = struct.Struct("<II")


class Repair(Protocol):
    """Rebuilds what a dead member may have left unwritten when its lock comes back marked invalid."""

    def chain(self, table_id: int, head: int) -> int:
        """The chain (just read from the shared file) gets the dead nodes' changes; returns page changes."""

    def extend(self, table_id: int) -> None:
        """The relation's size must cover the blocks the dead nodes allocated."""


def chain_resource(table_id: int, bucket: int) -> bytes:
    return CHAIN + _CHAIN.pack(table_id, bucket)


def extend_resource(table_id: int) -> bytes:
    return EXTEND + _U32.pack(table_id)


def encode_images(images: list[tuple[int, bytes]], limit: int | None = None) -> bytes:
    """The images as one value; with ``limit``, only the longest prefix of them that fits in ``limit`` bytes."""
    parts: list[bytes] = []
    size = 0
    for block, data in images:
        size += _IMAGE.size + len(data)
        if limit is not None and size > limit:
            break
        parts.append(_IMAGE.pack(block, len(data)) + data)
    return b"".join(parts)


def decode_images(value: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(value):
        if pos + _IMAGE.size > len(value):
            raise ValueError("truncated chain image value")
        block, size = _IMAGE.unpack_from(value, pos)
        pos += _IMAGE.size
        if pos + size > len(value):
            raise ValueError("truncated chain image value")
        out.append((block, value[pos:pos + size]))
        pos += size
    return out


class Ownership:
    """One node's block ownership; installed as ``engine.owner``.  Runs in the node's event loop."""

    def __init__(self, locks: LockService, engine: Engine) -> None:
        self.locks = locks
        self.engine = engine
        self.held: dict[bytes, Mode] = {}
        self.asking: dict[bytes, Mode] = {}
        self.waiters: dict[bytes, list[Callable[[], None]]] = {}
        self.pinned: dict[bytes, bytes] = {}     # chain -> the extension lock an operation on it waits for
        self.deferred: set[bytes] = set()        # demands of pinned chains, honoured when unpinned
        self._writing: bytes | None = None
        # chains readable for the one operation running now from a consistent-read copy or the current file
        # (``muheam.cluster.reads``): chain -> (table, blocks in the cache), dropped when it returns
        self.readable: dict[bytes, tuple[int, list[int]]] = {}
        self.reader: object | None = None
        """The operation those copies are for (``ConsistentReads._finish``): only it may read them."""
        self.running: list[object] = []
        """The operations running now, innermost last: a lock grant or a wake-up can run another transaction's
        operation inside the reader's (``Sessions._row_op`` pushes each attempt), and that one's snapshot may be
        newer than the copies."""
        self.counters: Counter[str] = Counter()
        self.repair: Repair | None = None
        for prefix in (CHAIN, EXTEND, CATALOG):
            locks.on_demand(prefix, self._demanded)
        engine.owner = self

    # -- the engine's questions ------------------------------------------------------------------------------
    def _need(self, resource: bytes, mode: Mode) -> None:
        held = self.held.get(resource)
        if held is Mode.EXCLUSIVE or held is mode:
            self.counters["owned"] += 1
            return
        raise NeedOwnership(resource, mode)

    def chain(self, table_id: int, bucket: int, write: bool) -> None:
        resource = chain_resource(table_id, bucket)
        if not write and resource in self.readable and self.running and self.running[-1] is self.reader:
            self.counters["read_copy"] += 1
            return
        self._need(resource, Mode.EXCLUSIVE if write else Mode.SHARED)
        if write:
            self._writing = resource

    def extend(self, table_id: int) -> None:
        """The operation holding the chain last checked for writing needs a new block.  That chain is kept
        (its demands deferred) until the extension lock arrives: handing either lock over while waiting for the
        other let two nodes growing one chain take turns for ever.  No node waits for a chain while holding
        the extension lock for an operation, so chain -> extension is deadlock-free."""
        resource = extend_resource(table_id)
        held = self.held.get(resource)
        if held is Mode.EXCLUSIVE:
            return
        raise NeedOwnership(resource, Mode.EXCLUSIVE, keep=self._writing)

    def catalog(self, write: bool = True) -> None:
        self._need(CATALOG, Mode.EXCLUSIVE if write else Mode.SHARED)

    def settle(self) -> None:
        """Log, under the catalog lock, the creates and drops a dead node made but did not log
        (``Engine.settle``); nothing to do costs one read of ``global/catalog``.  Called at start and when a dead
        node is recovered; a failure is logged (the next create or drop, or the next start, does it)."""
        def attempt() -> None:
            try:
                done = self.engine.settle()
            except NeedOwnership as need:
                self.acquire(need.resource, need.mode, attempt)
                return
            except (MuheamError, OSError) as e:
                log.error("node %d: could not log the catalog changes dead nodes left unlogged: %s",
                          self.engine.node_id, e)
                return
            self.counters["catalog_changes_settled"] += len(done)

        attempt()

    # -- acquiring -------------------------------------------------------------------------------------------
    def acquire(self, resource: bytes, mode: Mode, then: Callable[[], None], keep: bytes | None = None) -> None:
        """Get ``resource`` in ``mode`` (at least), then call ``then`` (which re-checks and may ask again);
        ``keep``: a held chain not to give up before then."""
        if keep is not None and keep in self.held:
            self.pinned[keep] = resource
        self.waiters.setdefault(resource, []).append(then)
        if resource in self.asking:
            return
        held = self.held.pop(resource, None)
        if held is not None:  # shared -> exclusive: let go of the shared copy, ask again
            self._drop_images(resource)
            self.locks.release(resource)
            self.counters["upgrades"] += 1
        self.asking[resource] = mode
        self.counters["catalog_acquires" if resource == CATALOG else "acquires"] += 1
        self.locks.acquire(resource, mode, lambda grant: self._granted(resource, grant))

    def _granted(self, resource: bytes, grant: Granted) -> None:
        self.asking.pop(resource, None)
        if resource.startswith(CHAIN):
            table_id, bucket = _CHAIN.unpack_from(resource, len(CHAIN))
            self._drop_images(resource)
            if self._table(table_id) is None:
                pass  # dropped meanwhile: nothing of it is cached any more, and no operation will use it
            elif grant.valid and grant.value:
                self.engine.cache.adopt(table_id, decode_images(grant.value))
                self.counters["images_received"] += 1
            else:
                self.counters["read_from_disk"] += 1
                if not grant.valid and self.repair is not None:
                    self.counters["repaired"] += self.repair.chain(table_id, bucket)
        elif resource == CATALOG:
            try:
                self.engine.reload_catalog()  # tables created or dropped while we did not hold it
            except (MuheamError, OSError) as e:  # each operation reads it again first, and fails if it cannot
                log.error("node %d: could not read the catalog: %s", self.engine.node_id, e)
                self.engine.catalog_stale = True
        elif resource.startswith(EXTEND):
            table_id = _U32.unpack_from(resource, len(EXTEND))[0]
            if self._table(table_id) is not None:  # (a dropped table's relation is gone)
                # the last size anyone released; after an invalid grant still a floor (the dead node may only have
                # grown it further: taking the dead node's highest block alone could hand a block a live node
                # already allocated to a second chain)
                if grant.value and len(grant.value) == 8:
                    self.engine.cache.grow(table_id, _U64.unpack(grant.value)[0])
                if not grant.valid and self.repair is not None:
                    self.repair.extend(table_id)
        self.held[resource] = grant.mode
        for then in self.waiters.pop(resource, []):
            then()
        for chain in [c for c, r in self.pinned.items() if r == resource]:
            del self.pinned[chain]
            if chain in self.deferred:
                self.deferred.discard(chain)
                self._demanded(chain)

    # -- giving up -------------------------------------------------------------------------------------------
    def _table(self, table_id: int) -> Table | None:
        """The table, learnt from the catalog file if this node has not seen it yet; ``None`` once dropped."""
        if table_id in self.engine.dropped:
            return None
        try:
            return self.engine.table(table_id)
        except NoSuchTable:
            return None

    def _chain_blocks(self, resource: bytes) -> tuple[int, list[int]]:
        """The chain's blocks; none for a dropped table (its pages were discarded with it)."""
        table_id, bucket = _CHAIN.unpack_from(resource, len(CHAIN))
        t = self._table(table_id)
        if t is None:
            return table_id, []
        return table_id, self.engine.cache.chain_blocks(table_id, bucket, t.nbuckets)

    def _drop_images(self, resource: bytes) -> None:
        """Forget cached pages of a chain we do not own exclusively (they are clean)."""
        if not resource.startswith(CHAIN):
            return
        table_id, bucket = _CHAIN.unpack_from(resource, len(CHAIN))
        t = self._table(table_id)
        if t is not None:
            self.engine.cache.forget_chain(table_id, bucket, t.nbuckets)

    def _demanded(self, resource: bytes) -> None:
        """Another node waits: hand over (WAL flushed, dirty pages written, images in the value) and let go."""
        if resource in self.pinned:
            self.deferred.add(resource)
            self.counters["deferred_demands"] += 1
            return
        mode = self.held.pop(resource, None)
        if mode is None:
            return  # not ours in use (an upgrade already let it go)
        value: bytes | None = None
        if resource.startswith(CHAIN):
            table_id, blocks = self._chain_blocks(resource)
            if mode is Mode.EXCLUSIVE and blocks:
                failpoints.hit("ownership.export")  # a demand taken, the images not yet written through
                value = encode_images(self.engine.cache.export(table_id, blocks), MAX_VALUE)
                self.counters["images_sent"] += 1
            self.engine.cache.forget(table_id, blocks)
        elif resource.startswith(EXTEND) and mode is Mode.EXCLUSIVE:
            table_id = _U32.unpack_from(resource, len(EXTEND))[0]
            if self._table(table_id) is not None:  # (a dropped table's relation is gone)
                value = _U64.pack(self.engine.cache.nblocks(table_id))
        # blocks handed over; the catalog lock goes to a node that needs it shared once after each create or drop
        self.counters["catalog_given_up" if resource == CATALOG else "given_up"] += 1
        self.locks.release(resource, value)

    def stats(self) -> dict[str, int]:
        return {**self.counters, "held": len(self.held), "asking": len(self.asking)}
