"""MVCC snapshots, tuple visibility and the pruning horizon (PostgreSQL REPEATABLE READ semantics).

Every row version (tuple) carries ``xmin`` (the XID that created it) and ``xmax`` (the XID that deleted or
updated it, or that holds a row lock on it; 0 if none), plus a flag ``LOCK_ONLY`` that says xmax only locks the
row (``SELECT ... FOR UPDATE``) and did not delete it.

A ``Snapshot`` is taken once per transaction (REPEATABLE READ): ``xmin`` = the oldest XID still running when it
was taken, ``xmax`` = the next XID not yet handed out, ``running`` = the XIDs in ``[xmin, xmax)`` that were
running, and ``xid`` = the taking transaction's own XID (0 if it has none yet).

**An XID's effects are visible to a snapshot** (``xid_visible``) iff

* it is the special ``BOOTSTRAP_XID``/``FROZEN_XID`` (always committed, seen by everyone), or
* it is the snapshot's own ``xid`` (a transaction sees its own changes), or
* ``xid < snapshot.xmax`` and ``xid not in snapshot.running`` and ``status(xid) == "committed"``.

So a transaction that committed after the snapshot was taken stays invisible for the whole transaction, even
though the commit-status lookup now says "committed": that is what makes the read repeatable.

**A row version is visible** (``version_visible``) iff ``xid_visible(xmin)`` and not deleted for the snapshot,
where it is deleted iff ``xmax != 0`` and not ``LOCK_ONLY`` and ``xid_visible(xmax)``.  Spelled out: xmax is 0,
or only a lock, or aborted, or committed too late for this snapshot, or still running -- unless xmax is our own
XID, in which case we deleted it ourselves and no longer see it.

**Pruning** (``dead_mask``): given ``oldest_xmin``, a horizon no older than the ``xmin`` of every snapshot that
is or will ever be in use, a version can be reclaimed iff no such snapshot can see it:

* its ``xmin`` aborted (nobody ever sees it), or
* it was deleted (not merely locked) by an xmax that committed and ``xmax < oldest_xmin`` -- every live snapshot
  has ``snapshot.xmin >= oldest_xmin > xmax``, so xmax is neither running nor in the future for it.

Independently of the horizon, an xmax that aborted, or a lock-only xmax whose locker has finished, no longer
means anything and is cleared (``stale_xmax_mask``) so that later writers do not have to look it up again.

**Write conflicts** (``write_conflict``): a transaction may set xmax on a version it sees only if the current
xmax is 0, its own, aborted, or a finished lock.  Otherwise the blocker is reported: still running -> wait for it
and retry; committed -> REPEATABLE READ serialization failure.  Row locks are exclusive only (one locker per
version; shared locks would need PostgreSQL-style multixacts).

``status(xid)`` is the commit-status callback supplied by the transaction layer; it must return one of
``"committed"``, ``"aborted"``, ``"in_progress"``.  The vectorised functions call it at most once per distinct
XID on the page, so a page scan costs a handful of lookups, not one per slot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import enum
from typing import Callable, Final

import numpy as np
from numpy.typing import NDArray

INVALID_XID: Final = 0
BOOTSTRAP_XID: Final = 1
FROZEN_XID: Final = 2
FIRST_NORMAL_XID: Final = 3
"""XIDs 0..2 are special on pages; the cluster's XID service (``muheam.cluster.xidstore``) hands out from here."""



class XidStatus(enum.StrEnum):
    """A transaction's outcome as far as a node knows it.  A ``StrEnum``, so the words in JSON (``muheam``
    status output, the outcome gossip) stay ``committed``/``aborted``/``in_progress``."""

    COMMITTED = "committed"
    ABORTED = "aborted"
    IN_PROGRESS = "in_progress"


COMMITTED: Final = XidStatus.COMMITTED
ABORTED: Final = XidStatus.ABORTED
IN_PROGRESS: Final = XidStatus.IN_PROGRESS
StatusFn = Callable[[int], str]
"""``status(xid) -> XidStatus`` (typed ``str`` so tests may pass plain words); only ever called with normal XIDs."""

