"""The embedded etcd failing at start: the operator is told why in one sentence where it is known."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from muheam.errors import EtcdUnavailable
from muheam.ops.etcd_server import EtcdServer


def test_a_full_disk_at_etcds_start_is_named_not_shown_as_a_go_panic(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """On a full file system etcd panics at start; ``cluster up`` showed the tail of the Go stack (a black-box
    test).  A stand-in etcd on PATH prints what etcd prints there and exits."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "etcd"
    fake.write_text("#!/bin/sh\necho '{\"level\":\"panic\",\"msg\":\"failed to open database\",\"error\":"
                    "\"write /x/member/snap/db: no space left on device\"}'\necho 'goroutine 1 [running]:'\n"
                    "echo 'main.main()'\nexit 2\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    server = EtcdServer(tmp_path / "etcd" / "data", "http://127.0.0.1:1", "http://127.0.0.1:2")
    with pytest.raises(EtcdUnavailable) as info:
        server.start(timeout=10)
    assert "is full" in str(info.value) and str(server.data_dir) in str(info.value), str(info.value)
    assert "goroutine" not in str(info.value)
