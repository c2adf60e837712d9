# pglast types every field of a parse node as Optional, although the grammar fills the ones read here for the
# node kinds checked first; these codes would flag each such read:
# mypy: disable-error-code="union-attr,index,arg-type,operator,attr-defined"
"""Statements parsed by PostgreSQL's own grammar (``pglast``) turned into plans over one table.

``parse`` gives pglast's raw statements (cached by text: pgbench's simple protocol sends the same few texts with
different literals, psycopg re-sends its texts); ``compile_statement`` turns one of them into a plan -- a small
dataclass the executor (``muheam.sql.execute``) runs through the session operations.  Whatever the subset does
not cover is refused here, before anything runs, with the SQLSTATE a PostgreSQL client expects.

A WHERE clause is examined for the key: ``key = e``, ``key IN (...)``, and ORs of those (with ``e`` not
depending on the row) become point reads (``get``); anything else scans the table, and the whole WHERE is
always applied to each row read.
"""

from __future__ import annotations

import dataclasses
import re

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import pglast
from pglast import ast, enums

from muheam import failpoints
from muheam.sql import wire
from muheam.sql.expr import (DEFAULT_TEXT_BYTES, Compiler, Expr, RowDependent, SqlError, TableInfo, check_assignable,
                             check_boolean, unsupported)

Lookup = Callable[[str], TableInfo]
_CACHE: OrderedDict[str, tuple[Any, ...]] = OrderedDict()
_CACHE_SIZE = 2048
CACHED_TEXT_BYTES = 4096
"""Longer texts are kept by neither cache: 2,048 parse trees of texts of up to 1 MiB would be gigabytes, and the
plan cache's template of a 5,000-row VALUES list (15,000 parameters) cost more than compiling it, for a text
seldom sent twice with the same shape (``plancache``)."""


MAX_STATEMENT_BYTES = 1 << 20
"""The longest SQL text a node parses: parsing and compiling take about 0.5-1.5 s per MiB each on an idle machine
(a 5,000-row INSERT is about 60 KiB), in a thread beside the loop that slows it meanwhile
(``muheam.sql.offloop``); beyond, SQLSTATE 54000 asks for smaller statements."""
LONG_STATEMENT_BYTES = 32 << 10
"""SQL text from this size on is parsed, and a text of one statement compiled, in a thread beside the node's loop
(``muheam.sql.offloop``); what is left of its compiling (the statements of a text of several) runs as long work:
the loop watch paused and the peers told (``Session.long_work``), so that it does not fence its node."""


def too_deep() -> SqlError:
    """A parse or compile that ran out of Python's recursion (PostgreSQL: stack depth limit exceeded)."""
    return SqlError("54001", "stack depth limit exceeded", "the statement nests expressions too deeply; write it "
                    "flatter (e.g. several statements, or sum() over rows)")


def is_long(sql: str) -> bool:
    """Parsing and compiling ``sql`` is long work (``LONG_STATEMENT_BYTES``)."""
    return len(sql) >= LONG_STATEMENT_BYTES


def parse(sql: str) -> tuple[Any, ...]:
    """The statements of ``sql`` (pglast ``RawStmt`` nodes); a syntax error is SQLSTATE 42601, a text longer
    than ``MAX_STATEMENT_BYTES`` 54000."""
    if len(sql) > MAX_STATEMENT_BYTES // 4 and len(sql.encode()) > MAX_STATEMENT_BYTES:  # (4 bytes a character)
        raise SqlError("54000", f"the SQL text is {len(sql.encode()):,} bytes long, more than MUHEAM parses at once "
                                f"({MAX_STATEMENT_BYTES:,})", "send it as several statements (e.g. an INSERT of "
                                "fewer rows per VALUES list)")
    failpoints.hit("sql.parse")  # tests: a parse that takes long (a large statement on a loaded machine)
    hit = _CACHE.get(sql)
    if hit is not None:
        _CACHE.move_to_end(sql)
        return hit
    try:
        stmts = tuple(s.stmt for s in pglast.parse_sql(sql))
    except pglast.parser.ParseError as exc:
        raise SqlError("42601", f"syntax error: {exc}") from None
    except RecursionError:
        raise too_deep() from None
    if len(sql) > CACHED_TEXT_BYTES:
        return stmts
    _CACHE[sql] = stmts
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return stmts


