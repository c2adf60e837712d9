"""Lock manager unit tests: message costs, caching, release on demand, value blocks, membership, wire format."""

from __future__ import annotations

from collections import deque

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from locking.clock import LamportClock
from locking.effects import Effect, Granted, NeedsRecovery, ReleaseDemanded, Send
from locking.glsn import Glsn
from locking.manager import LockManager
from locking.messages import (Ack, Hello, HelloEntry, Message, Mode, Release, Request, Version, ZERO_VERSION,
                              from_wire)

X, S = Mode.EXCLUSIVE, Mode.SHARED
R = b"blk:1"


class Net:
    """A few managers over FIFO channels, delivered on request; every message goes through msgpack."""

    def __init__(self, n: int, inline_limit: int = 64) -> None:
        self.mgrs = {i: LockManager(LamportClock(i), range(1, n + 1), inline_limit=inline_limit)
                     for i in range(1, n + 1)}
        self.chan: dict[tuple[int, int], deque[tuple[int, bytes]]] = {}
        self.events: dict[int, list[Effect]] = {i: [] for i in self.mgrs}
        self.sent: list[Send] = []

    def collect(self, node: int) -> list[Effect]:
        out = self.mgrs[node].drain()
        for eff in out:
            if isinstance(eff, Send):
                self.sent.append(eff)
                self.chan.setdefault((node, eff.dest), deque()).append((eff.stamp, msgpack.packb(eff.wire())))
            else:
                self.events[node].append(eff)
        return out

    def settle(self) -> None:
        for node in self.mgrs:
            self.collect(node)
        while any(self.chan.values()):
            for (src, dst), q in list(self.chan.items()):
                if q and dst in self.mgrs:
                    stamp, raw = q.popleft()
                    self.mgrs[dst].on_wire(src, stamp, msgpack.unpackb(raw))
                    self.collect(dst)
                elif q:
                    q.clear()

    def count(self) -> int:
        n, self.sent = len(self.sent), []
        return n

    def take(self, node: int) -> list[Effect]:
        out, self.events[node] = self.events[node], []
        return out


def granted(effects: list[Effect]) -> list[Granted]:
    return [e for e in effects if isinstance(e, Granted)]


@pytest.mark.parametrize("n", [2, 3, 5])
def test_uncontended_acquire_costs_request_and_ack(n: int) -> None:
    net = Net(n)
    net.mgrs[1].acquire(R, X)
    net.settle()
    assert net.count() == 2 * (n - 1)
    assert [g.mode for g in granted(net.take(1))] == [X]


def test_cached_reacquire_sends_nothing() -> None:
    net = Net(3)
    net.mgrs[1].acquire(R, X)
    net.settle()
    net.mgrs[1].release(R, b"v1")
    net.settle()
    net.count()
    net.take(1)
    expected = b"v1"
    for i in range(5):
        net.mgrs[1].acquire(R, X if i % 2 else S)      # a cached exclusive lock also serves shared use
        effects = net.collect(1)
        assert not [e for e in effects if isinstance(e, Send)]
        assert granted(effects)[0].value == expected
        new = b"w%d" % i if i % 2 == 0 else None      # cached X held for shared use may still write
        net.mgrs[1].release(R, new)
        expected = new or expected
        assert not [e for e in net.collect(1) if isinstance(e, Send)]
    assert net.count() == 0


@pytest.mark.parametrize("n,expected", [(2, 3), (3, 6), (4, 9)])
def test_transfer_of_cached_lock_costs_three_messages_per_peer(n: int, expected: int) -> None:
    net = Net(n)
    net.mgrs[1].acquire(R, X)
    net.settle()
    net.mgrs[1].release(R, b"image-from-1")
    net.settle()
    net.count()
    net.mgrs[2].acquire(R, X)
    net.settle()
    assert net.count() == expected                        # REQUEST + ACK + holder's RELEASE per peer
    [g] = granted(net.take(2))
    assert (g.value, g.valid) == (b"image-from-1", True)
    assert net.mgrs[1].owned(R) is None and net.mgrs[2].owned(R) is X


def test_large_value_travels_once_per_transfer() -> None:
    image = bytes(range(256)) * 32                        # an 8 KiB block image
    net = Net(3)
    net.mgrs[1].acquire(R, X)
    net.settle()
    net.mgrs[1].release(R, image)
    net.settle()
    net.count()
    net.mgrs[2].acquire(R, X)
    net.settle()
    carrying = [s for s in net.sent if isinstance(s.msg, (Ack, Release)) and s.msg.value == image]
    assert [(s.dest, type(s.msg).__name__) for s in carrying] == [(2, "Release")]
    assert granted(net.take(2))[0].value == image


