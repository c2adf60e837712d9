"""Consistent reads (issue 18, item 4): a reader does not move chains.

Without this, a scan on node B of chains that node A owns exclusively takes each chain in shared mode -- A writes
its pages through and gives the chain up (a lock transfer: 3(N-1) messages and an 8 KiB image), and A's next
write takes it back the same way -- so one reader makes every writer pay.  Instead, B asks for a copy of the pages
and reads that, once, for the one operation that needs it; A keeps the chain.  Where each chain's contents are is
the lock manager's knowledge (``LockManager.read_source``):

* no member has an exclusive entry for the chain: the shared file is current (every exclusive holder wrote its
  pages through before its RELEASE, which B has seen, and none can be granted without B's ACK, which B cannot
  send while it reads, in one turn of its loop): B reads the chain from the file;
* the earliest exclusive entry is node A's: B sends A one ``cr`` request for all such chains of the scan
  (``["q", id, [[table, bucket]...]]``) and A answers with the pages it holds, without writing them or giving
  anything up (``["r", id, [[table, bucket, images or None]...]]``: None where A does not hold the chain
  exclusively, its request still waiting, or given up meanwhile);
* otherwise (B has an entry of its own, is still joining, or a dead member may have left the chain unwritten):
  B takes the lock as before.

Why a copy is enough for MVCC: B's snapshot was taken before it sent the request.  A transaction T whose commit
B's snapshot must see was prepared at B before that snapshot (or its outcome known there), and T changed the chain
before it prepared, while its node held the chain; the chain went from that node to A with its pages (or through
the file), so A's pages -- A holding the chain exclusively now -- contain T's changes.  A transaction that changes
the chain after A answered prepares later than B's snapshot, so its commit timestamp is above the snapshot's and
it is invisible anyway.  The copy is therefore "at least as new as the snapshot", which is all ``scan_from`` asks
of a chain image.  It is used only for the operation of the transaction that asked (its snapshot predates the
request) and dropped from the cache right after, so no later snapshot can read it.

A peer that leaves before answering: its chains fall back to the lock (``member_removed`` via the lock service's
removal hooks).  A chain that B's own transactions acquired while the copy was on its way is not overwritten.

**Unchanged copies.**  A reader scans the same chains again and again, and most of them have not changed since
its last copy.  So B keeps the last copy of each chain it read (bytes, outside the buffer cache, at most
``KEEP_BYTES``) and names it in its request by a digest of its bytes (BLAKE2b, 16 bytes: ``[table, bucket,
digest]``); A answers ``True`` instead of the images when its pages encode to exactly those bytes.  The kept copy
is then what A would have sent, byte for byte, so everything above holds of it unchanged; a digest that differs
(A's pages changed, or B's copy is older) gets the images as before.  ``True`` means the bytes that request named,
which the request remembers: another read's answer may have replaced the kept copy meanwhile with A's pages of an
earlier moment.  (Nodes of an older version refuse a request with digests: this changes the ``cr`` message.)
"""

from __future__ import annotations

import hashlib
import logging
import struct
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from locking.manager import FROM_FILE, USE_LOCK
from locking.messages import Mode
from muheam.cluster.locks import LockService
from muheam.cluster.ownership import CHAIN, Ownership, chain_resource, decode_images, encode_images
from muheam.engine import Engine
from muheam.net import wire
from muheam.net.clientport import callbacks_held
from muheam.net.mesh import Mesh

log = logging.getLogger("muheam.reads")

KIND = "cr"
MAX_CHAINS = 4096
"""Chains in one request (a scan asks for at most the rest of one table)."""
ANSWER_BYTES = 16 << 20
"""Images in one answer, at most: a quarter of the mesh's message limit (``wire.ZMQ_MAXMSGSIZE``; a bigger message
makes ZeroMQ drop the connection).  The chains beyond it are answered None, as if not held: the asker takes the
lock for its first chain and asks again for the others when it reaches them."""
_CHAIN = struct.Struct(">II")
KEEP_BYTES = 32 << 20
"""Copies a reader keeps to name in its next request (least recently used go first)."""
DIGEST = 16
"""Bytes of a copy's digest (BLAKE2b): a copy is named by its bytes, so a collision would be needed to read an old
one for a new one."""


