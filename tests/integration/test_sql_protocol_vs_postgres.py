"""The SQL port against PostgreSQL 18 at the level of raw frontend/backend messages, where psycopg's high-level API
(``test_sql_vs_postgres.py``) does not look: portals and row limits, errors in each extended-protocol message, a
pipeline's implicit transaction, format codes, text parameters as PostgreSQL's input functions read them.

Each test sends the same hand-built frontend messages (Parse/Bind/Describe/Execute/Close/Sync/Flush/Query) to a
throw-away PostgreSQL and to a 1-node MUHEAM (the ``servers`` fixture of test_sql_vs_postgres, which starts and
stops both) and compares the backend messages that come back, reduced to comparable tuples: ('1',) ParseComplete,
('2',) BindComplete, ('3',) CloseComplete, ('n',) NoData, ('I',) EmptyQueryResponse, ('s',) PortalSuspended,
('t', [oids]) ParameterDescription, ('T', [(name, oid, format)]) RowDescription, ('D', [values]) DataRow,
('C', tag) CommandComplete, ('E'|'N', severity, sqlstate), ('Z', status) ReadyForQuery, ('closed',) when the
server closed the connection, ('timeout',) when nothing came within the bound.  Every test first asserts what
PostgreSQL answers (so the expectation is pinned), then that MUHEAM answers the same.  Written by a review from
the protocol's documentation; the tests of the first part all failed before the fixes they name (10 findings:
a completed UPDATE portal ran again, an error inside BEGIN did not fail the block and COMMIT stored its work, a
short list of parameter format codes dropped the connection, text parameters beyond their type were accepted).
"""
from __future__ import annotations

import socket
import struct
import time
from typing import Any, Iterator
from urllib.parse import urlparse

import psycopg
import pytest

from tests.integration.test_sql_vs_postgres import Servers, servers  # noqa: F401  (the module's fixture)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

TIMEOUT = 5.0


def _msg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def _cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def Q(sql: str) -> bytes:
    return _msg(b"Q", _cstr(sql))


def P(sql: str, name: str = "", oids: tuple[int, ...] = ()) -> bytes:
    return _msg(b"P", _cstr(name) + _cstr(sql) + struct.pack("!h", len(oids))
                + b"".join(struct.pack("!i", o) for o in oids))


def B(portal: str = "", stmt: str = "", params: tuple[bytes | None, ...] = (), pfmts: tuple[int, ...] = (),
      rfmts: tuple[int, ...] = ()) -> bytes:
    body = _cstr(portal) + _cstr(stmt) + struct.pack("!h", len(pfmts)) + b"".join(struct.pack("!h", f) for f in pfmts)
    body += struct.pack("!h", len(params))
    for p in params:
        body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
    body += struct.pack("!h", len(rfmts)) + b"".join(struct.pack("!h", f) for f in rfmts)
    return _msg(b"B", body)


def D(kind: str, name: str = "") -> bytes:
    return _msg(b"D", kind.encode() + _cstr(name))


def E(portal: str = "", max_rows: int = 0) -> bytes:
    return _msg(b"E", _cstr(portal) + struct.pack("!i", max_rows))


def C(kind: str, name: str = "") -> bytes:
    return _msg(b"C", kind.encode() + _cstr(name))


S = _msg(b"S")
H = _msg(b"H")
X = _msg(b"X")


class Raw:
    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT)
        self.buf = b""
        body = struct.pack("!i", 196608) + _cstr("user") + _cstr("postgres") + _cstr("database") \
            + _cstr("postgres") + b"\0"
        self.sock.sendall(struct.pack("!i", len(body) + 4) + body)
        got = self.read_until_ready(1)
        assert got and got[-1] == ("Z", "I"), got

    def close(self) -> None:
        try:
            self.sock.sendall(X)
        except OSError:
            pass
        self.sock.close()

    def _read_one(self, deadline: float) -> tuple[bytes, bytes] | None:
        while True:
            if len(self.buf) >= 5:
                (n,) = struct.unpack("!i", self.buf[1:5])
                if len(self.buf) >= n + 1:
                    kind, body, self.buf = self.buf[:1], self.buf[5:n + 1], self.buf[n + 1:]
                    return kind, body
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk

    def read_until_ready(self, n_ready: int, timeout: float = TIMEOUT) -> list[tuple[Any, ...]]:
        deadline = time.monotonic() + timeout
        out: list[tuple[Any, ...]] = []
        seen = 0
        while seen < n_ready:
            try:
                m = self._read_one(deadline)
            except TimeoutError:
                out.append(("timeout",))
                return out
            except OSError as exc:
                out.append(("closed", type(exc).__name__))
                return out
            if m is None:
                out.append(("closed",))
                return out
            t = decode(*m)
            if t is not None:
                out.append(t)
            if t is not None and t[0] == "Z":
                seen += 1
        return out

    def read_for(self, seconds: float) -> list[tuple[Any, ...]]:
        """Whatever arrives within ``seconds`` (for a Flush, which has no ReadyForQuery to wait for)."""
        deadline = time.monotonic() + seconds
        out: list[tuple[Any, ...]] = []
        while True:
            try:
                m = self._read_one(deadline)
            except TimeoutError:
                return out
            except OSError as exc:
                return [*out, ("closed", type(exc).__name__)]
            if m is None:
                return [*out, ("closed",)]
            t = decode(*m)
            if t is not None:
                out.append(t)

    def send(self, *msgs: bytes, n_ready: int | None = None, timeout: float = TIMEOUT) -> list[tuple[Any, ...]]:
        data = b"".join(msgs)
        if n_ready is None:
            n_ready = sum(1 for m in msgs if m == S) + sum(1 for m in msgs if m[:1] == b"Q")
        try:
            self.sock.sendall(data)
        except OSError as exc:
            return [("closed", type(exc).__name__)]
        return self.read_until_ready(n_ready, timeout)