@dataclass
class Utility:
    """Transaction control, SET/SHOW/RESET and statements accepted without effect."""

    kind: str  # begin | commit | rollback | set | show | reset | noop | deallocate
    tag: str
    name: str = ""
    value: str = ""
    settings: tuple[tuple[str, str], ...] = ()
    """BEGIN's and SET TRANSACTION's characteristics: (``transaction_isolation`` or ``transaction_read_only``, or
    their ``default_`` forms for SET SESSION CHARACTERISTICS, value)."""


DEFAULT_BUCKETS = 256
"""Hash chains of a table made by SQL without ``WITH (buckets = N)``.  A key lookup walks one chain and a chain
is the unit of block ownership between nodes, so one chain (the engine's default without a size hint) made every
lookup read the whole table and every writer on another node take all of it; 256 keep a chain to a page up to
some 50,000 narrow rows and cost 2 MiB of empty pages per table."""
MAX_BUCKETS = 1 << 14
"""The most a SQL client may ask for (128 MiB of empty pages, written while the node's loop waits); the engine
takes more from the Python client or ``muheam table create --buckets``."""


@dataclass
class CreateTable:
    info: TableInfo
    if_not_exists: bool
    buckets: int = DEFAULT_BUCKETS
    """hash chains: ``WITH (buckets = N)``, else ``DEFAULT_BUCKETS``."""


@dataclass
class DropTable:
    names: tuple[str, ...]
    if_exists: bool


@dataclass
class Agg:
    func: str  # count | sum | min | max | avg
    arg: Expr | None  # None: count(*)


@dataclass
class Select:
    table: TableInfo | None
    targets: list[Expr]
    aggs: list[Agg] | None
    where: Expr | None
    points: list[Expr] | None
    order: list[tuple[Expr, bool]]
    limit: Expr | None
    offset: Expr | None
    lock_clause: str
    """``FOR UPDATE``, ``FOR SHARE`` ... as written, or "" (every one takes the row exclusively here)."""
    nowait: bool = False
    """``NOWAIT``: a row locked by another transaction fails the statement at once (55P03) instead of waiting."""

    @property
    def lock(self) -> bool:
        return bool(self.lock_clause)


_LOCK_CLAUSES = {enums.LockClauseStrength.LCS_FORKEYSHARE: "FOR KEY SHARE",
                 enums.LockClauseStrength.LCS_FORSHARE: "FOR SHARE",
                 enums.LockClauseStrength.LCS_FORNOKEYUPDATE: "FOR NO KEY UPDATE",
                 enums.LockClauseStrength.LCS_FORUPDATE: "FOR UPDATE"}


@dataclass
class Insert:
    table: TableInfo
    rows: list[dict[str, Expr]]
    returning: list[Expr]


@dataclass
class Update:
    table: TableInfo
    sets: dict[str, Expr]
    add: tuple[str, Expr, int] | None
    """``SET c = c + e`` (sign 1) or ``c - e`` (-1): the engine's ``add``."""
    where: Expr | None
    points: list[Expr] | None
    returning: list[Expr]
    key_only: bool = False
    """WHERE is exactly ``key = <row-independent value>``: with ``add`` and no RETURNING the row need not be read
    first (``execute.run_update``)."""


@dataclass
class Delete:
    table: TableInfo
    where: Expr | None
    points: list[Expr] | None
    returning: list[Expr]


Plan = Utility | CreateTable | DropTable | Select | Insert | Update | Delete


@dataclass
class Compiled:
    plan: Plan
    fields: list[tuple[str, int]] | None
    """The RowDescription (None: the statement returns no rows)."""
    param_types: list[int] = field(default_factory=list)


def compile_statement(stmt: Any, lookup: Lookup, param_oids: list[int], setting: Callable[[str], str]) -> Compiled:
    c = Compiler(param_oids, setting)
    try:
        plan = _plan(stmt, lookup, c)
    except RowDependent as exc:  # a column where no table is (``SELECT nope``): it cost the connection before
        raise SqlError("42703", f'column "{exc}" does not exist') from None
    except RecursionError:  # an expression nested thousands deep (``SELECT 1+1+...+1``)
        raise too_deep() from None
    fields: list[tuple[str, int]] | None = None
    if isinstance(plan, Select):
        fields = [(t.name, t.oid) for t in plan.targets]
    elif isinstance(plan, (Insert, Update, Delete)) and plan.returning:
        fields = [(t.name, t.oid) for t in plan.returning]
    elif isinstance(plan, Utility) and plan.kind == "show":
        fields = [(plan.name, wire.TEXT)]
    return Compiled(plan, fields, c.param_types())


