"""How the suite shares two pytest-xdist workers (``-n 2 --dist loadscope`` in ``pyproject.toml``; ``-n 0`` runs
everything in one process).

The tests that start real processes form two work units, each run in series on one worker: ``cluster``
(``tests/integration/``) and ``faults`` (``tests/faults/``).  Their timings (2 s leases, fence deadlines, detection
within a TTL) assume a machine that is not saturated, and one cluster per unit keeps the load to at most two
clusters at once on two cores.  The unit tests (in-process, mostly CPU) run one module per unit so module-scoped
fixtures are built once.  Scopes go to the workers in collection order, not by size (``pytest_collection_modifyitems``):
the integration tests to one worker, the fault suites to the other, then the unit modules to whichever runs out of
work first.  A worker that reaches the unit tests lowers its own CPU priority (``nice`` 10; no cluster test runs
after them on that worker): the simulators' CPU-bound minutes must not starve the other worker's cluster (a node
that got no CPU for its lease renewals fenced itself in the middle of a bank test).

Each worker picks free ports from its own share of the range (``pytest_configure``), so the two clusters never
pick each other's ports.  Why two process units: with all of them in one, that worker ran for the whole CI (about
1,200 s of tests, over the 20-minute budget) while the other finished the unit tests in 150 s and waited.

The grouping is a scheduler (xdist's ``pytest_xdist_make_scheduler`` hook) rather than ``xdist_group`` marks:
``--dist loadgroup`` renames node ids, which pytest 9.2 no longer lets a plugin do, so the marks had no effect."""

from __future__ import annotations

import os
from typing import Any

import pytest

from muheam.ops import procs

UNITS = {"tests/integration/": "cluster", "tests/faults/": "faults"}


def scope_of(nodeid: str) -> str:
    """The work unit of a test: ``cluster`` or ``faults`` for the tests that start processes, else its module."""
    path = nodeid.split("::", 1)[0]
    return next((unit for folder, unit in UNITS.items() if path.startswith(folder)), path)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # collection order (above), not the largest scope first

    class ClusterTestsInSeries(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    return ClusterTestsInSeries(config, log)


def pytest_configure(config: pytest.Config) -> None:
    """Each worker picks ports from its own share of the range (``MUHEAM_PORT_RANGE``, inherited by every process
    its tests start): a fault test restarts nodes and etcd on the ports in its cluster's config, and the other
    worker's ``cluster up`` must not have taken one meanwhile."""
    worker = getattr(config, "workerinput", None)
    if worker is None or procs.PORT_RANGE_ENV in os.environ:
        return
    index, count = int(str(worker["workerid"]).removeprefix("gw")), int(worker["workercount"])
    low, high = procs.port_range()
    share = (high - low) // count
    os.environ[procs.PORT_RANGE_ENV] = f"{low + index * share}-{low + (index + 1) * share}"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The integration tests, then the fault suites, then the unit tests (module docstring); otherwise collection
    order (stable)."""
    order = {"cluster": 0, "faults": 1}
    items.sort(key=lambda item: order.get(scope_of(item.nodeid), 2))


_niced = False


def pytest_runtest_setup(item: pytest.Item) -> None:
    """The first unit test on a worker lowers the worker's CPU priority for the rest of its run (module docstring);
    not without xdist (``-n 0``: cluster tests may follow)."""
    global _niced
    if _niced or not hasattr(item.config, "workerinput") or scope_of(item.nodeid) in UNITS.values():
        return
    _niced = True
    os.nice(10)
