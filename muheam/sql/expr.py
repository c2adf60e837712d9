# pglast types every field of a parse node as Optional, although the grammar fills the ones read here for the
# node kinds checked first; these codes would flag each such read:
# mypy: disable-error-code="union-attr,index,arg-type,operator,attr-defined"
"""SQL expressions (pglast nodes) compiled into Python closures over a row and the bound parameters.

A statement is compiled once per prepared statement and run many times (psycopg prepares a query after five
executions; pgbench's simple protocol sends new text each time, so ``muheam.sql.plan`` caches by text), so the
tree walk happens once and each execution is a few closure calls.  Each compiled expression also carries its
static type OID, which Describe (RowDescription, ParameterDescription) needs before anything runs.

Semantics follow PostgreSQL where the subset reaches: NULL propagates through operators and comparisons, a WHERE
that is NULL filters the row out, integer division truncates toward zero, division by zero is SQLSTATE 22012.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable

from pglast import ast, enums

from muheam.sql import wire

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

    @property
    def ref(self) -> str | int:
        """How a row operation names the table."""
        return self.table_id or self.name

    @property
    def order(self) -> list[str]:
        return [self.key, *self.columns]

    def oid(self, column: str) -> int:
        if column == self.key:
            return wire.INT8
        kind = self.columns[column]
        return wire.INT8 if kind == "int64" else wire.FLOAT8 if kind == "float64" else wire.TEXT

    def has(self, column: str) -> bool:
        return column == self.key or column in self.columns


@dataclass
class Expr:
    fn: Fn
    oid: int
    name: str = "?column?"
    constant: bool = False


class RowDependent(Exception):
    """Raised while compiling with ``table=None`` for a row-independent value (a key lookup) that is not."""


def coerce(value: Any, oid: int) -> Any:
    """A parameter or literal of unspecified type converted to the type its use asks for."""
    if value is None or not isinstance(value, str):
        if oid in wire.INT_TYPES and isinstance(value, float) and value.is_integer():
            return int(value)
        return value
    try:
        if oid in wire.INT_TYPES:
            return int(value.strip())
        if oid in wire.FLOAT_TYPES or oid == wire.NUMERIC:
            return float(value.strip())
    except ValueError:
        kind = "bigint" if oid in wire.INT_TYPES else "double precision"
        raise SqlError("22P02", f'invalid input syntax for type {kind}: "{value}"') from None
    if oid == wire.BOOL:
        return value.strip().lower() in ("t", "true", "1", "on", "yes", "y")
    return value


def to_column(value: Any, kind: str, column: str) -> Any:
    """A value stored into a column of engine type ``kind`` (``int64``, ``float64``, ``text(N)``)."""
    if value is None:
        raise SqlError("23502", f'null value in column "{column}" violates not-null constraint',
                       "MUHEAM columns cannot hold NULL")
    if kind == "int64":
        if isinstance(value, str):
            value = coerce(value, wire.INT8)
        if isinstance(value, float):
            value = round(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise SqlError("42804", f'column "{column}" is of type bigint but expression is of another type')
        if not -(1 << 63) <= value < (1 << 63):
            raise SqlError("22003", "bigint out of range")
        return value
    if kind == "float64":
        if isinstance(value, str):
            value = coerce(value, wire.FLOAT8)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SqlError("42804", f'column "{column}" is of type double precision but expression is not')
        return float(value)
    text = value if isinstance(value, str) else wire.text_value(value)
    limit = int(kind[5:-1])
    if len(text.encode()) > limit:
        raise SqlError("22001", f"value too long for type character varying({limit}) (column \"{column}\")")
    return text


def _num(v: Any) -> Any:
    if isinstance(v, str):
        return coerce(v, wire.FLOAT8 if any(c in v for c in ".eE") else wire.INT8)
    return v


def _div(a: Any, b: Any) -> Any:
    if b == 0:
        raise SqlError("22012", "division by zero")
    if isinstance(a, int) and isinstance(b, int):
        q = abs(a) // abs(b)
        return q if (a >= 0) == (b >= 0) else -q
    return a / b


def _mod(a: Any, b: Any) -> Any:
    if b == 0:
        raise SqlError("22012", "division by zero")
    if isinstance(a, int) and isinstance(b, int):
        return abs(a) % abs(b) * (1 if a >= 0 else -1)
    return a - b * int(a / b)


_ARITH: dict[str, Callable[[Any, Any], Any]] = {"+": operator.add, "-": operator.sub, "*": operator.mul,
                                                "/": _div, "%": _mod}
_COMPARE: dict[str, Callable[[Any, Any], Any]] = {"=": operator.eq, "<>": operator.ne, "!=": operator.ne,
                                                  "<": operator.lt, "<=": operator.le, ">": operator.gt,
                                                  ">=": operator.ge}


def _cast_oid(type_name: Any) -> int:
    name = type_name.names[-1].sval
    oids = {"int8": wire.INT8, "bigint": wire.INT8, "int4": wire.INT4, "integer": wire.INT4, "int": wire.INT4,
            "int2": wire.INT2, "smallint": wire.INT2, "float8": wire.FLOAT8, "float4": wire.FLOAT4,
            "numeric": wire.NUMERIC, "text": wire.TEXT, "varchar": wire.VARCHAR, "bool": wire.BOOL,
            "boolean": wire.BOOL, "regclass": wire.TEXT, "name": wire.TEXT}
    if name not in oids:
        raise unsupported(f"a cast to type {name}")
    return oids[name]


def _cast(value: Any, oid: int) -> Any:
    if value is None:
        return None
    if oid in wire.INT_TYPES:
        return int(coerce(value, oid)) if not isinstance(value, float) else round(value)
    if oid in wire.FLOAT_TYPES or oid == wire.NUMERIC:
        return float(coerce(value, wire.FLOAT8))
    if oid == wire.BOOL:
        return bool(coerce(value, oid))
    return wire.text_value(value)


class Compiler:
    """Compiles expressions of one statement; collects the parameters' types as their uses reveal them."""

    def __init__(self, param_oids: list[int], settings: Callable[[str], str]) -> None:
        self.param_oids = {i + 1: oid for i, oid in enumerate(param_oids) if oid}
        self.nparams = len(param_oids)
        self.setting = settings

    def param_types(self) -> list[int]:
        return [self.param_oids.get(i, wire.TEXT) for i in range(1, self.nparams + 1)]

    def expr(self, node: Any, table: TableInfo | None, hint: int | None = None) -> Expr:
        if isinstance(node, ast.A_Const):
            return self._const(node, hint)
        if isinstance(node, ast.ParamRef):
            n = node.number - 1
            self.nparams = max(self.nparams, n + 1)
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
            return Expr(lambda r, p: _cast(f(r, p), oid), oid, inner.name, inner.constant)
        if isinstance(node, ast.A_Expr):
            return self._a_expr(node, table, hint)
        if isinstance(node, ast.BoolExpr):
            args = [self.expr(a, table, wire.BOOL).fn for a in node.args]
            kind = node.boolop
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
        elif isinstance(val, ast.Float):
            text = val.fval
            if len(text) > 400:  # beyond any float too; Python refuses int() of 4,300 digits with ValueError
                raise SqlError("22003", f"the numeric literal of {len(text)} characters is out of range",
                               "MUHEAM stores bigint and double precision")
            value = int(text) if text.lstrip("-").isdigit() else float(text)
            oid = wire.INT8 if isinstance(value, int) else wire.NUMERIC
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
        if len(fields) > 2 or (len(fields) == 2 and fields[0].sval != table.name):
            raise SqlError("42P01", f'missing FROM-clause entry for table "{fields[0].sval}"')
        if not table.has(name):
            raise SqlError("42703", f'column "{name}" does not exist in table "{table.name}"',
                           f"its columns: {', '.join(table.order)}")
        return Expr(lambda r, p: r[name], table.oid(name), name)

    def _a_expr(self, node: Any, table: TableInfo | None, hint: int | None) -> Expr:
        kind = node.kind
        op = node.name[-1].sval if node.name else ""
        if kind in (enums.A_Expr_Kind.AEXPR_IN, enums.A_Expr_Kind.AEXPR_BETWEEN,
                    enums.A_Expr_Kind.AEXPR_NOT_BETWEEN):
            left = self.expr(node.lexpr, table)
            items = [self.expr(x, table, left.oid).fn for x in node.rexpr]
            lf = left.fn
            if kind == enums.A_Expr_Kind.AEXPR_IN:
                negate = op == "<>"

                def in_list(row: Row, params: Params) -> Any:
                    v = lf(row, params)
                    if v is None:
                        return None
                    found = any(v == f(row, params) for f in items)
                    return found != negate
                return Expr(in_list, wire.BOOL)
            lo, hi = items
            negate = kind == enums.A_Expr_Kind.AEXPR_NOT_BETWEEN

            def between(row: Row, params: Params) -> Any:
                v, a, b = lf(row, params), lo(row, params), hi(row, params)
                if v is None or a is None or b is None:
                    return None
                return (a <= v <= b) != negate
            return Expr(between, wire.BOOL)
        if kind != enums.A_Expr_Kind.AEXPR_OP:
            raise unsupported(f"the operator kind {kind.name}")
        if node.lexpr is None:  # prefix: -x, +x
            arg = self.expr(node.rexpr, table, hint)
            af = arg.fn
            if op == "-":
                return Expr(lambda r, p: None if (v := _num(af(r, p))) is None else -v, arg.oid, arg.name,
                            arg.constant)
            if op == "+":
                return arg
            raise unsupported(f"the prefix operator {op}")
        # the side that is not a parameter tells the parameter's type
        if isinstance(node.lexpr, ast.ParamRef) and not isinstance(node.rexpr, ast.ParamRef):
            right = self.expr(node.rexpr, table, hint)
            left = self.expr(node.lexpr, table, right.oid)
        else:
            left = self.expr(node.lexpr, table, hint)
            right = self.expr(node.rexpr, table, left.oid)
        lf, rf = left.fn, right.fn
        constant = left.constant and right.constant
        if op in _COMPARE:
            cmp = _COMPARE[op]

            def compare(row: Row, params: Params) -> Any:
                a, b = lf(row, params), rf(row, params)
                if a is None or b is None:
                    return None
                try:
                    return cmp(a, b)
                except TypeError:
                    raise SqlError("42883", f"operator does not exist: {type(a).__name__} {op} "
                                   f"{type(b).__name__}") from None
            return Expr(compare, wire.BOOL, constant=constant)
        if op in _ARITH:
            fn = _ARITH[op]
            oid = wire.FLOAT8 if wire.FLOAT8 in (left.oid, right.oid) else wire.NUMERIC \
                if wire.NUMERIC in (left.oid, right.oid) else wire.INT8 if wire.INT8 in (left.oid, right.oid) \
                else left.oid

            def arith(row: Row, params: Params) -> Any:
                a, b = _num(lf(row, params)), _num(rf(row, params))
                if a is None or b is None:
                    return None
                try:
                    return fn(a, b)
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
            raise SqlError("42883", f"function {name}() does not exist in MUHEAM's SQL subset",
                           "aggregates count/sum/min/max/avg work on one table; scalar: version(), "
                           "current_database(), current_user, pg_backend_pid()")
        get, oid = values[name]
        return Expr(lambda r, p: get(), oid, name, True)