# Slot flag bits (the ``flags`` byte of a tuple slot).
SLOT_USED: Final = 0x01
"""The slot holds a tuple version; a free slot has every other field zero."""
SLOT_LOCK_ONLY: Final = 0x02
"""xmax is a row lock (SELECT FOR UPDATE), not a delete/update."""
SLOT_UPDATED: Final = 0x04
"""The version was updated (not deleted): ``ctid`` points at the newer version."""
SLOT_KNOWN_FLAGS: Final = SLOT_USED | SLOT_LOCK_ONLY | SLOT_UPDATED

U64 = NDArray[np.uint64]
Bools = NDArray[np.bool_]


@dataclass(frozen=True)
class Snapshot:
    """A REPEATABLE READ snapshot: see the module docstring for what each field means."""

    xmin: int
    xmax: int
    running: frozenset[int] = field(default_factory=frozenset)
    xid: int = INVALID_XID

    def __post_init__(self) -> None:
        if not 0 <= self.xmin <= self.xmax:
            raise ValueError(f"snapshot xmin {self.xmin} must be >= 0 and <= xmax {self.xmax}")
        bad = [x for x in self.running if not self.xmin <= x < self.xmax]
        if bad:
            raise ValueError(f"snapshot running XIDs {sorted(bad)} are outside [xmin {self.xmin}, "
                             f"xmax {self.xmax})")
        if not isinstance(self.running, frozenset):
            object.__setattr__(self, "running", frozenset(self.running))

    def considers_running(self, xid: int) -> bool:
        """True if ``xid`` had not finished (or not started) when the snapshot was taken."""
        return xid >= self.xmax or xid in self.running

    def committed_before(self, xids: U64, status: StatusFn) -> Bools | None:
        """For normal XIDs: ``not considers_running(x) and status(x) == "committed"`` for each, computed at
        once, or None when this kind of snapshot has no faster way than asking one XID at a time (this one
        has none; a cluster snapshot answers from its commit table when ``status`` is that table's)."""
        return None


def xid_visible(xid: int, snap: Snapshot, status: StatusFn) -> bool:
    """Are ``xid``'s effects visible to ``snap``?  (Rule 1 of the module docstring.)"""
    if xid == BOOTSTRAP_XID or xid == FROZEN_XID:
        return True
    if xid == INVALID_XID:
        return False
    if xid == snap.xid:
        return True
    if snap.considers_running(xid):
        return False
    return status(xid) == COMMITTED


def version_visible(xmin: int, xmax: int, flags: int, snap: Snapshot, status: StatusFn) -> bool:
    """Is one row version visible to ``snap``?  (Rule 2 of the module docstring.)"""
    if not flags & SLOT_USED or not xid_visible(xmin, snap, status):
        return False
    if xmax == INVALID_XID or flags & SLOT_LOCK_ONLY:
        return True
    return not xid_visible(xmax, snap, status)


PER_XID_SORT = 128
"""From this many XIDs on, ``_per_xid`` finds the distinct ones with ``np.unique`` (a sort); below, with a Python
set, which costs a fifth of numpy's set-up for a page's few dozen versions (an update's prune, a hot chain)."""


def _per_xid(xids: U64, fn: Callable[[int], bool]) -> Bools:
    """Evaluate ``fn`` once per distinct XID and broadcast the answers back (the vectorisation trick)."""
    if xids.size == 0:
        return np.zeros(0, dtype=np.bool_)
    if xids.size < PER_XID_SORT:
        listed = xids.tolist()
        known = {x: fn(x) for x in set(listed)}
        return np.fromiter((known[x] for x in listed), dtype=np.bool_, count=len(listed))
    uniq, inverse = np.unique(xids, return_inverse=True)
    answers = np.fromiter((fn(int(x)) for x in uniq), dtype=np.bool_, count=uniq.size)
    result: Bools = answers[inverse.reshape(-1)]
    return result


