"""The state and mode enums (``muheam.states``, ``mvcc.XidStatus``) keep every external string as it was."""

from __future__ import annotations

import json

from muheam.membership import CLUSTER_STATES, MEMBER_STATES, Member
from muheam.ops.procs import SIGNAL_FOR_MODE, STOP_SIGNALS
from muheam.states import ClusterState, NodeState, StopMode
from muheam.storage import mvcc


def member(**kw: object) -> Member:
    base: dict[str, object] = dict(node_id=1, host="h", peer_endpoint="p", client_endpoint="c", epoch=3, pid=9,
                                   state="running", started_at=1.0)
    base.update(kw)
    return Member(**base)  # type: ignore[arg-type]


def test_member_json_is_unchanged() -> None:
    typed = member(state=NodeState.STOPPING, stop_mode=StopMode.IMMEDIATE)
    plain = member(state="stopping", stop_mode="immediate")
    assert typed.to_json() == plain.to_json()
    assert json.loads(typed.to_json())["state"] == "stopping"
    back = Member.from_json(typed.to_json())
    assert back == typed and back.state == NodeState.STOPPING and back.stop_mode == StopMode.IMMEDIATE


def test_words_are_the_old_ones() -> None:
    assert CLUSTER_STATES == ("starting", "running", "stopping", "stopped")
    assert MEMBER_STATES == ("starting", "running", "stopping")
    assert [str(m) for m in StopMode] == ["smart", "fast", "immediate"]
    assert f"{NodeState.FENCED}" == "fenced" and f"{ClusterState.STOPPED}" == "stopped"
    assert json.dumps([mvcc.COMMITTED, mvcc.ABORTED, mvcc.IN_PROGRESS]) == '["committed", "aborted", "in_progress"]'
    assert mvcc.XidStatus("committed") is mvcc.COMMITTED


def test_stop_modes_order_and_signals() -> None:
    assert sorted(StopMode, key=lambda m: m.harshness) == [StopMode.SMART, StopMode.FAST, StopMode.IMMEDIATE]
    assert {SIGNAL_FOR_MODE[StopMode(m)] for m in ("smart", "fast", "immediate")} == set(STOP_SIGNALS)
