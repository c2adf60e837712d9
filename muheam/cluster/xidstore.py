"""Durable XID ceilings: what makes global XIDs unique for the life of the cluster (I1) across crashes.

The XID counter travels as the value block of the ``xid`` lock, which lives only in memory.  Before a node hands
out any XID below ``end`` it makes sure its own ceiling file ``xact/xid-ceiling-node-<id>`` says at least ``end``
(fsynced).  Anyone who must rebuild the counter (a node's first grant after joining, or after the holder died and
the lock was marked as needing recovery) takes the maximum of every node's ceiling: no XID ever handed out is at
or above it.  The ceiling is written ahead with some slack, so most ranges cost no fsync; a crash wastes at most
the slack, in a 64-bit space.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from muheam.storage.mvcc import FIRST_NORMAL_XID  # 0 invalid, 1 bootstrap, 2 frozen (as in PostgreSQL)

DEFAULT_SLACK = 1 << 16


def ceiling_dir(shared: Path) -> Path:
    return shared / "xact"


def ceiling_file(shared: Path, node_id: int) -> Path:
    return ceiling_dir(shared) / f"xid-ceiling-node-{node_id}"


def cluster_floor(shared: Path) -> int:
    """The smallest XID nobody can have handed out: the max over every node's ceiling."""
    floor = FIRST_NORMAL_XID
    directory = ceiling_dir(shared)
    if not directory.is_dir():
        return floor
    for path in directory.glob("xid-ceiling-node-*"):
        try:
            floor = max(floor, int(path.read_text().strip() or 0))
        except ValueError:
            raise ValueError(
                f"{path} is damaged (not an integer); XID uniqueness depends on it: restore it, or write a value "
                "above every XID in the WAL"
            ) from None
    return floor


class XidCeiling:
    """This node's ceiling file.  ``before_write`` is the fence check: no durable write once fenced (I6)."""

    def __init__(self, shared: Path, node_id: int, before_write: Callable[[], None] = lambda: None,
                 slack: int = DEFAULT_SLACK) -> None:
        self.path = ceiling_file(shared, node_id)
        self.slack = slack
        self._before_write = before_write
        try:
            self.value = int(self.path.read_text().strip() or 0)
        except FileNotFoundError:
            self.value = 0
        self.fsyncs = 0

    def ensure(self, end: int) -> None:
        """Make the durable ceiling >= ``end`` before any XID below ``end`` is used."""
        if end <= self.value:
            return
        self._before_write()
        target = end + self.slack
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"{target}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.value = target
        self.fsyncs += 1
