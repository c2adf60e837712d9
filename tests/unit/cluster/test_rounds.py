"""The pure commit rounds (``muheam.cluster.rounds``) and their messages (``muheam.cluster.txmessages``).

Property tests drive a few cores over FIFO channels with random interleavings of deliveries, membership events
and local requests, and check the rules the module docstring states: a round completes exactly when every member
of its view acknowledged it or left; an outcome is never lost for a member in the view; a joiner is answered only
once the answerer's view includes it.
"""

from __future__ import annotations

import random
from collections import deque

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from muheam.cluster import txmessages as tm
from muheam.cluster.rounds import CommitRounds, OutcomesLearned, RoundComplete, Send, Synced
from muheam.cluster.txstate import TxTable


def _sends(core: CommitRounds) -> list[Send]:
    return [e for e in core.drain() if isinstance(e, Send)]


def test_wire_form_is_the_old_list_form_and_round_trips() -> None:
    msgs: list[tm.TxMessage] = [tm.Prep(3, (10, 11)), tm.Done(4, ((10, 99),), (11,)), tm.Ack(4), tm.Sync(),
                                tm.Horizon(123), tm.Waits(((1, 2),)),
                                tm.State(3, ((10, 99),), (11,), (12,))]
    assert tm.Prep(3, (10, 11)).to_wire() == ["prep", 3, [10, 11]]
    assert tm.Done(4, ((10, 99),), (11,)).to_wire() == ["done", 4, [[10, 99]], [11]]
    for m in msgs:
        assert tm.from_wire(msgpack.unpackb(msgpack.packb(m.to_wire()))) == m


@pytest.mark.parametrize("body", [None, [], [1], ["ack"], ["ack", "1"], ["ack", True], ["ack", -1],
                                  ["prep", 1, [1, "x"]], ["prep", 1, 5], ["done", 1, [[1]], []],
                                  ["done", 1, [], [None]], ["state", []], ["state", {"floor": 1}],
                                  ["hz"], ["wfg", [[1, 2, 3]]], ["nope", 1], ["sync", 1]])
def test_malformed_bodies_raise_value_error_and_change_nothing(body: object) -> None:
    core = CommitRounds([2], TxTable())
    with pytest.raises(ValueError):
        core.on_wire(2, body)
    assert core.drain() == [] and not core.table.prepared


def test_round_waits_for_every_member_and_completes_on_ack_or_removal() -> None:
    core = CommitRounds([2, 3], TxTable())
    rid = core.prepare([10])
    assert {s.dest for s in _sends(core)} == {2, 3}
    core.on_message(2, tm.Ack(rid))
    assert core.drain() == []
    core.member_removed(3)
    assert core.drain() == [RoundComplete(rid)]


def test_round_alone_completes_at_once_and_messages_for_unknown_nodes_wait() -> None:
    core = CommitRounds([], TxTable())
    rid = core.finish([(10, 5)], [])
    assert core.drain() == [RoundComplete(rid)]
    core.on_message(7, tm.Prep(1, (20,)))            # a joiner we have not seen join yet
    assert core.drain() == []
    core.member_added(7)
    assert core.drain() == [Send(7, tm.Ack(1))]


def test_joiner_is_answered_only_once_in_the_view() -> None:
    core = CommitRounds([2], TxTable())
    core.on_message(9, tm.Sync())
    assert core.drain() == []
    core.member_added(9)
    (send,) = core.drain()
    assert send.dest == 9 and isinstance(send.msg, tm.State)


def test_sync_ready_when_every_peer_answered_or_left() -> None:
    core = CommitRounds([2, 3], TxTable())
    core.sync([2, 3])
    assert not core.ready and len(_sends(core)) == 2
    core.on_message(2, tm.State(3, ((40, 7),), (), ()))
    assert core.table.committed == {40: 7} and not core.ready
    assert core.drain() == [OutcomesLearned(frozenset())]
    core.member_removed(3, outcomes_known=True)  # a clean stop: its outcome file was read before
    assert core.ready and core.drain() == [Synced()]


