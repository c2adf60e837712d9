"""LSN/GLSN text forms (``walmerge.lsn``): every printed form parses back, and bad text is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from walmerge.lsn import MAX_LAMPORT, MAX_LSN, MAX_NODE_ID, format_glsn, format_lsn, pack_glsn, parse_glsn, parse_lsn

lsns = st.integers(0, MAX_LSN)


@given(lsns)
def test_lsn_round_trips_through_every_form(lsn: int) -> None:
    assert parse_lsn(format_lsn(lsn)) == lsn
    assert parse_lsn(hex(lsn)) == lsn
    assert parse_lsn(str(lsn)) == lsn
    assert parse_lsn(f"  {format_lsn(lsn).lower()} ") == lsn


@given(st.integers(0, MAX_LAMPORT), st.integers(0, MAX_NODE_ID))
def test_glsn_round_trips(lamport: int, node: int) -> None:
    glsn = pack_glsn(lamport, node)
    assert parse_glsn(format_glsn(glsn)) == glsn
    assert parse_glsn(f"{lamport}.{node}") == glsn


@pytest.mark.parametrize("text", ["", "x", "1/", "/1", "1/100000000", "-1", "0x1" + "0" * 16, "1/2/3", "g/0"])
def test_bad_lsns_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="LSN"):
        parse_lsn(text)


@pytest.mark.parametrize("text", ["", "12", "1/", "a/1", "1/65536", "-1/2", "1/2/3", f"{MAX_LAMPORT + 1}/0"])
def test_bad_glsns_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_glsn(text)


def test_operator_wrappers_keep_their_errors() -> None:
    """The publisher's ``parse_lsn`` (CLI ``--from-lsn``) turns a bad LSN into a ``ConfigError`` (exit 2)."""
    from muheam.errors import ConfigError
    from muheam.walstream.publisher import parse_lsn as operator_parse_lsn

    assert operator_parse_lsn("0/40") == 0x40
    with pytest.raises(ConfigError):
        operator_parse_lsn("nope")
