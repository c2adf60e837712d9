"""Reliable FIFO delivery over a channel that may lose frames: the state machine of one peer link, no sockets.

ZeroMQ gives FIFO per connection, not across connections: a TCP reset loses what was in the dead connection's
buffers, and ZeroMQ reconnects without telling anyone.  Lamport's algorithms (the lock manager, the commit rounds)
need every message of an ordered pair delivered exactly once and in order, or they wait for ever.  This module is
what restores that, in the style of ``locking.manager``: pure classes driven by frames and time.

* ``Outbound`` (the sender's half of one incarnation pair): every frame gets the next sequence number and is kept,
  as the exact bytes first sent, until the receiver acknowledges it.  When no acknowledgement has advanced for a
  retransmission timeout (RTO) the sender goes back to the first unacknowledged frame and sends everything again
  (go-back-N; the receiver drops what it already has), doubling the RTO up to ``RTO_MAX`` until one advances.  The
  RTO follows the measured round trip (Jacobson's estimator, Karn's rule: no sample from a resent frame), never
  below ``RTO_MIN``, so a peer whose loop is merely busy is not flooded with copies.  ``next_frame``/``sent`` let
  the caller stop when the socket pushes back and go on later: nothing is ever dropped here.
* ``Inbound`` (the receiver's half, one per sender incarnation): delivers in sequence order, each frame once;
  duplicates are counted and dropped, frames after a gap are held back (at most ``HOLD_MAX`` of them; beyond, they
  are dropped and come again with the retransmission) until the gap is filled.  Acknowledgements are cumulative
  (the highest sequence number delivered with none missing before it): one number acknowledges any run of
  frames, a lost acknowledgement is repaired by the next one, and an acknowledgement that is late, repeated or
  out of date is harmless.  The receiver owes one after delivering, sends it with its next data frame to that peer
  (piggy-backed), or alone once it has been owed ``ACK_DELAY`` seconds; a duplicate makes it owe one again (the
  sender resends because an acknowledgement was lost).

Sequence numbers start at 1 per incarnation pair; 0 marks an acknowledgement-only frame, which is never numbered,
kept or acknowledged itself.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")

RTO_MIN = 0.2
"""Seconds without an acknowledgement advancing before unacknowledged frames are sent again."""
RTO_MAX = 3.0
ACK_DELAY = 0.02
"""Seconds an acknowledgement may wait for a data frame to ride on before it goes out alone."""
HOLD_MAX = 4096
"""Frames held back after a gap, per sender; more come again with the sender's retransmission."""
HOLD_BYTES = 64 * 1024 * 1024
"""Bytes held back after a gap, per sender (the same rule)."""
UNACKED_BOUND = 64 * 1024 * 1024
"""Bytes kept for one peer past which the link reports itself over its bound (it still drops nothing)."""