def test_a_joiner_whose_sync_peer_crashed_unanswered_waits_for_its_recovery() -> None:
    """Node 2 may have acknowledged a commit only it knew (the joiner was not yet in its view): until node 2's
    recovery announces its outcomes, a snapshot here could miss it (I5; the simulator's ``fix_sync_loss``)."""
    core = CommitRounds([2, 3], TxTable())
    core.sync([2, 3])
    core.on_message(3, tm.State(3, (), (), ()))
    core.drain()
    core.member_removed(2)
    assert not core.ready and core.sync_lost == {2} and Synced() not in core.drain()
    core.departed_known(3)  # not a lost peer: changes nothing
    assert not core.ready
    core.departed_known(2)
    assert core.ready and core.drain() == [Synced()]
    core.departed_known(2)  # said twice (event and claim): one Synced only
    assert core.drain() == []


def test_a_member_that_answered_and_then_crashed_holds_no_join() -> None:
    core = CommitRounds([2], TxTable())
    core.sync([2])
    core.on_message(2, tm.State(3, (), (), ()))
    assert core.ready
    core.member_removed(2)
    assert core.ready and core.sync_lost == set()


# -- property: a small cluster of cores --------------------------------------------------------------------------

class _Net:
    """Cores over FIFO channels; etcd-ordered membership events delivered to each node at its own pace."""

    def __init__(self, n: int, rng: random.Random) -> None:
        self.rng = rng
        self.cores = {i: CommitRounds([j for j in range(1, n + 1) if j != i], TxTable()) for i in range(1, n + 1)}
        self.chan: dict[tuple[int, int], deque[object]] = {}
        self.log: list[tuple[str, int]] = []
        self.cursor = {i: 0 for i in self.cores}
        self.alive = set(self.cores)
        self.views = {i: set(self.cores) - {i} for i in self.cores}     # mirror of each core's view
        self.open: dict[tuple[int, int], set[int]] = {}                 # (node, round) -> view at start
        self.done_rounds: list[tuple[int, int, frozenset[int]]] = []    # (node, round, outcome xids)
        self.completed: set[tuple[int, int]] = set()
        self.acked_by: dict[tuple[int, int], set[int]] = {}
        self.next_xid = 100

    def pump(self, i: int) -> None:
        for eff in self.cores[i].drain():
            if isinstance(eff, Send):
                if isinstance(eff.msg, tm.State):
                    assert eff.dest in self.views[i], "joiner answered before it was in the view"
                if eff.dest in self.alive:
                    self.chan.setdefault((i, eff.dest), deque()).append(msgpack.packb(eff.msg.to_wire()))
            elif isinstance(eff, RoundComplete):
                view = self.open.pop((i, eff.round))
                missing = {m for m in view if m in self.views[i] and i not in self.acked_by.get((i, eff.round), set())
                           and m not in self.acked_by.get((i, eff.round), set())}
                assert not missing, f"round {eff.round} of {i} completed without {missing}"
                self.completed.add((i, eff.round))

    def start_round(self, i: int) -> None:
        core = self.cores[i]
        if self.rng.random() < 0.5:
            rid = core.prepare([self.next_xid])
            xids: frozenset[int] = frozenset()
        else:
            rid = core.finish([(self.next_xid, self.next_xid * 10)], [])
            xids = frozenset({self.next_xid})
        self.next_xid += 1
        self.open[(i, rid)] = set(self.views[i])
        if xids:
            self.done_rounds.append((i, rid, xids))
        self.pump(i)

    def deliver(self, ch: tuple[int, int]) -> None:
        src, dst = ch
        body = msgpack.unpackb(self.chan[ch].popleft())
        if body[0] == "ack":
            self.acked_by.setdefault((dst, body[1]), set()).add(src)
        self.cores[dst].on_wire(src, body)
        self.pump(dst)

    def crash(self, i: int) -> None:
        self.alive.discard(i)
        for ch in list(self.chan):
            if i in ch:
                del self.chan[ch]
        self.log.append(("remove", i))

    def join(self) -> None:
        new = max(self.cores) + 1
        view = set(self.alive)
        self.cores[new] = CommitRounds(view, TxTable())
        self.views[new] = set(view)
        self.cursor[new] = len(self.log)
        self.alive.add(new)
        self.log.append(("add", new))
        self.cores[new].sync(view)
        self.pump(new)

    def membership(self, i: int) -> None:
        what, other = self.log[self.cursor[i]]
        self.cursor[i] += 1
        if other == i:
            return
        if what == "add":
            self.views[i].add(other)
            self.cores[i].member_added(other)
        else:
            self.views[i].discard(other)
            self.cores[i].member_removed(other)
            self.cores[i].departed_known(other)  # no recovery here: its outcomes count as learned (muheam.sim waits)
        self.pump(i)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 4), faults=st.integers(0, 3))
