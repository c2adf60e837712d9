# pglast types every field of a parse node as Optional, although the grammar fills the ones read here for the
# node kinds checked first; these codes would flag each such read:
# mypy: disable-error-code="union-attr,index,arg-type,operator,attr-defined"
"""SQL expressions (pglast nodes) compiled into Python closures over a row and the bound parameters.

A statement is compiled once per prepared statement and run many times (psycopg prepares a query after five
executions; pgbench's simple protocol sends new text each time, so ``muheam.sql.plan`` caches by text), so the
tree walk happens once and each execution is a few closure calls.  Each compiled expression also carries its
static type OID, which Describe (RowDescription, ParameterDescription) needs before anything runs.

Semantics follow PostgreSQL where the subset reaches: NULL propagates through operators and comparisons (three-
valued logic, also in IN lists and BETWEEN), a WHERE that is NULL filters the row out, integer division truncates
toward zero, division by zero is SQLSTATE 22012, a result outside its type is 22003 (``integer``/``bigint`` out
of range, a double's overflow or underflow).  A literal with a fraction or an exponent is ``numeric``, kept exact
as a ``Decimal`` (``0.1 + 0.2`` is ``0.3``; ``2.5`` stored into a bigint rounds half away from zero, a double
half to even, as PostgreSQL's casts do; numeric division takes PostgreSQL's result scale); mixed with a double
it becomes a double.  A double's NaN equals NaN and sorts above every other number, as in PostgreSQL.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, DivisionByZero, InvalidOperation, localcontext
from typing import Any, Callable

from pglast import ast, enums

from muheam.sql import textinput, wire

Row = dict[str, Any]
Params = list[Any]
Fn = Callable[[Row, Params], Any]

DEFAULT_TEXT_BYTES = 256
"""``text`` (no length) maps onto the engine's ``text(256)``: rows are fixed width, so some bound is needed."""
SERVER_VERSION = "18.0 (MUHEAM)"
VERSION = f"PostgreSQL {SERVER_VERSION} on x86_64-pc-linux-gnu, MUHEAM shared-disk cluster SQL port"


