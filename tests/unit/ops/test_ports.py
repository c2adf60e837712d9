"""``free_port``'s range: ``MUHEAM_PORT_RANGE`` confines it (clusters side by side never pick each other's ports)."""

from __future__ import annotations

import pytest

from muheam.errors import ConfigError
from muheam.ops import procs


def test_free_ports_come_from_the_configured_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(procs.PORT_RANGE_ENV, "23000-23050")
    ports = {procs.free_port() for _ in range(20)}
    assert all(23000 <= p < 23050 for p in ports) and len(ports) == 20


@pytest.mark.parametrize("spec", ["23000", "a-b", "23050-23000", "80-2000", "60000-70000", "1-2-3"])
def test_a_malformed_range_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, spec: str) -> None:
    monkeypatch.setenv(procs.PORT_RANGE_ENV, spec)
    with pytest.raises(ConfigError, match="MUHEAM_PORT_RANGE"):
        procs.free_port()