def test_rounds_complete_exactly_when_view_acked_and_outcomes_reach_every_member(seed: int, n: int,
                                                                                  faults: int) -> None:
    rng = random.Random(seed)
    net = _Net(n, rng)
    budget = 60
    while True:
        acts: list[tuple[str, object]] = [("deliver", ch) for ch, q in net.chan.items() if q]
        acts += [("etcd", i) for i in net.alive if net.cursor[i] < len(net.log)]
        if budget > 0:
            acts += [("round", i) for i in net.alive if net.cores[i].ready]
            if faults and len(net.alive) > 1:
                acts.append(("fault", None))
        if not acts:
            break
        kind, arg = acts[rng.randrange(len(acts))]
        if kind == "deliver":
            assert isinstance(arg, tuple)
            net.deliver(arg)
        elif kind == "etcd":
            assert isinstance(arg, int)
            net.membership(arg)
        elif kind == "round":
            assert isinstance(arg, int)
            budget -= 1
            net.start_round(arg)
        else:
            faults -= 1
            if rng.random() < 0.5:
                net.crash(sorted(net.alive)[rng.randrange(len(net.alive))])
            else:
                net.join()
    # quiescent: every live node's rounds completed, every node synced
    for i in net.alive:
        assert not net.cores[i].rounds and net.cores[i].ready
    # an outcome round that completed reached every member that was in its view and is still alive, and every
    # member that joined later (through sync); so every live node knows every completed outcome of a live node.
    # (A dead decider's outcomes are the survivors' recovery's to re-announce: a joiner whose every sync peer died
    # learns them only from it; ``muheam.sim`` models that.)
    for i, rid, xids in net.done_rounds:
        if (i, rid) in net.completed and i in net.alive:
            for j in net.alive:
                assert all(x in net.cores[j].table.committed for x in xids), (i, rid, j)


def test_an_unacknowledged_outcome_is_sent_to_every_member_and_acknowledged_by_none() -> None:
    a, b, c = CommitRounds([2, 3], TxTable()), CommitRounds([1, 3], TxTable()), CommitRounds([1, 2], TxTable())
    assert a.finish([(10, 99)], [11], acked=False) == 0
    sends = _sends(a)
    assert sorted(s.dest for s in sends) == [2, 3] and all(s.msg == tm.Done(0, ((10, 99),), (11,)) for s in sends)
    assert not a.rounds and a.table.committed[10] == 99
    for core in (b, c):
        core.on_wire(1, sends[0].msg.to_wire())
        effects = core.drain()
        assert not [e for e in effects if isinstance(e, Send)]          # no Ack back
        assert [e for e in effects if isinstance(e, OutcomesLearned)] == [OutcomesLearned(frozenset({10, 11}))]
        assert core.table.committed[10] == 99 and core.table.decided(11)