def _plan(stmt: Any, lookup: Lookup, c: Compiler) -> Plan:
    if isinstance(stmt, ast.TransactionStmt):
        return _transaction(stmt)
    if isinstance(stmt, ast.VariableSetStmt):
        return _set(stmt)
    if isinstance(stmt, ast.VariableShowStmt):
        return Utility("show", "SHOW", _setting_name(stmt.name))
    if isinstance(stmt, ast.SelectStmt):
        return _select(stmt, lookup, c)
    if isinstance(stmt, ast.InsertStmt):
        return _insert(stmt, lookup, c)
    if isinstance(stmt, ast.UpdateStmt):
        return _update(stmt, lookup, c)
    if isinstance(stmt, ast.DeleteStmt):
        return _delete(stmt, lookup, c)
    if isinstance(stmt, ast.CreateStmt):
        return _create(stmt)
    if isinstance(stmt, ast.DropStmt) and stmt.removeType == enums.ObjectType.OBJECT_TABLE:
        return _drop(stmt)
    if isinstance(stmt, ast.DeallocateStmt):
        return Utility("deallocate", "DEALLOCATE ALL" if stmt.isall else "DEALLOCATE", stmt.name or "")
    if isinstance(stmt, ast.DiscardStmt):
        return Utility("reset", "DISCARD ALL")  # settings back to their defaults, prepared statements gone
    if isinstance(stmt, (ast.AlterRoleStmt, ast.CreateRoleStmt, ast.DropRoleStmt)):
        raise SqlError("0A000", f"{_statement_words(stmt)} is not supported by MUHEAM's SQL port: its users and "
                       "their passwords are kept outside SQL", "muheam user add NAME / list / remove -c CONFIG")
    raise unsupported(_statement_words(stmt))


_IRREGULAR = {"Index": "CREATE INDEX", "View": "CREATE VIEW", "CreateSeq": "CREATE SEQUENCE",
              "AlterSeq": "ALTER SEQUENCE", "Createdb": "CREATE DATABASE", "Dropdb": "DROP DATABASE",
              "Rule": "CREATE RULE", "CreateTrig": "CREATE TRIGGER", "Define": "CREATE AGGREGATE/OPERATOR/TYPE",
              "Rename": "ALTER ... RENAME", "Lock": "LOCK TABLE"}


def _statement_words(stmt: Any) -> str:
    """A statement's kind in SQL's words, from pglast's node name: ``AlterRoleStmt`` -> ``ALTER ROLE``,
    ``CreateTableAsStmt`` -> ``CREATE TABLE AS``; ``VacuumStmt`` is also ANALYZE."""
    if isinstance(stmt, ast.VacuumStmt):
        return "VACUUM" if stmt.is_vacuumcmd else "ANALYZE"
    if isinstance(stmt, ast.GrantStmt):
        return "GRANT" if stmt.is_grant else "REVOKE"
    name = type(stmt).__name__.removesuffix("Stmt")
    if name in _IRREGULAR:
        return _IRREGULAR[name]
    return re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", name).upper()


ISOLATION_LEVELS = ("read uncommitted", "read committed", "repeatable read", "serializable")
"""What ``BEGIN ISOLATION LEVEL`` and ``transaction_isolation`` accept, as PostgreSQL does.  The first two run as
READ COMMITTED, the last two as snapshot isolation (PostgreSQL's REPEATABLE READ; MUHEAM has no serializable
snapshot isolation, so SERIALIZABLE allows write skew here)."""


def _characteristics(options: Any, prefix: str = "") -> tuple[tuple[str, str], ...]:
    """The isolation level and access mode among ``options`` (DefElems of BEGIN or SET TRANSACTION), as
    settings (``prefix`` "default_" for the session's); DEFERRABLE has no effect here."""
    out = []
    for opt in options or ():
        if opt.defname == "transaction_isolation":
            level = str(opt.arg.val.sval)
            if level not in ISOLATION_LEVELS:
                raise unsupported(f"isolation level {level}")
            out.append((prefix + "transaction_isolation", level))
        elif opt.defname == "transaction_read_only":
            out.append((prefix + "transaction_read_only", "on" if opt.arg.val.ival else "off"))
    return tuple(out)


