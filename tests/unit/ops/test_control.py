"""``global/control``: the fields a node trusts are checked when it is read (a black-box test changed
``format`` to 99 and ``block_size`` to "abc", and ``cluster up`` went ahead)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from muheam.errors import ClusterStateError
from muheam.ops import control
from muheam.storage import BLOCK_SIZE


def _shared(tmp_path: Path, **changes: object) -> Path:
    shared = tmp_path / "shared"
    control.create_layout(shared, control.new_identity("c", shared))
    data = json.loads(control.control_path(shared).read_text())
    data.update(changes)
    control.control_path(shared).write_text(json.dumps(data))
    return shared


def test_a_control_file_as_written_is_read(tmp_path: Path) -> None:
    assert control.read_control(_shared(tmp_path))["cluster_name"] == "c"  # type: ignore[index]
    assert control.BLOCK_SIZE == BLOCK_SIZE  # the pages the data files hold


@pytest.mark.parametrize("changes, words", [
    ({"format": 99}, "format 99"), ({"format": "1"}, "format '1'"), ({"format": True}, "format True"),
    ({"block_size": "abc"}, "block_size 'abc'"), ({"block_size": 4096}, "block_size 4096"),
    ({"cluster_id": 7}, "no cluster_id"),
])
def test_a_control_file_this_version_cannot_trust_is_refused_by_name(tmp_path: Path, changes: dict[str, object],
                                                                     words: str) -> None:
    shared = _shared(tmp_path, **changes)
    with pytest.raises(ClusterStateError) as info:
        control.read_control(shared)
    assert words in str(info.value) and str(control.control_path(shared)) in str(info.value), str(info.value)