def xids_visible(xids: U64, snap: Snapshot, status: StatusFn) -> Bools:
    """``xid_visible`` of each XID: the snapshot's own way for the normal ones (``committed_before``) when it
    has one, else once per distinct XID."""
    fast = snap.committed_before(xids, status) if xids.size else None
    if fast is None:
        checked_status = checked(status)
        return _per_xid(xids, lambda x: xid_visible(x, snap, checked_status))
    # the special XIDs, as xid_visible orders them: INVALID never, BOOTSTRAP/FROZEN always, then our own
    special = xids < FIRST_NORMAL_XID
    if special.any():
        fast[special] = (xids[special] == BOOTSTRAP_XID) | (xids[special] == FROZEN_XID)
    if snap.xid >= FIRST_NORMAL_XID:
        fast |= xids == snap.xid
    return fast


def visible_mask(xmin: U64, xmax: U64, flags: NDArray[np.uint8], snap: Snapshot, status: StatusFn) -> Bools:
    """``version_visible`` for every slot of a page at once."""
    n = xmin.size
    both = xids_visible(np.concatenate([xmin, xmax]), snap, status)
    used = (flags & SLOT_USED) != 0
    deleted = (xmax != INVALID_XID) & ((flags & SLOT_LOCK_ONLY) == 0) & both[n:]
    result: Bools = used & both[:n] & ~deleted
    return result


def dead_mask(xmin: U64, xmax: U64, flags: NDArray[np.uint8], oldest_xmin: int, status: StatusFn) -> Bools:
    """Slots whose versions no snapshot with ``snapshot.xmin >= oldest_xmin`` can see (see the docstring)."""
    used = (flags & SLOT_USED) != 0
    normal_min = xmin >= FIRST_NORMAL_XID
    aborted_min = np.zeros_like(used)
    sel = used & normal_min
    aborted_min[sel] = _per_xid(xmin[sel], lambda x: status(x) == ABORTED)
    deleted = used & (xmax >= FIRST_NORMAL_XID) & (xmax < oldest_xmin) & ((flags & SLOT_LOCK_ONLY) == 0)
    committed_max = np.zeros_like(used)
    committed_max[deleted] = _per_xid(xmax[deleted], lambda x: status(x) == COMMITTED)
    result: Bools = aborted_min | committed_max
    return result


def stale_xmax_mask(xmax: U64, flags: NDArray[np.uint8], status: StatusFn) -> Bools:
    """Slots whose xmax is meaningless now: it aborted, or it was a lock whose holder has finished."""
    has = ((flags & SLOT_USED) != 0) & (xmax >= FIRST_NORMAL_XID)
    lock_only = (flags & SLOT_LOCK_ONLY) != 0
    st: dict[int, str] = {}

    def look(x: int) -> str:
        if x not in st:
            st[x] = status(x)
        return st[x]

    stale = np.zeros_like(has)
    stale[has & lock_only] = _per_xid(xmax[has & lock_only], lambda x: look(x) != IN_PROGRESS)
    stale[has & ~lock_only] = _per_xid(xmax[has & ~lock_only], lambda x: look(x) == ABORTED)
    result: Bools = stale
    return result


def write_conflict(xmax: int, flags: int, xid: int, status: StatusFn) -> tuple[int, bool] | None:
    """Who blocks transaction ``xid`` from setting xmax on this version: ``(blocker, committed)`` or ``None``."""
    if xmax == INVALID_XID or xmax == xid or xmax < FIRST_NORMAL_XID:
        return None
    st = status(xmax)
    if st == ABORTED:
        return None
    if st == COMMITTED:
        return None if flags & SLOT_LOCK_ONLY else (xmax, True)
    return (xmax, False)


def checked(status: StatusFn) -> StatusFn:
    """Wrap a status callback so a wrong answer fails loudly instead of silently reading as "invisible"."""

    def check(xid: int) -> str:
        st = status(xid)
        if st not in (COMMITTED, ABORTED, IN_PROGRESS):
            raise ValueError(f"status({xid}) returned {st!r}; the commit-status callback must return "
                             f"'committed', 'aborted' or 'in_progress'")
        return st

    return check