def _transaction(stmt: Any) -> Utility:
    kind = stmt.kind
    settings = _characteristics(stmt.options)
    if kind in (enums.TransactionStmtKind.TRANS_STMT_BEGIN, enums.TransactionStmtKind.TRANS_STMT_START):
        return Utility("begin", "BEGIN" if kind == enums.TransactionStmtKind.TRANS_STMT_BEGIN else "START TRANSACTION",
                       settings=settings)
    if kind == enums.TransactionStmtKind.TRANS_STMT_COMMIT:
        return Utility("commit", "COMMIT")
    if kind == enums.TransactionStmtKind.TRANS_STMT_ROLLBACK:
        return Utility("rollback", "ROLLBACK")
    raise unsupported(kind.name.removeprefix("TRANS_STMT_").replace("_", " "))


def _setting_name(name: str) -> str:
    return {"timezone": "TimeZone", "datestyle": "DateStyle", "time zone": "TimeZone",
            "intervalstyle": "IntervalStyle"}.get(name.lower(), name.lower())


def _set(stmt: Any) -> Utility:
    kind = stmt.kind
    if kind == enums.VariableSetKind.VAR_RESET_ALL:
        return Utility("reset", "RESET")
    name = _setting_name(stmt.name or "")
    if kind == enums.VariableSetKind.VAR_SET_MULTI:  # SET TRANSACTION / SESSION CHARACTERISTICS
        settings = _characteristics(stmt.args, "" if stmt.name == "TRANSACTION" else "default_")
        return Utility("set", "SET", settings=settings) if settings else Utility("noop", "SET")
    if kind in (enums.VariableSetKind.VAR_RESET, enums.VariableSetKind.VAR_SET_DEFAULT):
        return Utility("reset", "RESET" if kind == enums.VariableSetKind.VAR_RESET else "SET", name)
    if kind != enums.VariableSetKind.VAR_SET_VALUE:
        raise unsupported(f"SET {kind.name}")
    parts = []
    for arg in stmt.args or ():
        if not isinstance(arg, ast.A_Const) or arg.isnull:
            raise unsupported("SET with an expression")
        v = arg.val
        parts.append(str(v.sval if isinstance(v, ast.String) else v.ival if isinstance(v, ast.Integer)
                         else v.fval if isinstance(v, ast.Float) else v.boolval))
    return Utility("set_local" if stmt.is_local else "set", "SET", name, ", ".join(parts))


def _storage_options(stmt: Any) -> int:
    """The hash chains from ``WITH (...)``: ``buckets`` (1 to ``MAX_BUCKETS``), ``fillfactor`` accepted and
    without effect (pages are not reserved for updates); any other parameter is refused."""
    buckets = DEFAULT_BUCKETS
    for opt in stmt.options or ():
        value = opt.arg.ival if isinstance(opt.arg, ast.Integer) else None
        if opt.defname == "buckets":
            if value is None or not 1 <= value <= MAX_BUCKETS:
                raise SqlError("22023", f"buckets must be an integer from 1 to {MAX_BUCKETS}",
                               "e.g. CREATE TABLE t (id bigint PRIMARY KEY, v bigint) WITH (buckets = 4096); "
                               "more with muheam table create --buckets")
            buckets = value
        elif opt.defname == "fillfactor":
            if value is None or not 10 <= value <= 100:
                raise SqlError("22023", "fillfactor must be an integer from 10 to 100")
        else:
            raise SqlError("0A000", f'storage parameter "{opt.defname}" is not supported by MUHEAM\'s SQL port',
                           "supported: WITH (buckets = N), the number of hash chains (README.md, 'SQL')")
    return buckets


_SQL_TYPES = {"int8": "int64", "bigint": "int64", "int4": "int64", "integer": "int64", "int": "int64",
              "int2": "int64", "smallint": "int64", "float8": "float64", "double precision": "float64",
              "float4": "float64", "real": "float64", "numeric": "float64"}


def _drop(stmt: Any) -> DropTable:
    """``DROP TABLE [IF EXISTS] name [, ...] [CASCADE | RESTRICT]``: nothing depends on a MUHEAM table, so
    CASCADE drops exactly what RESTRICT does."""
    if stmt.concurrent:
        raise unsupported("DROP TABLE CONCURRENTLY")
    names = []
    for obj in stmt.objects or ():
        parts = [p.sval for p in obj]
        if len(parts) > 1 and parts[:-1] != ["public"]:
            raise SqlError("3F000", f'schema "{".".join(parts[:-1])}" does not exist',
                           "MUHEAM has one schema, public")
        names.append(parts[-1])
    return DropTable(tuple(names), bool(stmt.missing_ok))


