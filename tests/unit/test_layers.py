"""The layer contracts of ``pyproject.toml`` (import-linter) hold, and a forbidden import breaks them.

Which folder may import which is the architecture (docs/architecture.md, "Packages"); a module that imports
against it fails this test, and so CI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"]


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LINT, "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root,
                          capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(root), "PATH": ""})


def test_every_layer_contract_is_kept() -> None:
    proc = lint(ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_a_forbidden_import_breaks_its_contract(tmp_path: Path) -> None:
    """The storage layer importing the cluster protocols (as it once did for one constant) is refused."""
    for name in ("muheam", "walmerge", "locking"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    page = tmp_path / "muheam" / "storage" / "page.py"
    page.write_text(page.read_text() + "\nfrom muheam.cluster import txstate  # noqa: E402,F401\n")
    proc = lint(tmp_path)
    assert proc.returncode != 0
    assert "storage imports nothing above it BROKEN" in proc.stdout
    assert "muheam.storage.page -> muheam.cluster.txstate" in proc.stdout
