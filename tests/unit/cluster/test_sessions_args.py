"""The client port's checks of what ``create_table`` writes into ``global/catalog`` and the WAL for everyone."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from muheam.cluster.catalogops import sql_description
from muheam.net.clientport import RequestError

COLUMNS = {"v": "int64", "w": "text(8)"}
GOOD = {"key": "id", "columns": ["v", "w"], "sql_types": {"id": "int8", "v": "int4", "w": "varchar(8)"}}


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("bad", [
    {**GOOD, 1: "x"},                                   # a non-string key: global/catalog would not read back
    {**GOOD, "extra": nested(995)},                    # deeply nested: RecursionError in every node's SQL catalog
    {**GOOD, "key": nested(995)},
    {**GOOD, "sql_types": {"v": nested(10)}},
    {**GOOD, "sql_types": {1: "int4"}},
    {**GOOD, "sql_types": {"nope": "int4"}},
    {**GOOD, "columns": ["w", "v"]},
    {**GOOD, "key": "v"},
    {**GOOD, "key": "k" * 64},
    ["not", "a", "map"],
])
def test_a_description_that_could_break_readers_is_refused(bad: Any) -> None:
    with pytest.raises(RequestError) as err:
        sql_description(bad, COLUMNS)
    assert err.value.code == "bad_request"


def test_a_valid_description_reads_back_and_a_wide_table_fits() -> None:
    assert sql_description(None, COLUMNS) is None
    got = sql_description(GOOD, COLUMNS)
    assert got == GOOD and msgpack.unpackb(msgpack.packb(got), raw=False) == GOOD
    wide = {f"c{i:061d}": "text(1)" for i in range(600)}  # 600 varchar(1) columns with 63-character names
    desc = {"key": "id", "columns": list(wide), "sql_types": {c: "varchar(1)" for c in wide}}
    assert sql_description(desc, wide) == desc
