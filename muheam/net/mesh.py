"""The peer mesh: one ZeroMQ ROUTER per node for inbound traffic, one DEALER to each peer for outbound.

One DEALER per ordered pair of nodes gives FIFO per connection; ``muheam.net.peerlink`` makes it the reliable FIFO
channel Lamport's algorithms need across reconnects (sequence numbers, cumulative acknowledgements,
retransmission: a TCP reset or a full send queue loses nothing), invisibly to the layers above, which keep calling
``send``/``broadcast``/``on``; the node's loop calls ``tick`` every turn for the link's timers.  Every message
carries sender, epoch and a Lamport stamp; the mesh advances the node's clock on every send and on the first
delivery of a message (a retransmission keeps its original stamp), so everything above it (lock manager, commit
notifications) is ordered by the same clock.  Peers are connected and dropped as
the membership view changes.  A malformed frame is dropped and counted; it never raises into the loop.

Not thread-safe: the node's event loop owns the mesh and its sockets.
"""

from __future__ import annotations

import logging
import struct
import time
from collections import Counter
from typing import Any, Callable

import zmq

from locking.clock import LamportClock
from muheam.net import wire
from muheam.net.peerlink import Inbound, Outbound
from muheam.security.sockets import (
    MONITORED, ClientSecurity, HandshakeWatch, RefusalLog, ServerSecurity, client_socket, server_socket, user_id,
)

log = logging.getLogger("muheam.transport")
_POLLIN = int(zmq.POLLIN)

Handler = Callable[[wire.PeerMessage], None]


def routing_id(node_id: int, epoch: int) -> bytes:
    return f"n{node_id}e{epoch}".encode()


def harden(sock: zmq.Socket[Any]) -> None:
    """Options every listening socket gets: bounded message size, no lingering, no blocking on slow peers."""
    sock.setsockopt(zmq.MAXMSGSIZE, wire.ZMQ_MAXMSGSIZE)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.RCVHWM, 100_000)


def monitor(sock: zmq.Socket[Any]) -> zmq.Socket[Any]:
    """Garbage that never completed a ZeroMQ handshake (and, under CURVE, a connection with no key or a refused
    one) shows up only on a socket monitor (``muheam.security.sockets.HandshakeWatch``)."""
    return sock.get_monitor_socket(MONITORED)




class Link:
    """The outgoing side of one peer incarnation: its DEALER and the frames it still owes the peer."""

    __slots__ = ("epoch", "endpoint", "sock", "out", "warned")

    def __init__(self, epoch: int, endpoint: str, sock: zmq.Socket[Any]) -> None:
        self.epoch = epoch
        self.endpoint = endpoint
        self.sock = sock
        self.out = Outbound()
        self.warned = False


class Stream:
    """The incoming side of one sender incarnation."""

    __slots__ = ("epoch", "inbound")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.inbound: Inbound[wire.PeerMessage] = Inbound()


STALLED_TIMEOUTS = 2
"""Retransmission timeouts in a row, with no acknowledgement between them, after which a link redials."""
DEFERRED_RETRY = 0.002
"""Seconds before frames a full socket refused are offered again."""
MAX_STRANGERS = 64
"""Incoming streams kept for sender incarnations that are not (or no longer) peers: garbage cannot make the table
grow."""