def decode(kind: bytes, body: bytes) -> tuple[Any, ...] | None:
    k = kind.decode()
    if k in "123nIs":
        return (k,)
    if k == "R":
        return None if struct.unpack("!i", body[:4])[0] == 0 else ("R", body)
    if k in ("S", "K"):
        return None  # ParameterStatus / BackendKeyData: values differ by server, not compared
    if k == "Z":
        return ("Z", body.decode())
    if k == "C":
        return ("C", body[:-1].decode())
    if k == "t":
        (n,) = struct.unpack("!h", body[:2])
        return ("t", list(struct.unpack(f"!{n}i", body[2:2 + 4 * n])))
    if k == "T":
        (n,) = struct.unpack("!h", body[:2])
        at, cols = 2, []
        for _ in range(n):
            end = body.index(b"\0", at)
            name = body[at:end].decode()
            _tbl, _col, oid, _size, _mod, fmt = struct.unpack("!ihihih", body[end + 1:end + 19])
            cols.append((name, oid, fmt))
            at = end + 19
        return ("T", cols)
    if k == "D":
        (n,) = struct.unpack("!h", body[:2])
        at, vals = 2, []
        for _ in range(n):
            (ln,) = struct.unpack("!i", body[at:at + 4])
            at += 4
            if ln == -1:
                vals.append(None)
            else:
                vals.append(body[at:at + ln])
                at += ln
        return ("D", vals)
    if k in ("E", "N"):
        fields = {}
        for part in body.split(b"\0"):
            if part:
                fields[chr(part[0])] = part[1:].decode()
        return (k, fields.get("V", fields.get("S")), fields.get("C"))
    return (k, body)


# --- fixtures and helpers ---------------------------------------------------------------------------------------

TABLE = [Q("DROP TABLE IF EXISTS xt"),
         Q("CREATE TABLE xt (id bigint PRIMARY KEY, b integer NOT NULL, d double precision NOT NULL, s text NOT NULL)"),
         Q("INSERT INTO xt VALUES (1, 10, 1.5, 'a'), (2, 20, 2.5, 'b'), (3, 30, 3.5, 'c')")]


class Both:
    def __init__(self, both_servers: Servers) -> None:
        self.servers = both_servers
        u = urlparse(str(both_servers.cluster.info["nodes"][0]["sql_endpoint"]))
        self.mu_addr = (str(u.hostname), int(u.port or 0))
        self.pg = Raw("127.0.0.1", both_servers.pg.port)
        self.mu = Raw(*self.mu_addr)

    def send(self, *msgs: bytes, n_ready: int | None = None, timeout: float = 4.0) -> tuple[list[Any], list[Any]]:
        """The same messages to PostgreSQL, then to MUHEAM (one after the other: they share no state)."""
        return (self.pg.send(*msgs, n_ready=n_ready, timeout=timeout),
                self.mu.send(*msgs, n_ready=n_ready, timeout=timeout))

    def reopen_mu(self) -> None:
        try:
            self.mu.sock.close()
        except OSError:
            pass
        self.servers.ensure_node()
        u = urlparse(str(self.servers.cluster.info["nodes"][0]["sql_endpoint"]))
        self.mu = Raw(str(u.hostname), int(u.port or 0))

    def close(self) -> None:
        self.pg.close()
        self.mu.close()


@pytest.fixture
def both(servers: Servers) -> Iterator[Both]:  # noqa: F811
    servers.ensure_node()
    b = Both(servers)
    try:
        for m in TABLE:
            pg, mu = b.send(m)
            for reply in (pg, mu):  # (PostgreSQL adds a NOTICE for DROP ... IF EXISTS of a missing table)
                assert reply[-1] == ("Z", "I") and not [r for r in reply if r[0] == "E"], (pg, mu)
        yield b
    finally:
        b.close()


def i8(v: int) -> bytes:
    return struct.pack("!q", v)


def count_row(reply: list[Any]) -> Any:
    return [m for m in reply if m[0] == "D"]


# === what differed (each failed before its fix) =======================================================================

# --- 1. Execute's row limit ------------------------------------------------------------------------------------

def test_execute_with_max_rows_suspends_the_portal(both: Both) -> None:
    """Parse "SELECT id FROM xt ORDER BY id"; Bind; Execute(max_rows=1) x2; Execute(0); Sync.  PostgreSQL sends
    one row and PortalSuspended per limited Execute, then the rest and 'SELECT 1'.  MUHEAM used to ignore max_rows:
    all 3
    rows and 'SELECT 3' for every Execute (the statement runs three times, 9 rows), never PortalSuspended."""
    pg, mu = both.send(P("SELECT id FROM xt ORDER BY id"), B(), E("", 1), E("", 1), E("", 0), S)
    assert pg == [("1",), ("2",), ("D", [b"1"]), ("s",), ("D", [b"2"]), ("s",), ("D", [b"3"]), ("C", "SELECT 1"),
                  ("Z", "I")]
    assert mu == pg


