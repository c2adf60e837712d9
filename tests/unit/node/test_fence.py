"""The lease keeper renews only while the node's event loop turns (``fence.LoopWatch``)."""

from __future__ import annotations

import time

from muheam.membership import Lease
from muheam.node.fence import Fence, LeaseKeeper, LoopWatch
from muheam.ops.procs import wait_until


class CountingLease(Lease):
    def __init__(self, ttl: int) -> None:
        self.id, self.ttl, self.refreshes = 0xABC, ttl, 0

    def refresh(self) -> int:
        self.refreshes += 1
        return self.ttl

    def revoke(self) -> None:
        pass


def test_a_watch_counts_a_stall_only_while_armed() -> None:
    now = [100.0]
    watch = LoopWatch(1.0, clock=lambda: now[0])
    now[0] = 500.0
    assert watch.stalled_for() == 0.0  # not armed before the loop's first turn
    watch.turn()
    now[0] += 0.9
    assert watch.stalled_for() == 0.0
    now[0] += 0.6
    assert abs(watch.stalled_for() - 0.5) < 1e-9
    watch.turn()
    assert watch.stalled_for() == 0.0
    now[0] += 50
    watch.pause()  # a stopping node's own steps, outside the loop
    assert watch.stalled_for() == 0.0
    with watch.paused():  # not armed before: stays so
        now[0] += 50
    assert watch.stalled_for() == 0.0
    watch.turn()
    with watch.paused():  # slow but healthy work (a dead node's WAL staged) is not a stall
        now[0] += 50
        assert watch.stalled_for() == 0.0
    assert watch.stalled_for() == 0.0  # watched again from the end of that work
    now[0] += 1.25
    assert abs(watch.stalled_for() - 0.25) < 1e-9


def test_the_keeper_renews_again_when_a_stalled_loop_turns() -> None:
    lease, watch = CountingLease(2), LoopWatch(0.05)
    fence = Fence(2, time.monotonic())
    watch.turn()
    time.sleep(0.1)  # stalled before the keeper's first renewal
    keeper = LeaseKeeper(lease, fence, watch)
    keeper.start()
    try:
        assert wait_until(lambda: keeper.withheld >= 2, 3.0, 0.01)
        assert lease.refreshes == 0
        watch.pause()
        assert wait_until(lambda: lease.refreshes >= 1, 3.0, 0.01)
        assert keeper.withheld == 0 and not fence.fenced
    finally:
        keeper.stop()
        keeper.join(5)


def test_a_loop_stalled_past_the_deadline_is_fenced() -> None:
    lease, watch = CountingLease(1), LoopWatch(0.0)
    fence = Fence(1, time.monotonic())  # deadline: TTL 1 s less the 0.5 s margin
    watch.turn()
    keeper = LeaseKeeper(lease, fence, watch)
    keeper.start()
    keeper.join(5)
    assert not keeper.is_alive()
    assert fence.fenced and "could not renew" in str(fence.reason)
    assert lease.refreshes == 0