class Mesh:
    """``server``/``dial``: CURVE (``muheam.security``): the ROUTER's key and ZAP domain, and how to reach peer N
    (our key, its key).  None: plain sockets (``security = "none"``), identities taken from routing ids."""

    def __init__(self, ctx: zmq.Context[Any], node_id: int, clock: LamportClock, endpoint: str,
                 server: ServerSecurity | None = None, dial: Callable[[int], ClientSecurity] | None = None,
                 peer_of: Callable[[str | None], int | None] | None = None) -> None:
        self.ctx = ctx
        self.node_id = node_id
        self.epoch = 0
        self.clock = clock
        self.endpoint = endpoint
        self.dial = dial
        self.peer_of = peer_of
        self.secure = server is not None
        self.refusals = RefusalLog()
        self.router: zmq.Socket[Any] = server_socket(ctx, zmq.ROUTER, server)
        harden(self.router)
        if not self.secure:
            # Plain sockets: a peer is known by its routing id, and a redialed link must get its id back.  Under
            # CURVE a peer is known by its key (ZAP User-Id): DEALERs leave their routing id to the ROUTER (unique
            # per connection), so there is nothing to hand over and nothing to take over.
            self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.router.bind(endpoint)
        self.monitor = monitor(self.router)
        self.peers: dict[int, Link] = {}
        # incoming streams by (sender, sender epoch): a frame claiming a newer incarnation of a peer (its restart,
        # before the membership says so; or forged) starts a stream of its own and cannot disturb the peer's
        self.streams: dict[tuple[int, int], Stream] = {}
        self.retired: dict[int, int] = {}  # node id -> highest epoch dropped: never connected to again
        self.handlers: dict[str, Handler] = {}
        self.self_clocked: set[str] = set()
        self.counters: Counter[str] = Counter()
        self.handshakes = HandshakeWatch(self.counters, "peer", self.refusals if self.secure else None)
        self._label_keys: dict[str, tuple[str, str]] = {}
        # between cork() and uncork() (one turn of the node's loop): messages per peer, sent as one bundle
        self._corked: dict[int, list[tuple[str, int, Any, str]]] | None = None
        # messages that may wait for the next frame to their peer, or until their due time (``send(lazy=...)``)
        self._lazy: dict[int, list[tuple[str, int, Any, str]]] = {}
        self._lazy_due: dict[int, float] = {}

    def on(self, kind: str, handler: Handler, clocked: bool = True) -> None:
        """Dispatch ``kind`` to ``handler``; ``clocked=False`` for protocols that merge stamps themselves."""
        if kind in (wire.ACK_KIND, wire.BUNDLE_KIND):
            raise ValueError(f"message kind {kind!r} is the link's own")
        self.handlers[kind] = handler
        if not clocked:
            self.self_clocked.add(kind)

    # membership ---------------------------------------------------------------------------------------------
    def connect(self, node_id: int, epoch: int, endpoint: str) -> None:
        """(Re)connect to a peer incarnation; an older incarnation's socket and link state are discarded, so
        sequence numbers start again for the new incarnation pair.  An incarnation once dropped is never
        connected again: its receiver may still expect the old numbering."""
        if node_id == self.node_id or epoch <= self.retired.get(node_id, -1):
            return
        current = self.peers.get(node_id)
        if current is not None:
            if current.epoch >= epoch:
                return
            self.flush_to(node_id)  # what was sent to the old incarnation goes to it, as unbundled it would
            current.sock.close(0)
        for key in [k for k in self.streams if k[0] == node_id and k[1] < epoch]:
            del self.streams[key]
        self.peers[node_id] = Link(epoch, endpoint, self._dealer(node_id, endpoint))
        self.send(node_id, "hello", {"endpoint": self.endpoint})

    def _dealer(self, node_id: int, endpoint: str) -> zmq.Socket[Any]:
        sock = client_socket(self.ctx, zmq.DEALER, self.dial(node_id) if self.dial is not None else None)
        if not self.secure:
            sock.setsockopt(zmq.ROUTING_ID, routing_id(self.node_id, self.epoch))
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.IMMEDIATE, 0)
        sock.connect(endpoint)
        return sock

    def drop(self, node_id: int, epoch: int | None = None) -> None:
        """Forget a peer incarnation (it left the membership): its socket, the frames it never acknowledged and
        whatever of its frames waited behind a gap."""
        current = self.peers.get(node_id)
        if current is not None and (epoch is None or current.epoch <= epoch):
            self.flush_to(node_id)
            current.sock.close(0)
            del self.peers[node_id]
            self.retired[node_id] = max(self.retired.get(node_id, -1), current.epoch)
        for (node, stream_epoch), stream in self.streams.items():
            if node == node_id and (epoch is None or stream_epoch <= epoch):
                stream.inbound.forget_held()

    def peer_epoch(self, node_id: int) -> int | None:
        current = self.peers.get(node_id)
        return None if current is None else current.epoch

    # traffic ------------------------------------------------------------------------------------------------
    def send(self, dest: int, kind: str, body: Any, label: str | None = None, lazy: float | None = None) -> bool:
        return self.send_stamped(dest, kind, body, None, label, lazy)

    def _account(self, label: str, size: int) -> None:
        """Messages and bytes sent per label (``sent.<label>``, ``bytes.<label>``): what the cluster costs on the
        wire, by purpose, for the benchmarks.  Two counter bumps per frame."""
        keys = self._label_keys.get(label)
        if keys is None:
            keys = self._label_keys[label] = ("sent." + label, "bytes." + label)
        self.counters[keys[0]] += 1
        self.counters[keys[1]] += size

    def sent_by_label(self) -> dict[str, list[int]]:
        """Label -> [messages, bytes] sent so far (the per-label counters of ``_account``, for the metrics)."""
        return {label: [self.counters[m], self.counters[b]] for label, (m, b) in sorted(self._label_keys.items())}

    def send_stamped(self, dest: int, kind: str, body: Any, stamp: int | None, label: str | None = None,
                     lazy: float | None = None) -> bool:
        """Send with a stamp the caller already took from the clock (None: take one now).  True once the link
        holds the message: from then on it is delivered (exactly once, in order) unless the peer leaves.
        ``label`` names the purpose for the per-label counters (default: the kind): the mesh does not know what
        a body means, its sender does (a lock message carrying a page image, say).  While corked the message
        waits for ``uncork`` (same stamp, same order), and goes with the others to the same peer in one frame.
        ``lazy``: the message may wait up to that many seconds for another frame to the same peer to ride on
        (it goes first in it: the order per peer is the order of the sends, only its delivery is later)."""
        if dest not in self.peers:
            self.counters["send_no_peer"] += 1
            return False
        if stamp is None:
            stamp = self.clock.send()
        item = (kind, stamp, body, label or kind)
        corked = self._corked
        if lazy is not None and (corked is None or dest not in corked):
            self._lazy.setdefault(dest, []).append(item)
            due = time.monotonic() + lazy
            self._lazy_due[dest] = min(due, self._lazy_due.get(dest, due))
            self.counters["lazy"] += 1
            return True
        # everything held lazily for dest was sent before this: it goes first (and a corked list for dest, once
        # it exists, takes the lazy sends too, so both never hold messages for one peer at once)
        held = self._lazy.pop(dest, None)
        if held is not None:
            del self._lazy_due[dest]
        if corked is not None:
            queue = corked.setdefault(dest, [])
            if held:
                queue.extend(held)
            queue.append(item)
            return True
        if held:
            held.append(item)
            self._flush_corked(dest, held)
            return True
        return self._send_frame(dest, kind, body, stamp, label or kind)

    # bundling -----------------------------------------------------------------------------------------------
    def cork(self) -> None:
        """Hold messages until ``uncork``: the node's loop corks for one turn, so an acknowledgement, an outcome
        and the next prepare for one peer, produced in the same turn, cost one frame, one send and one receive
        instead of three.  Order per peer and every stamp stay as they were."""
        if self._corked is None:
            self._corked = {}

    def uncork(self) -> None:
        """Send what was held: one frame per peer (a ``bundle`` when there are several messages)."""
        corked, self._corked = self._corked, None
        if corked:
            for dest, items in corked.items():
                self._flush_corked(dest, items)

    def flush_to(self, dest: int) -> None:
        """Send what is held for ``dest`` now, lazy then corked: its link is about to change (reconnect or drop),
        or the loop is about to block on long work and what it said before must not wait until the turn ends."""
        if dest in self._lazy:
            del self._lazy_due[dest]
            self._flush_corked(dest, self._lazy.pop(dest))
        if self._corked and dest in self._corked:
            self._flush_corked(dest, self._corked.pop(dest))

    def _flush_lazy(self, now: float) -> None:
        """Send the lazy messages whose time is up (nothing else went to their peer meanwhile)."""
        for dest in [d for d, due in self._lazy_due.items() if due <= now]:
            del self._lazy_due[dest]
            self._flush_corked(dest, self._lazy.pop(dest))

    def _flush_corked(self, dest: int, items: list[tuple[str, int, Any, str]]) -> None:
        if len(items) == 1:
            kind, stamp, body, label = items[0]
            self._send_frame(dest, kind, body, stamp, label)
            return
        for _, _, body, label in items:  # per purpose as if sent alone (a frame's envelope is ~30 bytes)
            self._account(label, len(wire.pack(body)) + 30)
        self.counters["bundled"] += len(items)
        self._send_frame(dest, wire.BUNDLE_KIND, [[k, st, b] for k, st, b, _ in items],
                         max(st for _, st, _, _ in items), None)

    def _send_frame(self, dest: int, kind: str, body: Any, stamp: int, label: str | None) -> bool:
        link = self.peers.get(dest)
        if link is None:
            self.counters["send_no_peer"] += 1
            return False
        out = link.out
        stream = self.streams.get((dest, link.epoch))
        ack = stream.inbound.take_ack() if stream is not None else 0
        frame = wire.encode_peer(self.node_id, self.epoch, stamp, kind, body, dest_epoch=link.epoch, seq=out.next_seq,
                                 ack=ack)
        self.counters["sent"] += 1
        if label is not None:
            self._account(label, len(frame))
        else:
            self.counters["bundles"] += 1
        if out.sent_to == out.high == out.next_seq - 1:  # nothing waits ahead of it: straight to the socket
            try:
                link.sock.send(frame, zmq.NOBLOCK)
            except zmq.Again:
                self.counters["send_deferred"] += 1
                out.push(frame)
            else:
                out.push_sent(frame, time.monotonic())
        else:
            out.push(frame)
            self._pump(link, time.monotonic())
        if out.over_bound and not link.warned:
            link.warned = True
            self.counters["unacked_over_bound"] += 1
            log.warning("node %d (epoch %d) has not acknowledged %d bytes; keeping them until it does or leaves",
                        dest, link.epoch, out.bytes)
        return True

    def _pump(self, link: Link, now: float) -> None:
        """Hand the link's due frames to its socket until it pushes back (they stay queued: sent later)."""
        out = link.out
        while True:
            frame = out.next_frame()
            if frame is None:
                return
            try:
                link.sock.send(frame, zmq.NOBLOCK)
            except zmq.Again:
                self.counters["send_deferred"] += 1
                return
            if out.sent(now):
                self.counters["retransmitted"] += 1
                self._account("retransmit", len(frame))

    def broadcast(self, kind: str, body: Any, label: str | None = None) -> int:
        """One clock tick per message, as Lamport's rule has it; returns how many peers were sent to."""
        return sum(self.send(dest, kind, body, label) for dest in list(self.peers))

    def tick(self, now: float) -> None:
        """Timers: retransmit what timed out, send acknowledgements nothing carried, retry deferred frames.
        The node's loop calls it every turn (cheap: a few comparisons per peer)."""
        if self._lazy_due:
            self._flush_lazy(now)
        for link in self.peers.values():
            out = link.out
            if out.expire(now):
                self.counters["rto_expired"] += 1
                if out.stalled >= STALLED_TIMEOUTS:
                    self._redial(link)
            if out.unsent:
                self._pump(link, now)
            if link.warned and not out.over_bound:
                link.warned = False
        for (sender, _), stream in self.streams.items():
            inbound = stream.inbound
            if inbound.ack_due(now):
                back = self.peers.get(sender)
                if back is None:
                    continue  # not connected (yet): the sender resends until we can answer
                frame = wire.encode_ack(self.node_id, self.epoch, stream.epoch, inbound.delivered)
                try:
                    back.sock.send(frame, zmq.NOBLOCK)
                except zmq.Again:
                    continue
                inbound.take_ack()
                self.counters["ack_sent"] += 1
                self._account(wire.ACK_KIND, len(frame))

    def _redial(self, link: Link) -> None:
        """Replace the link's socket by a fresh one (the link's numbering and frames stay as they are).

        After a TCP reset, a DEALER whose queue held frames at that moment can come back connected but never send
        again: the new connection carries the ZeroMQ handshake and nothing else, so resending into that socket
        is in vain.  A link whose timeouts repeat without any acknowledgement gets a new socket; the receiver's
        ROUTER hands the routing id over to the new connection."""
        link.sock.close(0)
        node_id = next(n for n, candidate in self.peers.items() if candidate is link)
        link.sock = self._dealer(node_id, link.endpoint)
        link.out.stalled = 0
        self.counters["redialed"] += 1

    def next_timer(self, now: float) -> float | None:
        """The earliest time ``tick`` has something to do (monotonic seconds), None if nothing is pending."""
        when: float | None = min(self._lazy_due.values()) if self._lazy_due else None
        for link in self.peers.values():
            if link.out.unsent:  # the socket pushed back: try again soon, without spinning on it
                return now + DEFERRED_RETRY
            t = link.out.next_event()
            if t is not None and (when is None or t < when):
                when = t
        for (sender, _), stream in self.streams.items():
            t = stream.inbound.next_event()
            if t is not None and sender in self.peers and (when is None or t < when):
                when = t
        return when

    def link_state(self) -> dict[str, Any]:
        """Per peer: where its outgoing and incoming streams stand (status output; diagnosing a stalled round)."""
        state: dict[str, Any] = {}
        for node, link in self.peers.items():
            out = link.out
            state[str(node)] = {"epoch": link.epoch, "next_seq": out.next_seq, "acked": out.acked,
                                "unacked_bytes": out.bytes, "rto_ms": round(out.rto * 1000), "timeouts": out.timeouts}
        for (node, epoch), stream in self.streams.items():
            inbound = stream.inbound
            state.setdefault(str(node), {}).setdefault("in", []).append(
                {"epoch": epoch, "delivered": inbound.delivered, "held": len(inbound.held)})
        return state

    def receive_ready(self) -> int:
        """Drain the ROUTER without blocking; returns the number of frames handled."""
        handled = 0
        now = time.monotonic()
        while handled < 10_000 and int(self.router.getsockopt(zmq.EVENTS)) & _POLLIN:  # (not a zmq.Again per batch)
            try:
                if self.secure:
                    parts = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
                    key_of = user_id(parts[-1])
                    frames = [p.bytes for p in parts]
                else:
                    frames, key_of = self.router.recv_multipart(zmq.NOBLOCK, copy=True), None
            except zmq.Again:
                break
            handled += 1
            self._receive(frames, now, key_of)
        return handled

    def _receive(self, frames: list[bytes], now: float, key_of: str | None = None) -> None:
        if len(frames) != 2:
            self.counters["malformed"] += 1
            self.counters["malformed_frame_count"] += 1
            return
        ident, frame = frames
        if len(frame) > wire.MAX_PEER_FRAME:
            self.counters["malformed"] += 1
            self.counters["oversized"] += 1
            return
        try:
            msg = wire.decode_peer(frame)
        except wire.Malformed:
            self.counters["malformed"] += 1
            return
        if self.secure:
            # the sender is whoever holds the key this connection authenticated with, whatever the frame claims
            owner = self.peer_of(key_of) if self.peer_of is not None else None
            if owner != msg.sender:
                self.counters["malformed"] += 1
                self.counters["spoofed"] += 1
                self.counters["wrong_key"] += 1
                self.refusals("dropped a peer frame claiming node %d from a connection with %s", msg.sender,
                              f"node {owner}'s key" if owner is not None else "no node key (revoked or replaced)")
                return
        elif ident[:1] == b"\x00":
            # ZeroMQ names a connection with a generated id (a zero byte first, which no peer's id has) when a
            # newer connection took over its routing id (ROUTER_HANDOVER: the peer redialed); what was still
            # queued on the old one arrives under that name.  The link resends whatever it carried.
            self.counters["handover_leftover"] += 1
            return
        elif ident != routing_id(msg.sender, msg.epoch):
            self.counters["malformed"] += 1
            self.counters["spoofed"] += 1
            return
        known = self.peer_epoch(msg.sender)
        if known is not None and msg.epoch < known:
            self.counters["stale_epoch"] += 1
            return
        if msg.dest_epoch != self.epoch:  # meant for an earlier incarnation of this node (or forged)
            self.counters["wrong_dest_epoch"] += 1
            return
        link = self.peers.get(msg.sender)
        if msg.ack and link is not None and link.epoch == msg.epoch and link.out.ack(msg.ack, now):
            if link.out.unsent:
                self._pump(link, now)
        if msg.seq == 0:
            self.counters["ack_received"] += 1
            return
        key = (msg.sender, msg.epoch)
        stream = self.streams.get(key)
        if stream is None:
            if known != msg.epoch and sum(1 for n, e in self.streams if self.peer_epoch(n) != e) >= MAX_STRANGERS:
                self.counters["too_many_streams"] += 1
                return
            stream = self.streams[key] = Stream(msg.epoch)
        inbound = stream.inbound
        dup, held, lost = inbound.duplicates, inbound.held_back, inbound.hold_dropped
        ready = inbound.accept(msg.seq, msg, now, len(frame))
        if not ready:
            self.counters["duplicate"] += inbound.duplicates - dup
            self.counters["held_back"] += inbound.held_back - held
            self.counters["hold_dropped"] += inbound.hold_dropped - lost
            return
        for item in ready:
            self._dispatch(item)

    def _dispatch(self, msg: wire.PeerMessage) -> None:
        """First (and only) delivery of a message: merge its stamp, then hand it to its protocol."""
        if msg.kind == wire.BUNDLE_KIND:
            try:
                inner = wire.decode_bundle(msg.body)
            except wire.Malformed as exc:
                self.counters["malformed"] += 1
                self.counters["rejected_body"] += 1
                log.warning("dropped a bundle from node %d: %s", msg.sender, exc)
                return
            for kind, stamp, body in inner:
                self._dispatch(msg._replace(kind=kind, stamp=stamp, body=body))
            return
        if msg.kind not in self.self_clocked:
            self.clock.receive(msg.stamp)
        self.counters["received"] += 1
        handler = self.handlers.get(msg.kind)
        if handler is None:
            self.counters["unknown_kind"] += 1
            return
        try:
            handler(msg)
        except (ValueError, TypeError, KeyError, struct.error) as exc:  # (a field too big to pack is malformed)
            self.counters["malformed"] += 1
            self.counters["rejected_body"] += 1
            log.warning("dropped %s from node %d: %s", msg.kind, msg.sender, exc)

    def drain_monitor(self) -> None:
        self.handshakes.drain(self.monitor)

    def close(self) -> None:
        for link in self.peers.values():
            link.sock.close(0)
        self.peers.clear()
        self.router.disable_monitor()
        self.monitor.close(0)
        self.router.close(0)