def test_execute_with_max_rows_on_insert_returning_inserts_once(both: Both) -> None:
    """Parse "INSERT ... VALUES (60..),(61..) RETURNING id"; Bind; Execute(1); Execute(1); Sync.  PostgreSQL: row 60,
    PortalSuspended, row 61, PortalSuspended, ReadyForQuery I.  MUHEAM used to send both rows + 'INSERT 0 2', then
    run the
    INSERT a second time: ErrorResponse 23505."""
    pg, mu = both.send(P("INSERT INTO xt VALUES (60, 1, 1, 'a'), (61, 1, 1, 'b') RETURNING id"), B(), E("", 1),
                       E("", 1), S)
    assert pg == [("1",), ("2",), ("D", [b"60"]), ("s",), ("D", [b"61"]), ("s",), ("Z", "I")]
    assert mu == pg


# --- 2. Execute of a portal that already ran to completion --------------------------------------------------------

def test_execute_of_a_completed_update_portal_does_not_update_again(both: Both) -> None:
    """Parse "UPDATE xt SET b = b + 1 WHERE id = 1"; Bind "p"; Execute "p"; Execute "p"; Sync.  PostgreSQL refuses
    the second Execute (55000, the pipeline's implicit transaction rolls back: b stays 10).  MUHEAM used to run the
    UPDATE again: 'UPDATE 1' twice and b = 12."""
    pg, mu = both.send(P("UPDATE xt SET b = b + 1 WHERE id = 1"), B("p"), E("p"), E("p"), S,
                       Q("SELECT b FROM xt WHERE id = 1"))
    assert pg[:5] == [("1",), ("2",), ("C", "UPDATE 1"), ("E", "ERROR", "55000"), ("Z", "I")]
    assert count_row(pg) == [("D", [b"10"])]
    assert (mu[:5], count_row(mu)) == (pg[:5], count_row(pg))


def test_execute_of_a_completed_select_portal_returns_no_rows(both: Both) -> None:
    """Inside BEGIN: Parse "SELECT id FROM xt WHERE id = 1"; Bind "p"; Execute "p" x2; Sync.  PostgreSQL: the second
    Execute is 'SELECT 0' with no rows.  MUHEAM used to run the query again: the row and 'SELECT 1' a second time."""
    pg, mu = both.send(Q("BEGIN"), P("SELECT id FROM xt WHERE id = 1"), B("p"), E("p"), E("p"), S, Q("ROLLBACK"))
    assert pg[2:8] == [("1",), ("2",), ("D", [b"1"]), ("C", "SELECT 1"), ("C", "SELECT 0"), ("Z", "T")]
    assert mu == pg


# --- 3. Portals outlive their transaction --------------------------------------------------------------------------

@pytest.mark.parametrize("portal", ["p", ""], ids=["named", "unnamed"])
def test_a_portal_ends_with_its_transaction(both: Both, portal: str) -> None:
    """Parse "SELECT 1"; Bind portal; Sync; Execute portal; Sync.  PostgreSQL: the Sync ended the (implicit)
    transaction and every portal with it: 34000.  MUHEAM used to keep the portal and execute it."""
    pg, mu = both.send(P("SELECT 1"), B(portal), S, E(portal), S)
    assert pg == [("1",), ("2",), ("Z", "I"), ("E", "ERROR", "34000"), ("Z", "I")]
    assert mu == pg


def test_a_suspended_portal_in_a_block_goes_on_across_sync_and_ends_at_commit(both: Both) -> None:
    """BEGIN; Parse "SELECT id FROM xt ORDER BY id"; Bind "p"; Execute("p", 1); Sync; Execute("p", 1); Sync; COMMIT;
    Execute "p"; Sync.  PostgreSQL: row 1, PortalSuspended, T; row 2, PortalSuspended, T; COMMIT; 34000.  MUHEAM used
    to send the whole result twice and, after COMMIT, a third time."""
    pg, mu = both.send(Q("BEGIN"), P("SELECT id FROM xt ORDER BY id"), B("p"), E("p", 1), S, E("p", 1), S,
                       Q("COMMIT"), E("p"), S)
    assert pg == [("C", "BEGIN"), ("Z", "T"), ("1",), ("2",), ("D", [b"1"]), ("s",), ("Z", "T"), ("D", [b"2"]),
                  ("s",), ("Z", "T"), ("C", "COMMIT"), ("Z", "I"), ("E", "ERROR", "34000"), ("Z", "I")]
    assert mu == pg


# --- 4. An error in Parse/Bind/Describe (or Execute of a missing portal) does not abort the block --------------

@pytest.mark.parametrize("msgs, code", [
    ([P("SELEC 1")], "42601"),
    ([P("SELECT * FROM nowhere")], "42P01"),
    ([P("SELECT $1::int8"), B()], "08P01"),          # Bind with 0 parameters for 1
    ([D("S", "no_such_statement")], "26000"),
    ([B("", "no_such_statement")], "26000"),
    ([E("no_such_portal")], "34000"),
], ids=["parse-syntax", "parse-42P01", "bind-count", "describe-26000", "bind-26000", "execute-34000"])
def test_an_extended_protocol_error_inside_begin_aborts_the_block(both: Both, msgs: list[bytes], code: str) -> None:
    """BEGIN; INSERT (id 70); <failing message>; Sync; COMMIT.  PostgreSQL: the error aborts the block
    (ReadyForQuery 'E'), COMMIT answers ROLLBACK and row 70 is not there.  MUHEAM used to only report the
    error: the status stayed 'T' after Sync, COMMIT committed and row 70 was stored.  (psycopg sees this as
    ``transaction_status`` INTRANS instead of INERROR after e.g. a parameterised query on a missing table.)"""
    pg, mu = both.send(Q("BEGIN"), Q("INSERT INTO xt VALUES (70, 1, 1, 'x')"), *msgs, S, Q("COMMIT"),
                       Q("SELECT count(*) FROM xt WHERE id = 70"))
    at = next(i for i, m in enumerate(pg) if m[0] == "E")
    assert pg[at:] == [("E", "ERROR", code), ("Z", "E"), ("C", "ROLLBACK"), ("Z", "I"), ("T", [("count", 20, 0)]),
                       ("D", [b"0"]), ("C", "SELECT 1"), ("Z", "I")]
    assert mu == pg


