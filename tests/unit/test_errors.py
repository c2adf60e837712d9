"""The one error hierarchy: walmerge's errors reach the operator as one line with an exit code, and there is one
``SerializationFailure``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from muheam import client, errors
from muheam.engine import SerializationFailure as EngineSerializationFailure
from walmerge import WalWriter
from walmerge.errors import RecordTooLarge, WalCorruption, WalError, WalWriteError


def test_one_serialization_failure() -> None:
    assert EngineSerializationFailure is errors.SerializationFailure
    wire = client.SerializationFailure("SerializationFailure", "row 3 changed")
    assert isinstance(wire, errors.SerializationFailure) and isinstance(wire, client.ClientError)
    assert wire.code == "SerializationFailure" and str(wire) == "row 3 changed"


@pytest.mark.parametrize("exc, kind, code", [
    (WalCorruption("bad crc", path=Path("/x"), offset=8, lsn=64), errors.WalUnusable, 2),
    (RecordTooLarge("too big"), errors.WalUnusable, 2),
    (WalWriteError("disk full", path=Path("/x"), lsn=64, errno=28), errors.WalWriteFailed, 1),
])
def test_walmerge_errors_have_an_operator_form(exc: WalError, kind: type[errors.MuheamError], code: int) -> None:
    got = errors.operator_error(exc)
    assert isinstance(got, kind) and got.exit_code == code and str(got) == str(exc)
    assert errors.operator_error(KeyError("bug")) is None


def test_cli_reports_a_wal_error_in_one_line(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    with WalWriter(shared / "wal" / "node-1", node_id=1, system_id=7, epoch=1, segment_size=1 << 16) as w:
        w.append(49, b"", lamport=1)
    out = tmp_path / "out"
    run = [sys.executable, "-m", "muheam", "walmerge", "--shared-dir", str(shared), "--out", str(out)]
    assert subprocess.run(run, capture_output=True, text=True).returncode == 0
    again = subprocess.run(run, capture_output=True, text=True)  # into a directory that holds segments
    assert again.returncode == 2, again.stderr
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("muheam: error: ") and "already holds" in lines[0]
