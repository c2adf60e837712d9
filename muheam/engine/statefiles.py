"""Small durable state files, each rewritten whole and atomically (temp file, fsync, rename, dir fsync).

* ``global/catalog``                -- every table: id, bucket count, schema (rewritten at create and checkpoint)
* ``global/checkpoint-node-<id>``   -- this node's redo start point (LSN of its last CHECKPOINT record)
* ``xact/node-<id>``                -- commit status of this node's XIDs up to its last checkpoint
* ``global/glsn-floor``             -- after point-in-time recovery: every GLSN a node generates must be above it
* ``global/fence-node-<id>``        -- incarnations of the node recovered by survivors, and up to where (I6)

Per-node names mean two nodes never write the same file (DESIGN section 6).  Layout of each file: 4-byte magic,
4-byte CRC-32C of the rest, then a msgpack map.  A file that fails its CRC raises ``StateFileCorrupt``: it is
never silently replaced, because the WAL from its checkpoint on may no longer exist.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import google_crc32c
import msgpack
import numpy as np

from muheam.engine.errors import StateFileCorrupt
from walmerge.record import align8

MAGIC = b"MHS1"
FORMAT = 1


def catalog_path(shared: Path) -> Path:
    return shared / "global" / "catalog"


def checkpoint_path(shared: Path, node_id: int) -> Path:
    return shared / "global" / f"checkpoint-node-{node_id}"


def xact_path(shared: Path, node_id: int) -> Path:
    return shared / "xact" / f"node-{node_id}"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


STALE_TMP_S = 3600.0
"""A state file's temporary copy this old is a leftover of a writer killed between writing and renaming it: a
write takes milliseconds.  (Its name holds the writer's pid, but that pid may be on another machine sharing the
directory, so its age is what says it is dead.)"""
_TMP_NAME = re.compile(r"^[\w.-]+\.\d+\.tmp$")


def write_state(path: Path, value: dict[str, Any]) -> None:
    """Replace ``path`` atomically and durably with ``value``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body: bytes = msgpack.packb({"format": FORMAT, **value}, use_bin_type=True)
    data = MAGIC + int(google_crc32c.value(body)).to_bytes(4, "little") + body
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # shared files: two nodes may write at once
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk, say: the old file stays whole, and no half-written copy stays
        raise
    fsync_dir(path.parent)


def sweep_stale_tmp(shared: Path, now: float | None = None) -> list[Path]:
    """Remove the leftovers of killed state-file writers in ``global/`` and ``xact/`` (see ``STALE_TMP_S``);
    returns what was removed.  Ages are taken against the file system's clock (``now``: the time stamp of a file
    made there just now), not this machine's: on a shared mount the server stamps the files, and a node whose
    clock runs an hour ahead would remove another node's copy between its write and its rename."""
    if now is None:
        probe = shared / "global" / f"sweep.{os.getpid()}.probe"
        try:
            probe.write_bytes(b"")
            now = probe.stat().st_mtime
        except OSError:
            return []  # not writable (yet): nothing to sweep by a node that could not write state files either
        finally:
            probe.unlink(missing_ok=True)
    removed = []
    for folder in (shared / "global", shared / "xact"):
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if not _TMP_NAME.match(entry.name):
                continue
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime > STALE_TMP_S:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
            except OSError:
                continue  # gone already (another node swept it), or not ours to remove
    return removed