def test_psycopg_transaction_after_a_failed_parameterised_statement_is_in_error(servers: Servers) -> None:  # noqa: F811
    """The same through psycopg (non-autocommit): INSERT, then ``execute("SELECT * FROM nowhere WHERE id = %s",
    (1,))`` (42P01 at Parse), then ``commit()``.  PostgreSQL: status INERROR, commit rolls back, no row.  MUHEAM used
    to say INTRANS and store the INSERT at commit."""
    seen = []
    for dsn in (servers.pg_dsn, servers.mu_dsn):
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("DROP TABLE IF EXISTS xp")
            c.execute("CREATE TABLE xp (id bigint PRIMARY KEY)")
        with psycopg.connect(dsn) as c:
            c.execute("INSERT INTO xp VALUES (1)")
            code = None
            try:
                c.execute("SELECT * FROM nowhere WHERE id = %s", (1,))
            except psycopg.Error as exc:
                code = exc.sqlstate
            status = c.info.transaction_status.name
            try:
                c.commit()
            except psycopg.Error:
                c.rollback()
        with psycopg.connect(dsn, autocommit=True) as c:
            n = c.execute("SELECT count(*) FROM xp").fetchone()
        seen.append((code, status, n))
    assert seen[0] == ("42P01", "INERROR", (0,))
    assert seen[1] == seen[0]


# --- 5. Bind, Describe and an empty Parse in a failed block ---------------------------------------------------------

@pytest.mark.parametrize("msgs, pg_reply", [
    ([B("", "s1")], [("E", "ERROR", "25P02"), ("Z", "E")]),
    ([D("S", "s1")], [("E", "ERROR", "25P02"), ("Z", "E")]),
    ([P(""), B(), E()], [("1",), ("E", "ERROR", "25P02"), ("Z", "E")]),
], ids=["bind", "describe", "empty-query"])
def test_messages_in_a_failed_block_are_refused(both: Both, msgs: list[bytes], pg_reply: list[Any]) -> None:
    """Parse "s1" = "SELECT 1"; BEGIN; SELECT 1/0 (block now 'E'); <msgs>; Sync.  PostgreSQL answers 25P02 to Bind,
    to Describe, and to Bind of an empty query.  MUHEAM used to answer BindComplete /
    ParameterDescription+RowDescription /
    BindComplete+EmptyQueryResponse (the status stayed 'E', so this was milder)."""
    pg, mu = both.send(P("SELECT 1", "s1"), S, Q("BEGIN"), Q("SELECT 1/0"), *msgs, S, Q("ROLLBACK"))
    assert pg[6:-2] == pg_reply
    assert mu == pg


# --- 6. Result format codes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("sql, rfmts, code", [
    ("SELECT id, s FROM xt WHERE id = 1", (1, 0, 1), "08P01"),    # 3 codes, 2 columns
    ("SELECT id, b, s FROM xt WHERE id = 1", (1, 0), "08P01"),    # 2 codes, 3 columns
    ("SELECT 1", (2,), "22023"),                                  # no such format code
], ids=["3-for-2", "2-for-3", "code-2"])
def test_bad_result_format_codes_are_refused(both: Both, sql: str, rfmts: tuple[int, ...], code: str) -> None:
    """Parse sql; Bind with result format codes rfmts; Describe portal; Execute; Sync.  PostgreSQL: ErrorResponse
    (08P01 "bind message has N result formats but query has M columns"; 22023 "unsupported format code: 2").
    MUHEAM used to answer BindComplete and the rows (missing codes taken as text, code 2 as binary)."""
    pg, mu = both.send(P(sql), B("", "", (), (), rfmts), D("P"), E(), S)
    assert [m for m in pg if m[0] == "E"] == [("E", "ERROR", code)] and pg[-1] == ("Z", "I")
    assert mu == pg


# --- 7. Parameter format codes ---------------------------------------------------------------------------------

def test_fewer_parameter_format_codes_than_parameters_is_08P01_not_a_dropped_connection(both: Both) -> None:
    """Parse "SELECT $1::int8 + $2::int8 + $3::int8"; Bind with 3 text parameters and 2 format codes (0, 0);
    Execute; Sync; Query "SELECT 1".  PostgreSQL: 08P01 ("bind message has 2 parameter formats but 3 parameters"),
    and the session goes on.  MUHEAM used to close the connection without any ErrorResponse (Bind indexed the
    format codes past their end: an IndexError)."""
    pg, mu = both.send(P("SELECT $1::int8 + $2::int8 + $3::int8"), B("", "", (b"1", b"2", b"3"), (0, 0)), E(), S,
                       Q("SELECT 1"))
    time.sleep(0.3)
    alive = both.servers.node_alive()
    if mu and mu[-1][0] == "closed":
        both.reopen_mu()
    assert alive
    assert pg == [("1",), ("E", "ERROR", "08P01"), ("Z", "I"), ("T", [("?column?", 23, 0)]), ("D", [b"1"]),
                  ("C", "SELECT 1"), ("Z", "I")]
    assert mu == pg


