"""Which side of a peer-only partition stays (``muheam.cluster.partition``): the same answer on every node."""

from __future__ import annotations

from itertools import combinations

from hypothesis import given, settings
from hypothesis import strategies as st

from muheam.cluster.partition import Silence, losers, stay_side


def test_one_node_cut_from_both_peers_leaves() -> None:
    assert losers({1: {2}, 2: {1}, 3: set()}, {1, 2, 3}) == {3}


def test_a_one_way_cut_is_a_cut() -> None:
    # 3 hears 2, 2 does not hear 3: the pair 2-3 cannot run a round; 1-2 and 1-3 tie, lower ids stay
    assert losers({1: {2, 3}, 2: {1}, 3: {1, 2}}, {1, 2, 3}) == {3}


def test_two_against_two_keeps_the_lower_ids() -> None:
    assert stay_side({1: {2}, 2: {1}, 3: {4}, 4: {3}}, {1, 2, 3, 4}) == {1, 2}


def test_no_reports_means_nobody_leaves() -> None:
    assert losers({}, {1, 2, 3}) == frozenset()
    assert losers({1: {2, 3}}, {1, 2, 3}) == frozenset()


def test_a_connected_side_that_is_not_a_clique_does_not_stay_whole() -> None:
    # 1-2, 2-3, 3-4 in a line: no three all hear each other
    side = stay_side({1: {2}, 2: {1, 3}, 3: {2, 4}, 4: {3}}, {1, 2, 3, 4})
    assert side == {1, 2}


@settings(max_examples=300, deadline=None)
@given(st.integers(2, 7).flatmap(lambda n: st.tuples(
    st.just(n), st.dictionaries(st.integers(1, n), st.frozensets(st.integers(1, n)), max_size=n))))
def test_the_stay_side_is_a_largest_mutual_clique_and_the_same_for_any_report_order(case: tuple[int, dict[int, frozenset[int]]]) -> None:
    n, reach = case
    live = set(range(1, n + 1))
    side = stay_side(reach, live)
    again = stay_side(dict(reversed(list(reach.items()))), sorted(live, reverse=True))
    assert side == again

    def hears(a: int, b: int) -> bool:
        return b in reach[a] if a in reach else True

    def clique(s: tuple[int, ...]) -> bool:
        return all(hears(a, b) and hears(b, a) for a, b in combinations(s, 2))

    assert side and clique(tuple(side))
    assert not any(clique(s) for s in combinations(sorted(live), len(side) + 1))


def test_silence_after_the_timeout_only() -> None:
    s = Silence(3.0)
    s.watch(2, 10.0)
    s.watch(3, 10.0)
    s.heard(2, 12.0)
    assert s.silent(13.5) == {3} and s.hears(13.5) == {2}
    s.heard(4, 13.0)  # not watched: ignored
    s.forget(3)
    assert s.silent(20.0) == {2}
