"""The shared directory's layout and its control file, ``global/control``.

The control file is the shared directory's identity card: which cluster it belongs to, its block size, and
(later) the checkpoint pointer.  It is written only by the cluster startup/shutdown protocol, under an etcd lock,
and always atomically (temp file, fsync, rename, fsync of the directory), so no two nodes stomp on it.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from muheam.errors import ClusterStateError

FORMAT_VERSION = 1
BLOCK_SIZE = 8192
SUBDIRS = ("global", "base", "xact", "wal")


def control_path(shared: Path) -> Path:
    return shared / "global" / "control"


def new_identity(cluster_name: str, shared: Path, block_size: int = BLOCK_SIZE) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "cluster_name": cluster_name,
        "cluster_id": str(uuid.uuid4()),
        "block_size": block_size,
        "created_at": time.time(),
        "shared_dir": str(shared),
    }


def read_control(shared: Path) -> dict[str, Any] | None:
    """The control data, or None when the directory holds no cluster; raise when it is unreadable."""
    path = control_path(shared)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ClusterStateError(f"cannot read {path}: {exc.strerror}; check permissions and the mount") from None
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or not isinstance(data.get("cluster_id"), str):
            raise ValueError("no cluster_id")
    except ValueError as exc:
        raise ClusterStateError(
            f"{path} is damaged ({exc}); restore it from a backup — do not delete it while data files exist"
        ) from None
    fmt, block = data.get("format"), data.get("block_size")
    if not isinstance(fmt, int) or isinstance(fmt, bool) or not 1 <= fmt <= FORMAT_VERSION:
        raise ClusterStateError(
            f"{path} has format {fmt!r}; this version of MUHEAM reads format 1 to {FORMAT_VERSION}: use the "
            "version that made the cluster (a newer one), or restore the file from a backup if it was changed")
    if block != BLOCK_SIZE or isinstance(block, bool):
        raise ClusterStateError(
            f"{path} says block_size {block!r}; MUHEAM's pages are {BLOCK_SIZE} bytes: restore the file from a "
            "backup (the data files were written with that size)")
    return data


def write_control(shared: Path, data: dict[str, Any]) -> None:
    """Atomic replace; the caller holds the cluster's control lock in etcd."""
    path = control_path(shared)
    tmp = path.with_name(".control.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(data, sort_keys=True, indent=1).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def check_empty_or_ours(shared: Path, cluster_name: str, cluster_id: str | None = None) -> dict[str, Any] | None:
    """Refuse a directory holding another cluster or unrelated files; return our control data if initialised."""
    if not shared.exists():
        return None
    if not shared.is_dir():
        raise ClusterStateError(f"shared_dir {shared} is not a directory; choose an empty directory")
    control = read_control(shared)
    if control is None:
        entries = sorted(p.name for p in shared.iterdir())
        if entries:
            shown = ", ".join(entries[:5]) + (" ..." if len(entries) > 5 else "")
            raise ClusterStateError(
                f"shared_dir {shared} is not empty and holds no MUHEAM cluster (found: {shown}); "
                "choose an empty directory"
            )
        return None
    if control.get("cluster_name") != cluster_name or (cluster_id and control.get("cluster_id") != cluster_id):
        raise ClusterStateError(
            f"shared_dir {shared} belongs to another cluster ({control.get('cluster_name')!r}, id "
            f"{control.get('cluster_id')}); point shared_dir at this cluster's directory or choose an empty one"
        )
    return control


def create_layout(shared: Path, identity: dict[str, Any]) -> None:
    shared.mkdir(parents=True, exist_ok=True)
    for sub in SUBDIRS:
        (shared / sub).mkdir(exist_ok=True)
    write_control(shared, identity)


def verify_member_dir(shared: Path, registered: dict[str, Any]) -> dict[str, Any]:
    """A node may use ``shared`` only if its control file names the cluster registered in etcd."""
    control = read_control(shared)
    if control is None:
        raise ClusterStateError(
            f"shared_dir {shared} holds no cluster (no global/control); run 'muheam cluster init' first "
            "or fix shared_dir"
        )
    if control.get("cluster_id") != registered.get("cluster_id"):
        raise ClusterStateError(
            f"shared_dir {shared} belongs to cluster id {control.get('cluster_id')} but etcd has cluster "
            f"{registered.get('cluster_name')!r} with id {registered.get('cluster_id')}; point shared_dir or "
            "cluster_name at matching places"
        )
    return control