def test_more_parameter_format_codes_than_parameters_is_08P01(both: Both) -> None:
    """Parse "SELECT $1::int8"; Bind with 1 parameter and 2 format codes; Execute; Sync.  PostgreSQL: 08P01.
    MUHEAM used to take the first code and answer the row."""
    pg, mu = both.send(P("SELECT $1::int8"), B("", "", (b"1",), (0, 1)), E(), S)
    assert pg == [("1",), ("E", "ERROR", "08P01"), ("Z", "I")]
    assert mu == pg


# --- 8. Text-format parameters --------------------------------------------------------------------------------

@pytest.mark.parametrize("oid, text, pg_reply", [
    (16, b"maybe", ("E", "ERROR", "22P02")),
    (16, b"tru", ("D", [b"t"])),
    (21, b"70000", ("E", "ERROR", "22003")),
    (23, b"3000000000", ("E", "ERROR", "22003")),
    (20, b"9223372036854775808", ("E", "ERROR", "22003")),
    (20, b"0x1F", ("D", [b"31"])),
    (701, b"1_0", ("E", "ERROR", "22P02")),
], ids=["bool-maybe", "bool-tru", "int2-70000", "int4-3e9", "int8-2^63", "int8-hex", "float8-underscore"])
def test_text_parameters_are_read_as_postgresql_reads_them(both: Both, oid: int, text: bytes,
                                                            pg_reply: tuple[Any, ...]) -> None:
    """Parse "SELECT $1" with the parameter type declared; Bind the text value; Execute; Sync.  MUHEAM's
    wire.decode_param used to read bool as ``s.lower() in (...)`` (anything else was false, no prefixes), ints with
    Python's int() (no range check for int2/int4/int8: 70000 comes back as an int2; no 0x prefix) and floats with
    float() (which accepts '1_0')."""
    pg, mu = both.send(P("SELECT $1", "", (oid,)), B("", "", (text,)), E(), S)
    assert pg_reply in pg
    assert mu == pg


# --- 9. A pipeline before Sync is one implicit transaction ---------------------------------------------------------

def test_a_pipeline_up_to_sync_is_one_implicit_transaction(both: Both) -> None:
    """Outside BEGIN: Parse/Bind/Execute "INSERT ... (50 ...)"; Parse/Bind/Execute "INSERT ... (1 ...)" (23505);
    Sync; then count row 50.  PostgreSQL runs everything up to Sync as one implicit transaction (protocol docs,
    "Pipelining"): the error rolls back the first INSERT (count 0).  MUHEAM used to commit it (count 1): each
    Execute outside BEGIN was its own transaction."""
    pg, mu = both.send(P("INSERT INTO xt VALUES (50, 1, 1, 'p')"), B(), E(), P("INSERT INTO xt VALUES (1, 1, 1, 'd')"),
                       B(), E(), S, Q("SELECT count(*) FROM xt WHERE id = 50"))
    assert pg[:7] == [("1",), ("2",), ("C", "INSERT 0 1"), ("1",), ("2",), ("E", "ERROR", "23505"), ("Z", "I")]
    assert count_row(pg) == [("D", [b"0"])]
    assert (mu[:7], count_row(mu)) == (pg[:7], count_row(pg))


def test_a_set_in_a_failed_pipeline_is_undone(both: Both) -> None:
    """Parse/Bind/Execute "SET application_name = 'zz'"; Parse/Bind/Execute a division by zero on a row; Sync;
    SHOW application_name.  PostgreSQL: '' (the SET was rolled back with the implicit transaction).  MUHEAM used to
    say 'zz'."""
    pg, mu = both.send(P("SET application_name = 'zz'"), B(), E(), P("SELECT 1 / (b - 10) FROM xt WHERE id = 1"),
                       B(), E(), S, Q("SHOW application_name"), Q("RESET application_name"))
    assert count_row(pg) == [("D", [b""])]
    assert count_row(mu) == count_row(pg)


# --- 10. A parameter whose type nothing determines ---------------------------------------------------------------

def test_an_unreferenced_parameter_of_unknown_type_is_42P18(both: Both) -> None:
    """Parse "SELECT $2::int" (no types declared, $1 never used); Describe statement; Sync.  PostgreSQL: 42P18
    "could not determine data type of parameter $1".  MUHEAM used to answer ParseComplete,
    ParameterDescription [25, 23]."""
    pg, mu = both.send(P("SELECT $2::int"), D("S"), S)
    assert pg == [("E", "ERROR", "42P18"), ("Z", "I")]
    assert mu == pg


def _count(dsn: str, table: str) -> Any:
    with psycopg.connect(dsn, autocommit=True) as c:
        try:
            return c.execute(f"SELECT count(*) FROM {table}").fetchone()
        except psycopg.Error as exc:
            return exc.sqlstate


YT = [Q("DROP TABLE IF EXISTS yt"), Q("CREATE TABLE yt (id bigint PRIMARY KEY)")]
RUNTIME_ERROR = [P("SELECT 1 / (b - 10) FROM xt WHERE id = 1"), B(), E()]   # 22012 at Execute on both


# --- a pipeline's implicit transaction: what a second review found -------------------------------------------

