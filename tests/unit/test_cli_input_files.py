"""Bad files and passwords: a config file that is not UTF-8, a ``--shared-dir`` that is not a cluster's, a
password SCRAM cannot take or no terminal to ask for one.  Each is one line naming the problem and the fix,
never an internal error (UnicodeDecodeError, ScramException) or a silently wrong answer ("no SQL users")."""

from __future__ import annotations

import getpass
import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from muheam import config as config_mod
from muheam.errors import ConfigError
from tests.unit.test_cli_errors import run


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path, capsys: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "muheam.toml"
    bad.write_bytes(b'shared_dir = "x"\n\xff\xfe\n')
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        config_mod.load(bad, require_shared_dir=False)
    code, _, err = run(["list", "-c", str(bad)], capsys, monkeypatch)
    assert code == 2 and str(bad) in err and "not UTF-8 text" in err and "0xff" in err
    assert "internal error" not in err and len(err.strip().splitlines()) == 1


def test_a_utf8_config_file_is_read_as_utf8(tmp_path: Path) -> None:
    good = tmp_path / "muheam.toml"
    good.write_bytes(b'shared_dir = "x"\nfence_command = "echo \xc3\xa9"\n')
    assert config_mod.load(good, require_shared_dir=False).fence_command == "echo \u00e9"


@pytest.fixture
def shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An initialised shared directory (what the user commands need: ``global/control``)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MUHEAM_SHARED_DIR", raising=False)
    d = tmp_path / "shared"
    (d / "global").mkdir(parents=True)
    (d / "global" / "control").write_text(json.dumps({"cluster_id": "test"}))
    return d


def _stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    """stdin as a non-UTF-8 locale's (or UTF-8 mode's) text stream gives it: undecodable bytes as surrogates."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8",
                                                       errors="surrogateescape"))


@pytest.mark.parametrize("data, needle", [
    (b"\xff\xfe\n", "not UTF-8 text"),
    (b"tab\there\n", "control characters"),
    (b"bell\x07\n", "control characters"),
])
def test_a_password_scram_cannot_take_is_a_usage_error(data: bytes, needle: str, shared: Path, capsys: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _stdin(monkeypatch, data)
    code, _, err = run(["user", "add", "carol", "--password-stdin", "--shared-dir", str(shared)], capsys,
                       monkeypatch)
    assert code == 2 and needle in err and "internal error" not in err, err
    assert not (shared / "global" / "sql_users.json").exists()


def test_a_utf8_password_on_stdin_is_taken(shared: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _stdin(monkeypatch, "w\u00f6nderland\r\n".encode())
    code, out, err = run(["user", "add", "carol", "--password-stdin", "--shared-dir", str(shared)], capsys,
                         monkeypatch)
    assert code == 0 and "user carol added" in out, err
    from muheam.sql.auth import load_users

    assert load_users(shared)["carol"]["mechanism"] == "SCRAM-SHA-256"


def test_no_terminal_for_the_prompt_says_to_use_password_stdin(shared: Path, capsys: Any,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """getpass without a /dev/tty warns (GetPassWarning) and falls back to stdin; simulate that fallback."""
    monkeypatch.setattr(getpass, "getpass", getattr(getpass, "fallback_getpass"))  # not in typeshed
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, _, err = run(["user", "add", "carol", "--shared-dir", str(shared)], capsys, monkeypatch)
    assert code == 2 and "no terminal" in err and "--password-stdin" in err, err
    assert "GetPassWarning" not in err and "Warning" not in err and "aborted" not in err


@pytest.mark.parametrize("args", [["user", "list"], ["user", "add", "eve", "--password-stdin"],
                                  ["user", "remove", "eve"]])
def test_user_commands_refuse_a_directory_that_is_not_a_shared_directory(args: list[str], tmp_path: Path,
                                                                        capsys: Any,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "some" / "dir"
    other.mkdir(parents=True)
    _stdin(monkeypatch, b"secret\n")
    code, out, err = run([*args, "--shared-dir", str(other)], capsys, monkeypatch)
    assert code == 1, out + err
    assert f"{other} is not a MUHEAM shared directory (no global/control)" in err
    assert "no SQL users" not in out and ".tmp" not in err
    assert list(other.iterdir()) == []
