"""The deterministic cluster simulator (``muheam.sim``): seeded schedules of the whole node's pure cores.

``test_seeded_schedules`` runs ``MUHEAM_SIM_EXAMPLES`` schedules (default 10,000, the same variable and meaning as
``tests/unit/locking/test_locking_sim.py``: the total number of schedules), each with a configuration drawn from its
seed, every fault kind enabled and every fix on, and prints what it explored (``pytest -s``).  The long run:

    MUHEAM_SIM_EXAMPLES=1000000 .venv/bin/python -m pytest tests/unit/sim -q -s

or split over two processes with ``MUHEAM_SIM_FIRST_SEED`` (``0`` and ``500000`` with 500,000 each).

The hazard tests switch one issue-16 fix off, search seeds with the faults that hazard needs until the simulator
finds a violation, shrink the schedule and print seed, configuration and length; then the same search with the
fix on must pass.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import replace

import pytest

from muheam.sim.cluster import FAULTS, Explored, SimConfig, Switches, Violation, run, shrink

TOTAL = int(os.environ.get("MUHEAM_SIM_EXAMPLES", "10000"))
FIRST = int(os.environ.get("MUHEAM_SIM_FIRST_SEED", "0"))  # to split a long run over processes


def config_for(seed: int) -> SimConfig:
    """A small schedule shape drawn from the seed (small keeps 10,000 of them within CI's time)."""
    rng = random.Random(seed ^ 0x5EED)
    return SimConfig(nodes=rng.randint(2, 4), txns=rng.randint(1, 2), chains=rng.randint(1, 2),
                     faults=rng.randint(0, 3), fault_window=rng.randint(40, 150), lazy_outcome=rng.random() < 0.5)


def explore(seeds: range) -> Explored:
    total = Explored()
    for seed in seeds:
        total.add(run(seed, config_for(seed)))
    return total


def test_seeded_schedules() -> None:
    t0 = time.monotonic()
    total = explore(range(FIRST, FIRST + TOTAL))
    wall = time.monotonic() - t0
    print(f"\ncluster sim: {total.schedules} schedules, {total.steps} steps, {total.frames} frames, "
          f"{total.commits_acked} commits acknowledged, {total.snapshots_checked} snapshots checked, "
          f"{total.invalid_grants} invalid grants, {total.recoveries} recoveries, faults {dict(total.faults)}, "
          f"{wall:.1f} s")
    assert total.schedules == TOTAL
    if TOTAL >= 1000:  # the workload is not vacuous: every fault kind, recoveries and invalid grants happen
        assert set(total.faults) == set(FAULTS) and total.recoveries > 0 and total.invalid_grants > 0
        assert total.commits_acked > TOTAL


def test_deterministic() -> None:
    cfg = SimConfig(nodes=4, txns=2, faults=3)
    assert run(7, cfg) == run(7, cfg)


# (switch, fault kinds the hazard needs, schedule shape)
HAZARDS = {
    "a_clock_floor": ("fix_clock_floor", ("crash",), SimConfig(nodes=3, txns=3, chains=1, faults=2)),
    "b_ext_floor": ("fix_ext_floor", ("crash",), SimConfig(nodes=3, txns=3, chains=1, faults=2)),
    "c_fence": ("fix_fence", ("pause",), SimConfig(nodes=3, txns=3, chains=1, faults=2)),
    "d_peer_links": ("fix_peer_links", ("reset",), SimConfig(nodes=3, txns=2, chains=1, faults=2)),
    "e_partition": ("fix_partition", ("cut",), SimConfig(nodes=3, txns=2, chains=1, faults=2)),
    "h_retake": ("fix_retake", ("reset",), SimConfig(nodes=3, txns=3, chains=1, faults=1, lazy_outcome=True)),
    "f_claim_retry": ("fix_claim_retry", ("claim_fail", "crash"), SimConfig(nodes=3, txns=2, chains=1, faults=3)),
    "g_learn_outcomes": ("fix_learn_outcomes", ("stop", "join"), SimConfig(nodes=3, txns=3, chains=1, faults=3)),
    "i_sync_loss": ("fix_sync_loss", ("crash", "join"), SimConfig(nodes=2, txns=2, chains=1, faults=3)),
}
SEARCH = 3000      # seeds tried with the fix off before giving up
CHECK = int(os.environ.get("MUHEAM_SIM_HAZARD_CHECK", "1000"))  # schedules with the same faults and the fix on


@pytest.mark.parametrize("hazard", sorted(HAZARDS))
def test_hazard_found_with_its_fix_off(hazard: str) -> None:
    switch, kinds, shape = HAZARDS[hazard]
    broken = replace(shape, fault_kinds=kinds, switches=Switches(**{switch: False}))
    for seed in range(SEARCH):
        try:
            run(seed, broken)
        except Violation:
            small, step, why = shrink(seed, broken)
            print(f"\n{hazard}: {switch}=False fails at seed {seed}; shrunk to nodes={small.nodes} txns={small.txns} "
                  f"chains={small.chains} faults={small.faults} window={small.fault_window}, "
                  f"violation at step {step}: {why}")
            break
    else:
        pytest.fail(f"{switch}=False: no violation in {SEARCH} schedules")
    fixed = replace(shape, fault_kinds=kinds)
    for seed in range(CHECK):
        run(seed, fixed)
