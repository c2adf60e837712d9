"""Table schemas: fixed-width columns declared at create time, and the row <-> numpy record conversion.

Every row has an implicit ``int64`` primary key named ``key`` (stored in the tuple slot, not in the row) and the
declared columns, in order.  Column types:

* ``int64``   -- signed 64-bit integer (numpy ``<i8``)
* ``float64`` -- IEEE double (numpy ``<f8``)
* ``text(N)`` -- UTF-8 text of at most N bytes, stored NUL-padded in exactly N bytes (numpy ``S<N>``); because
  the padding is NUL, text may not itself contain NUL characters.

All columns are NOT NULL: fixed widths keep a page a plain numpy structured array, which is the point.  A row
must fit ``layout.MIN_SLOTS_PER_PAGE`` times in a block.  ``Schema.to_dict`` gives a stable, msgpack-friendly
form (columns as an ordered list of pairs) so the catalog can be WAL-logged and replayed byte-for-byte.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Union

import google_crc32c
import msgpack
import numpy as np

from muheam.storage.errors import RowValueError, SchemaError, ValueOutOfRange
from muheam.storage.layout import MAX_ROW_WIDTH

SCHEMA_FORMAT = 1
"""Version of the ``to_dict`` form; bump it (and keep reading the old one) if the form ever changes."""

KEY_COLUMN = "key"
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1

Value = Union[int, float, str]
Row = dict[str, Value]

_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")
_TEXT_RE = re.compile(r"text\(([1-9][0-9]{0,5})\)\Z")


def check_name(name: object, what: str) -> str:
    """Names are lower-case SQL identifiers (so they map 1:1 onto PostgreSQL's for the replication sink)."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise SchemaError(f"{what} name {name!r} is not valid: use 1-63 characters a-z, 0-9 or _, "
                          f"not starting with a digit")
    return name


def column_dtype(type_name: object, column: str = "?") -> np.dtype[Any]:
    """The numpy dtype of one column type string; raises ``SchemaError`` for an unknown type."""
    if type_name == "int64":
        return np.dtype("<i8")
    if type_name == "float64":
        return np.dtype("<f8")
    if isinstance(type_name, str):
        m = _TEXT_RE.match(type_name)
        if m:
            return np.dtype(f"S{int(m.group(1))}")
    raise SchemaError(f"column {column!r} has unknown type {type_name!r}: use int64, float64 or text(N) "
                      f"with N a positive byte length")


def check_key(key: object, table: str = "?") -> int:
    """A primary key must be a Python/numpy integer in the int64 range (bool is refused: it is a mistake)."""
    if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)):
        raise RowValueError(f"table {table!r}: primary key must be an int64 integer, got {type(key).__name__}",
                            table=table, column=KEY_COLUMN)
    k = int(key)
    if not INT64_MIN <= k <= INT64_MAX:
        raise RowValueError(f"table {table!r}: primary key {k} is outside the int64 range",
                            table=table, column=KEY_COLUMN)
    return k


