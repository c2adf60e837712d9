"""Bad option values are usage errors (exit 2) naming the problem, never an internal error or a command that
runs for ever: non-finite seconds, endpoints ZeroMQ cannot use, unknown WAL record kinds.  Found by a
black-box tester (NaN slipped through ``click.FloatRange``; ``wal subscribe garbage`` was a ZMQError)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest

from muheam.cli import app
from muheam.cli.common import FiniteRange, TcpEndpoint
from muheam.ops.procs import free_port
from tests.unit.test_cli_errors import run


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    """A one-node config whose etcd and node are not running, so nothing a bug reaches can hang."""
    (tmp_path / "shared").mkdir()
    path = tmp_path / "muheam.toml"
    path.write_text(f'shared_dir = "shared"\nrun_dir = "{tmp_path}"\netcd_endpoints = ["http://127.0.0.1:{free_port()}"]\n'
                    f'[nodes.1]\npeer_endpoint = "tcp://127.0.0.1:{free_port()}"\n'
                    f'client_endpoint = "tcp://127.0.0.1:{free_port()}"\n')
    return path


@pytest.mark.parametrize("args", [
    ["list", "--watch", "-1"], ["list", "--watch", "nan"], ["list", "--watch", "inf"], ["list", "--watch", "0"],
    ["list", "--watch", "1e999"], ["top", "--interval", "nan"], ["watch", "--timeout", "nan"],
    ["watch", "--timeout", "inf"], ["walmerge", "--follow", "--out", "OUT", "--duration", "nan"],
    ["wal", "follow", "--out", "OUT", "--poll-interval", "nan"], ["node", "stop", "--node-id", "1", "--timeout", "inf"],
])
def test_non_finite_or_out_of_range_seconds_are_usage_errors(args: list[str], cfg: Path, tmp_path: Path,
                                                             capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    code, _, err = run([*args, "-c", str(cfg)], capsys, monkeypatch)
    assert code == 2, err
    assert "Invalid value for" in err and "internal error" not in err
    assert "finite" in err or "is not in the range" in err
    assert not (tmp_path / "out").exists()


def test_list_watch_has_the_minimum_of_top_interval(cfg: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run(["list", "--watch", "0.05", "-c", str(cfg)], capsys, monkeypatch)
    assert code == 2 and "0.1<=x" in err


def test_every_float_option_of_the_cli_refuses_nan() -> None:
    """No float option is left to ``click.FloatRange`` or ``type=float``, both of which take NaN."""
    def walk(cmd: click.Command, path: str) -> list[str]:
        found = [f"{path} {p.name}" for p in cmd.params
                 if isinstance(p.type, click.types.FloatParamType) and not isinstance(p.type, FiniteRange)]
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                found += walk(sub, f"{path} {name}")
        return found

    assert walk(app.cli, "muheam") == []
    floats = FiniteRange(0, 10)
    for bad in ("nan", "NaN", "inf", "-inf", "1e999"):
        with pytest.raises(click.BadParameter, match="finite"):
            floats.convert(bad, None, None)
    assert floats.convert("2.5", None, None) == 2.5


@pytest.mark.parametrize("args", [
    ["wal", "subscribe", "garbage", "--out", "OUT"],
    ["wal", "subscribe", "tcp://127.0.0.1:99999", "--out", "OUT", "--duration", "1"],
    ["wal", "subscribe", "tcp://127.0.0.1:0", "--out", "OUT", "--duration", "1"],
    ["walmerge", "--subscribe", "tcp://:5000", "--out", "OUT", "--duration", "1"],
    ["wal", "follow", "--out", "OUT", "--publish", "garbage", "--duration", "1"],
    ["replicate", "--to", "host=127.0.0.1", "--subscribe", "garbage", "--duration", "1"],
])
def test_a_bad_endpoint_is_a_usage_error(args: list[str], tmp_path: Path, capsys: Any,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    code, out, err = run(args, capsys, monkeypatch)
    assert code == 2, out + err
    assert "tcp://HOST:PORT" in err and "1 to 65535" in err and "internal error" not in err
    assert "copied 0 records" not in out and not (tmp_path / "out").exists()


def test_a_good_endpoint_is_taken_as_written() -> None:
    assert TcpEndpoint().convert("tcp://127.0.0.1:5701", None, None) == "tcp://127.0.0.1:5701"
    assert TcpEndpoint().convert("tcp://[::1]:65535", None, None) == "tcp://[::1]:65535"


def _shared_with_wal(tmp_path: Path) -> Path:
    shared = tmp_path / "shared"
    (shared / "wal" / "node-1").mkdir(parents=True)
    return shared


def test_wal_dump_unknown_kind_is_a_usage_error_listing_the_kinds(tmp_path: Path, capsys: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    shared = _shared_with_wal(tmp_path)
    for spelling in (["wal", "dump"], ["waldump"]):
        code, _, err = run([*spelling, "--node-id", "1", "--kind", "NOPE", "--shared-dir", str(shared)], capsys,
                           monkeypatch)
        assert code == 2 and "unknown record kind 'NOPE'" in err and "COMMIT" in err and "HEAP_INSERT" in err, err
    code, _, err = run(["wal", "dump", "--node-id", "1", "--limit", "-1", "--shared-dir", str(shared)], capsys,
                       monkeypatch)
    assert code == 2 and "--limit" in err and "internal error" not in err


def test_wal_dump_of_a_node_without_wal_names_where_it_looked(tmp_path: Path, capsys: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    shared = _shared_with_wal(tmp_path)
    code, _, err = run(["wal", "dump", "--node-id", "9", "--shared-dir", str(shared)], capsys, monkeypatch)
    assert code == 1, err
    assert "node 9 has no WAL" in err and str(shared / "wal" / "node-9") in err
    assert "nodes with a WAL there: 1" in err and "--node-id" in err


def test_node_id_help_says_the_default_is_the_lowest_node_not_stopped(capsys: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = run(["scan", "--help"], capsys, monkeypatch)
    assert code == 0
    text = " ".join(out.split())
    assert "lowest configured node id)" not in text and "not known to be stopped" in text