def test_drop_if_exists_then_create_in_one_pipeline(both: Both) -> None:
    """P/B/E "DROP TABLE IF EXISTS yt"; P/B/E "CREATE TABLE yt ..."; P/B/E INSERT; Sync.  PostgreSQL: all three
    succeed.  MUHEAM used to defer the drop to the Sync's COMMIT (the pipeline is now an implicit block), so CREATE
    got 0A000, the pipeline rolled back, and the drop was left pending: yt answered 42P01 (and the next COMMIT
    of the session dropped it)."""
    both.send(*YT)
    pg, mu = both.send(P("DROP TABLE IF EXISTS yt"), B(), E(), P("CREATE TABLE yt (id bigint PRIMARY KEY)"), B(),
                       E(), P("INSERT INTO yt VALUES (1)"), B(), E(), S, Q("SELECT count(*) FROM yt"))
    assert count_row(pg) == [("D", [b"1"])] and not [m for m in pg if m[0] == "E"]
    assert mu == [m for m in pg if m[0] != "N"]


def test_psycopg_autocommit_pipeline_drop_and_create(servers: Servers) -> None:  # noqa: F811
    """psycopg 3, autocommit, ``with conn.pipeline():`` DROP TABLE IF EXISTS pt; CREATE TABLE pt; INSERT.
    PostgreSQL: ok, 1 row.  MUHEAM used to answer 0A000 and no row."""
    seen = []
    for dsn in (servers.pg_dsn, servers.mu_dsn):
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("DROP TABLE IF EXISTS pt")
            c.execute("CREATE TABLE pt (id bigint PRIMARY KEY)")
        got: list[Any] = []
        with psycopg.connect(dsn, autocommit=True) as c:
            try:
                with c.pipeline():
                    c.execute("DROP TABLE IF EXISTS pt")
                    c.execute("CREATE TABLE pt (id bigint PRIMARY KEY)")
                    c.execute("INSERT INTO pt VALUES (1)")
            except psycopg.Error as exc:
                got.append(exc.sqlstate)
            got.append(c.info.transaction_status.name)
        got.append(_count(dsn, "pt"))
        seen.append(got)
    assert seen[0] == ["IDLE", (1,)]
    assert seen[1] == seen[0]


def test_discard_all_as_the_first_statement_of_a_pipeline(both: Both) -> None:
    """Parse "s"; P/B/E "DISCARD ALL"; Sync; Bind "s"; Execute; Sync (how drivers that always use the extended
    protocol, and connection pools, reset a session).  PostgreSQL: DISCARD ALL, then 26000 (it deallocated "s").
    MUHEAM used to answer 25001 "cannot run inside a transaction block" (the pipeline's implicit block counted
    as one), and "s" survived."""
    pg, mu = both.send(P("SELECT 1", "s"), P("DISCARD ALL"), B(), E(), S, B("", "s"), E(), S)
    assert pg == [("1",), ("1",), ("2",), ("C", "DISCARD ALL"), ("Z", "I"), ("E", "ERROR", "26000"), ("Z", "I")]
    assert mu == pg


def test_failed_begin_after_a_query_in_a_pipeline_leaves_the_session_idle(both: Both) -> None:
    """P/B/E "SELECT b FROM xt WHERE id = 1"; P/B/E "BEGIN ISOLATION LEVEL REPEATABLE READ" (25001: after a query);
    Sync; Query "SELECT 1".  PostgreSQL: the failed BEGIN aborts the whole transaction and the session is idle
    (ReadyForQuery I; SELECT 1 answers).  MUHEAM used to make the implicit block a regular one before
    the characteristic failed, so the error left a failed block: 'E', and SELECT 1 got 25P02."""
    pg, mu = both.send(P("SELECT b FROM xt WHERE id = 1"), B(), E(), P("BEGIN ISOLATION LEVEL REPEATABLE READ"), B(),
                       E(), S, Q("SELECT 1"))
    assert pg[4:] == [("1",), ("2",), ("E", "ERROR", "25001"), ("Z", "I"), ("T", [("?column?", 23, 0)]),
                      ("D", [b"1"]), ("C", "SELECT 1"), ("Z", "I")]
    assert mu == pg


@pytest.mark.parametrize("sql", ["SET LOCAL application_name = 'q'", "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
                                 "SET TRANSACTION READ ONLY"])
def test_minor_set_local_in_a_pipeline_warns(both: Both, sql: str) -> None:
    """P/B/E sql; Sync.  PostgreSQL: WARNING 25P01 ("... can only be used in transaction blocks"), the setting
    still applies until the Sync.  MUHEAM used to send no warning."""
    pg, mu = both.send(P(sql), B(), E(), S)
    assert ("N", "WARNING", "25P01") in pg
    assert mu == pg


def test_ddl_in_a_failed_pipeline_took_effect_and_leaves_nothing_pending(both: Both) -> None:
    """MUHEAM's documented limit, not PostgreSQL's behaviour: the catalog is not transactional, so a CREATE or DROP
    TABLE in a pipeline takes effect at once and stays when a later statement of the pipeline fails (PostgreSQL
    rolls both back).  What must hold: nothing of the failed pipeline is left pending for a later transaction of
    the session (a deferred drop used to run at the next, unrelated COMMIT)."""
    mu = both.mu
    mu.send(*YT)
    mu.send(Q("DROP TABLE IF EXISTS zt"))
    got = mu.send(P("DROP TABLE yt"), B(), E(), P("CREATE TABLE zt (id bigint PRIMARY KEY)"), B(), E(), *RUNTIME_ERROR,
                  S)
    assert got[-2:] == [("E", "ERROR", "22012"), ("Z", "I")]
    assert _count(both.servers.mu_dsn, "yt") == "42P01" and _count(both.servers.mu_dsn, "zt") == (0,)
    mu.send(*YT)
    mu.send(Q("BEGIN"), Q("INSERT INTO xt VALUES (81, 1, 1, 'x')"), Q("COMMIT"))
    assert _count(both.servers.mu_dsn, "yt") == (0,)  # the later COMMIT dropped nothing
    mu.send(Q("DROP TABLE zt"))