def test_holder_in_use_gets_release_demanded() -> None:
    net = Net(2)
    net.mgrs[1].acquire(R, X)
    net.settle()
    net.take(1)
    net.mgrs[2].acquire(R, S)
    net.settle()
    assert net.take(1) == [ReleaseDemanded(R)]
    assert granted(net.take(2)) == []                    # not before the holder lets go
    net.mgrs[1].release(R, b"flushed")
    net.settle()
    [g] = granted(net.take(2))
    assert (g.mode, g.value) == (S, b"flushed")


def test_shared_holders_coexist_and_exclusive_waits_for_all() -> None:
    net = Net(3)
    net.mgrs[1].acquire(R, S)
    net.mgrs[2].acquire(R, S)
    net.settle()
    assert net.mgrs[1].in_use(R) is S and net.mgrs[2].in_use(R) is S
    net.mgrs[3].acquire(R, X)
    net.settle()
    net.mgrs[1].release(R)
    net.settle()
    assert net.mgrs[3].owned(R) is None
    net.mgrs[2].release(R)
    net.settle()
    assert net.mgrs[3].in_use(R) is X


def test_counter_value_rides_on_acks_and_survives_holder_death() -> None:
    net = Net(3)
    net.mgrs[1].acquire(b"xid", X)
    net.settle()
    net.mgrs[1].release(b"xid", (42).to_bytes(8, "big"))
    net.mgrs[2].acquire(b"xid", X)                        # transfer: every node learns next_xid = 42
    net.settle()
    net.mgrs[2].release(b"xid", (50).to_bytes(8, "big"))
    net.settle()
    assert net.mgrs[3].known(b"xid")[1] == (42).to_bytes(8, "big")   # 2 still caches it: 3 has the old value
    net.mgrs[3].acquire(b"xid", X)
    net.settle()
    [g] = granted(net.take(3))
    assert (g.value, g.valid) == ((50).to_bytes(8, "big"), True)


def test_removal_unblocks_and_marks_what_the_dead_node_held() -> None:
    net = Net(3)
    net.mgrs[1].acquire(R, X)
    net.settle()
    net.mgrs[1].release(R, b"old")                        # cached at 1
    net.settle()
    net.mgrs[1].acquire(R, X)                             # 1 uses it again (no messages) and then dies
    net.collect(1)
    del net.mgrs[1]
    net.mgrs[2].acquire(R, X)
    net.settle()
    assert net.mgrs[2].in_use(R) is None                  # stuck behind the silent holder
    for node in (2, 3):
        net.mgrs[node].member_removed(1)
    net.settle()
    assert [type(e) for e in net.take(3)] == [NeedsRecovery]
    effects = net.take(2)
    assert isinstance(effects[0], NeedsRecovery) and effects[0].dead_node == 1
    [g] = granted(effects)
    assert g.valid is False                               # 1 may have changed it: rebuild before use
    net.mgrs[2].release(R, b"rebuilt")
    net.mgrs[3].acquire(R, S)
    net.settle()
    [g3] = granted(net.take(3))
    assert (g3.value, g3.valid) == (b"rebuilt", True)


def test_joiner_learns_the_queue_before_asking() -> None:
    net = Net(2)
    net.mgrs[1].acquire(R, X)
    net.settle()
    net.take(1)
    net.mgrs[3] = LockManager(LamportClock(3), [1, 2, 3], bootstrap=False)
    net.events[3] = []
    ticket = net.mgrs[3].acquire(R, X)
    assert ticket.glsn is None and not net.mgrs[3].synced
    net.settle()                                          # 3's HELLOs wait at 1 and 2 (not members yet)
    assert net.mgrs[3].owned(R) is None
    for node in (1, 2):
        net.mgrs[node].member_added(3)
    net.settle()
    assert net.take(1) == [ReleaseDemanded(R)] and net.mgrs[3].owned(R) is None
    net.mgrs[1].release(R, b"from-1")
    net.settle()
    [g] = granted(net.take(3))
    assert (g.value, g.valid) == (b"from-1", True) and g.glsn > Glsn(1, 1)


# ------------------------------------------------------------------------------------------------ wire format

