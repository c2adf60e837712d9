"""Engines of several nodes on one shared directory, in one process: a cluster's storage without its processes,
for tests of the parts between them (ownership, consistent reads, catalog changes)."""

from __future__ import annotations

import itertools
from pathlib import Path

from muheam.engine import Engine, EngineConfig


def shared_dir(root: Path) -> Path:
    """``root/shared``, a shared directory an engine opens (``global/control`` present)."""
    shared = root / "shared"
    (shared / "global").mkdir(parents=True, exist_ok=True)
    (shared / "global" / "control").write_text("{}")
    return shared


def open_engines(shared: Path, *configs: EngineConfig) -> list[Engine]:
    """Nodes 1, 2, ... with these configs, on one Lamport counter: their WALs interleave in GLSN order as a
    cluster's do."""
    clock = itertools.count(1)
    return [Engine.open(shared, n, lamport=lambda: next(clock), config=c) for n, c in enumerate(configs, 1)]