# === what matched from the start (kept so that it stays so) ====================================

def _i(v: int, fmt: str) -> bytes:
    return struct.pack(fmt, v)


MATCHING: dict[str, list[bytes]] = {
    "describe-oid0-inferred": [P("SELECT $1"), D("S"), P("SELECT $1 + 1", "a"), D("S", "a"),
                               P("SELECT id FROM xt WHERE id = $1", "b"), D("S", "b"),
                               P("INSERT INTO xt VALUES ($1, $2, $3, $4)", "c"), D("S", "c"),
                               P("SELECT id FROM xt LIMIT $1", "d"), D("S", "d"),
                               P("UPDATE xt SET b = b + $1 WHERE id = $2", "e"), D("S", "e"),
                               P("SELECT $1 = $2", "f"), D("S", "f"), P("SELECT $1 || 'x'", "g"), D("S", "g"),
                               P("SELECT id FROM xt WHERE d > $1", "h"), D("S", "h"),
                               P("INSERT INTO xt VALUES ($1, $2, $3, $4) RETURNING id, s", "i"), D("S", "i"), S],
    "describe-declared-and-extra-oids": [P("SELECT 1", "", (23, 20)), D("S"), P("SELECT $1", "x", (20,)), D("S", "x"),
                                         P("SELECT id FROM xt WHERE id = $1", "y", (23,)), D("S", "y"), S],
    "describe-portal-before-and-after-execute": [P("SELECT id, s FROM xt WHERE id = 1"), B("", "", (), (), (1, 0)),
                                                 D("P"), E(), D("P"), S],
    "one-result-format-for-all": [P("SELECT id, b, d, s FROM xt WHERE id = 1"), B("", "", (), (), (1,)), D("P"), E(),
                                  P("SELECT 1, 'a', 1.5, true, 2::int8"), B("", "", (), (), (1,)), D("P"), E(), S],
    "bind-wrong-parameter-count": [P("SELECT id FROM xt WHERE id = $1"), B("", "", (b"1", b"2")), E(), S],
    "multiple-statements-in-parse": [P("SELECT 1; SELECT 2"), S],
    "sync-alone-and-repeated": [S, S, S],
    "duplicate-named-statement-close-reuse": [P("SELECT 1", "n"), P("SELECT 2", "n"), S, C("S", "n"),
                                              P("SELECT 2", "n"), S],
    "close-missing-names": [C("S", "nope"), C("P", "nope"), S],
    "close-portal-then-execute": [P("SELECT 1"), B("p"), C("P", "p"), E("p"), S],
    "close-statement-keeps-portal": [P("SELECT 1", "s"), B("p", "s"), C("S", "s"), E("p"), S],
    "empty-query-extended": [P(""), B(), D("P"), E(), D("S"), P("  ;  "), B(), E(), S],
    "empty-query-simple": [Q("")],
    "error-in-begin-pipeline": [Q("BEGIN"), P("SELECT 1 / (b - 10) FROM xt WHERE id = 1"), B(), E(),
                                P("SELECT 1"), B(), E(), S, P("SELECT 1"), B(), E(), S, Q("ROLLBACK")],
    "error-outside-begin-status-I": [P("SELECT 1"), B(), E(), P("SELECT 1 / (b - 10) FROM xt WHERE id = 1"), B(), E(),
                                     P("SELECT 2"), B(), E(), S],
    "parse-commit-in-failed-block": [Q("BEGIN"), Q("SELECT 1/0"), P("COMMIT"), B(), E(), S],
    "close-in-failed-block": [Q("BEGIN"), Q("SELECT 1/0"), C("S", "x"), S, Q("ROLLBACK")],
    "parse-in-failed-block-25P02": [Q("BEGIN"), Q("SELECT 1/0"), P("SELECT 1"), B(), E(), S, Q("ROLLBACK")],
    "query-with-begin-inside-extended-pipeline": [P("SELECT 1"), B(), E(), Q("BEGIN"), P("SELECT 2"), B(), E(), S,
                                                  Q("ROLLBACK")],
    "begin-commit-extended": [P("BEGIN"), B(), E(), S, P("COMMIT"), B(), E(), S, P("ROLLBACK"), B(), E(), S],
    "show-set-extended": [P("SHOW DateStyle"), D("S"), B(), D("P"), E(), P("SET application_name = 'x'"), D("S"), B(),
                          D("P"), E(), P("RESET application_name"), B(), E(), S],
    "null-parameters": [P("SELECT $1::int8, $2::text, $3::bool, $4::float8"), B("", "", (None, None, None, None)),
                        E(), S],
    "binary-parameters-and-results": [
        P("SELECT $1::int2, $2::int4, $3::int8, $4::float8, $5::text, $6::bool", "", (21, 23, 20, 701, 25, 16)),
        B("", "", (_i(-5, "!h"), _i(70000, "!i"), _i(2 ** 40, "!q"), struct.pack("!d", 1.25), b"h\xc3\xa9", b"\x01"),
          (1,), (1,)), E(),
        P("SELECT $1::numeric", "", (1700,)), B("", "", (bytes.fromhex("0002000000000002000c1388"),), (1,), (0,)), E(),
        P("SELECT $1", "", (700,)), B("", "", (struct.pack("!f", 1.5),), (1,)), E(),
        P("SELECT id FROM xt WHERE id = $1"), B("", "", (i8(1),), (1,), (1,)), D("P"), E(), S],
    "text-parameter-edge-syntax": [P("SELECT $1", "", (20,)), B("", "", (b" 12 ",)), E(),
                                   P("SELECT $1", "", (20,)), B("", "", (b"1_000",)), E(),
                                   P("SELECT $1", "", (701,)), B("", "", (b"nan",)), E(),
                                   P("SELECT $1", "", (16,)), B("", "", (b"of",)), E(), S],
    "bad-text-parameter-22P02": [P("SELECT id FROM xt WHERE id = $1"), B("", "", (b"abc",)), E(), S],
    "missing-statement-and-portal": [B("", "nostmt"), S, D("P", "nop"), S],
    "unknown-message-type-fatal": [b"z\x00\x00\x00\x04", S],
    "copy-to-stdout-simple-is-0A000-on-muheam": [],  # (see test below: not a finding, 0A000 is the documented answer)
    "rollback-without-block-warns": [P("ROLLBACK"), B(), E(), S],
    "dml-and-ddl-extended": [P("DELETE FROM xt WHERE id = 999"), B(), D("P"), E(),
                             P("SELECT id FROM xt WHERE id = 1 FOR UPDATE"), B(), D("P"), E(),
                             P("CREATE TABLE xt2 (id bigint PRIMARY KEY)"), B(), D("P"), E(),
                             P("DROP TABLE xt2"), B(), E(), S],
    "negative-max-rows-means-all": [P("SELECT id FROM xt ORDER BY id"), B(), E("", -1), S],
}


