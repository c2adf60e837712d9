"""The walstream messages (``muheam.walstream.messages``): round trips, the exact maps of protocol version 1,
and rejection of what a hostile or broken peer may send."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from muheam.walstream import messages as m

u64 = st.integers(0, (1 << 64) - 1)
credit = st.integers(1, (1 << 31) - 1)
records = st.lists(st.tuples(u64, st.binary(min_size=56, max_size=120)), max_size=5).map(tuple)

requests = st.one_of(
    st.builds(m.Subscribe, u64, credit), st.builds(m.Credit, credit), st.just(m.Ping()), st.just(m.StatusRequest()),
    st.just(m.Unsubscribe()))
replies = st.one_of(
    st.builds(m.Subscribed, u64, u64, u64, u64, credit, st.just(m.PROTOCOL_VERSION)),
    st.builds(m.Batch, records, u64, u64), st.builds(m.Pong, u64, st.booleans()),
    st.builds(m.Status, st.text(max_size=20), u64, st.integers(0, 64),
              st.dictionaries(st.text(max_size=10), st.integers(0, 1000), max_size=4)),
    st.just(m.Unsubscribed()), st.builds(m.End, u64), st.builds(m.Error, st.sampled_from(sorted(m.ERROR_CODES)),
                                                                  st.text(max_size=30)))


def wire(obj: Any) -> Any:
    """Through msgpack and back, as the sockets do."""
    return msgpack.unpackb(msgpack.packb(obj, use_bin_type=True), raw=False)


@given(requests)
def test_requests_round_trip(req: m.Request) -> None:
    assert m.request_from_wire(wire(req.to_wire())) == req


@given(replies)
def test_replies_round_trip(reply: m.Reply) -> None:
    assert m.reply_from_wire(wire(reply.to_wire())) == reply


def test_same_bytes_as_protocol_version_1() -> None:
    """The maps (key order included, so the msgpack bytes) that the hand-built code sent."""
    pack = lambda o: msgpack.packb(o, use_bin_type=True)  # noqa: E731
    assert pack(m.Subscribe(64, 8).to_wire()) == pack({"op": "subscribe", "from_lsn": 64, "credit": 8})
    assert pack(m.Credit(1).to_wire()) == pack({"op": "credit", "n": 1})
    assert pack(m.Batch(((64, b"x" * 56),), 120, 120).to_wire()) == pack(
        {"type": "batch", "records": [[64, b"x" * 56]], "next_lsn": 120, "end_lsn": 120})
    assert pack(m.Subscribed(0, 64, 7, 1 << 24, 8).to_wire()) == pack(
        {"type": "subscribed", "version": 1, "from_lsn": 0, "end_lsn": 64, "system_id": 7, "segment_size": 1 << 24,
         "credit": 8})
    assert pack(m.Status("tcp://x", 64, 1, {"b": 2, "a": 1}).to_wire()) == pack(
        {"type": "status", "endpoint": "tcp://x", "end_lsn": 64, "subscribers": 1, "counters": {"a": 1, "b": 2}})
    assert m.request_from_wire({"op": "subscribe", "from_lsn": 0}) == m.Subscribe(0, m.DEFAULT_CREDIT)


@pytest.mark.parametrize("msg", [
    [1, 2, 3], {"op": 7}, {"op": "bogus"}, {"op": "subscribe"}, {"op": "subscribe", "from_lsn": "0/40"},
    {"op": "subscribe", "from_lsn": -1}, {"op": "subscribe", "from_lsn": True},
    {"op": "subscribe", "from_lsn": 0, "credit": 0}, {"op": "subscribe", "from_lsn": 1 << 64},
    {"op": "credit", "n": -5}, {"op": "credit", "n": 0}, {"op": "credit"}, {"op": "credit", "n": 1.5}, None,
])
def test_malformed_requests_are_refused(msg: Any) -> None:
    with pytest.raises(m.BadMessage):
        m.request_from_wire(msg)


@pytest.mark.parametrize("msg", [
    {"type": "batch", "records": [[1, "text"]], "next_lsn": 1, "end_lsn": 1},
    {"type": "batch", "records": [[-1, b""]], "next_lsn": 1, "end_lsn": 1},
    {"type": "batch", "next_lsn": 1, "end_lsn": 1}, {"type": "pong", "end_lsn": 1},
    {"type": "subscribed", "from_lsn": 0}, {"type": "error", "code": 3, "message": "x"}, {"type": "nope"}, [],
    {"type": "end"}, {"type": "status", "endpoint": "e", "end_lsn": 0, "subscribers": 0, "counters": {"a": -1}},
])
def test_malformed_replies_are_refused(msg: Any) -> None:
    with pytest.raises(m.BadMessage):
        m.reply_from_wire(msg)


@given(st.dictionaries(st.sampled_from(["op", "from_lsn", "credit", "n"]),
                       st.one_of(st.integers(), st.text(max_size=5), st.booleans(), st.none(), st.binary(max_size=4))))
def test_any_map_is_a_request_or_bad_message(msg: dict[str, Any]) -> None:
    """Nothing a peer sends raises anything but ``BadMessage``."""
    try:
        m.request_from_wire(msg)
    except m.BadMessage:
        pass