def _create(stmt: Any) -> CreateTable:
    if stmt.inhRelations or stmt.partspec or stmt.ofTypename:
        raise unsupported("CREATE TABLE with inheritance, partitions or OF type")
    if stmt.relation.relpersistence == "t":  # (it would be a permanent table every node sees)
        raise unsupported("CREATE TEMPORARY TABLE")
    key: str | None = None
    columns: dict[str, str] = {}
    sql_types: dict[str, str] = {}
    for elt in stmt.tableElts or ():
        if isinstance(elt, ast.Constraint):
            if elt.contype == enums.ConstrType.CONSTR_PRIMARY and elt.keys and len(elt.keys) == 1:
                key = _one_primary_key(key, elt.keys[0].sval, stmt.relation.relname)
                continue
            raise unsupported("table constraints other than a one-column PRIMARY KEY")
        if not isinstance(elt, ast.ColumnDef):
            raise unsupported(f"{type(elt).__name__} in CREATE TABLE")
        tname = elt.typeName.names[-1].sval
        mods = [m.val.ival for m in elt.typeName.typmods or () if isinstance(m, ast.A_Const)]
        if elt.colname in columns:
            raise SqlError("42701", f'column "{elt.colname}" specified more than once')
        if tname in _SQL_TYPES:
            kind = _SQL_TYPES[tname]
        elif tname in ("text", "varchar", "bpchar"):
            if mods and mods[0] < 1:
                raise SqlError("22023", f"length for type {tname} must be at least 1")
            # varchar(n) holds n characters: up to 4n bytes of UTF-8 in the engine's fixed-width row (past 256
            # characters at most max(n, 1024) bytes, so a wide varchar still fits a page: a longer UTF-8 value gets
            # 22001 naming the bytes)
            width = min(4 * mods[0], max(mods[0], 1024)) if mods and tname == "varchar" else \
                mods[0] if mods else DEFAULT_TEXT_BYTES
            kind = f"text({width})"
        else:
            raise SqlError("0A000", f'type "{tname}" of column "{elt.colname}" is not supported',
                           "use bigint, integer, double precision, text or varchar(n)")
        for con in elt.constraints or ():
            if con.contype == enums.ConstrType.CONSTR_PRIMARY:
                key = _one_primary_key(key, elt.colname, stmt.relation.relname)
            elif con.contype not in (enums.ConstrType.CONSTR_NOTNULL, enums.ConstrType.CONSTR_NULL):
                raise unsupported(f"column constraint {con.contype.name.removeprefix('CONSTR_')}")
        columns[elt.colname] = kind
        sql_types[elt.colname] = tname + (f"({mods[0]})" if mods else "")
    if key is None or key not in columns or columns[key] != "int64" or sql_types[key] not in ("int8", "bigint"):
        raise SqlError("0A000", "a MUHEAM table needs a bigint PRIMARY KEY column (the engine's int64 key)",
                       "e.g. CREATE TABLE t (id bigint PRIMARY KEY, v bigint)")
    del columns[key]
    return CreateTable(TableInfo(stmt.relation.relname, key, columns, sql_types), bool(stmt.if_not_exists),
                       _storage_options(stmt))


def _one_primary_key(key: str | None, column: str, table: str) -> str:
    if key is not None:
        raise SqlError("42P16", f'multiple primary keys for table "{table}" are not allowed')
    return column


def _catalogs(node: Any) -> list[str]:
    """The system catalogs a FROM clause names (``pg_catalog.*``, ``information_schema.*``, ``pg_*``), through
    joins and subqueries: what psql's ``\\d`` commands send."""
    if isinstance(node, (list, tuple)):
        return [name for item in node for name in _catalogs(item)]
    if isinstance(node, ast.RangeVar):
        system = node.schemaname in ("pg_catalog", "information_schema") or str(node.relname).startswith("pg_")
        return [f"{node.schemaname}.{node.relname}" if node.schemaname else str(node.relname)] if system else []
    if isinstance(node, ast.JoinExpr):
        return _catalogs(node.larg) + _catalogs(node.rarg)
    if isinstance(node, ast.RangeSubselect) and isinstance(node.subquery, ast.SelectStmt):
        return _catalogs(node.subquery.fromClause or ())
    return []


