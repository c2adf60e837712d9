"""Every CLI spelling in README.md's command table is accepted: its command exists (``--help`` exits 0) and
every ``--flag`` it shows is an option of that command.  Operators' scripts use these spellings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from muheam.cli.app import cli

README = Path(__file__).resolve().parents[2] / "README.md"


def _spellings() -> list[str]:
    found: list[str] = []
    for line in README.read_text().splitlines():
        if not line.startswith("| `muheam"):
            continue
        first_cell = re.split(r"(?<!\\) \| ", line[2:], maxsplit=1)[0]
        found += re.findall(r"`(muheam [^`]+)`", first_cell)
    return found


SPELLINGS = _spellings()


def _command_path(spelling: str) -> list[str]:
    path: list[str] = []
    group = cli
    for word in spelling.split()[1:]:
        commands = getattr(group, "commands", {})
        if word not in commands:
            break
        path.append(word)
        group = commands[word]
    return path


def test_the_table_was_read() -> None:
    assert len(SPELLINGS) >= 25
    assert {"wal", "walmerge", "waldump", "bench", "get", "cluster"} <= {_command_path(s)[0] for s in SPELLINGS}


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_readme_spelling_is_accepted(spelling: str) -> None:
    path = _command_path(spelling)
    assert path, f"{spelling!r}: no such command"
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, (spelling, result.output)
    flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", spelling.replace("\\|", "|")))
    missing = [f for f in sorted(flags) if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", result.output)]
    assert not missing, f"{spelling!r}: 'muheam {' '.join(path)}' has no option {missing}"


def test_the_wal_family_maps_onto_walmerge_and_waldump() -> None:
    runner = CliRunner()
    for sub in ("merge", "follow", "subscribe", "verify", "dump"):
        assert runner.invoke(cli, ["wal", sub, "--help"]).exit_code == 0, sub
    assert "pg_waldump" in runner.invoke(cli, ["wal", "dump", "--help"]).output
    assert "--json" in runner.invoke(cli, ["bench", "kv", "--help"]).output
    assert "table|json" in runner.invoke(cli, ["bench", "kv", "--help"]).output