def digest(value: bytes) -> bytes:
    """A copy's name: the digest of its encoded images (``encode_images``), as the holder would send them."""
    return hashlib.blake2b(value, digest_size=DIGEST).digest()


ANSWER_TIMEOUT = 10.0
"""Seconds a copy request may go unanswered before its chains take the lock instead (``tick``)."""


@dataclass
class _Read:
    """One operation's wait for copies: what it asked, from whom, what came back."""

    first: bytes
    then: Callable[[], None]
    files: list[bytes]
    waiting: set[int]                                   # request ids not answered yet
    images: dict[bytes, list[tuple[int, bytes]]] = field(default_factory=dict)
    values: dict[bytes, bytes] = field(default_factory=dict)  # chain -> the encoded images it came as


@dataclass
class _Asked:
    """One request sent: its read, the node asked, the kept copies it named by digest (by chain), when."""

    read: _Read
    node: int
    named: dict[bytes, bytes]
    sent: float


class ConsistentReads:
    """Consistent-read copies for this node's readers, and the answers to other nodes' requests."""

    def __init__(self, mesh: Mesh, locks: LockService, ownership: Ownership, engine: Engine) -> None:
        self.mesh = mesh
        self.locks = locks
        self.ownership = ownership
        self.engine = engine
        self.enabled = True
        self.next_id = 1
        self.requests: dict[int, _Asked] = {}
        self.kept: OrderedDict[bytes, tuple[bytes, bytes]] = OrderedDict()  # chain -> (digest, encoded images)
        self.kept_bytes = 0
        self.checked: dict[bytes, bytes] = {}
        """Chain -> the kept copy (that very bytes object) whose pages were verified when it was read: the same
        bytes, named again and answered ``True``, are installed without verifying every page again."""
        self.counters: Counter[str] = Counter()
        mesh.on(KIND, self._on_message)
        locks.removal_hooks.append(self._member_removed)

    # -- the reader's side -----------------------------------------------------------------------------------
    def read(self, resource: bytes, then: Callable[[], None], ahead: int = 0) -> bool:
        """Make the chain ``resource`` (and the next ``ahead`` chains of its table this node does not own)
        readable for one run of ``then``.  False: take the lock instead (the caller does)."""
        if not self.enabled or not resource.startswith(CHAIN) or resource in self.ownership.asking:
            return False
        source = self.locks.read_source(resource)
        if source == USE_LOCK:
            return False
        table_id, bucket = _CHAIN.unpack_from(resource, len(CHAIN))
        wanted = [(resource, source)]
        last = min(self.engine.table(table_id).nbuckets, bucket + ahead)
        for b in range(bucket + 1, last + 1):
            r = chain_resource(table_id, b)
            if r in self.ownership.held or r in self.ownership.asking:
                continue
            src = self.locks.read_source(r)
            if src != USE_LOCK:
                wanted.append((r, src))
        by_node: dict[int, list[bytes]] = {}
        files: list[bytes] = []
        for r, src in wanted:
            if src == FROM_FILE:
                files.append(r)
            else:
                by_node.setdefault(src, []).append(r)
        pending = _Read(resource, then, files, set())
        for node, chains in sorted(by_node.items()):
            rid = self.next_id
            self.next_id += 1
            named: dict[bytes, bytes] = {}
            body = ["q", rid, [self._ask(r, named) for r in chains[:MAX_CHAINS]]]
            if self.mesh.send(node, KIND, body, label=KIND):
                self.requests[rid] = _Asked(pending, node, named, time.monotonic())
                pending.waiting.add(rid)
                self.counters["copy_requests"] += 1
        if source != FROM_FILE and not pending.waiting:
            return False  # the holder is not reachable: the lock path copes with departures
        if not pending.waiting:
            self._finish(pending)
        return True

    def _ask(self, resource: bytes, named: dict[bytes, bytes]) -> list[Any]:
        """A request's item for one chain: ``[table, bucket]``, and the digest of the copy kept of it if any
        (remembered in ``named``: an answer ``True`` means those bytes, whatever is kept by the time it comes)."""
        item: list[Any] = list(_CHAIN.unpack_from(resource, len(CHAIN)))
        kept = self.kept.get(resource)
        if kept is not None:
            self.kept.move_to_end(resource)
            item.append(kept[0])
            named[resource] = kept[1]
        return item

    def _keep(self, resource: bytes, value: bytes) -> None:
        old = self.kept.pop(resource, None)
        self.checked.pop(resource, None)
        if old is not None:
            self.kept_bytes -= len(old[1])
        if len(value) > KEEP_BYTES:
            return
        self.kept[resource] = (digest(value), value)
        self.kept_bytes += len(value)
        while self.kept_bytes > KEEP_BYTES:
            gone, (_, dropped) = self.kept.popitem(last=False)
            self.checked.pop(gone, None)
            self.kept_bytes -= len(dropped)

    def _finish(self, pending: _Read) -> None:
        """Every answer is in: make the copies (and the current file chains) readable, run the operation once,
        forget them again."""
        own = self.ownership
        cache = self.engine.cache
        readable: dict[bytes, tuple[int, list[int]]] = {}
        for r, images in pending.images.items():
            if r in own.held or r in own.asking or r in own.readable:
                continue  # ours meanwhile (never overwrite our pages), or another read has it right now
            table_id, _ = _CHAIN.unpack_from(r, len(CHAIN))
            if own._table(table_id) is None:
                continue  # dropped while we waited
            own._drop_images(r)
            value = pending.values[r]
            cache.adopt(table_id, images, verified=self.checked.get(r) is value)
            if self.kept.get(r, (b"", b""))[1] is value:
                self.checked[r] = value
            readable[r] = (table_id, [b for b, _ in images])
            self.counters["copies_read"] += 1
        for r in pending.files:
            if r in own.held or r in own.asking or r in own.readable or readable.get(r) is not None:
                continue
            if self.locks.read_source(r) != FROM_FILE:  # someone asked for it while we waited for the others
                continue
            table_id, bucket = _CHAIN.unpack_from(r, len(CHAIN))
            t = own._table(table_id)
            if t is None:
                continue
            own._drop_images(r)
            blocks = cache.chain_blocks(table_id, bucket, t.nbuckets)
            readable[r] = (table_id, blocks)
            self.counters["file_reads"] += 1
        if pending.first not in readable and pending.first not in own.held:
            # the chain the operation needs first could not be read this way: take the lock for it
            self.counters["fell_back"] += 1
            for r, (table_id, blocks) in readable.items():
                cache.forget(table_id, blocks)
            own.acquire(pending.first, Mode.SHARED, pending.then)
            return
        own.readable.update(readable)
        outer_reader, own.reader = own.reader, pending.then
        own.running.append(pending.then)
        for table_id, blocks in readable.values():
            cache.pin(table_id, blocks)  # the operation's trims must not evict them: the file is not current
        # what the operation's answer sets going in-process (the SQL port's next operation, under a newer
        # snapshot perhaps) runs after the copies are gone, not while they are readable
        with callbacks_held():
            try:
                pending.then()
            finally:
                own.running.pop()
                own.reader = outer_reader
                for r, (table_id, blocks) in readable.items():
                    cache.unpin(table_id, blocks)
                    if own.readable.pop(r, None) is not None and r not in own.held and r not in own.asking:
                        cache.forget(table_id, blocks)

    # -- the holder's side -----------------------------------------------------------------------------------
    def _answer(self, sender: int, rid: int, chains: list[Any]) -> None:
        own = self.ownership
        out: list[list[Any]] = []
        budget = ANSWER_BYTES
        for item in chains:
            if not isinstance(item, list) or len(item) not in (2, 3) \
                    or not all(type(x) is int and 0 <= x < 1 << 32 for x in item[:2]) \
                    or (len(item) == 3 and not (isinstance(item[2], bytes) and len(item[2]) == DIGEST)):
                raise ValueError("a cr chain is [table, bucket] or [table, bucket, digest of the copy kept]")
            resource = chain_resource(item[0], item[1])
            value: bytes | bool | None = None
            table_id, blocks = item[0], list[int]()
            if own.held.get(resource) is Mode.EXCLUSIVE and budget > 0:
                table_id, blocks = own._chain_blocks(resource)  # none for a dropped table: "not mine"
            if blocks:
                cache = self.engine.cache
                value = encode_images([(b, cache.read(table_id, b).encode()) for b in blocks])
                if len(item) == 3 and digest(value) == item[2]:
                    value = True  # the asker's copy is these very bytes
                    self.counters["copies_unchanged"] += 1
                elif len(value) > budget:
                    value, budget = None, 0
                else:
                    budget -= len(value)
            if value is not True:
                self.counters["copies_sent" if value is not None else "copies_refused"] += 1
            out.append([item[0], item[1], value])
        self.mesh.send(sender, KIND, ["r", rid, out], label=KIND)

    def _on_message(self, msg: wire.PeerMessage) -> None:
        body = msg.body
        if not isinstance(body, list) or len(body) != 3 or body[0] not in ("q", "r") or type(body[1]) is not int \
                or not isinstance(body[2], list) or len(body[2]) > MAX_CHAINS:
            raise ValueError("cr message must be ['q'|'r', id, [chains]]")
        if body[0] == "q":
            self._answer(msg.sender, body[1], body[2])
            return
        entry = self.requests.get(body[1])
        if entry is None or entry.node != msg.sender:
            self.counters["unexpected_answers"] += 1
            return
        named = entry.named
        fresh: dict[bytes, bytes] = {}  # chain -> new images (bytes), kept for the next request
        got: dict[bytes, list[tuple[int, bytes]]] = {}
        values: dict[bytes, bytes] = {}
        for item in body[2]:  # all checked before anything changes
            if not isinstance(item, list) or len(item) != 3 or type(item[0]) is not int or type(item[1]) is not int \
                    or not (item[2] is None or item[2] is True or isinstance(item[2], bytes)):
                raise ValueError("a cr answer is [table, bucket, images, True (unchanged) or None]")
            resource = chain_resource(item[0], item[1])
            if isinstance(item[2], bytes):
                fresh[resource] = item[2]
                got[resource] = decode_images(item[2])
                values[resource] = item[2]
            elif item[2] is True:
                if resource not in named:
                    raise ValueError("a cr answer says unchanged of a copy the request did not name")
                got[resource] = decode_images(named[resource])
                values[resource] = named[resource]
        for resource, value in fresh.items():
            self._keep(resource, value)
        self.counters["copies_reused"] += len(got) - len(fresh)
        del self.requests[body[1]]
        pending = entry.read
        pending.images.update(got)
        pending.values.update(values)
        pending.waiting.discard(body[1])
        if not pending.waiting:
            self._finish(pending)

    def _member_removed(self, node_id: int) -> None:
        """Requests to a node that left are answered by nobody: go on without them (its chains take the lock)."""
        self._give_up([r for r, asked in self.requests.items() if asked.node == node_id], "lost_to_departure")

    def tick(self, now: float) -> None:
        """Requests unanswered for ``ANSWER_TIMEOUT`` are given up: their chains take the lock.  A holder answers
        within one turn of its loop; one that stopped is removed when its lease ends, but a request it refused
        (a malformed or, from an older version, an unknown form) would otherwise leave the statement waiting for
        good."""
        self._give_up([r for r, asked in self.requests.items() if now - asked.sent > ANSWER_TIMEOUT], "timed_out")

    def _give_up(self, rids: list[int], why: str) -> None:
        for rid in rids:
            asked = self.requests.pop(rid, None)
            if asked is None:
                continue
            pending = asked.read
            pending.waiting.discard(rid)
            self.counters[why] += 1
            if not pending.waiting:
                self._finish(pending)

    def stats(self) -> dict[str, int]:
        return {**self.counters, "waiting": len(self.requests)}