NO_CATALOGS = ("MUHEAM's SQL port has no system catalogs: list the tables with `muheam table list -c CONFIG`, a "
               "table's columns with SELECT * FROM t LIMIT 0")


def _table(from_clause: Any, lookup: Lookup) -> TableInfo | None:
    if not from_clause:
        return None
    if len(from_clause) != 1 or not isinstance(from_clause[0], ast.RangeVar):
        catalogs = _catalogs(from_clause)
        if catalogs:  # psql's \d, \dt: a clear word rather than one about joins
            raise SqlError("0A000", f"system catalogs ({', '.join(sorted(set(catalogs)))}) are not supported",
                           NO_CATALOGS)
        raise unsupported("a FROM clause with joins, subqueries or several tables")
    rv = from_clause[0]
    if rv.schemaname not in (None, "public"):
        raise SqlError("42P01", f'relation "{rv.schemaname}.{rv.relname}" does not exist', NO_CATALOGS)
    info = lookup(rv.relname)
    if rv.alias is not None and info is not None:
        info = dataclasses.replace(info, alias=rv.alias.aliasname)
    return info


def _key_points(where: Any, table: TableInfo, c: Compiler) -> list[Expr] | None:
    """Row-independent expressions the key must equal for WHERE to hold, or None (scan)."""
    if isinstance(where, ast.BoolExpr):
        if where.boolop == enums.BoolExprType.AND_EXPR:
            for arg in where.args:
                found = _key_points(arg, table, c)
                if found is not None:
                    return found
            return None
        if where.boolop == enums.BoolExprType.OR_EXPR:
            out: list[Expr] = []
            for arg in where.args:
                found = _key_points(arg, table, c)
                if found is None:
                    return None
                out += found
            return out
        return None
    if not isinstance(where, ast.A_Expr) or not where.name or where.name[-1].sval != "=":
        return None

    def is_key(n: Any) -> bool:
        return isinstance(n, ast.ColumnRef) and isinstance(n.fields[-1], ast.String) \
            and n.fields[-1].sval == table.key
    try:
        if where.kind == enums.A_Expr_Kind.AEXPR_IN and is_key(where.lexpr):
            return [c.expr(x, None, wire.INT8) for x in where.rexpr]
        if where.kind == enums.A_Expr_Kind.AEXPR_OP:
            if is_key(where.lexpr):
                return [c.expr(where.rexpr, None, wire.INT8)]
            if is_key(where.rexpr):
                return [c.expr(where.lexpr, None, wire.INT8)]
    except RowDependent:
        return None
    return None


def _where(where: Any, table: TableInfo, c: Compiler) -> tuple[Expr | None, list[Expr] | None]:
    if where is None:
        return None, None
    condition = c.expr(where, table, wire.BOOL)
    check_boolean(condition, "argument of WHERE")
    return condition, _key_points(where, table, c)


def _targets(targets: Any, table: TableInfo | None, c: Compiler) -> list[Expr]:
    out: list[Expr] = []
    for t in targets or ():
        val = t.val
        if isinstance(val, ast.ColumnRef) and isinstance(val.fields[-1], ast.A_Star):
            if table is None:
                raise SqlError("42601", "SELECT * with no tables specified is not valid")
            out += [c.expr(ast.ColumnRef(fields=(ast.String(sval=col),)), table) for col in table.order]
            continue
        e = c.expr(val, table)
        if t.name:
            e.name = t.name
        out.append(e)
    return out


_AGGS = ("count", "sum", "min", "max", "avg")


def _aggregate_oid(func: str, arg: Expr | None) -> int:
    """PostgreSQL's result types: count bigint; sum of integer/smallint bigint, of bigint or numeric numeric, of a
    double a double; avg numeric for integers and numeric, a double for doubles; min/max the argument's."""
    if func == "count" or arg is None:
        return wire.INT8
    if func in ("sum", "avg") and arg.oid not in (*wire.INT_TYPES, *wire.FLOAT_TYPES, wire.NUMERIC):
        raise SqlError("42883", f"function {func}({wire.type_name(arg.oid)}) does not exist",
                       "No function matches the given name and argument types. You might need to add explicit "
                       "type casts.")
    if func == "sum":
        return wire.INT8 if arg.oid in (wire.INT4, wire.INT2) else wire.NUMERIC if arg.oid in (wire.INT8, wire.NUMERIC) \
            else wire.FLOAT8 if arg.oid in wire.FLOAT_TYPES else arg.oid
    if func == "avg":
        return wire.FLOAT8 if arg.oid in wire.FLOAT_TYPES else wire.NUMERIC
    return wire.TEXT if arg.oid == wire.VARCHAR else arg.oid


