"""The initial copy's wait for the writers it saw (``muheam.replica.copy.wait_for_writers``), on fake nodes."""

from __future__ import annotations

import threading
from typing import Any, cast

import pytest

from muheam.replica import copy
from muheam.replica.copy import CopyFailed, wait_for_writers


class FakeNode:
    """Answers ``writers()`` from a script: one list per call, the last one repeated."""

    def __init__(self, endpoint: str, answers: list[list[int]]) -> None:
        self.endpoint = endpoint
        self.answers = answers
        self.calls = 0

    def writers(self) -> list[int]:
        self.calls += 1
        return self.answers[min(self.calls, len(self.answers)) - 1]


def nodes(*fakes: FakeNode) -> list[Any]:
    return cast(list[Any], list(fakes))


@pytest.fixture(autouse=True)
def fast_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(copy, "POLL", 0.001)


def test_waits_until_every_writer_it_saw_has_ended_and_ignores_later_ones() -> None:
    a = FakeNode("tcp://a", [[5, 7], [7, 9], [9, 11], [9, 11, 12]])  # 5 ends, then 7; 9 and 11 began later
    b = FakeNode("tcp://b", [[6], [6], [6], []])
    assert wait_for_writers(nodes(a, b), threading.Event(), wait=5) == 3
    assert a.calls == 3 and b.calls == 4, "a node is polled only while a writer it listed runs"


def test_nothing_running_means_no_wait() -> None:
    a = FakeNode("tcp://a", [[]])
    assert wait_for_writers(nodes(a), threading.Event(), wait=5) == 0 and a.calls == 1


def test_a_writer_that_does_not_end_fails_the_attempt_naming_it() -> None:
    a = FakeNode("tcp://a", [[5, 7], [7]])
    with pytest.raises(CopyFailed, match=r"tcp://a.*\[7\]"):
        wait_for_writers(nodes(a), threading.Event(), wait=0.05)


def test_a_stop_ends_the_wait() -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(CopyFailed, match="stopped"):
        wait_for_writers(nodes(FakeNode("tcp://a", [[5]])), stop, wait=5)
