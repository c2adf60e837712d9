"""The demo's invariant "no acknowledged commit lost" (``muheam.demo.checks``): exact on any number of transfers
whose outcome a client never learned, and failing on a lost acknowledged transfer."""

from __future__ import annotations

import random

from muheam.demo import checks


def report(net: dict[int, int], unknown: list[tuple[int, int]], acked: int = 1) -> dict[str, object]:
    return {"net": net, "unknown": unknown, "trace": [(0.0, 0.0)] * acked}


def test_exact_match_passes() -> None:
    c = checks.acknowledged([report({1: -1, 2: 1}, [])], [(1, -1), (2, 1), (3, 0)])
    assert c["passed"] and c["numbers"]["accounts_differing"] == 0


def test_some_unknown_transfers_committed_is_explained_among_many() -> None:
    rng = random.Random(7)
    unknown = [tuple(rng.sample(range(60), 2)) for _ in range(80)]
    committed = rng.sample(unknown, 9)
    final: dict[int, int] = {k: 0 for k in range(60)}
    for src, dst in committed:
        final[src] -= 1
        final[dst] += 1
    c = checks.acknowledged([report({}, unknown)], sorted(final.items()))  # type: ignore[arg-type]
    assert c["passed"], c


def test_a_lost_acknowledged_transfer_fails_even_with_unknowns_around() -> None:
    # acknowledged: 1 -> 2; the table lacks it; the unknown transfers touch other accounts, or go the wrong way
    rows = [(1, 0), (2, 0), (3, 0), (4, 0)]
    c = checks.acknowledged([report({1: -1, 2: 1}, [(3, 4), (1, 3)])], rows)
    assert not c["passed"], c
    assert not checks.explained({1: 1, 2: -1}, [(1, 2)])[0]  # the only unknown moves money the other way
    assert checks.explained({1: 1, 2: -1}, [(2, 1)])[0]
    assert not checks.explained({1: 1}, [(2, 1)])[0]  # money from nowhere
