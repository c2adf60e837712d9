"""``count``, ``sum``, ``avg``, ``min`` and ``max`` over rows that come page by page.

A SELECT of aggregates only keeps one accumulator per aggregate while its table is scanned, not the table's rows:
``SELECT count(*) FROM t`` of a table larger than memory, or than a statement may hold (``MAX_STATEMENT_ROWS``),
works as on PostgreSQL.  The results are those of the whole list at once: sums go left to right from 0 in scan
order (as ``sum()`` of the whole list, under the same exact context for numerics; on Python 3.12 and later
``sum()`` compensates a double's rounding within each call, so a double's sum over many pages may differ from one
call's in its last bits, as PostgreSQL's own differs with its scan order), and ``min``/``max`` keep the first of
equal values.
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext
from typing import Any

from muheam.sql import wire
from muheam.sql.expr import Expr, Params, Row, SqlError, numeric_div, order_key


def _infinite(v: Any) -> bool:
    return isinstance(v, float) and math.isinf(v)


class Accumulator:
    def __init__(self, func: str, arg: Expr | None) -> None:
        self.func, self.arg = func, arg
        self.n = 0
        self.total: Any = 0
        self.exact = True
        self.best: Any = None

    def add(self, rows: list[Row], params: Params) -> None:
        if self.arg is None:  # count(*)
            self.n += len(rows)
            return
        values = [v for v in (self.arg.fn(r, params) for r in rows) if v is not None]
        if not values:
            return
        self.n += len(values)
        if self.func in ("sum", "avg"):
            before = self.total
            with localcontext(wire.EXACT):  # (a numeric's sum is exact; ints and doubles do not use the context)
                self.total = sum(values, self.total)
            if _infinite(self.total) and not _infinite(before) and not any(_infinite(v) for v in values):
                raise SqlError("22003", "value out of range: overflow")  # finite doubles summed past the range
            self.exact = self.exact and all(type(v) is int or isinstance(v, Decimal) for v in values)
        elif self.func in ("min", "max"):
            pick = min if self.func == "min" else max
            best = pick(values, key=order_key)  # (NaN above every other number)
            self.best = best if self.best is None else pick((self.best, best), key=order_key)

    def result(self) -> Any:
        if self.arg is None or self.func == "count":
            return self.n
        if self.n == 0:
            return None
        if self.func == "sum":
            return self.total
        if self.func == "avg":
            if self.exact:  # numeric, PostgreSQL's scale
                return numeric_div(Decimal(self.total), Decimal(self.n))
            return self.total / self.n
        return self.best
