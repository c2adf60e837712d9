"""Lamport-ordered distributed lock manager with ownership caching, value blocks and membership changes.

A pure state machine: inputs are method calls, outputs are effects collected in an outbox and taken with
``drain()``.  No sockets, files, threads or wall clock.

Clock and transport
-------------------
The manager shares the node's ``LamportClock`` and stamps messages itself: every ``Send`` effect carries
``stamp = clock.send()``.  The transport sends ``(stamp, msg.to_wire())`` to ``dest``, keeping the drained order
per destination (FIFO: one ZeroMQ connection per ordered pair).  On receipt the transport calls
``on_message(sender, stamp, msg)`` (or ``on_wire`` to decode); the manager calls ``clock.receive(stamp)`` itself.
Other components of the node may use the same clock; they must not call ``receive`` for lock messages.

Protocol (per resource; resources are bytes)
--------------------------------------------
* ``acquire``: tick the clock; the GLSN orders the request.  Broadcast REQUEST(glsn, mode, have) to every other
  live member and queue it locally.  Each receiver queues it (replacing any older entry of that node) and
  answers ACK, carrying its best known version of the value block, the bytes when the asker lacks them and
  they are small (<= ``inline_limit``) or the acker wrote them (or their writer is dead), its recovery marks,
  and the exclusive entries of third parties that precede the request.
* Grant rule (Lamport): the request has no conflicting earlier entry in the local queue (exclusive: it heads the
  queue; shared: only shared entries precede it) and every live member has acknowledged it.  The ACK is later
  than the request, so this implies Lamport's "every member has sent something later"; waiting for the ACK
  itself also guarantees the value bytes have arrived (no heartbeat input is needed).
* Ownership caching: ``release`` keeps the entry (CACHED).  A later ``acquire`` covered by the cached mode is
  granted locally with zero messages.  When a conflicting entry appears, a cached lock is given up at once
  (RELEASE broadcast); a lock in use emits ``ReleaseDemanded`` and is given up when the client releases.
* Value blocks: an exclusive ``release(value)`` creates version ``(entry glsn, seq)``.  RELEASE carries the
  version to everybody and the bytes only to nodes with a pending entry that lack them (small values go to
  everyone).  Exclusive grants happen in GLSN order, so versions ordered as ``(glsn, seq)`` follow history.
* Messages per operation with N live members: acquire of an uncached lock 2(N-1) (REQUEST + ACK); re-acquire of
  a cached lock 0; release 0; transfer of a lock cached elsewhere 3(N-1) (REQUEST, ACK, the holder's RELEASE):
  3 messages with 2 nodes, 6 with 3.  An 8 KiB value travels once per transfer (in the holder's RELEASE).

Membership
----------
``member_removed(d)`` (etcd: d's lease expired; every survivor gets the same removals in the same order):
d's queued entries are dropped and its ACKs are no longer awaited, so the survivors make progress.  Each
exclusive entry of d (held, cached, or perhaps granted: nobody can tell) becomes a *mark* and a
``NeedsRecovery`` effect.  Safety of I2 needs nothing more: d has stopped touching shared storage before its
lease expired (self-fencing, I6), so dropping its entry is like a release; what may be lost is the value it
wrote.  A grant whose GLSN follows an unresolved mark reports ``valid=False``; the holder rebuilds the value
(from disk + d's WAL) and its release writes a version with a later GLSN, which resolves the mark everywhere
it travels.  A survivor that did not see d's entry either got d's RELEASE (so it knows d's last version; if it
lacks the bytes the grant is invalid too) or learns the mark from an ACK (marks and preceding third-party
exclusive entries ride on ACKs).  Marks of later GLSN than our own entry are ignored: such an entry of d was
queued behind ours and could not have been granted first.

``member_added(n)``: node ids are never reused (a restarted node joins under a fresh id).  Every existing member
sends HELLO to n (its own entries, flagged pending or not, plus third-party exclusive entries and its marks)
before anything else and only then processes n's messages, which were buffered until n became a member.  A
joining node (``bootstrap=False``) also sends HELLO to each member of its initial view and defers its own
requests until it has a HELLO from each of them: its clock then exceeds every entry it was told about, so its
requests queue behind them, and any entry made later reaches it as a REQUEST (FIFO) before the ACK it needs.
Pending requests of older members also need n's ACK (n acks the pending entries in their HELLOs).  If a member
of the joiner's initial view is removed before its HELLO arrives, the joiner cannot know what that member held,
so it sets a global mark at its current GLSN: values are invalid for it until rewritten by a later grant.
Members of one bootstrap (``bootstrap=True``, same initial view, empty state) skip the HELLO exchange.

Ordering of XIDs (the ``counter`` value block)
----------------------------------------------
``Granted.glsn`` is the queue entry the grant is ordered by.  Conflicting grants happen in entry-GLSN order and a
cached re-acquire reuses its entry, so XIDs handed out under the lock are ordered by (entry GLSN, local order);
the simulator asserts exactly that.  A re-acquire of a cached lock is ordered at the point the cluster agreed to
(its entry), not at the local moment of the call: without a message it cannot be ordered against a concurrent
remote request.

Limits
------
HELLO carries every version this node knows (bytes only for small values), so its size grows with the number of
resources ever touched; a future ``forget`` for values safely on disk would bound it.  Messages from a node
that is not (yet) a member are buffered up to ``max_buffered``; beyond that ``on_message`` raises ValueError
and FIFO for that node is broken, so the transport should only accept peers etcd has announced.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterable

from locking.clock import LamportClock
from locking.effects import Effect, Granted, NeedsRecovery, ReleaseDemanded, Send, Ticket
from locking.glsn import MAX_LAMPORT, Glsn
from locking.messages import (MAX_RESOURCE, MAX_VALUE, Ack, Hello, HelloEntry, Message, Mode, Release, Request,
                              Version, ZERO_VERSION, from_wire)
from locking.queue import Entry, ResourceState


FROM_FILE = -1
"""``read_source``: the shared file is current for a reader."""
USE_LOCK = -2
"""``read_source``: take the lock (shared) to read."""


class OwnState(Enum):
    DEFERRED = "deferred"   # asked before the joining node learned the queues; no GLSN yet
    PENDING = "pending"     # REQUEST sent, waiting for the head of the queue and every ACK
    HELD = "held"           # granted and in use by the local client
    CACHED = "cached"       # released by the client, ownership kept until another node asks


@dataclass(slots=True)
class Own:
    state: OwnState
    mode: Mode
    glsn: Glsn | None
    acks: set[int] = field(default_factory=set)
    demanded: bool = False
    valid: bool = True


class LockManager:
    """One node's lock manager.  See the module docstring for the protocol."""

    def __init__(self, clock: LamportClock, members: Iterable[int], *, bootstrap: bool = True,
                 inline_limit: int = 64, max_buffered: int = 100_000) -> None:
        self.clock = clock
        self.me = clock.node_id
        self.inline_limit = inline_limit
        self.max_buffered = max_buffered
        self.live: set[int] = set(members) | {self.me}
        self.removed: set[int] = set()
        self.stats: Counter[str] = Counter()
        self._awaiting: set[int] = set() if bootstrap else self.live - {self.me}
        self._res: dict[bytes, ResourceState] = {}
        self._own: dict[bytes, Own] = {}
        self._global_marks: list[Glsn] = []
        self._buffer: dict[int, list[tuple[int, Message]]] = {}
        self._out: list[Effect] = []
        for peer in sorted(self._awaiting):
            self._send(peer, self._hello())

    # ------------------------------------------------------------------ inputs

    def acquire(self, resource: bytes, mode: Mode) -> Ticket:
        """Ask for ``resource``; the grant arrives as a ``Granted`` effect (at once for a cached lock)."""
        _check_resource(resource)
        own = self._own.get(resource)
        if own is not None and own.state is not OwnState.CACHED:
            raise ValueError(f"{resource!r} is already {own.state.value} here")
        if own is not None and own.mode.covers(mode):
            assert own.glsn is not None
            own.state = OwnState.HELD
            self.stats["cached_grants"] += 1
            self._grant(resource, own)
            self._evaluate(resource)
            return Ticket(resource, own.mode, own.glsn)
        if self._awaiting:
            self._own[resource] = Own(OwnState.DEFERRED, mode, None)
            return Ticket(resource, mode, None)
        return self._issue(resource, mode)

    def release(self, resource: bytes, value: bytes | None = None) -> None:
        """Stop using ``resource``.  An exclusive holder may pass the new value block (after a grant with
        ``valid=False``: the rebuilt one); ownership stays cached here unless another node is waiting."""
        own = self._own.get(resource)
        if own is None or own.state is not OwnState.HELD:
            raise ValueError(f"{resource!r} is not held here")
        assert own.glsn is not None
        rs = self._res[resource]
        if own.mode is Mode.EXCLUSIVE:
            if value is not None and (not isinstance(value, bytes) or len(value) > MAX_VALUE):
                raise ValueError("value must be bytes of at most MAX_VALUE")
            new = value if value is not None else (rs.value if own.valid else None)
            if new is not None:
                # (entry glsn, next seq): grants happen in entry order, so this follows history; the max only
                # matters if a recovery lacked its floor (see member_removed) and keeps versions growing.
                rs.version = max(Version(own.glsn, 1), Version(rs.version.glsn, rs.version.seq + 1))
                rs.value = new
                rs.prune()
        elif value is not None:
            raise ValueError("a shared holder cannot write the value block")
        own.state = OwnState.CACHED
        self._evaluate(resource)

    def on_message(self, sender: int, stamp: int, msg: Message) -> None:
        """A lock message from ``sender`` with its Lamport ``stamp`` (FIFO per sender)."""
        if sender == self.me:
            raise ValueError("message from self")
        if sender in self.removed:
            self.stats["dropped_from_removed"] += 1
            return
        if sender not in self.live:
            buffered = self._buffer.setdefault(sender, [])
            if len(buffered) >= self.max_buffered:
                raise ValueError(f"too many messages from non-member {sender}")
            buffered.append((stamp, msg))
            return
        self._deliver(sender, stamp, msg)

    def on_wire(self, sender: int, stamp: int, wire: object) -> None:
        """Decode (raising ``ValueError`` on malformed input) and handle a message."""
        if isinstance(stamp, bool) or not isinstance(stamp, int) or not 0 <= stamp <= MAX_LAMPORT:
            raise ValueError(f"bad Lamport stamp {stamp!r}")
        self.on_message(sender, stamp, from_wire(wire))

    def member_added(self, node: int) -> None:
        """etcd reports a new member: tell it our queues, then process what it already sent us."""
        if node == self.me or node in self.live:
            return
        if node in self.removed:
            self.stats["re_add_ignored"] += 1
            return
        self.live.add(node)
        self._send(node, self._hello())
        for stamp, msg in self._buffer.pop(node, []):
            self._deliver(node, stamp, msg)

    def member_removed(self, node: int, floor: Glsn | None = None) -> None:
        """etcd reports ``node`` gone (its lease expired): drop its entries, stop waiting for it, mark what it
        may have held exclusively.

        ``floor``, if known, is the dead node's last Lamport time (e.g. the last GLSN in its WAL).  The clock
        observes it, so requests made from now on sort after anything the dead node did.  A joining node that
        never got the dead member's HELLO needs it to keep XIDs in GLSN order (I1) and versions growing.
        """
        if floor is not None:
            self.clock.observe(floor.lamport)
        if node == self.me or node in self.removed:
            return
        self.removed.add(node)
        self._buffer.pop(node, None)
        self.live.discard(node)
        if node in self._awaiting:
            self._awaiting.discard(node)
            self._global_marks.append(self.clock.now())
        for resource in sorted(self._res):
            rs = self._res[resource]
            entry = rs.drop(node)
            if entry is not None and entry.mode is Mode.EXCLUSIVE:
                rs.add_mark(entry.glsn)
                self._out.append(NeedsRecovery(resource, node, entry.glsn, rs.version))
        if not self._awaiting:
            self._issue_deferred()
        for resource in sorted(self._own):
            self._evaluate(resource)

    def drain(self) -> list[Effect]:
        """Take the effects produced since the last call, in order."""
        out, self._out = self._out, []
        return out

    # ------------------------------------------------------------- inspection

    @property
    def synced(self) -> bool:
        """Whether this node has learned the queues (a joining node: HELLO from its whole initial view)."""
        return not self._awaiting

    def owned(self, resource: bytes) -> Mode | None:
        """The mode this node owns ``resource`` in (in use or cached), else None."""
        own = self._own.get(resource)
        return own.mode if own is not None and own.state in (OwnState.HELD, OwnState.CACHED) else None

    def in_use(self, resource: bytes) -> Mode | None:
        own = self._own.get(resource)
        return own.mode if own is not None and own.state is OwnState.HELD else None

    def waiting(self) -> list[bytes]:
        """Resources this node has asked for and not yet been granted."""
        return sorted(r for r, o in self._own.items() if o.state in (OwnState.PENDING, OwnState.DEFERRED))

    def read_source(self, resource: bytes) -> int:
        """Where a node that owns nothing of ``resource`` finds its current contents without taking the lock
        (consistent reads, issue 18): ``FROM_FILE`` when no member has an exclusive entry (none can be granted
        without our ACK, and every exclusive holder wrote its pages through before its RELEASE, which we have
        seen), the member of the earliest exclusive entry (the holder, if it is granted; it says if not), or
        ``USE_LOCK`` when this node cannot tell: it has an entry of its own, has not learned the queues yet
        (joining), or a dead member may have left changes unwritten (marks)."""
        if self._awaiting or self._global_marks or resource in self._own:
            return USE_LOCK
        rs = self._res.get(resource)
        if rs is None:
            return FROM_FILE
        if rs.marks:
            return USE_LOCK
        first = min((e for e in rs.entries.values() if e.mode is Mode.EXCLUSIVE), key=lambda e: e.glsn,
                    default=None)
        return FROM_FILE if first is None else first.owner

    def known(self, resource: bytes) -> tuple[Version, bytes | None]:
        rs = self._res.get(resource)
        return (rs.version, rs.value) if rs is not None else (ResourceState().version, b"")

    def queue(self, resource: bytes) -> list[Entry]:
        rs = self._res.get(resource)
        return sorted(rs.entries.values(), key=lambda e: e.glsn) if rs is not None else []

    # --------------------------------------------------------------- internals

    def _state(self, resource: bytes) -> ResourceState:
        rs = self._res.get(resource)
        if rs is None:
            rs = self._res[resource] = ResourceState()
        return rs

    def _send(self, dest: int, msg: Message) -> None:
        self.stats[f"sent_{type(msg).__name__.lower()}"] += 1
        self._out.append(Send(dest, self.clock.send(), msg))

    def _peers(self) -> list[int]:
        return sorted(self.live - {self.me})

    def _issue(self, resource: bytes, mode: Mode) -> Ticket:
        glsn = self.clock.tick()
        rs = self._state(resource)
        have = rs.version if rs.value is not None else None
        rs.put(Entry(self.me, glsn, mode, have))
        self._own[resource] = Own(OwnState.PENDING, mode, glsn)
        for peer in self._peers():
            self._send(peer, Request(resource, glsn, mode, have))
        self._evaluate(resource)
        return Ticket(resource, mode, glsn)

    def _issue_deferred(self) -> None:
        for resource in sorted(r for r, o in self._own.items() if o.state is OwnState.DEFERRED):
            self._issue(resource, self._own.pop(resource).mode)

    def _grant(self, resource: bytes, own: Own) -> None:
        assert own.glsn is not None
        rs = self._res[resource]
        own.valid = rs.valid_for(own.glsn, self._global_marks)
        self._out.append(Granted(resource, own.mode, own.glsn, rs.version, rs.value, own.valid))

    def _evaluate(self, resource: bytes) -> None:
        """Apply the grant rule, then the release-on-demand rule, to our own entry for ``resource``."""
        own = self._own.get(resource)
        if own is None or own.state is OwnState.DEFERRED:
            return
        rs = self._res[resource]
        if (own.state is OwnState.PENDING and not rs.blocked(self.me)
                and all(p in own.acks for p in self.live if p != self.me)):
            own.state = OwnState.HELD
            self._grant(resource, own)
        if own.state in (OwnState.HELD, OwnState.CACHED) and rs.contended(self.me):
            if own.state is OwnState.CACHED:
                self._give_up(resource)
            elif not own.demanded:
                own.demanded = True
                self._out.append(ReleaseDemanded(resource))

    def _give_up(self, resource: bytes) -> None:
        own = self._own.pop(resource)
        assert own.glsn is not None
        rs = self._res[resource]
        rs.drop(self.me)
        for peer in self._peers():
            entry = rs.entries.get(peer)
            if rs.value is not None and len(rs.value) <= self.inline_limit:
                value = rs.value if entry is None or entry.have != rs.version else None
            else:
                value = self._useful_bytes(rs, entry.have) if entry is not None else None
            if value is not None and entry is not None:
                entry.have = rs.version
            self._send(peer, Release(resource, own.glsn, rs.version, value))

    def _useful_bytes(self, rs: ResourceState, have: Version | None) -> bytes | None:
        """The bytes to ship to a node that holds ``have``: only if it lacks them and they are small, ours, or
        orphaned (their writer is gone), so an 8 KiB image is not sent by every member."""
        if rs.value is None or have == rs.version:
            return None
        writer = rs.version.glsn.node
        if len(rs.value) <= self.inline_limit or writer == self.me or writer not in self.live:
            return rs.value
        return None

    def _ack(self, sender: int, resource: bytes, glsn: Glsn, have: Version | None) -> None:
        rs = self._res[resource]
        own = self._own.get(resource)
        value = self._useful_bytes(rs, have)
        if (value is not None and len(value) > self.inline_limit and own is not None
                and own.mode is Mode.EXCLUSIVE and own.state in (OwnState.HELD, OwnState.CACHED)):
            value = None  # we own it exclusively: our RELEASE will carry the newest bytes
        if value is not None:
            rs.entries[sender].have = rs.version
        self._send(sender, Ack(resource, glsn, rs.version, value, tuple(sorted(rs.marks)),
                               rs.exclusive_before(glsn, (self.me, sender))))

    def _deliver(self, sender: int, stamp: int, msg: Message) -> None:
        self.clock.receive(stamp)
        if isinstance(msg, Request):
            self._state(msg.resource).put(Entry(sender, msg.glsn, msg.mode, msg.have))
            self._ack(sender, msg.resource, msg.glsn, msg.have)
            self._evaluate(msg.resource)
        elif isinstance(msg, Ack):
            rs = self._state(msg.resource)
            rs.learn(msg.version, msg.value)
            for mark in msg.marks:
                rs.add_mark(mark)
            for owner, mark in msg.others:
                if owner != self.me and owner not in self.live:
                    rs.add_mark(mark)
            own = self._own.get(msg.resource)
            if own is not None and own.state is OwnState.PENDING and own.glsn == msg.req_glsn:
                own.acks.add(sender)
            self._evaluate(msg.resource)
        elif isinstance(msg, Release):
            rs = self._state(msg.resource)
            rs.drop(sender, msg.glsn)
            rs.learn(msg.version, msg.value)
            self._evaluate(msg.resource)
        else:
            self._on_hello(sender, msg)

    def _on_hello(self, sender: int, msg: Hello) -> None:
        self._awaiting.discard(sender)
        touched: set[bytes] = set()
        for e in msg.entries:
            if e.owner == sender:
                self._state(e.resource).put(Entry(sender, e.glsn, e.mode, e.have))
                touched.add(e.resource)
                if e.pending:
                    self._ack(sender, e.resource, e.glsn, e.have)
            elif e.owner != self.me and e.owner not in self.live and e.mode is Mode.EXCLUSIVE:
                self._state(e.resource).add_mark(e.glsn)
        for resource, mark in msg.marks:
            self._state(resource).add_mark(mark)
        for mark in msg.global_marks:
            if mark not in self._global_marks:
                self._global_marks.append(mark)
        for resource, version, value in msg.values:
            self._state(resource).learn(version, value)
        if not self._awaiting:
            self._issue_deferred()
        for resource in sorted(touched):
            self._evaluate(resource)

    def _hello(self) -> Hello:
        entries: list[HelloEntry] = []
        marks: list[tuple[bytes, Glsn]] = []
        values: list[tuple[bytes, Version, bytes | None]] = []
        for resource in sorted(self._res):
            rs = self._res[resource]
            for e in sorted(rs.entries.values(), key=lambda x: x.glsn):
                if e.owner == self.me:
                    own = self._own[resource]
                    entries.append(HelloEntry(resource, e.owner, e.glsn, e.mode,
                                              own.state is OwnState.PENDING, e.have))
                elif e.mode is Mode.EXCLUSIVE:
                    entries.append(HelloEntry(resource, e.owner, e.glsn, e.mode, False, None))
            marks.extend((resource, m) for m in sorted(rs.marks))
            if rs.version != ZERO_VERSION:
                small = rs.value is not None and len(rs.value) <= self.inline_limit
                values.append((resource, rs.version, rs.value if small else None))
        return Hello(tuple(entries), tuple(marks), tuple(self._global_marks), tuple(values))


def _check_resource(resource: bytes) -> None:
    if not isinstance(resource, bytes) or len(resource) > MAX_RESOURCE:
        raise ValueError("resource must be bytes of at most MAX_RESOURCE")
