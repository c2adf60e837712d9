"""Errors a new user meets without a cluster, through the real ``main`` (issue 17, item 9): one line naming the
problem and the fix, the documented exit code, and at once rather than after a timeout."""

from __future__ import annotations

import errno
import os
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from muheam.cli import app
from muheam.cli.common import dumps
from muheam.ops.procs import free_port


def run(args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["muheam", *args])
    monkeypatch.delenv("MUHEAM_CONFIG", raising=False)
    monkeypatch.setattr(app.wal, "leave", lambda code: sys.exit(code))
    with pytest.raises(SystemExit) as info:
        app.main()
    out, err = capsys.readouterr()
    code = info.value.code
    return int(code) if isinstance(code, int) else 1, out, err


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    """A one-node config whose node is not running (nothing listens on its client port)."""
    (tmp_path / "shared").mkdir()
    path = tmp_path / "muheam.toml"
    path.write_text(f'shared_dir = "shared"\nrun_dir = "{tmp_path}"\n[nodes.1]\npeer_endpoint = '
                    f'"tcp://127.0.0.1:{free_port()}"\nclient_endpoint = "tcp://127.0.0.1:{free_port()}"\n')
    return path


def test_list_without_a_config_file_says_so(tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MUHEAM_SHARED_DIR", raising=False)
    code, _, err = run(["list"], capsys, monkeypatch)
    assert code == 2 and "no config file" in err and "-c DIR/muheam.toml" in err and "shared_dir" not in err


def test_key_and_values_out_of_int64_are_usage_errors(cfg: Path, capsys: Any, monkeypatch: Any) -> None:
    code, _, err = run(["get", "t", str(1 << 63), "-c", str(cfg)], capsys, monkeypatch)
    assert code == 2 and "9223372036854775807" in err and "internal error" not in err
    code, _, err = run(["put", "t", "1", "v=" + str(1 << 64), "-c", str(cfg)], capsys, monkeypatch)
    # the table's columns come from the node, which is not running: a refused connection, not an overflow
    assert code == 1 and "internal error" not in err


def test_negative_key_is_an_argument_and_a_dead_node_fails_at_once(cfg: Path, capsys: Any, monkeypatch: Any) -> None:
    t0 = time.monotonic()
    code, _, err = run(["get", "t", "-5", "-c", str(cfg)], capsys, monkeypatch)
    assert code == 1 and "refused the connection" in err and "No such option" not in err, err
    assert time.monotonic() - t0 < 3
    code, _, err = run(["get", "t", "-5", "--nod-id", "1", "-c", str(cfg)], capsys, monkeypatch)
    assert code == 2 and "No such option '--nod-id'" in err
    (cfg.parent / "run").mkdir()
    (cfg.parent / "run" / "node-1.pid").write_text("999999999")
    t0 = time.monotonic()
    code, _, err = run(["scan", "t", "-c", str(cfg)], capsys, monkeypatch)
    assert code == 1 and "node 1 is not running" in err and "node-1.pid" in err and "--node-id" in err, err
    assert time.monotonic() - t0 < 1


def test_json_output_is_strict() -> None:
    text = dumps([{"key": 1, "f": float("nan")}, {"key": 2, "f": float("inf"), "g": [float("-inf"), 1.5]}])
    assert json.loads(text) == [{"key": 1, "f": "NaN"}, {"key": 2, "f": "Infinity", "g": ["-Infinity", 1.5]}]
    assert "NaN," not in text and "Infinity]" not in text


def _merge(tmp_path: Path, out: Path, capsys: Any, monkeypatch: Any, *extra: str) -> tuple[int, str, str]:
    shared = tmp_path / "shared"
    (shared / "wal" / "node-1").mkdir(parents=True, exist_ok=True)  # (a directory without any is refused first)
    return run(["walmerge", "--shared-dir", str(shared), "--out", str(out), *extra], capsys, monkeypatch)


def test_walmerge_out_that_is_not_new_or_empty_is_refused(tmp_path: Path, capsys: Any, monkeypatch: Any) -> None:
    others = tmp_path / "others"
    others.mkdir()
    (others / "notes.txt").write_text("x")
    code, _, err = _merge(tmp_path, others, capsys, monkeypatch)
    assert code == 2 and "not empty" in err and "notes.txt" in err
    segs = tmp_path / "segs"
    segs.mkdir()
    (segs / "0000000001000000").write_bytes(b"")
    for spelling in (["walmerge"], ["wal", "merge"]):
        monkeypatch.setattr(sys, "argv", ["muheam"])
        code, _, err = run([*spelling, "--shared-dir", str(tmp_path / "shared"), "--out", str(segs)], capsys,
                           monkeypatch)
        assert code == 2 and "already holds 1 WAL segment" in err, err
    (tmp_path / "afile").write_text("x")
    code, _, err = _merge(tmp_path, tmp_path / "afile" / "out", capsys, monkeypatch)
    assert code == 2 and f"{tmp_path / 'afile'} is a file" in err and len(err.strip().splitlines()) == 1


def test_walmerge_out_read_only_or_full_is_one_line(tmp_path: Path, capsys: Any, monkeypatch: Any) -> None:
    import os

    real_open = os.open

    def read_only(path: Any, flags: int, *a: Any) -> int:
        if str(path).endswith(".muheam-write-probe"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *a)

    with monkeypatch.context() as m:
        m.setattr(os, "open", read_only)
        code, _, err = _merge(tmp_path, tmp_path / "ro", capsys, monkeypatch)
    assert code == 2 and "cannot write in" in err and "Read-only file system" in err and "ro" in err

    def full(*a: Any, **k: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "full" / "0000000000000000"))

    import walmerge.merge  # noqa: F401 - the module, which the package's merge() shadows

    monkeypatch.setattr(sys.modules["walmerge.merge"], "merge", full)
    code, _, err = _merge(tmp_path, tmp_path / "full", capsys, monkeypatch)
    assert code == 1 and "No space left on device" in err and str(tmp_path / "full") in err
    assert "internal error" not in err and len(err.strip().splitlines()) == 1


