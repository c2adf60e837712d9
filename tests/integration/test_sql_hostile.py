"""Hostile and mistaken clients on the SQL port of a node with ``sql_auth = "scram-sha-256"``: each gets the
PostgreSQL error a client expects, and a session opened before keeps being served throughout."""

from __future__ import annotations

import socket
import struct
import subprocess
from typing import Callable
from urllib.parse import urlparse

import psycopg
import pytest
from psycopg import errors as pgerrors

from muheam.bench import pgbase
from tests.support.cluster import MUHEAM, LocalCluster

pytestmark = pytest.mark.integration
if pgbase.available() is not None:
    pytestmark = [pytestmark, pytest.mark.skip(reason=str(pgbase.available()))]


def raw(endpoint: str, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it (or 5 s pass)."""
    u = urlparse(endpoint)
    with socket.create_connection((str(u.hostname), int(u.port or 0)), timeout=5) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return out


def error_fields(reply: bytes) -> dict[str, str]:
    """The fields of the first ErrorResponse among the backend messages in ``reply``."""
    at = 0
    while at + 5 <= len(reply):
        (length,) = struct.unpack_from("!i", reply, at + 1)
        if reply[at:at + 1] == b"E":
            return {chr(p[0]): p[1:].decode() for p in reply[at + 5:at + 1 + length].split(b"\0") if p}
        at += 1 + length
    raise AssertionError(f"no ErrorResponse in {reply!r}")


def startup(version: int = 196608, user: str = "alice") -> bytes:
    body = struct.pack("!i", version) + f"user\0{user}\0database\0postgres\0\0".encode()
    return struct.pack("!i", len(body) + 4) + body


def test_hostile_clients_get_postgres_errors(local_cluster: Callable[..., LocalCluster],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUHEAM_SQL_AUTH", "scram-sha-256")
    c = local_cluster(nodes=1)
    added = subprocess.run([*MUHEAM, "user", "add", "alice", "--password-stdin", "-c", str(c.config)],
                           input="wonderland\n", capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    endpoint = str(c.info["nodes"][0]["sql_endpoint"])
    u = urlparse(endpoint)
    info = f"host={u.hostname} port={u.port} dbname=postgres connect_timeout=10"

    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(info + " user=alice password=wrong")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(info + " user=nobody-here password=x")
    good = psycopg.connect(info + " user=alice password=wonderland", autocommit=True)
    good.execute("CREATE TABLE t (id bigint PRIMARY KEY, v double precision)")
    good.execute("INSERT INTO t VALUES (%s, %s)", (1, 0.5))

    garbage = raw(endpoint, b"\x16\x03\x01\x02\x00" + b"\xff" * 300)  # a TLS ClientHello where none is spoken
    assert error_fields(garbage)["C"] == "08P01"
    old = error_fields(raw(endpoint, startup(version=2 << 16)))
    assert old["C"] == "0A000" and "unsupported frontend protocol 2.0" in old["M"], old
    # authenticated far enough to send messages: a SASL exchange is not needed to reach the framing checks
    huge = raw(endpoint, startup() + b"p" + struct.pack("!i", 1 << 30))
    assert error_fields(huge)["C"] == "08P01" and "too long" in error_fields(huge)["M"]
    assert raw(endpoint, struct.pack("!ii", 8, 80877103)) == b"N"  # SSLRequest: no TLS, go on in plain text

    for query, exc in (("SELECT * FROM t, t AS u", pgerrors.FeatureNotSupported),
                       ("CREATE INDEX ON t (v)", pgerrors.FeatureNotSupported),
                       ("SELECT * FROM missing", pgerrors.UndefinedTable)):
        with pytest.raises(exc):
            good.execute(query)
    assert good.execute("SELECT id, v FROM t").fetchall() == [(1, 0.5)]  # still served throughout
    good.close()
    status = c.cli("list", "--format", "json").stdout
    assert '"answering": true' in status
