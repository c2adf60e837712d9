"""How the suite shares two pytest-xdist workers (``-n 2 --dist loadscope`` in ``pyproject.toml``; ``-n 0`` runs
everything in one process).

Every test that starts real processes (``tests/integration/``, ``tests/faults/``) is one work unit, ``cluster``,
so those tests still run one after another on one worker: their timings (2 s leases, fence deadlines, detection
within a TTL) assume that no second cluster competes for the cores.  The unit tests (in-process, mostly CPU) run
beside them on the other worker, one module per unit so module-scoped fixtures are built once.  Within the unit
the integration tests run before the fault suites (``pytest_collection_modifyitems``), so the heaviest fault loads
do not overlap the CPU-bound unit simulators, which run first on the other worker.

The grouping is a scheduler (xdist's ``pytest_xdist_make_scheduler`` hook) rather than ``xdist_group`` marks:
``--dist loadgroup`` renames node ids, which pytest 9.2 no longer lets a plugin do, so the marks had no effect."""

from __future__ import annotations

from typing import Any

import pytest

CLUSTER_DIRS = ("tests/integration/", "tests/faults/")


def scope_of(nodeid: str) -> str:
    """The work unit of a test: ``cluster`` for everything that starts processes, else its module."""
    path = nodeid.split("::", 1)[0]
    return "cluster" if path.startswith(CLUSTER_DIRS) else path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ClusterTestsInSeries(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    return ClusterTestsInSeries(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The fault suites after the integration tests (module docstring); otherwise collection order (stable)."""
    items.sort(key=lambda item: "/faults/" in f"/{item.nodeid.split('::', 1)[0]}")