def test_verify_of_a_missing_merged_dir_says_it_does_not_exist(tmp_path: Path, capsys: Any, monkeypatch: Any) -> None:
    code, _, err = run(["walmerge", "--shared-dir", str(tmp_path), "--verify", "--merged", str(tmp_path / "nope")],
                       capsys, monkeypatch)
    assert code == 2 and "does not exist" in err and "no WAL segments" not in err


@pytest.mark.parametrize("args, needle", [
    (["replicate", "--to", "host=127.0.0.1"], "-c CONFIG"),
    (["replicate", "--to", "host=127.0.0.1", "--subscribe", "tcp://127.0.0.1:1", "--name", "Bad Name"], "--name"),
])
def test_replicate_usage_errors_name_the_fix(args: list[str], needle: str, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no ./muheam.toml
    code, _, err = run(args, capsys, monkeypatch)
    assert code == 2 and needle in err and "Traceback" not in err


def test_etcd_unreachable_says_what_grpc_saw(tmp_path: Path) -> None:
    """Two CI failures showed a client refused by an etcd that was serving others; the message said only
    ``ConnectionFailedError``, so why could not be told afterwards.  It now carries gRPC's own account."""
    from muheam.errors import EtcdUnavailable
    from muheam.membership.etcd import EtcdBackend

    port = free_port()
    backend = EtcdBackend([f"http://127.0.0.1:{port}"], timeout=1.0)
    try:
        with pytest.raises(EtcdUnavailable) as info:
            backend.members("c")
    finally:
        backend.close()
    assert "UNAVAILABLE" in str(info.value) and f"127.0.0.1:{port}" in str(info.value)
    assert "refused" in str(info.value).lower(), str(info.value)


def test_a_call_failed_while_the_endpoint_is_held_back_names_the_failure_before_it(tmp_path: Path) -> None:
    """pyetcd fails calls without trying for half a second after one failed; their message named only
    ``NoServerAvailableError``."""
    from muheam.errors import EtcdUnavailable
    from muheam.membership.etcd import EtcdBackend

    backend = EtcdBackend([f"http://127.0.0.1:{free_port()}"], timeout=1.0)
    try:
        with pytest.raises(EtcdUnavailable):
            backend.members("c")
        with pytest.raises(EtcdUnavailable) as info:
            backend.members("c")  # at once: within pyetcd's 0.5 s
    finally:
        backend.close()
    assert "NoServerAvailableError, held back after" in str(info.value) and "refused" in str(info.value).lower()


def test_a_full_disk_without_a_path_says_where_and_what_to_do() -> None:
    """A write on a descriptor (``os.write``, ``os.pwrite``) raises ENOSPC without a file name: a node on a full
    disk died saying only "No space left on device" (a black-box test)."""
    from muheam.cli.app import os_error_text

    def write_segment() -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    try:
        write_segment()
    except OSError as exc:
        text = os_error_text(exc)
    assert "No space left on device" in text and "file system is full" in text and "write_segment" in text, text
    named = OSError(errno.EACCES, "Permission denied", "/x/y")
    assert os_error_text(named) == "/x/y: Permission denied"


def test_walmerge_of_a_directory_without_wal_is_refused_not_an_empty_archive(tmp_path: Path, capsys: Any,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A mistyped --shared-dir (the run directory, an empty one) merged 0 records into a new archive and exited
    0; --verify of the same already said it was unusable (a black-box test)."""
    (tmp_path / "empty").mkdir()
    code, out, err = run(["walmerge", "--shared-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "m")],
                         capsys, monkeypatch)
    assert code == 2 and "no node WAL directories" in err and str(tmp_path / "empty") in err, (out, err)
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())
