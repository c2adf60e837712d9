"""A membership watch whose resume revision etcd compacted away (issue 16, item 7).

Watchers resume from their last revision + 1 after losing etcd.  When etcd compacted that revision meanwhile the
watch cannot start there, and every retry failed the same way: the node logged "membership watch lost" twice a
second for ever and never heard of a member again.  Now the members are listed again and the difference against
what the watcher knew comes out as the events missed (``missed_events``, a pure function tested first), then the
watch goes on from the listing's revision.  The integration test does it against a real etcd: the watcher loses
etcd, members join, leave, crash and restart meanwhile, the store is compacted, and the resumed watcher gets
exactly the events that stand for what happened, then live events again.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from muheam.errors import EtcdUnavailable
from muheam.ops.etcd_server import EtcdServer, find_etcd_binary
from muheam.membership import (
    Lease, Member, MemberEvent, MembershipBackend, MemberWatch, WatchCompacted, connect, missed_events,
)


def member(node: int, epoch: int, state: str = "running", stop_mode: str = "") -> Member:
    return Member(node_id=node, host="h", peer_endpoint=f"tcp://127.0.0.1:{7000 + node}",
                  client_endpoint=f"tcp://127.0.0.1:{8000 + node}", epoch=epoch, pid=100 + node, state=state,
                  started_at=1.0, stop_mode=stop_mode)


def kinds(events: list[MemberEvent]) -> list[tuple[str, int, int]]:
    return [(e.kind, e.member.node_id, e.member.epoch) for e in events]


# -- the translation, pure ------------------------------------------------------------------------------------

def test_nothing_changed_gives_no_events() -> None:
    known = {1: member(1, 3), 2: member(2, 4)}
    assert missed_events(known, [member(2, 4), member(1, 3)], 50) == []


def test_every_kind_of_change_in_node_order_with_the_listing_revision() -> None:
    known = {1: member(1, 3), 2: member(2, 4, "stopping", "fast"), 3: member(3, 5), 4: member(4, 6, "starting")}
    current = [member(3, 9), member(4, 6), member(5, 10, "starting")]
    events = missed_events(known, current, 77)
    assert kinds(events) == [
        ("expired", 1, 3),  # vanished: left or expired cannot be told, so expired (survivors recover it)
        ("expired", 2, 4),  # even when it was stopping: the lease may have run out mid-stop
        ("expired", 3, 5), ("joined", 3, 9),  # restarted: the old incarnation goes first
        ("updated", 4, 6),  # same incarnation, new state
        ("joined", 5, 10),
    ]
    assert all(e.revision == 77 for e in events)
    assert events[0].member == known[1] and events[0].member.revision == 77
    assert events[4].member.state == "running" and events[5].member == current[2]


def test_a_departure_never_comes_out_as_left() -> None:
    for state, mode in (("running", ""), ("stopping", "fast"), ("stopping", "immediate"), ("starting", "")):
        assert kinds(missed_events({7: member(7, 2, state, mode)}, [], 9)) == [("expired", 7, 2)]


def test_revision_only_differences_are_not_updates() -> None:
    """``members()`` fills each member's mod revision; the watcher's copy has another: not a change."""
    known = {1: dataclasses.replace(member(1, 3), revision=10)}
    assert missed_events(known, [dataclasses.replace(member(1, 3), revision=40)], 41) == []


# -- a real etcd ------------------------------------------------------------------------------------------------

CLUSTER = "c1"


def compact(etcd: EtcdServer, revision: int) -> None:
    """Compact etcd's history up to ``revision`` with the etcdctl shipped beside the etcd binary, as an operator
    (or etcd's auto-compaction) would."""
    etcdctl = Path(find_etcd_binary()).with_name("etcdctl")
    subprocess.run([str(etcdctl), "--endpoints", etcd.client_url, "compact", str(revision)], check=True,
                   capture_output=True, timeout=30)


def collect(it: Iterator[MemberEvent | None], n: int, timeout: float = 10.0) -> list[MemberEvent]:
    out: list[MemberEvent] = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        assert time.monotonic() < deadline, f"only {kinds(out)} within {timeout} s"
        event = next(it)
        if event is not None:
            out.append(event)
    return out


def start_node(b: MembershipBackend, node: int) -> tuple[Member, Lease]:
    lease = b.grant_lease(30)
    return b.join(CLUSTER, member(node, 0, "starting"), lease), lease


def test_watch_backend_names_a_compacted_revision(etcd: EtcdServer) -> None:
    """Before: the compaction error came out as "etcd ... unreachable (RevisionCompactedError)", so the watchers
    took it for a lost etcd and retried the same revision for ever."""
    b = connect([etcd.client_url])
    try:
        for node in (1, 2, 3):
            start_node(b, node)
        _, revision = b.members(CLUSTER)
        compact(etcd, revision)
        with pytest.raises(WatchCompacted) as info:
            next(iter(b.watch_members(CLUSTER, 2)))
        assert info.value.compacted_revision == revision
    finally:
        b.close()


@pytest.mark.timeout(90)
def test_resume_after_compaction_gives_the_missed_events_then_live_ones(etcd: EtcdServer) -> None:
    b = connect([etcd.client_url], timeout=1.0)
    try:
        m1, l1 = start_node(b, 1)
        m2, l2 = start_node(b, 2)
        m3, l3 = start_node(b, 3)
        m4, l4 = start_node(b, 4)
        snapshot, revision = b.members(CLUSTER)
        watch = MemberWatch(CLUSTER, snapshot, revision)
        it = watch.events(b, poll=0.1)
        m1 = dataclasses.replace(m1, state="running")
        b.update_member(CLUSTER, m1, l1)
        assert kinds(collect(it, 1)) == [("updated", 1, m1.epoch)]  # the live watch works

        # the watcher loses etcd (the node's loop catches EtcdUnavailable and resumes later)
        etcd.stop()
        with pytest.raises(EtcdUnavailable):
            collect(it, 1)
        etcd.start()
        # meanwhile: 1 stops cleanly, 2 crashes (lease gone while running), 3 restarts under a new epoch,
        # 4 goes on to running, 5 joins, 6 joins and stops again
        b.update_member(CLUSTER, dataclasses.replace(m1, state="stopping", stop_mode="fast"), l1)
        l1.revoke()
        l2.revoke()
        l3.revoke()
        m3b, l3b = start_node(b, 3)
        m4 = dataclasses.replace(m4, state="running")
        b.update_member(CLUSTER, m4, l4)
        m5, l5 = start_node(b, 5)
        _, l6 = start_node(b, 6)
        l6.revoke()
        _, now = b.members(CLUSTER)
        compact(etcd, now)
        with pytest.raises(WatchCompacted):  # what a plain resume at the watcher's revision now meets
            next(iter(b.watch_members(CLUSTER, watch.revision + 1)))

        # the resumed watcher: the missed events, derived from a new listing, then the live watch again
        it = watch.events(b, poll=0.1)
        missed = collect(it, 6)
        assert kinds(missed) == [("expired", 1, m1.epoch), ("expired", 2, m2.epoch), ("expired", 3, m3.epoch),
                                 ("joined", 3, m3b.epoch), ("updated", 4, m4.epoch), ("joined", 5, m5.epoch)]
        assert watch.resyncs == 1
        assert {e.member.node_id: e.member.state for e in missed if e.kind != "expired"} == \
            {3: "starting", 4: "running", 5: "starting"}
        assert sorted(watch.known) == [3, 4, 5]
        b.update_member(CLUSTER, dataclasses.replace(m5, state="stopping", stop_mode="fast"), l5)
        l5.revoke()
        live = collect(it, 2)
        assert kinds(live) == [("updated", 5, m5.epoch), ("left", 5, m5.epoch)]
        assert live[0].revision > now and watch.resyncs == 1 and watch.revision == live[1].revision
        l3b.revoke()
        l4.revoke()
    finally:
        b.close()