@pytest.mark.parametrize("name", [k for k, v in MATCHING.items() if v])
def test_matches(both: Both, name: str) -> None:
    pg, mu = both.send(*MATCHING[name])
    assert not [m for m in pg if m[0] in ("closed", "timeout")] or name == "unknown-message-type-fatal"
    assert mu == pg


def test_flush_sends_what_is_pending(both: Both) -> None:
    """Parse/Bind/Execute then Flush (no Sync): both send ParseComplete, BindComplete, the row and CommandComplete
    at once; the Sync afterwards gives ReadyForQuery I."""
    got = []
    for conn in (both.pg, both.mu):
        conn.sock.sendall(P("SELECT 1") + B() + E() + H)
        flushed = conn.read_for(1.0)
        got.append((flushed, conn.send(S)))
    assert got[0] == ([("1",), ("2",), ("D", [b"1"]), ("C", "SELECT 1")], [("Z", "I")])
    assert got[1] == got[0]


def test_copy_is_a_clean_error_on_muheam(both: Both) -> None:
    """COPY FROM STDIN (simple) and COPY TO STDOUT (extended): MUHEAM answers 0A000 and ReadyForQuery, no hang."""
    mu = both.mu.send(Q("COPY xt FROM STDIN"), P("COPY xt TO STDOUT"), B(), E(), S, Q("SELECT 1"))
    assert mu[:2] == [("E", "ERROR", "0A000"), ("Z", "I")] and ("E", "ERROR", "0A000") in mu[2:] \
        and mu[-1] == ("Z", "I"), mu


def test_libpq_pipeline_mode_statuses(servers: Servers) -> None:  # noqa: F811
    """psycopg.pq.PGconn in pipeline mode: prepare / describe / query_prepared / a failing query / sync; result
    statuses, nfields/ftype/fformat, error fields and transaction_status after the sync."""
    from psycopg import pq
    seen = []
    for dsn in (servers.pg_dsn, servers.mu_dsn):
        pgc = pq.PGconn.connect(dsn.encode())
        assert pgc.status == pq.ConnStatus.OK
        try:
            pgc.enter_pipeline_mode()
            pgc.send_prepare(b"st", b"SELECT $1::int8 * 2, $2::text", None)
            pgc.send_describe_prepared(b"st")
            pgc.send_query_prepared(b"st", [b"21", None], None, 1)
            pgc.send_query_params(b"SELECT 1 / 0", None)
            pgc.send_query_params(b"SELECT 1", None)
            pgc.pipeline_sync()
            out: list[Any] = []
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                pgc.consume_input()
                if pgc.is_busy():
                    time.sleep(0.01)
                    continue
                r = pgc.get_result()
                if r is None:
                    continue
                item: tuple[Any, ...] = (pq.ExecStatus(r.status).name,)
                if r.status == pq.ExecStatus.TUPLES_OK or r.status == pq.ExecStatus.COMMAND_OK:
                    item += (r.nfields, [(r.fname(i), r.ftype(i), r.fformat(i)) for i in range(r.nfields)],
                             [r.get_value(0, i) for i in range(r.nfields)] if r.ntuples else None,
                             r.command_status, r.nparams, [r.param_type(i) for i in range(r.nparams)])
                elif r.status == pq.ExecStatus.FATAL_ERROR:
                    item += (r.error_field(pq.DiagnosticField.SQLSTATE),
                             r.error_field(pq.DiagnosticField.SEVERITY_NONLOCALIZED))
                out.append(item)
                if r.status == pq.ExecStatus.PIPELINE_SYNC:
                    break
            out.append(pq.TransactionStatus(pgc.transaction_status).name)
            pgc.exit_pipeline_mode()
        finally:
            pgc.finish()
        seen.append(out)
    assert seen[0][-2:] == [("PIPELINE_SYNC",), "IDLE"]
    assert seen[1] == seen[0]
