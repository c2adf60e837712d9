"""Cluster-wide transaction state as one node knows it, and the snapshots built from it (pure: no I/O).

MUHEAM snapshots are commit-timestamp snapshots ordered by the one global order (DESIGN.md section 3):

* a transaction's **commit timestamp** (CTS) is the GLSN of its COMMIT record;
* a snapshot's **timestamp** (STS) is a GLSN taken from the node's Lamport clock when the transaction begins;
* an XID's effects are visible to a snapshot iff it committed with ``CTS < STS`` (or it is the snapshot's own).

Why this is safe without a central sequencer: a node commits in two rounds.  First it tells every live node that
the transaction is *prepared* and waits for their acknowledgements; only then does it write the COMMIT record, so
its CTS is larger than every acknowledgement's stamp, hence larger than the STS of every snapshot taken anywhere
before that node learned of the prepare.  A snapshot taken after the prepare was acknowledged may have
``STS > CTS``: such a snapshot waits at begin until every transaction prepared at that moment has an outcome
(``Snapshot.waits_for``; one message delay).  An XID that is neither prepared nor decided when the snapshot is taken
will commit with ``CTS > STS`` and is invisible, whatever node runs it.  Causality follows from Lamport order: if
a transaction saw another, its CTS is larger, so every snapshot that sees it also sees the other.  The second
round (DONE) tells every node the outcome; it is not acknowledged (issue 18): the client hears "committed" once
every node acknowledged the prepare, so a later snapshot anywhere waits for the outcome, and one that then finds
the CTS not below its STS is taken again (``SnapshotWaits._retake``) (I5).

XIDs below ``floor`` that are not known committed are aborted: they were handed out before the oldest running
node of this cluster incarnation started (``muheam.xidstore.cluster_floor``), and nothing of theirs is running.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import repeat
from typing import Iterable

import numpy as np

from muheam.storage import mvcc
from muheam.storage.mvcc import Snapshot, XidStatus

NO_XMAX = (1 << 63) - 1
NO_CTS = (1 << 64) - 1
"""Above every CTS (a packed GLSN): what ``committed_before`` reads for an XID not known committed."""
HORIZON_ALL = (1 << 64) - 1


@dataclass(frozen=True)
class ClusterSnapshot(Snapshot):
    """A snapshot that sees exactly the XIDs committed with a CTS below ``sts`` (see the module docstring)."""

    sts: int = 0
    table: "TxTable | None" = field(default=None, compare=False, repr=False)

    def considers_running(self, xid: int) -> bool:
        assert self.table is not None
        cts = self.table.committed.get(xid)
        return cts is None or cts >= self.sts

    def committed_before(self, xids: mvcc.U64, status: mvcc.StatusFn) -> mvcc.Bools | None:
        """Committed with a CTS below ``sts``, for each XID, from the commit table in one pass: what
        ``considers_running`` and the table's own ``status`` say one XID at a time (a reader's scan of copies
        asks about a few hundred XIDs).  None for any other status callback."""
        table = self.table
        if table is None or status != table.status:
            return None
        cts = np.fromiter(map(table.committed.get, xids.tolist(), repeat(NO_CTS)), dtype=np.uint64,
                          count=xids.size)
        result: mvcc.Bools = cts < np.uint64(self.sts)
        return result


class TxTable:
    """Commit status of every XID this node knows of: committed (with CTS), aborted, prepared, or unknown.

    Unknown XIDs at or above ``floor`` count as running somewhere; below it, as aborted.
    """

    def __init__(self, floor: int = mvcc.FIRST_NORMAL_XID) -> None:
        self.floor = floor
        self.committed: dict[int, int] = {}
        self.aborted: set[int] = set()
        self.prepared: set[int] = set()

    # -- inputs ----------------------------------------------------------------------------------------------
    def load(self, committed: Iterable[int], aborted: Iterable[int], cts: int = 0) -> None:
        """Outcomes from durable state (xact files, recovery): committed before any snapshot of this run."""
        for x in committed:
            self.committed.setdefault(x, cts)
        self.aborted.update(x for x in aborted if x not in self.committed)

    def learn_departed(self, committed: Iterable[int], aborted: Iterable[int], cts: int) -> set[int]:
        """Outcomes of a member that left cleanly, from its outcome file: those we lack are taken, commits at
        ``cts`` (now).  Returns the XIDs newly decided.  Its last outcome rounds went only to the members it knew,
        so a node that joined while it was stopping may hold them as prepared; such a joiner is not ready (its
        sync with the stopping member is pending) until the member is gone, so no snapshot of it has seen them
        as running and *now* is a commit timestamp every one of its snapshots agrees with."""
        committed, aborted = set(committed), set(aborted)
        new = {x for x in committed if x not in self.committed} | \
            {x for x in aborted if x not in self.aborted and x not in self.committed}
        self.load(committed - set(self.committed), aborted, cts=cts)
        for x in new:
            self.prepared.discard(x)
        return new

    def prepare(self, xids: Iterable[int]) -> None:
        for x in xids:
            if x not in self.committed and x not in self.aborted:
                self.prepared.add(x)

    def commit(self, xid: int, cts: int) -> None:
        self.prepared.discard(xid)
        self.aborted.discard(xid)
        self.committed[xid] = cts

    def abort(self, xid: int) -> None:
        self.prepared.discard(xid)
        if xid not in self.committed:
            self.aborted.add(xid)

    # -- queries ---------------------------------------------------------------------------------------------
    def status(self, xid: int) -> XidStatus:
        """``committed`` / ``aborted`` / ``in_progress`` (running or prepared anywhere, or not yet known)."""
        if xid in self.committed:
            return mvcc.COMMITTED
        if xid in self.aborted or (xid < self.floor and xid not in self.prepared):
            return mvcc.ABORTED
        return mvcc.IN_PROGRESS

    def decided(self, xid: int) -> bool:
        return self.status(xid) != mvcc.IN_PROGRESS

    def snapshot(self, xid: int, sts: int) -> tuple[ClusterSnapshot, frozenset[int]]:
        """The snapshot of transaction ``xid`` at GLSN ``sts`` and the prepared XIDs it must wait for."""
        return (ClusterSnapshot(0, NO_XMAX, frozenset(), xid, sts=sts, table=self),
                frozenset(x for x in self.prepared if x != xid))

    def prune_status(self, horizon: int) -> mvcc.StatusFn:
        """Status for pruning: committed only if committed below ``horizon`` (the oldest STS in the cluster),
        so a version is reclaimed only when no snapshot anywhere can see it."""

        def status(xid: int) -> XidStatus:
            cts = self.committed.get(xid)
            if cts is not None:
                return mvcc.COMMITTED if cts < horizon else mvcc.IN_PROGRESS
            return self.status(xid)

        return status

    def export(self) -> dict[str, object]:
        """Everything a joining node needs (see ``merge``)."""
        return {"floor": self.floor, "committed": sorted(self.committed.items()), "aborted": sorted(self.aborted),
                "prepared": sorted(self.prepared)}

    def merge(self, state: dict[str, object]) -> None:
        """Adopt a peer's knowledge (join): its outcomes, its prepared XIDs and, if higher, its floor.

        A peer's table is complete below its floor (unknown there means aborted), so taking the highest floor
        of the peers that answered is safe."""
        floor = state.get("floor")
        committed, aborted, prepared = state.get("committed"), state.get("aborted"), state.get("prepared")
        if not (isinstance(floor, int) and isinstance(committed, list) and isinstance(aborted, list)
                and isinstance(prepared, list)):
            raise ValueError("transaction state must have floor, committed, aborted and prepared")
        for item in committed:
            if not (isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(v, int) for v in item)):
                raise ValueError("committed entries must be [xid, cts]")
            self.commit(int(item[0]), int(item[1]))
        for x in aborted:
            if not isinstance(x, int):
                raise ValueError("aborted entries must be XIDs")
            self.abort(x)
        self.prepare(x for x in prepared if isinstance(x, int))
        self.floor = max(self.floor, floor)