class SqlError(Exception):
    """An error a client gets as an ErrorResponse: a SQLSTATE and a message naming the problem."""

    def __init__(self, code: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint


def check_boolean(e: "Expr", what: str) -> None:
    """42804 unless ``e`` is a boolean (or a NULL or parameter typed as one by its use)."""
    if e.oid != wire.BOOL:
        raise SqlError("42804", f"{what} must be type boolean, not type {wire.type_name(e.oid)}")


def unsupported(what: str) -> SqlError:
    return SqlError("0A000", f"{what} is not supported by MUHEAM's SQL port",
                    "supported: CREATE TABLE, INSERT, SELECT/UPDATE/DELETE on one table, BEGIN/COMMIT/ROLLBACK, "
                    "SET, SHOW (README.md, 'SQL')")


@dataclass
class TableInfo:
    """A table as SQL sees it: the engine's implicit int64 key under the name it was created with."""

    name: str
    key: str
    columns: dict[str, str]
    """engine type by column name, in table order, without the key."""
    sql_types: dict[str, str] = field(default_factory=dict)
    table_id: int = 0
    """The engine's id (0: not created yet).  Row operations name the table by it, so a plan made before a
    DROP TABLE fails with 42P01 instead of running against a new table of the same name."""
    alias: str | None = None
    """The statement's name for it (``FROM t x``, ``UPDATE t AS x``): columns are qualified by it, not by the
    table's name, as in PostgreSQL."""

    @property
    def ref(self) -> str | int:
        """How a row operation names the table."""
        return self.table_id or self.name

    @property
    def order(self) -> list[str]:
        """The columns in the order they were declared (``SELECT *``, ``INSERT`` without a column list): the key
        need not come first.  ``sql_types`` holds every column in that order for a table made through SQL; a
        table made through the Python client has its key first."""
        declared = list(self.sql_types)
        if len(declared) == len(self.columns) + 1 and self.key in self.sql_types and \
                all(c in self.columns for c in declared if c != self.key):
            return declared
        return [self.key, *self.columns]

    def oid(self, column: str) -> int:
        if column == self.key:
            return wire.INT8
        kind, declared = self.columns[column], self.sql_type(column)
        if kind == "int64":
            oid = _TYPE_OIDS.get(declared, wire.INT8)
            return oid if oid in wire.INT_TYPES else wire.INT8
        if kind == "float64":
            return wire.FLOAT8
        return wire.VARCHAR if declared == "varchar" else wire.TEXT

    def sql_type(self, column: str) -> str:
        """The type a column was declared with, without its length (``int4``, ``varchar``; "" if unknown)."""
        return self.sql_types.get(column, "").split("(")[0]

    def char_limit(self, column: str) -> int | None:
        """``n`` of a ``varchar(n)``/``char(n)`` column (characters), else ``None``."""
        declared = self.sql_types.get(column, "")
        if "(" in declared and declared.split("(")[0] in ("varchar", "bpchar"):
            return int(declared.split("(")[1].rstrip(")"))
        return None

    def has(self, column: str) -> bool:
        return column == self.key or column in self.columns


@dataclass
class Expr:
    fn: Fn
    oid: int
    name: str = "?column?"
    constant: bool = False
    weak_name: bool = False
    """``name`` is a cast's type name: a cast around it names the column after its own type (PostgreSQL's
    FigureColname: a column's or a function's name is strong, a type's weak, anything else has none)."""


class RowDependent(Exception):
    """Raised while compiling with ``table=None`` for a row-independent value (a key lookup) that is not."""


_TYPE_OIDS = {"int8": wire.INT8, "bigint": wire.INT8, "int4": wire.INT4, "integer": wire.INT4, "int": wire.INT4,
              "int2": wire.INT2, "smallint": wire.INT2, "float8": wire.FLOAT8, "float4": wire.FLOAT4,
              "numeric": wire.NUMERIC, "text": wire.TEXT, "varchar": wire.VARCHAR, "bool": wire.BOOL,
              "boolean": wire.BOOL, "regclass": wire.TEXT, "name": wire.TEXT}
"""SQL type names (as pglast gives them) -> OIDs: for casts, and an integer column's declared width."""
_INT_RANGES = {wire.INT8: (-(1 << 63), (1 << 63) - 1, "bigint"), wire.INT4: (-(1 << 31), (1 << 31) - 1, "integer"),
               wire.INT2: (-(1 << 15), (1 << 15) - 1, "smallint")}
_STRING_OIDS = frozenset((wire.TEXT, wire.VARCHAR))
_NUMBER_OIDS = frozenset((*wire.INT_TYPES, *wire.FLOAT_TYPES, wire.NUMERIC))


def arithmetic_error(exc: ArithmeticError) -> SqlError:
    """What an arithmetic exception that got past the checks means to a client (never a dropped connection)."""
    if isinstance(exc, (ZeroDivisionError, DivisionByZero)):
        return SqlError("22012", "division by zero")
    if isinstance(exc, OverflowError):
        return SqlError("22003", f"value out of range: {exc}")
    return SqlError("22000", f"invalid numeric operation: {type(exc).__name__}")


def int_range(oid: int) -> tuple[int, int, str]:
    """``(lowest, highest, type name)`` of an integer type OID (``bigint`` for any other)."""
    return _INT_RANGES.get(oid, _INT_RANGES[wire.INT8])


def coerce(value: Any, oid: int) -> Any:
    """A parameter or literal of unspecified type converted to the type its use asks for."""
    if value is None or not isinstance(value, str):
        if oid in wire.INT_TYPES and isinstance(value, float) and value.is_integer():
            return int(value)
        return value
    try:
        if oid in wire.INT_TYPES:
            return textinput.parse_int(value, wire.INT_BITS[oid])
        if oid == wire.NUMERIC:
            return wire.parse_numeric(value)
        if oid in wire.FLOAT_TYPES:
            return textinput.parse_float(value, single=oid == wire.FLOAT4)
        if oid == wire.BOOL:
            return textinput.parse_bool(value)
    except textinput.InputError as exc:
        raise SqlError(exc.code, str(exc)) from None
    except (ValueError, ArithmeticError):
        raise SqlError("22P02", f'invalid input syntax for type numeric: "{value}"') from None
    return value


def to_float(value: Any) -> float:
    """A number as a double, 22003 where it does not fit one (a ``numeric`` beyond its range, or so small that
    only its sign would be left: PostgreSQL's cast refuses both)."""
    if isinstance(value, Decimal) and value.is_zero():
        return 0.0  # (a numeric zero has no sign: -0.0 as a literal is numeric, and a double from it is +0)
    try:
        f = float(value)
    except OverflowError:
        raise SqlError("22003", "value out of range for type double precision") from None
    if isinstance(value, Decimal) and value.is_finite() and (math.isinf(f) or (f == 0 and value != 0)):
        raise SqlError("22003", "value out of range for type double precision")
    return f


def to_column(value: Any, kind: str, column: str, oid: int = wire.INT8, chars: int | None = None) -> Any:
    """A value stored into a column of engine type ``kind`` (``int64``, ``float64``, ``text(N)`` bytes), checked
    against the SQL type it was declared with: ``oid`` for an integer column's range, ``chars`` for a
    ``varchar(n)``'s length in characters."""
    if value is None:
        raise SqlError("23502", f'null value in column "{column}" violates not-null constraint',
                       "MUHEAM columns cannot hold NULL")
    if kind == "int64":
        if isinstance(value, str):
            value = coerce(value, wire.INT8)
        if isinstance(value, Decimal):  # numeric -> integer: half away from zero
            if value.is_nan():
                raise SqlError("0A000", f"cannot convert NaN to {int_range(oid)[2]}")
            if not value.is_finite():
                raise SqlError("22003", f"cannot convert infinity to {int_range(oid)[2]}")
            value = int(value.to_integral_value(ROUND_HALF_UP))
        elif isinstance(value, float):  # double -> integer: half to even (rint)
            if not math.isfinite(value):
                raise SqlError("22003", f"{int_range(oid)[2]} out of range")
            value = round(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise SqlError("42804", f'column "{column}" is of type bigint but expression is of another type')
        lowest, highest, name = int_range(oid)
        if not lowest <= value <= highest:
            raise SqlError("22003", f"{name} out of range")
        return value
    if kind == "float64":
        if isinstance(value, str):
            value = coerce(value, wire.FLOAT8)
        if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
            raise SqlError("42804", f'column "{column}" is of type double precision but expression is not')
        return to_float(value)
    text = value if isinstance(value, str) else wire.text_value(value)
    if chars is not None and len(text) > chars:
        if text[chars:].strip(" "):
            raise SqlError("22001", f"value too long for type character varying({chars})")
        text = text[:chars]  # only spaces beyond the length: cut, as PostgreSQL does
    limit = int(kind[5:-1])
    if len(text.encode()) > limit:
        raise SqlError("22001", f'value too long for column "{column}": it stores at most {limit} bytes of UTF-8',
                       "MUHEAM's rows are fixed width; text without a length holds "
                       f"{DEFAULT_TEXT_BYTES} bytes, varchar(n) 4n")
    return text


def _num(v: Any) -> Any:
    if isinstance(v, str):
        return coerce(v, wire.NUMERIC if any(c in v for c in ".eE") else wire.INT8)
    return v


def _digits(d: Decimal) -> tuple[int, int]:
    """PostgreSQL's view of a numeric: the weight of its first base-10000 digit, and that digit."""
    if d == 0:
        return 0, 0
    weight = d.adjusted() // 4
    return weight, int(abs(d).scaleb(-4 * weight))


def _scale(d: Decimal) -> int:
    exponent = d.as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def numeric_div(a: Decimal, b: Decimal) -> Decimal:
    """``a / b`` with PostgreSQL's result scale (``select_div_scale``: at least 16 significant digits, at least
    the inputs' scales), rounded half away from zero."""
    if not (a.is_finite() and b.is_finite()):  # PostgreSQL: NaN stays NaN, x / infinity is 0, inf / inf NaN
        if a.is_finite():
            return Decimal(0)
        with localcontext(wire.EXACT) as ctx:
            ctx.traps[InvalidOperation] = False
            return a / b
    (w1, f1), (w2, f2) = _digits(a), _digits(b)
    qweight = w1 - w2 - (1 if f1 <= f2 else 0)
    rscale = min(max(16 - qweight * 4, _scale(a), _scale(b), 0), 1000)
    with localcontext() as ctx:
        ctx.prec = max(28, a.adjusted() - b.adjusted() + rscale + 8)
        return (a / b).quantize(Decimal(1).scaleb(-rscale), rounding=ROUND_HALF_UP)


def _mixed(a: Any, b: Any) -> tuple[Any, Any]:
    """A numeric or an integer meeting a double becomes a double (PostgreSQL's implicit casts)."""
    if isinstance(b, float) and isinstance(a, (Decimal, int)) and not isinstance(a, bool):
        return to_float(a), b
    if isinstance(a, float) and isinstance(b, (Decimal, int)) and not isinstance(b, bool):
        return a, to_float(b)
    return a, b


def _is_nan(v: Any) -> bool:
    return (isinstance(v, float) and v != v) or (isinstance(v, Decimal) and v.is_nan())


def _div(a: Any, b: Any) -> Any:
    if b == 0 and not _is_nan(a):  # (PostgreSQL: NaN / 0 is NaN)
        raise SqlError("22012", "division by zero")
    if _is_nan(a):
        return a
    if isinstance(a, int) and isinstance(b, int):
        q = abs(a) // abs(b)
        return q if (a >= 0) == (b >= 0) else -q
    if isinstance(a, Decimal) or isinstance(b, Decimal):
        return numeric_div(Decimal(a), Decimal(b))
    return a / b


def _mod(a: Any, b: Any) -> Any:
    if _is_nan(a) or _is_nan(b):
        return Decimal("NaN")
    if b == 0:
        raise SqlError("22012", "division by zero")
    if isinstance(a, int) and isinstance(b, int):
        return abs(a) % abs(b) * (1 if a >= 0 else -1)
    if isinstance(a, Decimal) or isinstance(b, Decimal):
        a, b = Decimal(a), Decimal(b)
        if a.is_infinite():  # PostgreSQL: infinity % x is NaN, x % infinity is x
            return Decimal("NaN")
        if b.is_infinite():
            return a
        return wire.EXACT.remainder(a, b)  # (the sign of the dividend, as PostgreSQL's)
    return a - b * int(a / b)


def _result(value: Any, oid: int, a: Any, b: Any, op: str = "") -> Any:
    """An arithmetic result checked against its type: 22003 for an integer out of range, or a double that
    overflowed (infinite from finite operands) or underflowed (a product or quotient of non-zero finite operands
    that came out zero)."""
    if type(value) is int:
        lowest, highest, name = int_range(oid)
        if not lowest <= value <= highest:
            raise SqlError("22003", f"{name} out of range")
    elif type(value) is float:
        if math.isinf(value) and all(math.isfinite(x) for x in (a, b) if isinstance(x, float)) \
                and not any(isinstance(x, Decimal) and not x.is_finite() for x in (a, b)):
            raise SqlError("22003", "value out of range: overflow")
        if op in ("*", "/") and value == 0 and a != 0 and b != 0 and not (isinstance(b, float) and math.isinf(b)) \
                and not (isinstance(a, float) and math.isinf(a)):
            raise SqlError("22003", "value out of range: underflow")
    return value


def order_key(v: Any) -> tuple[int, Any]:
    """Sort and compare a number as PostgreSQL does: NaN (a double's or a numeric's) equals NaN and is above
    every other number."""
    if (isinstance(v, float) and v != v) or (isinstance(v, Decimal) and v.is_nan()):
        return (1, 0)
    return (0, v)


_ARITH: dict[str, Callable[[Any, Any], Any]] = {"+": operator.add, "-": operator.sub, "*": operator.mul,
                                                "/": _div, "%": _mod}
_COMPARE: dict[str, Callable[[Any, Any], Any]] = {"=": operator.eq, "<>": operator.ne, "!=": operator.ne,
                                                  "<": operator.lt, "<=": operator.le, ">": operator.gt,
                                                  ">=": operator.ge}


def compare(cmp: Callable[[Any, Any], Any], a: Any, b: Any) -> Any:
    """``cmp(a, b)`` with PostgreSQL's rules for mixed numbers (a numeric or integer meeting a double compares as
    a double) and NaN (equal to itself, above every other number)."""
    a, b = _mixed(a, b)
    if order_key(a)[0] or order_key(b)[0]:
        return cmp(order_key(a), order_key(b))
    return cmp(a, b)


def sort_key(v: Any) -> tuple[bool, tuple[int, Any]]:
    """ORDER BY's key: NULL last (first when descending), NaN above every other number."""
    return (v is None, (0, 0) if v is None else order_key(v))


def _not_unique(op: str, *operands: Any) -> None:
    """42725 for an arithmetic operator whose operands are all untyped literals (``- NULL``, ``NULL + NULL``,
    ``'1' + '2'``): PostgreSQL cannot choose among its numeric types."""
    if all(isinstance(x, ast.A_Const) and _untyped(x) for x in operands):
        shown = f"unknown {op} unknown" if len(operands) == 2 else f"{op} unknown"
        raise SqlError("42725", f"operator is not unique: {shown}",
                       "Could not choose a best candidate operator. You might need to add explicit type casts.")


def _untyped(node: Any) -> bool:
    """A parameter, or a literal string or NULL: of no type until its use gives it one."""
    return isinstance(node, ast.ParamRef) or (isinstance(node, ast.A_Const) and (
        node.isnull or isinstance(node.val, ast.String)))


def _as_double(f: Fn) -> Fn:
    return lambda r, p: None if (v := f(r, p)) is None else to_float(_num(v))


def _cut(f: Fn, n: int) -> Fn:
    return lambda r, p: None if (v := f(r, p)) is None else wire.text_value(v)[:n]


def check_assignable(e: Expr, column: str, oid: int) -> None:
    """42804 for a string stored into a number column (PostgreSQL has no assignment cast from text to a number;
    an untyped literal or parameter has taken the column's type already)."""
    if oid in _NUMBER_OIDS and e.oid in _STRING_OIDS:
        raise SqlError("42804", f'column "{column}" is of type {wire.type_name(oid)} but expression is of type '
                       f"{wire.type_name(e.oid)}", "You will need to rewrite or cast the expression.")


def _typmod(mods: Any) -> int:
    """The length of ``varchar(n)``."""
    mod = mods[0]
    if not (isinstance(mod, ast.A_Const) and isinstance(mod.val, ast.Integer)) or mod.val.ival < 1:
        raise SqlError("22023", "length for type varchar must be at least 1")
    return int(mod.val.ival)


def _cast_oid(type_name: Any) -> int:
    name = type_name.names[-1].sval
    if name not in _TYPE_OIDS:
        raise unsupported(f"a cast to type {name}")
    return _TYPE_OIDS[name]


def _cast(value: Any, oid: int) -> Any:
    if value is None:
        return None
    if oid in wire.INT_TYPES:
        return to_column(coerce(value, oid), "int64", "?column?", oid)
    if oid == wire.NUMERIC:
        if isinstance(value, float):  # 15 significant digits, as PostgreSQL's float8 -> numeric
            return Decimal(f"{value:.15g}") if math.isfinite(value) else Decimal(value)
        return coerce(value, oid) if isinstance(value, str) else Decimal(value)
    if oid in wire.FLOAT_TYPES:
        return to_float(coerce(value, wire.FLOAT8))
    if oid == wire.BOOL:
        return bool(coerce(value, oid))
    return wire.text_value(value)


class Compiler:
    """Compiles expressions of one statement; collects the parameters' types as their uses reveal them."""

    def __init__(self, param_oids: list[int], settings: Callable[[str], str]) -> None:
        self.param_oids = {i + 1: oid for i, oid in enumerate(param_oids) if oid}
        self.nparams = len(param_oids)
        self.referenced: set[int] = set()
        self.setting = settings

    def param_types(self) -> list[int]:
        """Each parameter's type: declared, or what its use asked for, or text where nothing did; a parameter no
        declaration and no use names has no type at all (42P18, as in PostgreSQL: ``SELECT $2``)."""
        for i in range(1, self.nparams + 1):
            if i not in self.param_oids and i not in self.referenced:
                raise SqlError("42P18", f"could not determine data type of parameter ${i}")
        return [self.param_oids.get(i, wire.TEXT) for i in range(1, self.nparams + 1)]

    def expr(self, node: Any, table: TableInfo | None, hint: int | None = None) -> Expr:
        if isinstance(node, ast.A_Const):
            return self._const(node, hint)
        if isinstance(node, ast.ParamRef):
            n = node.number - 1
            self.nparams = max(self.nparams, n + 1)
            self.referenced.add(n + 1)
            oid = self.param_oids.get(n + 1) or hint or wire.TEXT
            if hint and (n + 1) not in self.param_oids:
                self.param_oids[n + 1] = hint

            def param(row: Row, params: Params) -> Any:
                if n >= len(params):
                    raise SqlError("08P01", f"there is no parameter ${n + 1}")
                return coerce(params[n], oid)
            return Expr(param, oid, constant=True)
        if isinstance(node, ast.ColumnRef):
            return self._column(node, table)
        if isinstance(node, ast.TypeCast):
            oid = _cast_oid(node.typeName)
            inner = self.expr(node.arg, table, oid)
            f = inner.fn
            mods = node.typeName.typmods
            if oid == wire.VARCHAR and mods:  # an explicit cast to varchar(n) cuts the string, as PostgreSQL's
                f = _cut(f, _typmod(mods))
            if inner.name == "?column?" or inner.weak_name:  # (pglast gives the type's name as PostgreSQL does)
                return Expr(lambda r, p: _cast(f(r, p), oid), oid, node.typeName.names[-1].sval, inner.constant,
                            weak_name=True)
            return Expr(lambda r, p: _cast(f(r, p), oid), oid, inner.name, inner.constant)
        if isinstance(node, ast.A_Expr):
            return self._a_expr(node, table, hint)
        if isinstance(node, ast.BoolExpr):
            kind = node.boolop
            compiled = [self.expr(a, table, wire.BOOL) for a in node.args]
            word = "NOT" if kind == enums.BoolExprType.NOT_EXPR else "AND" if kind == enums.BoolExprType.AND_EXPR \
                else "OR"
            for a in compiled:
                check_boolean(a, f"argument of {word}")
            args = [a.fn for a in compiled]
            if kind == enums.BoolExprType.NOT_EXPR:
                a0 = args[0]
                return Expr(lambda r, p: None if (v := a0(r, p)) is None else not v, wire.BOOL)
            is_and = kind == enums.BoolExprType.AND_EXPR

            def boolean(row: Row, params: Params) -> Any:
                unknown = False
                for a in args:
                    v = a(row, params)
                    if v is None:
                        unknown = True
                    elif bool(v) != is_and:
                        return not is_and
                return None if unknown else is_and
            return Expr(boolean, wire.BOOL)
        if isinstance(node, ast.NullTest):
            inner_fn = self.expr(node.arg, table).fn
            want_null = node.nulltesttype == enums.NullTestType.IS_NULL
            return Expr(lambda r, p: (inner_fn(r, p) is None) == want_null, wire.BOOL)
        if isinstance(node, ast.SQLValueFunction):
            name = node.op.name.lower().replace("svfop_", "")
            if name in ("current_user", "session_user", "user", "current_role"):
                return Expr(lambda r, p: self.setting("session_authorization"), wire.TEXT, name, True)
            if name == "current_catalog":
                return Expr(lambda r, p: self.setting("database"), wire.TEXT, name, True)
            raise unsupported(name)
        if isinstance(node, ast.FuncCall):
            return self._function(node)
        raise unsupported(f"the expression {type(node).__name__}")

    def _const(self, node: Any, hint: int | None) -> Expr:
        if node.isnull:
            return Expr(lambda r, p: None, hint or wire.TEXT, constant=True)
        val = node.val
        value: Any
        if isinstance(val, ast.Integer):
            value, oid = val.ival, wire.INT4 if -(1 << 31) <= val.ival < (1 << 31) else wire.INT8
        elif isinstance(val, ast.Float):  # beyond 32 bits: bigint while it fits (as PostgreSQL's lexer), else numeric
            text = val.fval
            if len(text) > 1000:
                raise SqlError("22003", f"the numeric literal of {len(text)} characters is out of range",
                               "MUHEAM keeps numeric literals of at most 1,000 characters")
            value, oid = wire.numeric_value(Decimal(text)), wire.NUMERIC
            if text.lstrip("-").isdigit() and -(1 << 63) <= value < 1 << 63:  # (pglast folds a minus in)
                value = int(text)
                oid = wire.INT4 if -(1 << 31) <= value < 1 << 31 else wire.INT8  # (PostgreSQL's make_const)
        elif isinstance(val, ast.Boolean):
            value, oid = val.boolval, wire.BOOL
        elif isinstance(val, ast.String):
            oid = hint or wire.TEXT
            value = coerce(val.sval, oid)
        else:
            raise unsupported(f"the literal {type(val).__name__}")
        return Expr(lambda r, p: value, oid, constant=True)

    def _column(self, node: Any, table: TableInfo | None) -> Expr:
        fields = node.fields
        if isinstance(fields[-1], ast.A_Star):
            raise unsupported("* in an expression")
        name = fields[-1].sval
        if table is None:
            raise RowDependent(name)
        if len(fields) > 2 or (len(fields) == 2 and fields[0].sval != (table.alias or table.name)):
            if table.alias and fields[0].sval == table.name:
                raise SqlError("42P01", f'invalid reference to FROM-clause entry for table "{table.name}"',
                               f'Perhaps you meant to reference the table alias "{table.alias}".')
            raise SqlError("42P01", f'missing FROM-clause entry for table "{fields[0].sval}"')
        if not table.has(name):
            raise SqlError("42703", f'column "{name}" does not exist in table "{table.name}"',
                           f"its columns: {', '.join(table.order)}")
        return Expr(lambda r, p: r[name], table.oid(name), name)

    def _comparable(self, left: Expr, right: Expr, op: str) -> None:
        """42883 for a comparison PostgreSQL has no operator for: a string with a number (an untyped literal
        has taken the other side's type already)."""
        if (left.oid in _STRING_OIDS and right.oid in _NUMBER_OIDS) or \
                (left.oid in _NUMBER_OIDS and right.oid in _STRING_OIDS):
            raise SqlError("42883", f"operator does not exist: {wire.type_name(left.oid)} {op} "
                           f"{wire.type_name(right.oid)}",
                           "No operator matches the given name and argument types. You might need to add explicit "
                           "type casts.")

    def _a_expr(self, node: Any, table: TableInfo | None, hint: int | None) -> Expr:
        kind = node.kind
        op = node.name[-1].sval if node.name else ""
        if kind in (enums.A_Expr_Kind.AEXPR_IN, enums.A_Expr_Kind.AEXPR_BETWEEN,
                    enums.A_Expr_Kind.AEXPR_NOT_BETWEEN):
            typed = [x for x in node.rexpr if not _untyped(x)]
            if _untyped(node.lexpr) and typed:  # NULL IN (1, 2): the untyped side takes the list's type
                left = self.expr(node.lexpr, table, self.expr(typed[0], table).oid)
            else:
                left = self.expr(node.lexpr, table)
            compiled = [self.expr(x, table, left.oid) for x in node.rexpr]
            for item in compiled:
                self._comparable(left, item, "=")
            items = [c.fn for c in compiled]
            lf = left.fn
            if kind == enums.A_Expr_Kind.AEXPR_IN and any(e.oid in wire.FLOAT_TYPES for e in (left, *compiled)):
                # the list and its left side have one common type (PostgreSQL): a double among them makes it
                # double precision for every comparison, not only that one
                items = [_as_double(f) for f in items]
                lf = _as_double(lf)
            if kind == enums.A_Expr_Kind.AEXPR_IN:
                negate = op == "<>"

                def in_list(row: Row, params: Params) -> Any:
                    v = lf(row, params)
                    if v is None:
                        return None
                    unknown = False
                    for f in items:
                        w = f(row, params)
                        if w is None:
                            unknown = True
                        elif compare(operator.eq, v, w):
                            return not negate
                    return None if unknown else negate  # no match, and a NULL among them: unknown
                return Expr(in_list, wire.BOOL)
            lo, hi = items
            negate = kind == enums.A_Expr_Kind.AEXPR_NOT_BETWEEN

            def between(row: Row, params: Params) -> Any:
                v, a, b = lf(row, params), lo(row, params), hi(row, params)
                # a <= v AND v <= b, each unknown with a NULL side (three-valued: false AND unknown is false)
                above = None if v is None or a is None else compare(operator.le, a, v)
                below = None if v is None or b is None else compare(operator.le, v, b)
                inside = False if above is False or below is False else None if None in (above, below) else True
                return None if inside is None else inside != negate
            return Expr(between, wire.BOOL)
        if kind != enums.A_Expr_Kind.AEXPR_OP:
            raise unsupported(f"the operator kind {kind.name}")
        if node.lexpr is None:  # prefix: -x, +x
            _not_unique(op, node.rexpr)
            arg = self.expr(node.rexpr, table, hint)
            af = arg.fn
            if op == "-":
                oid = arg.oid
                return Expr(lambda r, p: None if (v := _num(af(r, p))) is None else
                            _result(wire.EXACT.minus(v) if isinstance(v, Decimal) else -v, oid, v, v), oid, "?column?",
                            arg.constant)
            if op == "+":
                return arg
            raise unsupported(f"the prefix operator {op}")
        # a comparison's operands get no type from its context (its result is a boolean); the side that is not a
        # parameter or an untyped literal tells the other one its type (PostgreSQL: unknown takes the other side's)
        hint = None if op in _COMPARE else hint
        swap = isinstance(node.lexpr, ast.ParamRef) or op in _COMPARE or op in _ARITH  # (|| makes a literal text)
        if swap and _untyped(node.lexpr) and not _untyped(node.rexpr):
            right = self.expr(node.rexpr, table, hint)
            left = self.expr(node.lexpr, table, right.oid)
        else:
            left = self.expr(node.lexpr, table, hint)
            right = self.expr(node.rexpr, table, left.oid)
        lf, rf = left.fn, right.fn
        constant = left.constant and right.constant
        if op in _COMPARE:
            cmp = _COMPARE[op]
            self._comparable(left, right, op)

            def comparison(row: Row, params: Params) -> Any:
                a, b = lf(row, params), rf(row, params)
                if a is None or b is None:
                    return None
                try:
                    return compare(cmp, a, b)
                except TypeError:
                    raise SqlError("42883", f"operator does not exist: {type(a).__name__} {op} "
                                   f"{type(b).__name__}") from None
            return Expr(comparison, wire.BOOL, constant=constant)
        if op in _ARITH:
            _not_unique(op, node.lexpr, node.rexpr)
            fn = _ARITH[op]
            oids = (left.oid, right.oid)
            if op == "%" and (wire.FLOAT8 in oids or wire.FLOAT4 in oids):  # PostgreSQL has no % for doubles
                raise SqlError("42883", f"operator does not exist: {wire.type_name(left.oid)} % "
                               f"{wire.type_name(right.oid)}", "No operator matches the given name and argument "
                               "types. You might need to add explicit type casts.")
            oid = wire.FLOAT8 if wire.FLOAT8 in oids or wire.FLOAT4 in oids else wire.NUMERIC \
                if wire.NUMERIC in oids else wire.INT8 if wire.INT8 in oids else wire.INT4 \
                if wire.INT4 in oids else left.oid

            def arith(row: Row, params: Params) -> Any:
                a, b = _num(lf(row, params)), _num(rf(row, params))
                if a is None or b is None:
                    return None
                a, b = _mixed(a, b)
                try:
                    if isinstance(a, Decimal) or isinstance(b, Decimal):
                        with localcontext(wire.EXACT):
                            return _result(fn(a, b), oid, a, b, op)
                    return _result(fn(a, b), oid, a, b, op)
                except TypeError:
                    raise SqlError("42883", f"operator does not exist: {type(a).__name__} {op} "
                                   f"{type(b).__name__}") from None
            return Expr(arith, oid, constant=constant)
        if op == "||":
            return Expr(lambda r, p: None if (a := lf(r, p)) is None or (b := rf(r, p)) is None
                        else wire.text_value(a) + wire.text_value(b), wire.TEXT, constant=constant)
        raise unsupported(f"the operator {op}")

    def _function(self, node: Any) -> Expr:
        name = node.funcname[-1].sval.lower()
        if node.args:
            raise unsupported(f"the function {name}() with arguments")
        values: dict[str, tuple[Callable[[], Any], int]] = {
            "version": (lambda: VERSION, wire.TEXT),
            "current_database": (lambda: self.setting("database"), wire.TEXT),
            "current_schema": (lambda: "public", wire.TEXT),
            "current_user": (lambda: self.setting("session_authorization"), wire.TEXT),
            "pg_backend_pid": (lambda: int(self.setting("backend_pid")), wire.INT4),
        }
        if name not in values:
            raise SqlError("0A000", f"the function {name}() is not supported by MUHEAM's SQL port",
                           "aggregates count/sum/min/max/avg work on one table; scalar: version(), "
                           "current_database(), current_user, pg_backend_pid()")
        get, oid = values[name]
        return Expr(lambda r, p: get(), oid, name, True)