def read_state(path: Path) -> dict[str, Any] | None:
    """The stored map, or ``None`` if the file does not exist."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    advice = "restore it from a backup (or, if this node's WAL is complete from its start, delete it to redo all)"
    if len(data) < 8 or data[:4] != MAGIC:
        raise StateFileCorrupt(f"{path} is not a MUHEAM state file (bad magic or truncated); {advice}", path=path)
    body = data[8:]
    if int(google_crc32c.value(body)) != int.from_bytes(data[4:8], "little"):
        raise StateFileCorrupt(f"{path} fails its CRC-32C check: the file is damaged; {advice}", path=path)
    try:
        value = msgpack.unpackb(body, raw=False)
    except (ValueError, msgpack.UnpackException) as e:
        raise StateFileCorrupt(f"{path} cannot be parsed ({e}); {advice}", path=path) from e
    if not isinstance(value, dict) or value.get("format") != FORMAT:
        raise StateFileCorrupt(f"{path} has an unknown format; upgrade muheam or {advice}", path=path)
    return value


@dataclass(frozen=True)
class CheckpointPointer:
    redo_lsn: int
    glsn: int


def read_checkpoint(shared: Path, node_id: int) -> CheckpointPointer | None:
    """The node's checkpoint pointer.  Its LSN is where a record starts: survivors and whole-cluster recovery
    write the end of the last record they applied (``lsn + length``), and records start 8-aligned, so it is
    rounded up to the next record's start (a reader started at the unaligned end took the padding for a damaged
    record as soon as records followed it, e.g. a zombie incarnation's after its recovery: the node could not
    start)."""
    d = read_state(checkpoint_path(shared, node_id))
    return None if d is None else CheckpointPointer(align8(int(d["redo_lsn"])), int(d["glsn"]))


def write_checkpoint(shared: Path, node_id: int, ptr: CheckpointPointer) -> None:
    write_state(checkpoint_path(shared, node_id), {"redo_lsn": ptr.redo_lsn, "glsn": ptr.glsn})


def read_xact(shared: Path, node_id: int) -> tuple[set[int], set[int]]:
    """(committed XIDs, aborted XIDs) as of this node's last checkpoint."""
    d = read_state(xact_path(shared, node_id))
    if d is None:
        return set(), set()
    return (set(np.frombuffer(d["committed"], "<u8").tolist()),
            set(np.frombuffer(d["aborted"], "<u8").tolist()))


def read_all_xact(shared: Path) -> tuple[set[int], set[int]]:
    """(committed, aborted) XIDs of every node's ``xact`` file: outcomes as of each node's last checkpoint."""
    committed: set[int] = set()
    aborted: set[int] = set()
    for path in sorted((shared / "xact").glob("node-*")):
        if path.name[5:].isdigit():
            c, a = read_xact(shared, int(path.name[5:]))
            committed |= c
            aborted |= a
    return committed, aborted


def write_xact(shared: Path, node_id: int, committed: set[int], aborted: set[int]) -> None:
    c = np.fromiter(committed, dtype="<u8", count=len(committed))
    a = np.fromiter(aborted, dtype="<u8", count=len(aborted))
    c.sort()
    a.sort()
    write_state(xact_path(shared, node_id), {"committed": c.tobytes(), "aborted": a.tobytes()})


def glsn_floor_path(shared: Path) -> Path:
    return shared / "global" / "glsn-floor"


def read_glsn_floor(shared: Path) -> int:
    """Lamport time every new change must exceed (0: none).  Point-in-time recovery starts every node's WAL
    afresh, so the clock can no longer be seeded from the WAL, while the pages carry the old GLSNs."""
    d = read_state(glsn_floor_path(shared))
    return 0 if d is None else int(d["lamport"])


def write_glsn_floor(shared: Path, lamport: int) -> None:
    write_state(glsn_floor_path(shared), {"lamport": max(lamport, read_glsn_floor(shared))})


def fence_path(shared: Path, node_id: int) -> Path:
    return shared / "global" / f"fence-node-{node_id}"


def read_fences(shared: Path) -> dict[int, list[tuple[int, int]]]:
    """``node -> [(epoch, fence_glsn), ...]``: records of that incarnation above the GLSN are void (a zombie's
    writes after survivors recovered it), for recovery and for every merge."""
    out: dict[int, list[tuple[int, int]]] = {}
    for path in sorted((shared / "global").glob("fence-node-*")):
        if path.name[11:].isdigit():
            d = read_state(path) or {}
            out[int(path.name[11:])] = [(int(e), int(g)) for e, g, _ in d.get("fences", [])]
    return out


def add_fence(shared: Path, node_id: int, epoch: int, glsn: int, end_lsn: int) -> None:
    """Only the survivor that won the recovery claim of ``node_id`` writes its file."""
    path = fence_path(shared, node_id)
    fences = [f for f in (read_state(path) or {}).get("fences", []) if int(f[0]) != epoch]
    write_state(path, {"fences": sorted(fences + [[epoch, glsn, end_lsn]])})


CATALOG_LOCK_WAIT = 1.0
"""Seconds a catalog rewrite waits for another process's (a write takes milliseconds).  It waits in the node's
loop, so it stays well below what the loop watch tolerates (``node.fence.LoopWatch``: a turn much longer than
the TTL costs the node its lease): a holder that keeps the file longer is paused or dying, and the rewrite fails
with ``CatalogWriteFailed`` rather than taking the waiter down with it."""


