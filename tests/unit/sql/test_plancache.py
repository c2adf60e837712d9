"""The simple protocol's plan cache: integer literals become parameters only where that means the same."""

from __future__ import annotations

from typing import Any

import pytest

from muheam.sql import plan, wire
from muheam.sql.expr import SqlError, TableInfo
from muheam.sql.plancache import PlanCache

TABLE = TableInfo("b", "id", {"id": "int64", "balance": "int64"}, {})


def _compile(stmt: Any, oids: list[int]) -> plan.Compiled:
    def lookup(name: str) -> TableInfo:
        if name != "b":
            raise SqlError("42P01", f'relation "{name}" does not exist')
        return TABLE
    return plan.compile_statement(stmt, lookup, oids, lambda name: "")


def _run_update(compiled: plan.Compiled, params: list[int]) -> tuple[int, int]:
    """(the key the plan updates, the signed delta it adds), evaluated as execute.run_update would."""
    p = compiled.plan
    assert isinstance(p, plan.Update) and p.add is not None and p.points is not None
    _, delta, sign = p.add
    return p.points[0].fn({}, params), sign * delta.fn({}, params)


def test_literals_become_parameters_and_the_plan_is_reused() -> None:
    cache = PlanCache()
    first = cache.lookup("UPDATE b SET balance = balance - 1 WHERE id = 57", _compile)
    second = cache.lookup("UPDATE b SET balance = balance - 3 WHERE id = 8", _compile)
    assert first is not None and second is not None
    assert second[0] is first[0]
    assert _run_update(*first) == (57, -1)
    assert _run_update(*second) == (8, -3)
    assert cache.counters == {"hits": 2, "misses": 1}


def test_a_unary_minus_stays_in_the_key() -> None:
    cache = PlanCache()
    plus = cache.lookup("UPDATE b SET balance = balance + 1 WHERE id = 5", _compile)
    minus = cache.lookup("UPDATE b SET balance = balance + 1 WHERE id = -5", _compile)
    assert plus is not None and minus is not None and plus[0] is not minus[0]
    assert _run_update(*minus) == (-5, 1)
    assert _run_update(*plus) == (5, 1)


def test_statements_where_a_literal_is_not_a_value_take_the_ordinary_path() -> None:
    cache = PlanCache()
    for sql in ("SELECT 1",                                    # a literal in the output: name and type differ
                "SELECT id FROM b ORDER BY 1",                 # a position, not a value
                "SELECT id FROM b WHERE id = 1 -- 2",           # a comment
                "SELECT id FROM b WHERE balance > 1.5",         # not an integer literal
                "UPDATE b SET balance = 1 WHERE id = 1 RETURNING 2",
                "BEGIN", "SET statement_timeout = 5"):
        assert cache.lookup(sql, _compile) is None, sql
        assert cache.lookup(sql, _compile) is None, sql
    assert cache.counters["hits"] == 0


def test_a_literal_beyond_32_bits_gets_an_int8_plan_of_its_own() -> None:
    cache = PlanCache()
    small = cache.lookup("UPDATE b SET balance = balance + 1 WHERE id = 2", _compile)
    big = cache.lookup("UPDATE b SET balance = balance + 1 WHERE id = 5000000000", _compile)
    again = cache.lookup("UPDATE b SET balance = balance + 7 WHERE id = 9000000000000000000", _compile)
    assert small is not None and big is not None and again is not None
    assert big[0] is not small[0] and again[0] is big[0]  # an int4 plan never runs with a 64-bit value
    assert big[0].param_types[1] == wire.INT8 and small[0].param_types[1] == wire.INT4
    assert _run_update(*big) == (5000000000, 1)
    assert _run_update(*again) == (9000000000000000000, 7)


def test_a_literal_beyond_64_bits_and_a_failing_compile_are_not_cached() -> None:
    cache = PlanCache()
    assert cache.lookup("UPDATE b SET balance = balance + 1 WHERE id = 9223372036854775808", _compile) is None
    assert cache.lookup("UPDATE nope SET balance = 1 WHERE id = 2", _compile) is None
    assert not any(text.startswith("UPDATE nope") for text, _ in cache.plans)  # a later CREATE TABLE may make it valid


def test_the_cache_is_bounded() -> None:
    cache = PlanCache(size=2)
    for n in range(4):
        cache.lookup(f"SELECT id FROM b WHERE id = 1{' AND id = 1' * n}", _compile)
    assert len(cache.plans) == 2


def test_a_long_statement_is_not_templated() -> None:
    """A 5,000-row VALUES list is 15,000 literals: templating it cost more than compiling it, and it is seldom
    sent twice with the same shape; the ordinary path compiles it."""
    cache = PlanCache()
    text = "SELECT balance FROM b WHERE id IN (" + ", ".join(str(i) for i in range(2000)) + ")"
    assert len(text) > 4096
    assert cache.lookup(text, _compile) is None
    assert cache.counters == {"hits": 0, "misses": 0} and not cache.plans


def test_a_text_over_the_parse_limit_is_refused_by_name() -> None:
    with pytest.raises(SqlError, match="more than MUHEAM parses at once") as err:
        plan.parse("SELECT 1" + " " * plan.MAX_STATEMENT_BYTES)
    assert err.value.code == "54000"
