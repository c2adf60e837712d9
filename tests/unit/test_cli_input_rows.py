"""``table create``, ``put``, ``get`` and ``scan`` with bad or awkward input, against a stand-in for the node:
a column declared twice, an unknown type or too many buckets are usage errors (exit 2) before anything is
sent; a put value is parsed as PostgreSQL parses it (no ``1_000``, no ``1e400`` silently stored as Infinity);
the table output escapes control characters so a row stays one line."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

import pytest

from muheam.cli import data
from muheam.client import RequestFailed
from tests.unit.test_cli_errors import run

COLUMNS = [["f", "float64"], ["v", "int64"], ["s", "text(16)"]]


class FakeNode:
    """What the commands ask of a connection; ``create_table`` checks the schema as the node does (a failed
    request, exit 1)."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, Any]] = {}
        self.created: list[tuple[str, dict[str, str], int, int]] = []

    def __enter__(self) -> "FakeNode":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def tables(self) -> list[dict[str, Any]]:
        return [{"name": "u", "table_id": 1, "columns": COLUMNS}]

    def create_table(self, name: str, cols: dict[str, str], expected_rows: int, buckets: int) -> dict[str, Any]:
        from muheam.storage.errors import SchemaError
        from muheam.storage.schema import Schema

        try:
            Schema(name, cols)
        except SchemaError as exc:
            raise RequestFailed("SchemaError", str(exc)) from None
        if not 0 <= buckets <= 1 << 14:
            raise RequestFailed("SchemaError", f"buckets must be between 1 and {1 << 14}")
        self.created.append((name, cols, expected_rows, buckets))
        return {"name": name, "table_id": 2}

    def transaction(self) -> "FakeTx":
        return FakeTx(self)


class FakeTx:
    def __init__(self, node: FakeNode) -> None:
        self.node = node

    def __enter__(self) -> "FakeTx":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def get(self, table: str, key: int) -> dict[str, Any] | None:
        return self.node.rows.get(key)

    def insert(self, table: str, key: int, row: dict[str, Any]) -> None:
        self.node.rows[key] = row

    def update(self, table: str, key: int, row: dict[str, Any]) -> None:
        self.node.rows[key] = {**self.node.rows[key], **row}

    def scan(self, table: str) -> Iterator[tuple[int, dict[str, Any]]]:
        return iter(list(self.node.rows.items()))


@pytest.fixture
def node(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeNode:
    fake = FakeNode()
    monkeypatch.setattr(data, "_connection", lambda kw: fake)
    monkeypatch.chdir(tmp_path)
    return fake


@pytest.mark.parametrize("columns, needle", [
    (["v:int64", "v:float64"], "column 'v' is declared twice"),
    (["v:int99"], "use int64, float64 or text(N)"),
    (["key:int64"], "reserved"),
    (["v"], "COLUMN:TYPE"),
])
def test_table_create_refuses_bad_columns_before_asking_the_node(columns: list[str], needle: str, node: FakeNode,
                                                                 capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run(["table", "create", "e8", *columns], capsys, monkeypatch)
    assert code == 2 and needle in err, err
    assert node.created == []


def test_table_create_refuses_too_many_buckets(node: FakeNode, capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run(["table", "create", "t", "--buckets", "99999999999", "v:int64"], capsys, monkeypatch)
    assert code == 2 and "16384" in err and node.created == []
    code, _, err = run(["table", "create", "t", "--expected-rows", "-1", "v:int64"], capsys, monkeypatch)
    assert code == 2 and "--expected-rows" in err and node.created == []
    code, _, err = run(["table", "create", "t", "--buckets", "16384", "v:int64", "s:text(8)"], capsys, monkeypatch)
    assert code == 0, err
    assert node.created == [("t", {"v": "int64", "s": "text(8)"}, 0, 16384)]


def test_the_bucket_limit_is_the_engines() -> None:
    from muheam.engine.catalog import CREATE_MAX_BUCKETS

    assert data.MAX_BUCKETS == CREATE_MAX_BUCKETS


@pytest.mark.parametrize("value, needle", [
    ("f=1e400", "out of range for float64"), ("f=-1e400", "out of range for float64"),
    ("f=1e-400", "out of range for float64"), ("f=1_0.5", "f is float64"), ("f=0x10", "f is float64"),
    ("v=1_000", "v is int64"), ("v= 5", "v is int64"), ("v=\u0665", "v is int64"),
    ("v=" + "9" * 5000, "v is int64, -9223372036854775808 .. 9223372036854775807"),
])
def test_put_refuses_what_postgresql_refuses(value: str, needle: str, node: FakeNode, capsys: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run(["put", "u", "-5", value], capsys, monkeypatch)
    assert code == 2 and needle in err and "internal error" not in err, err
    assert node.rows == {}


@pytest.mark.parametrize("value, stored", [
    ("f=NaN", math.nan), ("f=-Infinity", -math.inf), ("f=inf", math.inf), ("f=1.5e308", 1.5e308),
    ("f=5e-324", 5e-324), ("f=0e-999", 0.0), ("f=.5", 0.5), ("v=-0009", -9), ("v=+42", 42),
])
def test_put_takes_what_postgresql_takes(value: str, stored: float, node: FakeNode, capsys: Any,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run(["put", "u", "-5", value], capsys, monkeypatch)
    assert code == 0, err
    got = node.rows[-5][value.split("=")[0]]
    assert got == stored or (math.isnan(stored) and math.isnan(got))


def test_table_output_escapes_control_characters(node: FakeNode, capsys: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    text = "two\nlines\tand a tab, a \\ and a \x07"
    node.rows = {1: {"f": 1.5, "v": 2, "s": text}, 2: {"f": 0.0, "v": 3, "s": "plain"}}
    code, out, _ = run(["scan", "u"], capsys, monkeypatch)
    assert code == 0
    assert out.splitlines() == ["1\tf=1.5\tv=2\ts=two\\nlines\\tand a tab, a \\\\ and a \\x07",
                                "2\tf=0.0\tv=3\ts=plain"]
    code, out, _ = run(["get", "u", "1", "--format", "table"], capsys, monkeypatch)
    assert code == 0 and out.splitlines() == ["1\tf=1.5\tv=2\ts=two\\nlines\\tand a tab, a \\\\ and a \\x07"]
    code, out, _ = run(["get", "u", "1"], capsys, monkeypatch)  # JSON: the value as stored
    assert code == 0 and json.loads(out)["s"] == text
    code, out, _ = run(["scan", "u", "--format", "json"], capsys, monkeypatch)
    assert code == 0 and json.loads(out)[0]["s"] == text