@contextmanager
def _catalog_locked(shared: Path) -> Iterator[None]:
    """Every read-modify-write of ``global/catalog`` runs under an exclusive ``flock`` of ``global/catalog.lock``:
    nodes (a checkpoint, a recovery, a replay) may rewrite it without the cluster's catalog lock, and a merge
    built from a read taken before another node's write would undo that write."""
    path = shared / "global" / "catalog.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + CATALOG_LOCK_WAIT
        while True:  # never blocks for good: a holder paused (SIGSTOP) must not stall every node's loop
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise OSError(errno.EAGAIN, f"{path} has been held by another process for "
                                                f"{CATALOG_LOCK_WAIT:g} s") from None
                time.sleep(0.005)
        yield
    finally:
        os.close(fd)


def merge_catalog(shared: Path, entries: list[dict[str, Any]], dropped: Iterable[int] = (),
                  dropping: tuple[int, int, str] | None = None, creating: int | None = None) -> None:
    """Rewrite ``global/catalog`` as the union of the file and ``entries`` (``table_id``, ``nbuckets``,
    ``schema``) minus the union of the dropped table ids (tombstones, kept for ever): a table once created is
    never lost by a writer that did not know it, and a dropped one never comes back from a writer that did not
    know of the drop.  Table ids are never reused.

    Marks of catalog changes whose WAL record is not durable yet (``Engine.create_table``, ``drop_table``):
    ``dropping`` ``(table_id, node, name)`` lists a drop in ``unlogged``, ``creating`` a table id in
    ``unlogged_creates`` (such a table is not used until its record is: ``heapops.usable_tables``); ``change_logged``
    clears them."""
    with _catalog_locked(shared):
        state = read_state(catalog_path(shared)) or {}
        gone = {int(i) for i in state.get("dropped", [])} | {int(i) for i in dropped}
        unlogged = [list(u) for u in state.get("unlogged", [])]
        creates = [int(i) for i in state.get("unlogged_creates", [])]
        if dropping is not None:
            gone.add(dropping[0])
            unlogged.append(list(dropping))
        if creating is not None:
            creates.append(creating)
        merged = {int(d["table_id"]): d for d in state.get("tables", [])}
        for d in entries:
            merged[int(d["table_id"])] = d
        write_state(catalog_path(shared), {"tables": [merged[k] for k in sorted(merged) if k not in gone],
                                           "dropped": sorted(gone), "unlogged": unlogged,
                                           "unlogged_creates": [i for i in creates if i not in gone]})


@dataclass(frozen=True)
class CatalogFile:
    """``global/catalog`` as one read gives it (``read_catalog``)."""

    entries: list[dict[str, Any]]
    """Every table entry (``table_id``, ``nbuckets``, ``schema``, ``sql``), marked ones included."""
    dropped: frozenset[int]
    unlogged_drops: list[tuple[int, int, str]]
    """``(table_id, node, name)`` of drops whose node died before its WAL had them."""
    unlogged_creates: frozenset[int]
    """Ids of tables whose creating node died before its WAL had them (used by no one until logged)."""

    @property
    def max_table_id(self) -> int:
        """The highest table id known, live, dropped or not logged yet (0: none)."""
        return max([int(d["table_id"]) for d in self.entries] + list(self.dropped), default=0)

    def marked_entries(self) -> list[dict[str, Any]]:
        return [d for d in self.entries if int(d["table_id"]) in self.unlogged_creates]


def read_catalog(shared: Path) -> CatalogFile:
    state = read_state(catalog_path(shared)) or {}
    return CatalogFile(list(state.get("tables", [])), frozenset(int(i) for i in state.get("dropped", [])),
                       [(int(i), int(n), str(name)) for i, n, name in state.get("unlogged", [])],
                       frozenset(int(i) for i in state.get("unlogged_creates", [])))


def change_logged(shared: Path, table_id: int) -> None:
    """The WAL record of the create or drop of ``table_id`` is durable: the stream (replicas, archive recovery)
    has it, so its mark goes."""
    with _catalog_locked(shared):
        state = read_state(catalog_path(shared)) or {}
        unlogged = [u for u in state.get("unlogged", []) if int(u[0]) != table_id]
        creates = [i for i in state.get("unlogged_creates", []) if int(i) != table_id]
        if len(unlogged) != len(state.get("unlogged", [])) or len(creates) != len(state.get("unlogged_creates", [])):
            write_state(catalog_path(shared), {**{k: v for k, v in state.items() if k != "format"},
                                               "unlogged": unlogged, "unlogged_creates": creates})