def _select(stmt: Any, lookup: Lookup, c: Compiler) -> Select:
    for attr in ("groupClause", "havingClause", "distinctClause", "withClause", "windowClause", "intoClause",
                 "valuesLists"):
        if getattr(stmt, attr, None):
            raise unsupported(f"SELECT with {attr.removesuffix('Clause').removesuffix('Lists').upper()}")
    if stmt.op != enums.SetOperation.SETOP_NONE:
        raise unsupported("UNION/INTERSECT/EXCEPT")
    table = _table(stmt.fromClause, lookup)
    targets = stmt.targetList or ()
    is_agg = [isinstance(t.val, ast.FuncCall) and t.val.funcname[-1].sval.lower() in _AGGS for t in targets]
    aggs: list[Agg] | None = None
    if any(is_agg):
        if not all(is_agg) or table is None:
            raise SqlError("42803", "every output column must be an aggregate (MUHEAM's SQL port has no GROUP BY)")
        aggs, exprs = [], []
        for t in targets:
            f = t.val
            func = f.funcname[-1].sval.lower()
            if f.agg_distinct or f.agg_filter or f.over or (not f.agg_star and len(f.args or ()) != 1):
                raise unsupported(f"{func}() with DISTINCT, FILTER, OVER or several arguments")
            if func in ("sum", "avg") and not f.agg_star and isinstance(f.args[0], ast.A_Const):
                if f.args[0].isnull or isinstance(f.args[0].val, ast.String):  # sum(NULL): of which type?
                    raise SqlError("42725", f"function {func}(unknown) is not unique",
                                   "Could not choose a best candidate function. You might need to add explicit "
                                   "type casts.")
            arg = None if f.agg_star else c.expr(f.args[0], table)
            aggs.append(Agg(func, arg))
            oid = _aggregate_oid(func, arg)
            exprs.append(Expr(lambda r, p: None, oid, t.name or func))
    else:
        exprs = _targets(targets, table, c)
    where, points = _where(stmt.whereClause, table, c) if table is not None else (None, None)
    if stmt.whereClause is not None and table is None:
        where = c.expr(stmt.whereClause, None, wire.BOOL)
        check_boolean(where, "argument of WHERE")
    order: list[tuple[Expr, bool]] = []
    named = {e.name: e for e in exprs}  # output columns by name: ORDER BY takes these first, as PostgreSQL
    sources: dict[str, set[str]] = {}  # ... and refuses a name that two different ones have (42702)
    for t, e in zip(targets, exprs) if len(targets) == len(exprs) else ():
        sources.setdefault(e.name, set()).add(repr(t.val))
    for sort in stmt.sortClause or ():
        node = sort.node
        desc = sort.sortby_dir == enums.SortByDir.SORTBY_DESC
        if isinstance(node, ast.A_Const) and isinstance(node.val, ast.Integer):
            i = node.val.ival - 1
            if not 0 <= i < len(exprs):
                raise SqlError("42P10", f"ORDER BY position {i + 1} is not in select list")
            order.append((exprs[i], desc))
        elif isinstance(node, ast.ColumnRef) and len(node.fields) == 1 and isinstance(node.fields[0], ast.String) \
                and node.fields[0].sval in named:
            if len(sources.get(node.fields[0].sval, ())) > 1:
                raise SqlError("42702", f'ORDER BY "{node.fields[0].sval}" is ambiguous')
            order.append((named[node.fields[0].sval], desc))
        elif aggs is None:
            order.append((c.expr(node, table), desc))
    limit = c.expr(stmt.limitCount, None, wire.INT8) if stmt.limitCount is not None else None
    offset = c.expr(stmt.limitOffset, None, wire.INT8) if stmt.limitOffset is not None else None
    clause = _LOCK_CLAUSES.get(stmt.lockingClause[0].strength, "FOR UPDATE") if stmt.lockingClause else ""
    policies = {c.waitPolicy for c in stmt.lockingClause or ()}
    if enums.LockWaitPolicy.LockWaitSkip in policies:
        raise unsupported(f"{clause} SKIP LOCKED")
    if clause and (table is None or aggs is not None):
        raise SqlError("0A000", f"{clause} needs rows of one table")
    return Select(table, exprs, aggs, where, points, order, limit, offset, clause,
                  enums.LockWaitPolicy.LockWaitError in policies)


