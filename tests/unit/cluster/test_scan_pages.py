"""A paged scan's sizing (``Sessions.op_scan``): how many chains the engine reads next (``page_batch``) and how many
a consistent-read request asks for ahead (``page_ahead``), from what the page found so far."""

from __future__ import annotations

from muheam.cluster.sessions import MAX_PAGE_CHAINS, page_ahead, page_batch


def test_the_engine_reads_about_as_many_chains_as_hold_the_rows_still_wanted() -> None:
    assert page_batch(5000, 0, 0) == 1          # nothing known: one chain tells how full chains are
    assert page_batch(5000, 0, 3) == 6          # empty so far: twice as many
    assert page_batch(5000, 0, 200) == 256      # (at most the engine's 256 per call)
    assert page_batch(100, 50, 10) == 20        # 5 rows a chain: 20 chains for 100 rows
    assert page_batch(1, 500, 1) == 1 and page_batch(0, 10, 1) == 1   # never less than one chain


def test_a_copy_request_asks_for_the_chains_the_page_should_need() -> None:
    assert page_ahead(10_000, 0, 0) == MAX_PAGE_CHAINS - 1   # nothing found yet: the rest of the page
    assert page_ahead(1, 0, 300) == MAX_PAGE_CHAINS - 300 - 1   # (an empty table's page: one request, not 1,024)
    assert page_ahead(100, 50, 10) == 19                     # 5 rows a chain: 20 chains, the waited one included
    assert page_ahead(1, 50, 10) == 9                        # at least as many again as read: doubling
    assert page_ahead(10_000, 10, 1000) == MAX_PAGE_CHAINS - 1000 - 1   # within the page's chains
    assert page_ahead(5, 10, 1023) == 0
