"""Archive (point-in-time) recovery: a merged WAL stream replayed onto a base copy of the shared directory.

The base copy is the shared directory as it was at some earlier moment (copied while the cluster was stopped,
or a directory fresh from ``cluster init``).  ``restore`` replays the archived merged stream onto it up to the
target and leaves a directory the cluster can start on:

1. the target is located first (``find_stop``); a target the stream does not reach changes nothing;
2. a base newer than the target is refused, and "the target" is the stream's end when there is none or the
   stream ends before it (a node checkpoint or a node WAL record above the last GLSN to replay: its pages may
   hold later changes, which replay cannot take back, and the new history would start below them);
3. every node's old WAL and checkpoint pointer move to ``pre-recovery-<time>/`` -- the restored cluster starts a
   new history, as a PostgreSQL timeline does, and the old files stay for the operator;
4. the stream is replayed up to the target; transactions without a COMMIT by then are recorded as aborted;
5. the XID ceilings and a GLSN floor are raised above everything in the archive, so the new history never reuses
   an XID or a GLSN of the abandoned one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from muheam.engine import statefiles
from muheam.engine.replay import Stop, Target, TargetNotReached, find_stop, replay, wal_tail_glsns
from muheam.errors import MuheamError
from muheam.cluster.xidstore import XidCeiling, cluster_floor
from walmerge import format_glsn, format_lsn
from walmerge.merge import detect_system_id, node_dirs
from walmerge.segment import list_segments


class RestoreError(MuheamError):
    """The restore cannot run as asked; nothing was changed."""


def _move_aside(shared: Path) -> Path | None:
    """Move every node WAL directory and checkpoint pointer into ``pre-recovery-<time>/``."""
    moved = list(node_dirs(shared).values())
    pointers = sorted((shared / "global").glob("checkpoint-node-*"))
    if not moved and not pointers:
        return None
    aside = shared / time.strftime("pre-recovery-%Y%m%dT%H%M%S", time.gmtime())
    n = 0
    while aside.exists():
        n += 1
        aside = aside.with_name(aside.name.split(".")[0] + f".{n}")
    (aside / "wal").mkdir(parents=True)
    (aside / "global").mkdir()
    for d in moved:
        os.rename(d, aside / "wal" / d.name)
    for p in pointers:
        os.rename(p, aside / "global" / p.name)
    statefiles.fsync_dir(shared / "wal")
    statefiles.fsync_dir(shared / "global")
    return aside


def restore(shared: Path, merged: Path, target: Target) -> dict[str, Any]:
    """Replay ``merged`` onto the base copy ``shared`` up to ``target``; returns a summary for the CLI."""
    if not (shared / "global" / "control").exists():
        raise RestoreError(f"{shared} is not a MUHEAM shared directory (no global/control); point --shared-dir at "
                           f"a base copy of the cluster's shared directory")
    if not merged.is_dir() or not list_segments(merged):
        raise RestoreError(f"{merged} holds no merged WAL segments; create them with 'muheam walmerge --out DIR'")
    system_id = detect_system_id(merged)
    assert system_id is not None
    try:
        stop = find_stop(merged, system_id, target)
    except TargetNotReached as e:
        raise RestoreError(f"{e}; nothing was changed") from None
    _refuse_newer_base(shared, merged, system_id, stop, target)
    t0 = time.monotonic()
    aside = _move_aside(shared)
    rep = replay(shared, merged, system_id, stop.lsn)
    if stop.max_xid + 1 > cluster_floor(shared):
        origins = set(rep.committed) | set(rep.aborted) | set(rep.no_outcome)
        XidCeiling(shared, min(origins, default=1), slack=0).ensure(stop.max_xid + 1)
    statefiles.write_glsn_floor(shared, stop.max_lamport)
    return {
        "target": target.describe(),
        "stopped_before_lsn": None if stop.lsn is None else format_lsn(stop.lsn),
        "last_glsn_replayed": format_glsn(stop.glsn),
        "target_xid": stop.xid or None,
        "target_commit_time": None if stop.time_us is None else stop.time_us / 1e6,
        "old_wal_moved_to": None if aside is None else str(aside),
        "seconds": round(time.monotonic() - t0, 3),
        **rep.to_dict(),
    }


def _refuse_newer_base(shared: Path, merged: Path, system_id: int, stop: Stop, target: Target) -> None:
    """Refuse a base copy that holds anything past the last record replay would apply.

    Such a base's pages may carry GLSNs above everything replayed, and the new history's GLSN floor is set from
    the archive: every later write would try to stamp a GLSN below a page's and fail.  This holds just as much
    when the stop is the stream's end (no target, or a target at or past it) -- the case a copy of the live
    shared directory hits -- so the check does not depend on where the stop is.  Two signs, both cheap: a node
    checkpoint above the stop, and a record above it at the tail of a node's WAL in the base (a copy taken while
    the cluster ran, before the next checkpoint).
    """
    tails = wal_tail_glsns(shared, system_id)
    for node in sorted(node_dirs(shared)):
        ptr = statefiles.read_checkpoint(shared, node)
        checkpoint, tail = (0 if ptr is None else ptr.glsn), tails.get(node, 0)
        if max(checkpoint, tail) <= stop.glsn:
            continue
        if stop.lsn is None or max(checkpoint, tail) > stop.end_glsn:  # another target would not help
            bound = stop.end_glsn
            where = f"the end of the merged stream in {merged} (GLSN {format_glsn(bound)})"
            fix = ("use a base copy taken while the cluster was stopped before the archive's end, or an archive "
                   "merged after the base copy was taken")
        else:
            bound = stop.glsn
            where = f"the target {target.describe()} (GLSN {format_glsn(bound)})"
            fix = "use a base copy taken while the cluster was stopped before the target, or a later target"
        what = (f"node {node}'s last checkpoint is at GLSN {format_glsn(checkpoint)}" if checkpoint > bound else
                f"node {node}'s WAL holds a record at GLSN {format_glsn(tail)}")
        raise RestoreError(f"the base copy in {shared} is newer than {where}: {what}, so its pages may hold "
                           f"changes the replay cannot take back; {fix}; nothing was changed")


__all__ = ["RestoreError", "Target", "restore"]