class Outbound:
    """Numbers, keeps and (re)sends the frames of one incarnation pair; see the module docstring."""

    def __init__(self, rto_min: float = RTO_MIN, rto_max: float = RTO_MAX, bound: int = UNACKED_BOUND) -> None:
        self.rto_min, self.rto_max, self.bound = rto_min, rto_max, bound
        self.next_seq = 1
        self.acked = 0                       # every frame up to here was delivered
        self.frames: deque[bytes] = deque()  # unacknowledged: seq acked+1, acked+2, ...
        self.sent_to = 0                     # frames up to here went to the channel in the current pass
        self.high = 0                        # the highest seq ever sent (above: first transmissions)
        self.bytes = 0
        self.deadline: float | None = None   # when the oldest frame in flight times out
        self.rto = rto_min
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.probe: tuple[int, float] | None = None  # (seq, first send time) of the frame being timed
        self.timeouts = 0
        self.stalled = 0                     # timeouts since an acknowledgement last advanced
        self.retransmitted = 0

    def push(self, frame: bytes) -> int:
        """Queue ``frame``, encoded with sequence number ``next_seq``; returns that number."""
        seq = self.next_seq
        self.next_seq += 1
        self.frames.append(frame)
        self.bytes += len(frame)
        return seq

    @property
    def over_bound(self) -> bool:
        return self.bytes > self.bound

    @property
    def unsent(self) -> bool:
        return self.sent_to < self.next_seq - 1

    def next_frame(self) -> bytes | None:
        """The next frame to hand to the channel (call ``sent`` once it took it), or None."""
        if not self.unsent:
            return None
        return self.frames[self.sent_to - self.acked]

    def push_sent(self, frame: bytes, now: float) -> int:
        """``push`` then ``sent`` in one step, for the usual case: nothing queued ahead and the channel took the
        frame at once (the hot path of every message).  Returns the frame's sequence number."""
        seq = self.next_seq
        self.next_seq = seq + 1
        self.frames.append(frame)
        self.bytes += len(frame)
        self.sent_to = self.high = seq
        if self.deadline is None:
            self.deadline = now + self.rto
        if self.probe is None:
            self.probe = (seq, now)
        return seq

    def sent(self, now: float) -> bool:
        """The frame ``next_frame`` returned went to the channel; True if it had been sent before."""
        self.sent_to += 1
        if self.deadline is None:
            self.deadline = now + self.rto
        if self.sent_to <= self.high:
            self.retransmitted += 1
            return True
        self.high = self.sent_to
        if self.probe is None:
            self.probe = (self.sent_to, now)
        return False

    def ack(self, upto: int, now: float) -> bool:
        """The receiver has every frame up to ``upto``; False if that acknowledges nothing new (or is bogus)."""
        if upto <= self.acked or upto >= self.next_seq:
            return False
        while self.acked < upto:
            self.bytes -= len(self.frames.popleft())
            self.acked += 1
        self.sent_to = max(self.sent_to, self.acked)
        if self.probe is not None and self.probe[0] <= upto:
            self._sample(now - self.probe[1])
            self.probe = None
        self.rto = self._base_rto()
        self.stalled = 0
        self.deadline = now + self.rto if self.high > self.acked else None
        return True

    def expire(self, now: float) -> bool:
        """Past the timeout with frames in flight: go back to the first unacknowledged one (True)."""
        if self.deadline is None or now < self.deadline or self.high <= self.acked:
            return False
        self.timeouts += 1
        self.stalled += 1
        self.sent_to = self.acked
        self.rto = min(self.rto * 2, self.rto_max)
        self.deadline = None
        self.probe = None  # Karn: a frame sent twice gives no round-trip sample
        return True

    def next_event(self) -> float | None:
        """When ``expire`` may next have something to do (None: nothing in flight)."""
        return self.deadline if self.high > self.acked else None

    def _sample(self, rtt: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt

    def _base_rto(self) -> float:
        if self.srtt is None:
            return self.rto_min
        return min(self.rto_max, max(self.rto_min, self.srtt + 4 * self.rttvar))


class Inbound(Generic[T]):
    """Delivers one sender incarnation's frames in order, once each; keeps the acknowledgement owed."""

    def __init__(self, hold_max: int = HOLD_MAX, ack_delay: float = ACK_DELAY, hold_bytes: int = HOLD_BYTES) -> None:
        self.hold_max, self.ack_delay, self.hold_bytes = hold_max, ack_delay, hold_bytes
        self.delivered = 0
        self.held: dict[int, tuple[T, int]] = {}
        self.held_size = 0
        self.owed_since: float | None = None
        self.duplicates = 0
        self.held_back = 0
        self.hold_dropped = 0

    def accept(self, seq: int, item: T, now: float, size: int = 0) -> list[T]:
        """Frame ``seq`` (of ``size`` bytes) arrived: the items now deliverable, in order (often just ``item``;
        none after a gap)."""
        if seq <= self.delivered or seq in self.held:
            self.duplicates += 1
            self._owe(now)
            return []
        if seq != self.delivered + 1:
            if len(self.held) >= self.hold_max or seq - self.delivered > self.hold_max + 1 \
                    or self.held_size + size > self.hold_bytes:
                self.hold_dropped += 1
            else:
                self.held[seq] = (item, size)
                self.held_size += size
                self.held_back += 1
            return []
        out = [item]
        self.delivered = seq
        while self.held:
            nxt = self.held.pop(self.delivered + 1, None)
            if nxt is None:
                break
            out.append(nxt[0])
            self.held_size -= nxt[1]
            self.delivered += 1
        self._owe(now)
        return out

    def _owe(self, now: float) -> None:
        if self.owed_since is None:
            self.owed_since = now

    @property
    def owes_ack(self) -> bool:
        return self.owed_since is not None

    def ack_due(self, now: float) -> bool:
        return self.owed_since is not None and now - self.owed_since >= self.ack_delay

    def next_event(self) -> float | None:
        return None if self.owed_since is None else self.owed_since + self.ack_delay

    def take_ack(self) -> int:
        """The cumulative acknowledgement to send now (piggy-backed or alone); nothing is owed after it."""
        self.owed_since = None
        return self.delivered

    def forget_held(self) -> None:
        """The sender is gone: what waits behind a gap will never be delivered."""
        self.held.clear()
        self.held_size = 0