class Schema:
    """An immutable table definition: a name and an ordered list of (column, type) pairs."""

    __slots__ = ("name", "columns", "row_dtype", "row_width", "_kinds", "_names", "_name_set", "_fingerprint")

    name: str
    columns: tuple[tuple[str, str], ...]
    row_dtype: np.dtype[Any]
    row_width: int

    def __init__(self, name: str, columns: Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
        self.name = check_name(name, "table")
        pairs = list(columns.items()) if isinstance(columns, Mapping) else list(columns)
        seen: set[str] = set()
        names: list[str] = []
        formats: list[np.dtype[Any]] = []
        kinds: list[tuple[str, str, int]] = []
        for pair in pairs:
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise SchemaError(f"table {name!r}: each column must be a (name, type) pair, got {pair!r}")
            col, type_name = pair
            check_name(col, f"table {name!r}: column")
            if col == KEY_COLUMN:
                raise SchemaError(f"table {name!r}: column name 'key' is reserved for the implicit int64 "
                                  f"primary key; rename the column")
            if col in seen:
                raise SchemaError(f"table {name!r}: column {col!r} is declared twice")
            seen.add(col)
            dt = column_dtype(type_name, col)
            names.append(col)
            formats.append(dt)
            kinds.append((col, "text" if dt.kind == "S" else str(type_name), dt.itemsize))
        self.columns = tuple((c, str(t)) for c, t in pairs)
        self.row_dtype = np.dtype({"names": names, "formats": formats}) if names else np.dtype([])
        self.row_width = int(self.row_dtype.itemsize)
        if self.row_width > MAX_ROW_WIDTH:
            raise SchemaError(f"table {name!r}: rows are {self.row_width} bytes wide, more than the "
                              f"{MAX_ROW_WIDTH} that fit in an 8 KiB page; shorten text columns or split "
                              f"the table")
        self._kinds = tuple(kinds)
        self._names = tuple(names)
        self._name_set = frozenset(names)
        self._fingerprint = google_crc32c.value(msgpack.packb(self.to_dict(), use_bin_type=True))

    # -- identity and serialisation -----------------------------------------------------------------------------

    @property
    def column_names(self) -> tuple[str, ...]:
        return self._names

    @property
    def fingerprint(self) -> int:
        """CRC-32C of the serialised schema; pages carry it so a block is never read with the wrong schema."""
        return int(self._fingerprint)

    def to_dict(self) -> dict[str, Any]:
        """A stable msgpack/JSON-friendly form; ``Schema.from_dict(s.to_dict()) == s``."""
        return {"format": SCHEMA_FORMAT, "name": self.name, "columns": [[c, t] for c, t in self.columns]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Schema":
        if not isinstance(d, Mapping) or d.get("format") != SCHEMA_FORMAT:
            fmt = d.get("format") if isinstance(d, Mapping) else None
            raise SchemaError(f"schema record has format {fmt!r}, this build reads format {SCHEMA_FORMAT}; "
                              f"upgrade muheam to read this catalog")
        cols = d.get("columns")
        if not isinstance(cols, (list, tuple)):
            raise SchemaError(f"schema record for {d.get('name')!r} has no column list")
        pairs = [tuple(c) if isinstance(c, (list, tuple)) else c for c in cols]
        return cls(d.get("name"), pairs)  # type: ignore[arg-type]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schema) and (self.name, self.columns) == (other.name, other.columns)

    def __hash__(self) -> int:
        return hash((self.name, self.columns))

    def __repr__(self) -> str:
        return f"Schema({self.name!r}, {dict(self.columns)!r})"

    # -- rows ------------------------------------------------------------------------------------------------------

    def _bad(self, column: str | None, message: str) -> RowValueError:
        where = f"column {column!r}" if column else "row"
        return RowValueError(f"table {self.name!r}, {where}: {message}", table=self.name, column=column)

    def _encode_value(self, col: str, kind: str, width: int, v: object) -> Any:
        if kind == "int64":
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise self._bad(col, f"expected int64, got {type(v).__name__} {v!r}")
            if not INT64_MIN <= int(v) <= INT64_MAX:
                raise ValueOutOfRange(f"table {self.name!r}, column {col!r}: {v} is outside the int64 range "
                                      "(bigint out of range)", table=self.name, column=col)
            return int(v)
        if kind == "float64":
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise self._bad(col, f"expected float64, got {type(v).__name__} {v!r}")
            try:
                return float(v)
            except OverflowError:
                raise self._bad(col, f"integer {v} is too large for float64") from None
        if not isinstance(v, str):
            raise self._bad(col, f"expected text({width}), got {type(v).__name__} {v!r}")
        if "\x00" in v:
            raise self._bad(col, "text may not contain NUL characters (they are the padding)")
        b = v.encode("utf-8", errors="strict") if v.isascii() else _utf8(v, self, col)
        if len(b) > width:
            raise self._bad(col, f"text is {len(b)} UTF-8 bytes, the column holds at most {width}; "
                                 f"shorten the value or widen the column")
        return b

    def to_record(self, row: Mapping[str, object]) -> np.ndarray[Any, Any]:
        """Validate a row dict (every column, nothing else) and return it as a 0-d record of ``row_dtype``."""
        if not isinstance(row, Mapping):
            raise self._bad(None, f"expected a mapping of column -> value, got {type(row).__name__}")
        names = self._name_set
        extra = [c for c in row if c not in names]
        if extra:
            hint = " (the primary key is passed separately)" if KEY_COLUMN in extra else ""
            raise self._bad(extra[0] if isinstance(extra[0], str) else None,
                            f"unknown column(s) {extra!r}{hint}; the table has {list(self.column_names)}")
        values = []
        for col, kind, width in self._kinds:
            if col not in row:
                raise self._bad(col, "missing value (all columns are NOT NULL)")
            values.append(self._encode_value(col, kind, width, row[col]))
        return np.array(tuple(values), dtype=self.row_dtype)

    def to_records(self, rows: Iterable[Mapping[str, object]]) -> np.ndarray[Any, Any]:
        """Many rows at once, as a 1-d array of ``row_dtype``."""
        recs = [self.to_record(r) for r in rows]
        out = np.empty(len(recs), dtype=self.row_dtype)
        for i, r in enumerate(recs):
            out[i] = r
        return out

    def row_bytes(self, row: Mapping[str, object]) -> bytes:
        """The row's exact on-page bytes (``row_width`` long)."""
        return self.to_record(row).tobytes()

    def from_record(self, rec: Any) -> Row:
        """A row dict (Python int/float/str values) from a record of ``row_dtype`` (or its raw bytes)."""
        if isinstance(rec, (bytes, bytearray, memoryview)):
            if len(rec) != self.row_width:
                raise self._bad(None, f"row bytes are {len(rec)} long, the schema needs {self.row_width}")
            rec = np.frombuffer(bytes(rec), dtype=self.row_dtype, count=1)[0]
        elif isinstance(rec, np.ndarray):
            rec = rec[()]
        out: Row = {}
        # one ``item()`` gives every field as a Python value (text as bytes without the trailing zero bytes):
        # indexing the record per field costs a numpy scalar each
        for (col, kind, _), v in zip(self._kinds, rec.item() if self._kinds else ()):
            if kind == "int64" or kind == "float64":
                out[col] = v
            else:
                try:
                    out[col] = v.rstrip(b"\0").decode("utf-8")
                except UnicodeDecodeError as e:
                    raise self._bad(col, f"stored text is not valid UTF-8 ({e}); the block is damaged") from e
        return out


def _utf8(v: str, schema: Schema, col: str) -> bytes:
    try:
        return v.encode("utf-8", errors="strict")
    except UnicodeEncodeError as e:
        raise schema._bad(col, f"text cannot be encoded as UTF-8 ({e.reason}); remove lone surrogates") from e
