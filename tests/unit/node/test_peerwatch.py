"""``PeerWatch``'s beats: a busy announcement excuses a peer's silence for as long as it says, and no longer."""

from __future__ import annotations

from typing import Any

import pytest

from muheam.net.wire import PeerMessage
from muheam.node.peerwatch import KIND, MAX_BUSY, PeerWatch


class FakeMesh:
    """Records what is sent and flushed; the watch registers its beat handler here."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, str, Any]] = []
        self.flushed: list[int] = []
        self.handlers: dict[str, Any] = {}

    def on(self, kind: str, handler: Any) -> None:
        self.handlers[kind] = handler

    def send(self, dest: int, kind: str, body: Any) -> bool:
        self.sent.append((dest, kind, body))
        return True

    def flush_to(self, dest: int) -> None:
        self.flushed.append(dest)


def watch_of(now: list[float]) -> tuple[PeerWatch, FakeMesh]:
    mesh = FakeMesh()
    pw = PeerWatch(1, "c", mesh, lambda: None, None, lease_ttl=2.0,  # type: ignore[arg-type, return-value]
                   clock=lambda: now[0])
    pw.watch(2)
    return pw, mesh


def beat(pw: PeerWatch, mesh: FakeMesh, body: Any) -> None:
    mesh.handlers[KIND](PeerMessage(2, 1, 0, KIND, body))


def test_a_busy_peer_is_not_silent_until_its_announcement_runs_out() -> None:
    now = [100.0]
    pw, mesh = watch_of(now)
    beat(pw, mesh, ["busy", 10_000])
    now[0] = 113.9  # 10 s announced + the 4 s silence timeout
    assert pw.silence.silent(now[0]) == frozenset()
    now[0] = 114.1
    assert pw.silence.silent(now[0]) == {2}
    assert pw.counters["busy_heard"] == 1


def test_the_next_plain_beat_ends_the_announcement() -> None:
    now = [100.0]
    pw, mesh = watch_of(now)
    beat(pw, mesh, ["busy", 30_000])
    now[0] = 101.0
    beat(pw, mesh, None)  # the work is done
    now[0] = 105.1
    assert pw.silence.silent(now[0]) == {2}


@pytest.mark.parametrize("body", [["busy", -1], ["busy", "10"], ["busy", True], ["idle", 5], "busy", [1, 2, 3], {}])
def test_a_malformed_beat_counts_as_a_plain_one(body: Any) -> None:
    now = [100.0]
    pw, mesh = watch_of(now)
    beat(pw, mesh, body)
    now[0] = 104.1
    assert pw.silence.silent(now[0]) == {2}
    assert pw.counters["beats_malformed"] == 1 and pw.counters["busy_heard"] == 0


def test_an_announcement_is_capped_and_sent_at_once() -> None:
    now = [100.0]
    pw, mesh = watch_of(now)
    pw.busy(3600)
    assert mesh.sent == [(2, KIND, ["busy", int(MAX_BUSY * 1000)])] and mesh.flushed == [2]
    beat(pw, mesh, ["busy", 3_600_000])
    now[0] = 100 + MAX_BUSY + 4.1
    assert pw.silence.silent(now[0]) == {2}


def test_after_long_work_every_peer_counts_as_heard() -> None:
    now = [100.0]
    pw, mesh = watch_of(now)
    pw.busy(30)
    now[0] = 110.0  # the loop was busy: the peer's beats are still unread
    assert pw.silence.silent(now[0]) == {2}
    pw.listening()
    assert pw.silence.silent(now[0]) == frozenset() and pw.silence.hears(now[0]) == {2}


def test_long_work_does_not_excuse_a_peer_silent_before_it() -> None:
    """The work's length is taken off each peer's silence, no more: a peer silent 3 s before 10 s of work is
    silent 3 s after it, and one more second makes it silent (timeout 4 s).  Counting every peer as heard at the
    work's end meant that a node doing long work often (large SQL statements) never found a dead peer."""
    now = [97.0]
    pw, mesh = watch_of(now)  # last heard at 97
    now[0] = 100.0
    pw.busy(30)
    now[0] = 105.0
    pw.busy(30)  # nested: the outer work goes on after the inner one
    now[0] = 106.0
    pw.listening()
    assert pw.deaf_since == 100.0  # still deaf: nothing credited yet
    now[0] = 110.0
    pw.listening()
    assert pw.silence.hears(110.0) == {2} and pw.silence.silent(111.1) == {2}
    for _ in range(5):  # a dead peer, and this node busy half of every second: found after 4 s of listening
        pw.busy(30)
        now[0] += 0.5
        pw.listening()
        now[0] += 0.5
    assert pw.silence.silent(now[0]) == {2}


def test_a_busy_announcement_that_fails_to_send_leaves_the_count_as_it_was() -> None:
    """A send error inside ``busy`` (the work never starts, and nobody calls ``listening`` for it) left one long
    work counted for good: every later ``listening`` stopped short and took nothing off the peers' silence."""
    now = [100.0]
    pw, mesh = watch_of(now)

    def broken(dest: int, kind: str, body: Any) -> bool:
        raise OSError("the link broke")

    sends = mesh.send
    mesh.send = broken  # type: ignore[method-assign]
    with pytest.raises(OSError):
        pw.busy(30)
    mesh.send = sends  # type: ignore[method-assign]
    assert pw.deaf_depth == 0 and pw.deaf_since is None
    pw.busy(30)
    now[0] = 110.0
    pw.listening()
    assert pw.deaf_depth == 0 and pw.silence.hears(110.0) == {2}  # the 10 s of work were taken off
