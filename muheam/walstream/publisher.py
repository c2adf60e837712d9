"""The merged WAL stream over ZeroMQ: the publisher for ``muheam walmerge --follow --publish`` and the protocol
(its client is ``muheam.walstream.subscriber``; the messages are the typed classes of
``muheam.walstream.messages``).

Protocol (version 1).  The publisher binds a ROUTER; a subscriber connects a DEALER.  Every message is one
msgpack frame.  Requests are maps with an ``op``; replies are maps with a ``type``:

==============================================  ===============================================================
request                                         reply
==============================================  ===============================================================
``{"op": "subscribe", "from_lsn": L,``          ``{"type": "subscribed", "from_lsn", "end_lsn", "system_id",``
``"credit": C}`` (credit optional, default 8)   ``"segment_size", "credit", "version"}``, then ``batch``es
``{"op": "credit", "n": K}``                    more batches (no reply of its own)
``{"op": "ping"}``                              ``{"type": "pong", "end_lsn", "subscribed"}``
``{"op": "status"}``                            ``{"type": "status", "end_lsn", "subscribers", "counters"}``
``{"op": "unsubscribe"}``                       ``{"type": "unsubscribed"}``
anything malformed or refused                   ``{"type": "error", "code", "message"}``
==============================================  ===============================================================

``batch`` is ``{"type": "batch", "records": [[lsn, record bytes], ...], "next_lsn", "end_lsn"}``: whole merged
records (header + payload, ``total_len`` bytes, exactly as in the output segment files at that LSN), in LSN
order.  When the publisher stops it sends ``{"type": "end", "end_lsn"}`` to every subscriber.

**Positions.**  ``from_lsn`` is a position in the merged stream: 0 (its start), the LSN of a record (that record
is sent again), or the *end* of a record, ``align8(lsn + len(record bytes))``: where the next record would go.
A batch's ``next_lsn`` is the end of its last record, and a subscriber that restarts with ``from_lsn`` = the
``next_lsn`` of the last batch it kept (``Subscriber.next_lsn``) gets exactly the records it did not have: the
publisher sends every record with LSN >= ``from_lsn``, so there is no gap and no duplicate.  That is also
``WalReader.end_lsn`` of a copy of the stream (``muheam walmerge --subscribe`` resumes that way).  Any other
value (inside a record, beyond the publisher's end) gets an ``error`` reply (code ``bad_lsn``).

**Replay, then live.**  Records older than what the publisher keeps in memory (the last ``RECENT_BYTES`` of the
stream) are read back from its output files with the ordinary ``WalReader`` (one segment at a time); newer ones
come from memory as they are emitted.

**Flow control by credit.**  A subscriber grants credit in batches; each batch it is sent uses one, and it
grants one back per batch consumed.  A batch holds at most ``BATCH_BYTES`` (or one larger record).  Credit is
capped at ``MAX_CREDIT``, so the publisher never has more than ``MAX_CREDIT * BATCH_BYTES`` queued for one
subscriber plus one output segment read for its replay; a subscriber that grants nothing is simply not sent
anything, and the follower does not wait for it.  Sends never block (``ROUTER_MANDATORY``, non-blocking): a
subscriber that went away is dropped at the first failed send, one silent for ``IDLE_TIMEOUT`` seconds is
dropped too (the client pings every ``PING_EVERY`` seconds while waiting).

**Hostile input.**  Requests above ``MAX_REQUEST_BYTES`` or that are not a map with a known ``op`` and
well-typed fields get an ``error`` reply and are counted (``malformed``); ZeroMQ's ``MAXMSGSIZE`` drops a peer
sending more than 1 MiB in one frame.  Nothing a subscriber sends can raise into the follow loop.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import zmq

from muheam.net import wire
from muheam.errors import ConfigError, MuheamError
from muheam.security.sockets import ServerSecurity, server_socket
from muheam.walstream.messages import (
    DEFAULT_CREDIT as DEFAULT_CREDIT, PROTOCOL_VERSION as PROTOCOL_VERSION, BadMessage, Batch, Credit, End, Error,
    Ping, Pong, Reply, Status, StatusRequest, Subscribe, Subscribed, Unsubscribed, request_from_wire,
)
from walmerge import lsn as lsn_text
from walmerge.errors import WalError, format_lsn
from walmerge.reader import SegmentBatch, WalReader
from walmerge.record import align8
from walmerge.segment import MERGED_NODE_ID, SEGMENT_HEADER_SIZE

log = logging.getLogger("muheam.walstream")

BATCH_BYTES = 256 * 1024
"""A batch stops growing past this many record bytes (it always holds at least one record)."""
BATCH_RECORDS = 8192
MAX_CREDIT = 64
RECENT_BYTES = 8 << 20
"""Record bytes of the newest part of the stream kept in memory for subscribers at (or near) the live end."""
MAX_SUBSCRIBERS = 64
MAX_REQUEST_BYTES = 64 * 1024
ZMQ_MAX_FRAME = 1 << 20
IDLE_TIMEOUT = 60.0
PING_EVERY = 2.0
CLOSE_LINGER_MS = 300
"""How long closing a socket may wait to deliver its last message (``end``, ``unsubscribe``)."""
SERVE_BYTES = 8 << 20
"""Bytes sent per ``serve`` call over all subscribers before the follow loop gets its turn again."""


class StreamError(MuheamError):
    """The publisher refused a request (``code`` names why) or sent something that breaks the protocol."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code