glsns = st.builds(Glsn, st.integers(0, (1 << 48) - 1), st.integers(0, 65535))
versions = st.builds(Version, glsns, st.integers(0, 1 << 40))
res = st.binary(max_size=40)
vals = st.none() | st.binary(max_size=300)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Request, res, glsns, st.sampled_from(Mode), st.none() | versions),
    st.builds(Ack, res, glsns, versions, vals, st.lists(glsns, max_size=3).map(tuple),
              st.lists(st.tuples(st.integers(0, 65535), glsns), max_size=3).map(tuple)),
    st.builds(Release, res, glsns, versions, vals),
    st.builds(Hello, st.lists(st.builds(HelloEntry, res, st.integers(0, 65535), glsns, st.sampled_from(Mode),
                                        st.booleans(), st.none() | versions), max_size=3).map(tuple),
              st.lists(st.tuples(res, glsns), max_size=3).map(tuple), st.lists(glsns, max_size=2).map(tuple),
              st.lists(st.tuples(res, versions, vals), max_size=3).map(tuple)),
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(messages)
def test_wire_round_trip_through_msgpack(msg: Message) -> None:
    assert from_wire(msgpack.unpackb(msgpack.packb(msg.to_wire()))) == msg


junk = st.recursive(st.none() | st.booleans() | st.integers(-2, 2**65) | st.binary(max_size=5)
                    | st.text(max_size=3) | st.floats(allow_nan=False),
                    lambda inner: st.lists(inner, max_size=7), max_leaves=25)


@settings(max_examples=500, deadline=None, derandomize=True)
@given(junk)
def test_malformed_wire_raises_value_error_only(obj: object) -> None:
    try:
        from_wire(obj)
    except ValueError:
        pass


@pytest.mark.parametrize("wire", [
    None, [], [9], [1, b"r", 5, 1], [1, "r", 5, 1, None], [1, b"r", -1, 1, None], [1, b"r", 5, 2, None],
    [1, b"r", 5, True, None], [2, b"r", 5, [1], None, [], []], [2, b"r", 5, [1, 2], "v", [], []],
    [3, b"r", 2**64, [1, 2], None], [4, [[b"r", 1, 2, 1, 0, None]], [], [], []], [4, [], [[b"r"]], [], []],
    [1, b"r" * 2000, 5, 1, None], [True, b"r", 5, 1, None],
])
def test_malformed_examples(wire: object) -> None:
    with pytest.raises(ValueError):
        from_wire(wire)


def test_bad_stamp_and_self_messages_are_rejected() -> None:
    mgr = LockManager(LamportClock(1), [1, 2])
    with pytest.raises(ValueError):
        mgr.on_wire(2, -5, Release(R, Glsn(1, 2), ZERO_VERSION, None).to_wire())
    with pytest.raises(ValueError):
        mgr.on_message(1, 3, Release(R, Glsn(1, 2), ZERO_VERSION, None))


def test_misuse_raises() -> None:
    mgr = LockManager(LamportClock(1), [1])
    with pytest.raises(ValueError):
        mgr.release(R)
    mgr.acquire(R, S)
    with pytest.raises(ValueError):
        mgr.acquire(R, X)                                 # one use at a time per resource per node
    with pytest.raises(ValueError):
        mgr.release(R, b"shared holders cannot write")


def test_read_source_names_the_file_the_exclusive_holder_or_the_lock() -> None:
    """Consistent reads (issue 18): where a node that owns nothing of a resource finds its current contents."""
    from locking.manager import FROM_FILE, USE_LOCK

    net = Net(3)
    assert net.mgrs[3].read_source(R) == FROM_FILE         # never used: the file is all there is
    net.mgrs[1].acquire(R, X)
    net.settle()
    assert net.mgrs[3].read_source(R) == 1                 # 1 holds it exclusively: ask 1
    net.mgrs[1].release(R, b"v1")                          # cached at 1: still 1's
    net.settle()
    assert net.mgrs[3].read_source(R) == 1
    assert net.mgrs[1].read_source(R) == USE_LOCK          # its own entry: the lock says everything
    net.mgrs[2].acquire(R, S)                              # 1 gives it up; 2 shares it
    net.settle()
    assert net.mgrs[3].read_source(R) == FROM_FILE         # nobody exclusive: the file is current
    net.mgrs[2].release(R)
    net.mgrs[1].acquire(R, X)                              # 1 again, then dies holding it
    net.settle()
    net.collect(1)
    del net.mgrs[1]
    for node in (2, 3):
        net.mgrs[node].member_removed(1)
    net.settle()
    assert net.mgrs[3].read_source(R) == USE_LOCK          # 1 may have left it unwritten: the lock rebuilds it
