"""Deterministic simulation of the lock manager driven by hypothesis (DESIGN.md section 9).

Every schedule checks, after every step, I2 (no conflicting live owners, cached ownership included), that each
valid grant sees the latest durable value and version, and that XIDs are unique and follow the GLSN order of
the grants that handed them out; at the end, that every live node's requests were granted.

By default the three property tests run 10,000 schedules between them.  ``MUHEAM_SIM_EXAMPLES`` sets the total
for a long run, e.g. ``MUHEAM_SIM_EXAMPLES=200000 pytest tests/unit/locking/test_locking_sim.py`` (roughly 5 ms a schedule).
"""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from locking.sim import SimConfig, SimResult, run

TOTAL = int(os.environ.get("MUHEAM_SIM_EXAMPLES", "10000"))
SHARE = {"calm": 0.3, "crash": 0.4, "restart": 0.3}


def _settings(kind: str) -> settings:
    return settings(max_examples=max(1, int(TOTAL * SHARE[kind])), deadline=None, derandomize=True,
                    database=None)


seeds = st.integers(0, 2**32 - 1)
node_counts = st.integers(2, 5)
crash_points = st.lists(st.integers(0, 150), min_size=1, max_size=3).map(tuple)
limits = st.sampled_from((0, 64, 1 << 20))     # every value large / counter small, blocks mixed / all small


@_settings("calm")
@given(seed=seeds, nodes=node_counts, ops=st.integers(1, 4), blocks=st.integers(1, 3), inline=limits)
def test_schedules_without_failures(seed: int, nodes: int, ops: int, blocks: int, inline: int) -> None:
    result = run(seed, SimConfig(nodes=nodes, ops_per_node=ops, blocks=blocks, inline_limit=inline))
    assert result.invalid_grants == 0 and result.crashes == 0


@_settings("crash")
@given(seed=seeds, nodes=node_counts, crashes=crash_points, delay=st.integers(0, 60), inline=limits)
def test_schedules_with_crashes(seed: int, nodes: int, crashes: tuple[int, ...], delay: int, inline: int) -> None:
    run(seed, SimConfig(nodes=nodes, ops_per_node=3, crash_steps=crashes, removal_delay=delay,
                        inline_limit=inline))


@_settings("restart")
@given(seed=seeds, nodes=node_counts, crashes=crash_points, delay=st.integers(0, 60), inline=limits)
def test_schedules_with_crashes_and_rejoins(seed: int, nodes: int, crashes: tuple[int, ...], delay: int,
                                            inline: int) -> None:
    run(seed, SimConfig(nodes=nodes, ops_per_node=3, crash_steps=crashes, removal_delay=delay,
                        inline_limit=inline, restart=True))


def test_simulation_is_deterministic_and_exercises_the_protocol() -> None:
    cfg = SimConfig(nodes=4, ops_per_node=4, crash_steps=(30, 90), restart=True, msgpack=True)
    first = run(1234, cfg)
    assert first == run(1234, cfg)
    totals = SimResult()
    for seed in range(60):
        r = run(seed, SimConfig(nodes=3, ops_per_node=4, crash_steps=(40,), restart=seed % 2 == 0))
        for name in vars(totals):
            setattr(totals, name, getattr(totals, name) + getattr(r, name))
    # The workload is not vacuous: caching, recovery and joins all happen.
    assert totals.cached_grants > 0 and totals.invalid_grants > 0 and totals.joins > 0
    assert totals.xids > 100 and totals.crashes == 60
