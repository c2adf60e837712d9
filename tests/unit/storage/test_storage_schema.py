"""Schemas: validation errors name the problem, rows round-trip through numpy records, serialisation is stable."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from muheam.errors import MuheamError
from muheam.storage import RowValueError, Schema, SchemaError
from muheam.storage.layout import MAX_ROW_WIDTH, slots_per_page

NAMES = st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True).filter(lambda n: n != "key")
TYPES = st.one_of(st.just("int64"), st.just("float64"), st.integers(1, 300).map(lambda n: f"text({n})"))


@st.composite
def schemas(draw: st.DrawFn, max_columns: int = 6) -> Schema:
    names = draw(st.lists(NAMES, max_size=max_columns, unique=True))
    cols: list[tuple[str, str]] = []
    width = 0
    for n in names:
        t = draw(TYPES)
        w = 8 if t in ("int64", "float64") else int(t[5:-1])
        if width + w <= MAX_ROW_WIDTH:
            cols.append((n, t))
            width += w
    return Schema(draw(NAMES), cols)


def _text(n: int) -> st.SearchStrategy[str]:
    alphabet = st.characters(codec="utf-8", exclude_characters="\x00")
    return st.text(alphabet, max_size=n).map(lambda s: s.encode()[:n].decode("utf-8", errors="ignore"))


def values_for(t: str) -> st.SearchStrategy[Any]:
    if t == "int64":
        return st.integers(-(1 << 63), (1 << 63) - 1)
    if t == "float64":
        return st.floats(allow_nan=False)
    return _text(int(t[5:-1]))


@st.composite
def schema_and_rows(draw: st.DrawFn, max_rows: int = 20) -> tuple[Schema, list[dict[str, Any]]]:
    schema = draw(schemas())
    row = st.fixed_dictionaries({c: values_for(t) for c, t in schema.columns})
    return schema, draw(st.lists(row, max_size=max_rows))


@settings(max_examples=60, deadline=None)
@given(schema_and_rows())
def test_rows_round_trip_through_records_and_bytes(data: tuple[Schema, list[dict[str, Any]]]) -> None:
    schema, rows = data
    for row in rows:
        assert schema.from_record(schema.to_record(row)) == row
        raw = schema.row_bytes(row)
        assert len(raw) == schema.row_width
        assert schema.from_record(raw) == row
    recs = schema.to_records(rows)
    assert [schema.from_record(r) for r in recs] == rows


@settings(max_examples=60, deadline=None)
@given(schemas())
def test_serialisation_round_trips_through_msgpack(schema: Schema) -> None:
    d = msgpack.unpackb(msgpack.packb(schema.to_dict()), raw=False)
    again = Schema.from_dict(d)
    assert again == schema and again.fingerprint == schema.fingerprint
    assert again.row_dtype == schema.row_dtype
    assert slots_per_page(schema.row_width) >= 4


def test_serialised_form_and_fingerprint_are_stable() -> None:
    s = Schema("accounts", {"balance": "int64", "rate": "float64", "owner": "text(32)"})
    assert s.to_dict() == {"format": 1, "name": "accounts",
                           "columns": [["balance", "int64"], ["rate", "float64"], ["owner", "text(32)"]]}
    assert s.column_names == ("balance", "rate", "owner")
    assert s.row_width == 48
    # Pages carry this number: changing the serialised form silently would make old pages unreadable.
    assert s.fingerprint == Schema.from_dict(s.to_dict()).fingerprint
    assert Schema("accounts", {"rate": "float64", "balance": "int64", "owner": "text(32)"}).fingerprint \
        != s.fingerprint


@pytest.mark.parametrize("name, columns, fragment", [
    ("t", {"a": "int32"}, "unknown type 'int32'"),
    ("t", {"a": "text(0)"}, "unknown type"),
    ("t", {"a": "text"}, "unknown type"),
    ("T", {"a": "int64"}, "table name 'T'"),
    ("t", {"1a": "int64"}, "column name '1a'"),
    ("t", {"key": "int64"}, "reserved"),
    ("t", [("a", "int64"), ("a", "float64")], "declared twice"),
    ("t", {"a": f"text({MAX_ROW_WIDTH + 1})"}, "8 KiB page"),
])
def test_bad_definitions_are_refused_with_a_clear_error(name: str, columns: Any, fragment: str) -> None:
    with pytest.raises(SchemaError, match=fragment.replace("(", r"\(").replace(")", r"\)")) as exc:
        Schema(name, columns)
    assert isinstance(exc.value, MuheamError) and exc.value.exit_code == 2


def test_widest_allowed_row_fits_four_per_page() -> None:
    s = Schema("t", {"a": f"text({MAX_ROW_WIDTH})"})
    assert slots_per_page(s.row_width) == 4


@pytest.mark.parametrize("row, column, fragment", [
    ({"n": "1", "x": 1.0, "s": "a"}, "n", "expected int64, got str"),
    ({"n": True, "x": 1.0, "s": "a"}, "n", "expected int64, got bool"),
    ({"n": 1 << 63, "x": 1.0, "s": "a"}, "n", "outside the int64 range"),
    ({"n": 1, "x": "1", "s": "a"}, "x", "expected float64"),
    ({"n": 1, "x": 10 ** 400, "s": "a"}, "x", "too large"),
    ({"n": 1, "x": 1.0, "s": "abcdef"}, "s", "6 UTF-8 bytes, the column holds at most 4"),
    ({"n": 1, "x": 1.0, "s": "ééé"}, "s", "6 UTF-8 bytes"),
    ({"n": 1, "x": 1.0, "s": "a\x00"}, "s", "NUL"),
    ({"n": 1, "x": 1.0, "s": "\ud800"}, "s", "UTF-8"),
    ({"n": 1, "x": 1.0, "s": 5}, "s", "expected text"),
    ({"n": 1, "x": 1.0}, "s", "missing value"),
    ({"n": 1, "x": 1.0, "s": "a", "key": 3}, "key", "primary key is passed separately"),
    ({"n": 1, "x": 1.0, "s": "a", "zz": 3}, "zz", "unknown column"),
])
def test_bad_rows_name_the_column(row: dict[str, Any], column: str, fragment: str) -> None:
    s = Schema("t", {"n": "int64", "x": "float64", "s": "text(4)"})
    with pytest.raises(RowValueError) as exc:
        s.to_record(row)
    assert exc.value.column == column and exc.value.table == "t"
    assert fragment in str(exc.value) and f"'{column}'" in str(exc.value)


def test_numpy_scalars_and_ints_for_floats_are_accepted() -> None:
    s = Schema("t", {"n": "int64", "x": "float64"})
    assert s.from_record(s.to_record({"n": np.int32(5), "x": 3})) == {"n": 5, "x": 3.0}
    assert math.isinf(float(s.from_record(s.to_record({"n": 0, "x": float("inf")}))["x"]))


def test_key_only_table() -> None:
    s = Schema("set_of_keys", {})
    assert s.row_width == 0 and s.from_record(s.to_record({})) == {}


def test_from_dict_refuses_unknown_format() -> None:
    with pytest.raises(SchemaError, match="upgrade"):
        Schema.from_dict({"format": 99, "name": "t", "columns": []})
