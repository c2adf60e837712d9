"""A SQL statement without a key in its WHERE reads its table page by page (``execute._read_each``), with the
node's ``scan`` replaced by a function that pages as ``Sessions.op_scan`` does: aggregates are accumulated page by
page and hold no rows (no limit), a statement that must hold its rows is refused past ``MAX_STATEMENT_ROWS`` with
SQLSTATE 54000, and the results do not depend on how the table is cut into pages."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from muheam.sql import execute
from muheam.sql.catalog import Catalog
from muheam.sql.session import Session
from tests.unit.sql.frontend import query, startup

BUCKETS = 16


def _table(n: int) -> dict[int, dict[str, Any]]:
    return {k: {"v": k % 7, "x": (k % 13) / 4} for k in range(n)}


def _session(rows: dict[int, dict[str, Any]], scans: list[dict[str, Any]]) -> Session:
    chains = {b: sorted(k for k in rows if k % BUCKETS + 1 == b) for b in range(1, BUCKETS + 1)}

    def scan(req: dict[str, Any]) -> Any:
        scans.append(req)
        at, out = int(req["from_bucket"]), []
        while at <= BUCKETS and len(out) < int(req["page_rows"]):
            out += [[k, dict(rows[k])] for k in chains[at]]
            at += 1
        return {"rows": out, "next": at if at <= BUCKETS else None}

    ops: dict[str, Any] = {
        "tables": lambda req: [{"table_id": 1, "name": "t", "columns": [["v", "int64"], ["x", "float64"]]}],
        "begin": lambda req: {"xid": 7, "sts": 1},
        "snapshot": lambda req: {},
        "scan": scan,
        "commit": lambda req: {"xid": req["xid"]},
        "rollback": lambda req: {"xid": req["xid"]},
    }
    s = Session(ops, Catalog(ops, None), "127.0.0.1", "trust", None, 1, lambda pid, key: None)
    s.feed(startup())
    s.out.clear()
    return s


def _answer(s: Session) -> tuple[list[list[str | None]], bytes]:
    """The data rows (as text) and the error's SQLSTATE (empty if none) of what the session sent."""
    out, rows, code, i = bytes(s.out), [], b"", 0
    while i < len(out):
        kind, size = out[i:i + 1], struct.unpack_from("!i", out, i + 1)[0]
        body = out[i + 5:i + 1 + size]
        if kind == b"D":
            fields, j, row = struct.unpack_from("!h", body)[0], 2, []
            for _ in range(fields):
                n = struct.unpack_from("!i", body, j)[0]
                row.append(None if n < 0 else body[j + 4:j + 4 + n].decode())
                j += 4 + max(n, 0)
            rows.append(row)
        elif kind == b"E":
            code = next(f[1:] for f in body.split(b"\0") if f[:1] == b"C")
        i += 1 + size
    s.out.clear()
    return rows, code


AGGS = "SELECT count(*), count(x), sum(v), avg(v), min(x), max(v), sum(x), avg(x) FROM t WHERE v <> 3"


def test_aggregates_are_the_same_in_one_page_or_many(monkeypatch: pytest.MonkeyPatch) -> None:
    table, scans = _table(3_000), []
    s = _session(table, scans)
    s.feed(query(AGGS))
    whole, code = _answer(s)
    assert code == b"" and len(scans) == 1
    monkeypatch.setattr(execute, "SCAN_PAGE_ROWS", 50)
    scans.clear()
    s.feed(query(AGGS))
    paged, code = _answer(s)
    assert code == b"" and len(scans) == BUCKETS  # one chain (about 190 rows) per page
    assert paged == whole
    kept = [r for r in table.values() if r["v"] != 3]
    assert whole[0][:3] == [str(len(kept)), str(len(kept)), str(sum(r["v"] for r in kept))]
    assert float(whole[0][6] or "nan") == sum(r["x"] for r in kept)


def test_aggregates_hold_no_rows_and_have_no_row_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(execute, "MAX_STATEMENT_ROWS", 100)
    monkeypatch.setattr(execute, "SCAN_PAGE_ROWS", 50)
    s = _session(_table(3_000), [])
    s.feed(query("SELECT count(*), max(v) FROM t"))
    assert _answer(s) == ([["3000", "6"]], b"")


def test_a_statement_that_holds_too_many_rows_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(execute, "MAX_STATEMENT_ROWS", 100)
    s = _session(_table(3_000), [])
    s.feed(query("SELECT v FROM t ORDER BY v LIMIT 1"))
    rows, code = _answer(s)
    assert code == b"54000" and rows == []
    s.feed(query("SELECT key, v FROM t WHERE v = 0 AND key < 500 ORDER BY key LIMIT 2"))  # 72 rows held: fine
    assert _answer(s) == ([["0", "0"], ["7", "0"]], b"")


def test_a_limit_without_order_by_stops_reading_once_it_has_its_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first ``offset + limit`` rows found are the answer (as PostgreSQL's scan stops under a Limit): the rest
    of the table is neither read nor held, so the row limit does not apply (a review found 54000 here)."""
    monkeypatch.setattr(execute, "MAX_STATEMENT_ROWS", 100)
    monkeypatch.setattr(execute, "SCAN_PAGE_ROWS", 50)
    scans: list[dict[str, Any]] = []
    s = _session(_table(3_000), scans)
    s.feed(query("SELECT v FROM t WHERE v = 2 LIMIT 3 OFFSET 1"))
    rows, code = _answer(s)
    assert code == b"" and rows == [["2"], ["2"], ["2"]] and len(scans) == 1
    s.feed(query("SELECT v FROM t ORDER BY v LIMIT 3"))  # ORDER BY needs every row: held, and refused
    assert _answer(s)[1] == b"54000"
