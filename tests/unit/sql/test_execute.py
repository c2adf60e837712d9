"""``execute.answers_counted``: what tells a failed statement whether it had done anything yet."""

from __future__ import annotations

from typing import Any

import pytest

from muheam.sql import execute


def test_answers_are_counted_and_errors_thrown_in_reach_the_statement() -> None:
    handled: list[str] = []

    def statement() -> Any:
        first = yield ("get", {"key": 1})
        try:
            yield ("get", {"key": 2})
        except execute.OpFailed as exc:
            handled.append(exc.code)
        yield ("get", {"key": 3})
        return first

    answered = [0]
    gen = execute.answers_counted(statement(), answered)
    assert gen.send(None) == ("get", {"key": 1}) and answered == [0]
    assert gen.send("one") == ("get", {"key": 2}) and answered == [1]
    assert gen.throw(execute.OpFailed("NoSuchTable", "gone")) == ("get", {"key": 3})
    assert handled == ["NoSuchTable"] and answered == [1]   # an error is not an answer
    with pytest.raises(StopIteration) as stop:
        gen.send("three")
    assert stop.value.value == "one" and answered == [2]


def test_an_error_the_statement_does_not_handle_leaves_with_the_count_so_far() -> None:
    def statement() -> Any:
        yield ("insert", {"key": 1})
        yield ("insert", {"key": 2})

    answered = [0]
    gen = execute.answers_counted(statement(), answered)
    gen.send(None)
    gen.send({"ok": True})
    with pytest.raises(execute.OpFailed):
        gen.throw(execute.OpFailed("NoSuchTable", "dropped in the middle"))
    assert answered == [1]   # one row was inserted: the statement must not be run again
