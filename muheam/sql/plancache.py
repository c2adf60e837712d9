"""A per-connection plan cache for the simple query protocol: integer literals become parameters.

Tools such as ``pgbench`` (simple protocol) send the same statement again and again with new literals
(``UPDATE t SET v = v - 1 WHERE id = 57``), so a cache keyed by the exact text misses every time and each
statement pays pglast's parse and the compile again.  Here the key is the text with every free-standing integer
literal replaced by ``?`` (a regular expression, no parse) together with which literals need 64 bits, and the
cached plan is the statement compiled with those literals as parameters ``$1 .. $n`` typed as PostgreSQL types
such a literal: ``int4`` when it fits 32 bits, ``int8`` when it needs 64 (pgbench's random keys do).  A hit costs
one ``re`` pass and an ``int()`` per literal.

Why not ``pglast``'s fingerprint as the key: it folds a unary minus into the constant, so ``id = -5`` and
``id = 5`` share a fingerprint, and computing it is a parse in C on every statement.  The normalised text keeps
the minus (``id = -?``, compiled as ``-$1``) and is cheaper.

A statement is cached only where a parameter means exactly what the literal meant, checked once when it is
first seen (anything else is remembered as not cacheable and takes the ordinary path):

* no quote, dollar sign or comment in the text (the regular expression then only meets real integer literals,
  which ``pglast.parser.scan`` confirms: its constant tokens must be exactly the matches: ICONST, or FCONST for
  a digit run beyond 32 bits);
* one INSERT, UPDATE, DELETE or SELECT; not ``ORDER BY <position>`` (a position is not a value) and no literal in
  what the statement returns (a literal's column name and type there would differ from a parameter's);
* every literal fits 64 bits (a larger one is ``numeric`` in PostgreSQL: ordinary path); one that needs more than
  32 is part of the key, so an ``int4`` plan never runs with an ``int8`` value.

Plans stay valid: tables are never altered, a plan names its table by id (after a DROP TABLE it fails with
42P01 rather than reading another table of that name), and a session starts a new cache whenever the node's SQL
catalog moves to a new generation (``catalog.Catalog``); the cache is per connection, so a plan may use that
session's settings (``current_user``).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Callable

import pglast
from pglast import ast

from muheam.sql import wire
from muheam.sql.expr import SqlError
from muheam.sql.plan import CACHED_TEXT_BYTES, Compiled, Delete, Insert, Select, Update

SIZE = 256
"""Plans kept per connection (least recently used goes first)."""

_LITERAL = re.compile(r"(?<![\w.])(\d+)(?![\w.])")
"""A free-standing integer literal, as a group: one ``split`` gives the text between the literals and the literals
themselves."""
_UNSAFE = re.compile(r"['\"$]|--|/\*")
"""A quote, dollar sign or comment start: such a text is never cached (see the module docstring)."""
_INT4 = 1 << 31
_INT8 = 1 << 63
_CONSTANTS = ("ICONST", "FCONST", "SCONST", "BCONST", "XCONST", "USCONST", "PARAM")
_NOT_CACHEABLE = object()

Compile = Callable[[Any, list[int]], Compiled]


class PlanCache:
    def __init__(self, size: int = SIZE) -> None:
        self.size = size
        self.plans: OrderedDict[tuple[str, tuple[int, ...]], Any] = OrderedDict()
        self.counters = {"hits": 0, "misses": 0}

    def lookup(self, sql: str, compile_stmt: Compile) -> tuple[Compiled, list[int]] | None:
        """``(plan, literal values)`` for ``sql``, or ``None``: run it the ordinary way."""
        if len(sql) > CACHED_TEXT_BYTES or _UNSAFE.search(sql) is not None:
            return None
        parts = _LITERAL.split(sql)
        values: list[int] = []
        wide: list[int] = []
        for i, m in enumerate(parts[1::2]):
            if len(m) > 19:  # beyond 64 bits (and int() of thousands of digits is refused)
                return None
            v = int(m)
            if v >= _INT4:
                if v >= _INT8:
                    return None
                wide.append(i)
            values.append(v)
        key = ("?".join(parts[0::2]), tuple(wide))
        entry = self.plans.get(key)
        if entry is None:
            self.counters["misses"] += 1
            entry = self._build(sql, compile_stmt, [wire.INT8 if v >= _INT4 else wire.INT4 for v in values])
            if entry is None:
                return None  # it failed to compile (no such table yet?): not remembered, the ordinary path says why
            self.plans[key] = entry
            if len(self.plans) > self.size:
                self.plans.popitem(last=False)
        else:
            self.plans.move_to_end(key)
        if entry is _NOT_CACHEABLE:
            return None
        self.counters["hits"] += 1
        return entry, values

    def _build(self, sql: str, compile_stmt: Compile, types: list[int]) -> Any:
        """The template plan, ``_NOT_CACHEABLE``, or ``None`` if it did not compile."""
        try:
            tokens = pglast.parser.scan(sql)
        except pglast.parser.ParseError:
            return _NOT_CACHEABLE
        spans = [(m.start(), m.end()) for m in _LITERAL.finditer(sql)]
        consts = [(t.start, t.end + 1) for t in tokens if t.name in _CONSTANTS]
        # the constants must be exactly the digit runs: ICONST, or FCONST for one beyond 32 bits (PostgreSQL's lexer)
        if not spans or consts != spans or any(t.name not in ("ICONST", "FCONST") for t in tokens
                                               if t.name in _CONSTANTS):
            return _NOT_CACHEABLE
        text, at = [], 0
        for n, (start, end) in enumerate(spans, 1):
            text += [sql[at:start], f"${n}"]
            at = end
        text.append(sql[at:])
        try:
            stmts = pglast.parse_sql("".join(text))
        except pglast.parser.ParseError:
            return _NOT_CACHEABLE
        if len(stmts) != 1 or not _cacheable(stmts[0].stmt):
            return _NOT_CACHEABLE
        try:
            compiled = compile_stmt(stmts[0].stmt, types)
        except SqlError:
            return None
        if not isinstance(compiled.plan, (Select, Insert, Update, Delete)):
            return _NOT_CACHEABLE
        return compiled


def _cacheable(stmt: Any) -> bool:
    if isinstance(stmt, ast.SelectStmt):
        if any(isinstance(s.node, (ast.A_Const, ast.ParamRef)) for s in stmt.sortClause or ()):
            return False
        if stmt.groupClause or stmt.distinctClause or stmt.valuesLists:
            return False
        return not _has_param(stmt.targetList)
    if isinstance(stmt, (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt)):
        return not _has_param(stmt.returningClause)
    return False


def _has_param(node: Any) -> bool:
    if node is None:
        return False
    if isinstance(node, ast.ParamRef):
        return True
    if isinstance(node, (list, tuple)):
        return any(_has_param(x) for x in node)
    if isinstance(node, ast.Node):
        slots: Any = getattr(type(node), "__slots__", ())  # pglast: the node's fields
        return any(_has_param(getattr(node, name)) for name in slots)
    return False