def _returning(stmt: Any, table: TableInfo, c: Compiler) -> list[Expr]:
    clause = getattr(stmt, "returningClause", None)
    targets = clause.exprs if clause is not None else getattr(stmt, "returningList", None)
    return _targets(targets, table, c) if targets else []


def _insert(stmt: Any, lookup: Lookup, c: Compiler) -> Insert:
    if stmt.onConflictClause is not None or stmt.withClause is not None:
        raise unsupported("INSERT with ON CONFLICT or WITH")
    table = _table((stmt.relation,), lookup)
    assert table is not None
    select = stmt.selectStmt
    if select is None or not select.valuesLists:
        raise unsupported("INSERT ... SELECT and DEFAULT VALUES")
    cols = [t.name for t in stmt.cols] if stmt.cols else table.order
    for col in cols:
        if not table.has(col):
            raise SqlError("42703", f'column "{col}" of relation "{table.name}" does not exist')
    if len(set(cols)) != len(cols):
        dup = next(col for col in cols if cols.count(col) > 1)
        raise SqlError("42701", f'column "{dup}" specified more than once')
    rows = []
    for values in select.valuesLists:
        if len(values) > len(cols) or (stmt.cols and len(values) < len(cols)):
            more = "expressions than target columns" if len(values) > len(cols) else "target columns than expressions"
            raise SqlError("42601", f"INSERT has more {more}")
        given = cols[:len(values)]  # (without a column list, the columns past the values are NULL)
        missing = [col for col in table.order if col not in given]
        if missing:  # a column left out is NULL, and every MUHEAM column is NOT NULL (no defaults)
            raise SqlError("23502", f'null value in column "{missing[0]}" of relation "{table.name}" violates '
                           "not-null constraint", "MUHEAM columns are NOT NULL and have no defaults: give a value "
                           "for every column")
        row = {col: c.expr(v, None, table.oid(col)) for col, v in zip(given, values)}
        for col, e in row.items():
            check_assignable(e, col, table.oid(col))
        rows.append(row)
    return Insert(table, rows, _returning(stmt, table, c))


def _update(stmt: Any, lookup: Lookup, c: Compiler) -> Update:
    if stmt.fromClause or stmt.withClause:
        raise unsupported("UPDATE with FROM or WITH")
    table = _table((stmt.relation,), lookup)
    assert table is not None
    sets: dict[str, Expr] = {}
    add: tuple[str, Expr, int] | None = None
    for t in stmt.targetList:
        if t.name in sets:
            raise SqlError("42601", f'multiple assignments to same column "{t.name}"')
        if t.name == table.key:
            raise unsupported("changing the primary key")
        if not table.has(t.name):
            raise SqlError("42703", f'column "{t.name}" of relation "{table.name}" does not exist')
        val = t.val
        sets[t.name] = c.expr(val, table, table.oid(t.name))
        check_assignable(sets[t.name], t.name, table.oid(t.name))
        if (len(stmt.targetList) == 1 and isinstance(val, ast.A_Expr) and val.kind == enums.A_Expr_Kind.AEXPR_OP
                and val.name[-1].sval in "+-" and isinstance(val.lexpr, ast.ColumnRef)
                and val.lexpr.fields[-1].sval == t.name and not table.columns[t.name].startswith("text")):
            try:
                add = (t.name, c.expr(val.rexpr, None, table.oid(t.name)), 1 if val.name[-1].sval == "+" else -1)
            except RowDependent:
                add = None
    where, points = _where(stmt.whereClause, table, c)
    w = stmt.whereClause
    key_only = isinstance(w, ast.A_Expr) and w.kind == enums.A_Expr_Kind.AEXPR_OP and points is not None \
        and len(points) == 1
    return Update(table, sets, add, where, points, _returning(stmt, table, c), key_only)


def _delete(stmt: Any, lookup: Lookup, c: Compiler) -> Delete:
    if stmt.usingClause or stmt.withClause:
        raise unsupported("DELETE with USING or WITH")
    table = _table((stmt.relation,), lookup)
    assert table is not None
    where, points = _where(stmt.whereClause, table, c)
    return Delete(table, where, points, _returning(stmt, table, c))