class PublisherUnavailable(MuheamError):
    """Nothing was heard from the publisher for the subscriber's timeout."""


def parse_lsn(text: str) -> int:
    """``walmerge.lsn.parse_lsn`` for operator input: a bad LSN is a ``ConfigError`` (exit 2)."""
    try:
        return lsn_text.parse_lsn(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def record_end(lsn: int, data: bytes) -> int:
    """The position just past a record: where the next record would go (see "Positions")."""
    return align8(lsn + len(data))


# --- publisher ---------------------------------------------------------------------------------------------


@dataclass
class _Sub:
    envelope: list[bytes]
    cursor: int
    """Every record with LSN >= cursor is still to be sent; always a position (see the module docstring)."""
    credit: int
    heard: float
    reader: WalReader | None = None
    batches: Iterator[SegmentBatch] | None = None
    batch: SegmentBatch | None = None
    lsns: Any = None
    pos: int = 0
    stop: int = 0
    sent_records: int = 0


@dataclass
class _Recent:
    """The newest emitted records, in LSN order, bounded by ``RECENT_BYTES``; ``base`` is the position just
    before the first one (every position in ``[base, end]`` that is a record start or end is served from here)."""

    base: int
    lsns: list[int] = field(default_factory=list)
    data: list[bytes] = field(default_factory=list)
    size: int = 0

    def add(self, records: Sequence[tuple[int, bytes]]) -> None:
        for lsn, data in records:
            self.lsns.append(lsn)
            self.data.append(data)
            self.size += len(data)
        if self.size > RECENT_BYTES * 5 // 4:  # prune in chunks: del lst[:k] is a memmove
            k, freed = 0, 0
            while self.size - freed > RECENT_BYTES and k < len(self.lsns) - 1:
                freed += len(self.data[k])
                k += 1
            if k:
                self.base = record_end(self.lsns[k - 1], self.data[k - 1])
                del self.lsns[:k], self.data[:k]
                self.size -= freed

    def is_position(self, lsn: int) -> bool:
        if lsn == self.base:
            return True
        i = bisect.bisect_left(self.lsns, lsn)
        if i < len(self.lsns) and self.lsns[i] == lsn:
            return True
        return i > 0 and record_end(self.lsns[i - 1], self.data[i - 1]) == lsn


class Publisher:
    """Serves the merged stream written to ``out_dir`` (see the module docstring for the protocol).

    The follow loop calls ``publish(records, end_lsn)`` after each poll with what it emitted (records are then
    already in the files), ``wait(timeout)`` to answer requests while idle, and ``close()`` at the end.
    ``end_lsn`` at construction is the end of what ``out_dir`` already holds.  Not thread-safe.
    """

    def __init__(self, endpoint: str, out_dir: str | Path, *, system_id: int, segment_size: int, end_lsn: int,
                 context: zmq.Context[Any] | None = None,
                 security: Callable[[zmq.Context[Any]], ServerSecurity | None] | None = None) -> None:
        """``security``: builds the port's CURVE setup in the publisher's context (its ZAP guard lives there;
        ``muheam.security.setup.publisher_security``); None: a plain port (in-process use, tests)."""
        self.out_dir = Path(out_dir)
        self.system_id = system_id
        self.segment_size = segment_size
        self.end_lsn = end_lsn
        self.counters: Counter[str] = Counter()
        self.subs: dict[bytes, _Sub] = {}
        self._recent = _Recent(end_lsn)
        self._expired_at = 0.0
        self._own_ctx = context is None
        self.ctx = context or zmq.Context()
        self.security = security(self.ctx) if security is not None else None
        self.sock: zmq.Socket[Any] = server_socket(self.ctx, zmq.ROUTER, self.security)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.MAXMSGSIZE, ZMQ_MAX_FRAME)
        self.sock.setsockopt(zmq.SNDHWM, MAX_CREDIT * 2 + 16)
        self.sock.setsockopt(zmq.RCVHWM, 10_000)
        try:
            self.sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self.sock.close(0)
            self._close_guard()
            if self._own_ctx:
                self.ctx.term()
            raise ConfigError(f"--publish: cannot bind {endpoint} ({exc}); give a free tcp://HOST:PORT "
                              "(port 0 or * picks one)") from None
        self.endpoint: str = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    # --- the follow loop's side ----------------------------------------------------------------------------

    def publish(self, records: Sequence[tuple[int, bytes]], end_lsn: int) -> None:
        """``records`` were just appended to the output (in LSN order); the stream now ends at ``end_lsn``."""
        if records:
            self._recent.add(records)
        self.end_lsn = max(self.end_lsn, end_lsn)
        self.serve()

    def pending(self) -> bool:
        """Some subscriber has credit and is behind the end."""
        return any(s.credit > 0 and s.cursor < self.end_lsn for s in self.subs.values())

    def wait(self, timeout: float) -> None:
        """Answer requests and serve subscribers for up to ``timeout`` seconds."""
        deadline = time.monotonic() + max(0.0, timeout)
        self._expire_idle()
        while True:
            self._drain_requests()
            self.serve()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self.pending():
                continue
            if not self.sock.poll(int(left * 1000) + 1) and time.monotonic() >= deadline:
                return

    def serve(self, budget: int = SERVE_BYTES) -> None:
        """Send batches to subscribers with credit, round-robin, about ``budget`` bytes in all."""
        spent = 0
        progress = True
        while progress and spent < budget:
            progress = False
            for ident, sub in list(self.subs.items()):
                if sub.credit <= 0 or sub.cursor >= self.end_lsn:
                    continue
                try:
                    records = self._next_batch(sub)
                except WalError as exc:
                    self._error(sub.envelope, "replay_failed",
                                f"the publisher could not read its output at {format_lsn(sub.cursor)}: {exc}")
                    log.error("walstream: replay for a subscriber failed: %s", exc)
                    self._drop(ident, "replay_failed")
                    continue
                if not records:
                    continue
                if not self._send(sub.envelope, Batch(tuple(records), sub.cursor, self.end_lsn)):
                    self._drop(ident, "unreachable")
                    continue
                sub.credit -= 1
                size = sum(len(d) for _, d in records)
                sub.sent_records += len(records)
                self.counters["batches_sent"] += 1
                self.counters["records_sent"] += len(records)
                self.counters["bytes_sent"] += size
                spent += size
                progress = True

    def close(self, linger: float = 0.0) -> None:
        """Keep serving for up to ``linger`` seconds while subscribers are behind, then send ``end`` and stop."""
        deadline = time.monotonic() + linger
        while time.monotonic() < deadline and any(s.cursor < self.end_lsn for s in self.subs.values()):
            self.wait(min(0.05, max(0.0, deadline - time.monotonic())))
        for ident, sub in list(self.subs.items()):
            self._send(sub.envelope, End(self.end_lsn))
            self._close_replay(sub)
        self.subs.clear()
        self.sock.close(CLOSE_LINGER_MS)  # let the 'end' messages out, but never wait long for a dead peer
        self._close_guard()
        if self._own_ctx:
            self.ctx.term()

    def _close_guard(self) -> None:
        if self.security is not None:
            self.security.guard.close()

    def status(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "end_lsn": self.end_lsn, "subscribers": len(self.subs),
                "counters": dict(sorted(self.counters.items())),
                "security": dict(self.security.guard.counters) if self.security is not None else None}

    # --- requests ------------------------------------------------------------------------------------------

    def _drain_requests(self, limit: int = 1000) -> None:
        for _ in range(limit):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._handle(frames)

    def _handle(self, frames: list[bytes]) -> None:
        self.counters["requests"] += 1
        if len(frames) < 2:
            self.counters["malformed"] += 1
            return
        envelope, body = frames[:-1], frames[-1]
        if len(envelope) > 2 or (len(envelope) == 2 and envelope[1] != b""):  # DEALER: [id]; REQ: [id, b""]
            self._malformed([envelope[0]], "a request is one frame (a DEALER) or an empty delimiter and one frame "
                                           "(a REQ)")
            return
        try:
            req = request_from_wire(wire.unpack(body, MAX_REQUEST_BYTES))
        except wire.Malformed as exc:
            self._malformed(envelope, f"request is not a msgpack map: {exc}")
            return
        except BadMessage as exc:
            self._malformed(envelope, str(exc))
            return
        ident = envelope[0]
        sub = self.subs.get(ident)
        if sub is not None:
            sub.heard = time.monotonic()
        if isinstance(req, Subscribe):
            self._subscribe(envelope, req)
        elif isinstance(req, Credit):
            if sub is None:
                self._error(envelope, "not_subscribed", "credit for a subscription this publisher does not have "
                                                         "(it restarted or dropped it): subscribe again")
            else:
                sub.credit = min(MAX_CREDIT, sub.credit + req.n)
        elif isinstance(req, Ping):
            self._send(envelope, Pong(self.end_lsn, sub is not None))
        elif isinstance(req, StatusRequest):
            self._send(envelope, Status(self.endpoint, self.end_lsn, len(self.subs), dict(self.counters)))
        else:
            if sub is not None:
                self._drop(ident, None)
            self._send(envelope, Unsubscribed())

    def _subscribe(self, envelope: list[bytes], req: Subscribe) -> None:
        start = req.from_lsn
        ident = envelope[0]
        if ident not in self.subs and len(self.subs) >= MAX_SUBSCRIBERS:
            self._error(envelope, "busy", f"this publisher already serves {MAX_SUBSCRIBERS} subscribers")
            return
        if start > self.end_lsn:
            self._error(envelope, "bad_lsn", f"LSN {format_lsn(start)} is beyond the end of the merged stream "
                                             f"({format_lsn(self.end_lsn)})")
            return
        sub = _Sub(list(envelope), start, min(req.credit, MAX_CREDIT), time.monotonic())
        old = self.subs.pop(ident, None)
        if old is not None:
            self._close_replay(old)
            self.counters["resubscribes"] += 1
        if start != 0 and start != self.end_lsn and not (start >= self._recent.base
                                                         and self._recent.is_position(start)):
            try:
                ok = self._open_replay(sub, check=True)
            except WalError as exc:
                self._error(envelope, "replay_failed", f"the publisher could not read its output: {exc}")
                return
            if not ok:
                self._close_replay(sub)
                self._error(envelope, "bad_lsn", f"LSN {format_lsn(start)} is not a position of the merged stream "
                                                 "(use 0, a record's LSN or the end of a record: the next_lsn of "
                                                 "the last batch kept)")
                return
        self.subs[ident] = sub
        self.counters["subscribes"] += 1
        self._send(envelope, Subscribed(start, self.end_lsn, self.system_id, self.segment_size, sub.credit))
        self.serve()

    def _malformed(self, envelope: list[bytes], message: str) -> None:
        self.counters["malformed"] += 1
        self._error(envelope, "malformed", message)

    def _error(self, envelope: list[bytes], code: str, message: str) -> None:
        self.counters["errors_sent"] += 1
        self._send(envelope, Error(code, message))

    def _send(self, envelope: list[bytes], msg: Reply) -> bool:
        try:
            self.sock.send_multipart([*envelope, wire.pack(msg.to_wire())], zmq.NOBLOCK)
            return True
        except zmq.Again:
            self.counters["send_blocked"] += 1
        except zmq.ZMQError:  # EHOSTUNREACH: the peer is gone
            self.counters["send_unreachable"] += 1
        return False

    def _drop(self, ident: bytes, why: str | None) -> None:
        sub = self.subs.pop(ident, None)
        if sub is not None:
            self._close_replay(sub)
            if why:
                self.counters[f"dropped_{why}"] += 1

    def _expire_idle(self) -> None:
        now = time.monotonic()
        if now - self._expired_at < 1.0:
            return
        self._expired_at = now
        for ident, sub in list(self.subs.items()):
            if now - sub.heard > IDLE_TIMEOUT:
                self._drop(ident, "idle")

    # --- reading the stream --------------------------------------------------------------------------------

    def _next_batch(self, sub: _Sub) -> list[tuple[int, bytes]]:
        """Up to one batch of records at or after ``sub.cursor``; advances the cursor past them."""
        if sub.cursor >= self._recent.base:
            self._close_replay(sub)
            return self._from_recent(sub)
        return self._from_files(sub)

    def _from_recent(self, sub: _Sub) -> list[tuple[int, bytes]]:
        r = self._recent
        i = bisect.bisect_left(r.lsns, sub.cursor)
        out: list[tuple[int, bytes]] = []
        size = 0
        while i < len(r.lsns) and (not out or (size < BATCH_BYTES and len(out) < BATCH_RECORDS)):
            out.append((r.lsns[i], r.data[i]))
            size += len(r.data[i])
            i += 1
        sub.cursor = record_end(*out[-1]) if out else max(sub.cursor, self.end_lsn)
        return out

    def _open_replay(self, sub: _Sub, *, check: bool = False) -> bool:
        """Start reading the output files at the segment holding the cursor; with ``check``, return whether the
        cursor is a position of the stream (see the module docstring)."""
        self.counters["replays"] += 1
        size = self.segment_size
        seg = sub.cursor - sub.cursor % size
        sub.stop = self.end_lsn
        sub.reader = WalReader(self.out_dir, node_id=MERGED_NODE_ID, system_id=self.system_id, start_lsn=seg,
                               stop_lsn=sub.stop)
        sub.batches = sub.reader.batches()
        sub.batch = None
        if not self._load_batch(sub):
            return not check or sub.cursor - seg in (0, SEGMENT_HEADER_SIZE)
        if not check:
            return True
        assert sub.batch is not None
        first = int(sub.lsns[0])
        if first - first % size != seg:  # the cursor's segment holds no record: only its start is a position
            return sub.cursor - seg in (0, SEGMENT_HEADER_SIZE)
        i = sub.pos
        if i < len(sub.lsns) and int(sub.lsns[i]) == sub.cursor:
            return True
        if i == 0:
            return sub.cursor - seg in (0, SEGMENT_HEADER_SIZE)
        tl = int(sub.batch.headers["total_len"][i - 1])
        return align8(int(sub.lsns[i - 1]) + tl) == sub.cursor

    def _load_batch(self, sub: _Sub) -> bool:
        """Next segment batch of the replay into ``sub``; False when the replay is done."""
        assert sub.batches is not None and sub.reader is not None
        b = next(sub.batches, None)
        if b is None:
            if sub.reader.torn is not None:
                raise WalError(str(sub.reader.torn))
            return False
        sub.batch = b
        sub.lsns = b.headers["lsn"].astype(np.int64)
        sub.pos = int(np.searchsorted(sub.lsns, sub.cursor))
        return True

    def _from_files(self, sub: _Sub) -> list[tuple[int, bytes]]:
        if sub.batches is None:
            self._open_replay(sub)
        out: list[tuple[int, bytes]] = []
        size = 0
        while not out or (size < BATCH_BYTES and len(out) < BATCH_RECORDS):
            b = sub.batch
            if b is None or sub.pos >= len(sub.lsns):
                if sub.batches is None or not self._load_batch(sub):
                    # every record below the replay's stop was sent: the stop is the cursor now
                    sub.cursor = max(sub.cursor, sub.stop)
                    self._close_replay(sub)
                    break
                continue
            i = sub.pos
            off, tl = int(b.offsets[i]), int(b.headers["total_len"][i])
            lsn = int(sub.lsns[i])
            out.append((lsn, b.data[off:off + tl]))
            size += tl
            sub.pos += 1
            sub.cursor = align8(lsn + tl)
            if sub.cursor >= self._recent.base:
                self._close_replay(sub)
                break
        return out

    @staticmethod
    def _close_replay(sub: _Sub) -> None:
        sub.reader = sub.batches = sub.batch = sub.lsns = None
        sub.pos = 0


# --- subscriber --------------------------------------------------------------------------------------------


__all__ = ["BATCH_BYTES", "DEFAULT_CREDIT", "MAX_CREDIT", "PROTOCOL_VERSION", "Publisher", "PublisherUnavailable",
           "StreamError", "parse_lsn", "record_end"]
