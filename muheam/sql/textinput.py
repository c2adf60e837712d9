"""PostgreSQL's input functions for the text form of a Bind parameter: ``smallint``/``integer``/``bigint``,
``real``/``double precision`` and ``boolean`` read exactly as PostgreSQL 18 reads them (checked against it in
``tests/integration/test_sql_protocol_vs_postgres.py``), so a value it refuses is refused here with its SQLSTATE and
never read as something else.

Python's own ``int``/``float`` differ at the edges: ``float('1_0')`` is 10 (PostgreSQL: 22P02), ``int('0x1F')``
fails (PostgreSQL 16 and later: 31), nothing checks a ``smallint``'s range (22003), ``float('1e400')`` is infinity
(22003), and a boolean must not become false for any word that is not true.  Hand-written (a few regular
expressions): no library reads PostgreSQL's input syntax.
"""

from __future__ import annotations

import math
import re
import struct

_WS = "[ \t\n\r\f\v]*"  # PostgreSQL's isspace(): ASCII white space only
_INT = re.compile(_WS + r"([+-]?)(0[xX](?:_?[0-9a-fA-F])+|0[oO](?:_?[0-7])+|0[bB](?:_?[01])+|[0-9](?:_?[0-9])*)"
                  + _WS + r"\Z")
_FLOAT = re.compile(_WS + r"([+-]?)((?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
                    r"|0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?"
                    r"|(?i:infinity|inf|nan))" + _WS + r"\Z")
_BASES = {"x": 16, "o": 8, "b": 2}
INT_NAMES = {16: "smallint", 32: "integer", 64: "bigint"}


class InputError(ValueError):
    """A parameter PostgreSQL's input function refuses: ``code`` is its SQLSTATE (22P02 syntax, 22003 range)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_int(text: str, bits: int) -> int:
    """``int2in``/``int4in``/``int8in``: optional white space and sign, decimal digits or a 0x/0o/0b prefix, single
    underscores between digits."""
    name = INT_NAMES[bits]
    m = _INT.match(text)
    if m is None:
        raise InputError("22P02", f'invalid input syntax for type {name}: "{text}"')
    sign, digits = m.groups()
    digits = digits.replace("_", "")
    base = _BASES.get(digits[1:2].lower(), 10) if len(digits) > 1 and digits[0] == "0" else 10
    value = int(digits[2:] if base != 10 else digits, base)
    if sign == "-":
        value = -value
    if not -(1 << (bits - 1)) <= value < 1 << (bits - 1):
        raise InputError("22003", f'value "{text}" is out of range for type {name}')
    return value


def parse_float(text: str, single: bool = False) -> float:
    """``float8in``/``float4in`` (C's ``strtod``/``strtof``): decimal or hexadecimal, Infinity/inf/NaN in any case;
    out of range is an error, not infinity, and so is a nonzero value that underflows to zero."""
    name = "real" if single else "double precision"
    m = _FLOAT.match(text)
    if m is None:
        raise InputError("22P02", f'invalid input syntax for type {name}: "{text}"')
    sign, body = m.groups()
    low = body.lower()
    if low in ("inf", "infinity", "nan"):
        value = float(low)
        return -value if sign == "-" else value
    hexa = low.startswith("0x")
    value = float.fromhex(sign + body) if hexa else float(sign + body)
    mantissa = re.split("[pP]" if hexa else "[eE]", body)[0][2 if hexa else 0:]
    nonzero = any(ch not in "0." for ch in mantissa)
    if single and math.isfinite(value):
        try:
            narrowed = struct.unpack("!f", struct.pack("!f", value))[0]
        except OverflowError:
            narrowed = math.inf
        if math.isinf(narrowed) or (narrowed == 0.0 and nonzero):
            raise InputError("22003", f'"{text}" is out of range for type {name}')
    if math.isinf(value) or (value == 0.0 and nonzero):
        raise InputError("22003", f'"{text}" is out of range for type {name}')
    return value


def parse_bool(text: str) -> bool:
    """``boolin``: true/yes/on/1 or false/no/off/0, any case, white space around; a prefix of true, false, yes or
    no is enough, of on/off at least two letters."""
    s = text.strip(" \t\n\r\f\v").lower()
    if s:
        if "true".startswith(s) or "yes".startswith(s) or s == "on" or s == "1":
            return True
        if "false".startswith(s) or "no".startswith(s) or (len(s) >= 2 and "off".startswith(s)) or s == "0":
            return False
    raise InputError("22P02", f'invalid input syntax for type boolean: "{text}"')
