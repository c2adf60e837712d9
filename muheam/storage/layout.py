"""Block geometry shared by the schema (which must know how wide a row may be) and the page code.

Kept apart from ``page.py`` so that validating a ``CREATE TABLE`` does not need the page machinery.
"""

from __future__ import annotations

BLOCK_SIZE = 8192
"""Bytes per block of a relation file (PostgreSQL's default); fixed for the life of a cluster."""

PAGE_HEADER_SIZE = 64
"""Bytes of the page header at the start of every block (see ``page.HEADER_DTYPE``)."""

SLOT_HEADER_SIZE = 32
"""Bytes of per-slot bookkeeping (key, xmin, xmax, ctid, flags) before the row bytes."""

MIN_SLOTS_PER_PAGE = 4
"""A table whose rows leave fewer slots than this per page is refused: a hash bucket holding only one or two
versions would turn every update into an overflow-chain walk."""


def slot_size(row_width: int) -> int:
    """Bytes of one tuple slot: the slot header plus the row, rounded up to 8 so int64 fields stay aligned."""
    return (SLOT_HEADER_SIZE + row_width + 7) & ~7


def slots_per_page(row_width: int) -> int:
    """How many tuple slots fit after the page header."""
    return (BLOCK_SIZE - PAGE_HEADER_SIZE) // slot_size(row_width)


MAX_ROW_WIDTH = (BLOCK_SIZE - PAGE_HEADER_SIZE) // MIN_SLOTS_PER_PAGE - SLOT_HEADER_SIZE
"""The widest row (sum of column widths, primary key excluded) a table may declare."""
