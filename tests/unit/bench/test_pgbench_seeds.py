"""``muheam bench pgbench`` starts one pgbench per node at once; each must draw its own random numbers.

pgbench seeds itself from a microsecond clock, so two processes started within the same microsecond draw the
same keys: CI once saw a 3-node run end on a duplicate history key in the first transaction of one process
(XID 51, a node's very first, so not a retry).  Given the same seed, two processes reproduce that error on a
real cluster; the bench therefore passes each its own ``--random-seed``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from muheam.bench import pgbench


class Recorded:
    commands: list[list[str]] = []

    def __init__(self, cmd: list[str], **_kw: Any) -> None:
        self.commands.append(cmd)


def test_each_pgbench_gets_its_own_seed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(pgbench.subprocess, "Popen", Recorded)
    monkeypatch.setattr(pgbench.pgbase, "_bin_dir", lambda: tmp_path)
    for port in range(5):
        pgbench._pgbench(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", tmp_path / "s.sql", 1, 1)
    seeds = [arg for cmd in Recorded.commands for arg in cmd if arg.startswith("--random-seed=")]
    assert len(seeds) == 5 and len(set(seeds)) == 5
    assert all(int(s.split("=", 1)[1]) >= 0 for s in seeds)
