"""Snapshots that wait for outcomes: the part of ``Sessions`` that answers ``begin`` and ``snapshot``.

A cluster snapshot (``TxTable.snapshot``) taken while transactions are prepared -- here or on another node, their
outcome not yet known here -- cannot say yet whether each is visible: its commit timestamp may fall below the
snapshot's.  The answer to the client waits until every one of them is decided, and if one committed at or above
the snapshot's timestamp (the client that committed it may already have heard "committed": with the lazy outcome
round it is not acknowledged) the snapshot is taken again, now that the clock has passed that commit, and waits for
what is prepared then (I5; ``muheam.cluster.txstate``).  ``begin`` (a new transaction) and ``snapshot`` (READ
COMMITTED: a running transaction's next statement) both end here; a wait past the lock timeout fails the
transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from muheam.cluster.txstate import ClusterSnapshot, TxTable
from muheam.engine import Transaction
from muheam.net.clientport import Deferred


class Waiter(Protocol):
    """A running transaction as the session layer keeps it (``sessions._Tx``)."""

    txn: Transaction
    sts: int


@dataclass
class SnapshotWait:
    waits: set[int]
    """The prepared XIDs whose outcome is still unknown here."""
    deadline: float
    reply: Deferred
    tx: Waiter
    all: set[int]
    """Everything the snapshot waited for: a commit among them at or above its STS makes it be retaken."""


class SnapshotWaits:
    def __init__(self, table: TxTable, stamp: Callable[[], int], counters: dict[str, int]) -> None:
        self.table, self.stamp, self.counters = table, stamp, counters
        self.waiting: list[SnapshotWait] = []

    def snapshot(self, xid: int) -> tuple[ClusterSnapshot, set[int]]:
        """A snapshot for ``xid`` now, and the XIDs prepared before it whose outcome is not known here yet (their
        CTS may be below its STS: it is answered only once they are decided)."""
        snap, waits = self.table.snapshot(xid, self.stamp())
        return snap, {x for x in waits if not self.table.decided(x)}

    def take(self, tx: Waiter) -> set[int]:
        """A new snapshot for ``tx``; returns the prepared XIDs it must wait for."""
        snap, pending = self.snapshot(tx.txn.xid)
        tx.txn.snapshot, tx.sts = snap, snap.sts
        return pending

    def answer(self, tx: Waiter, reply: Deferred, pending: set[int], deadline: float) -> None:
        """Answer ``{"xid", "sts"}`` now, or once ``pending`` are decided (retaking the snapshot if needed)."""
        if not pending:
            reply.resolve({"xid": tx.txn.xid, "sts": tx.sts})
            return
        self.counters["begin_waits"] += 1
        self.waiting.append(SnapshotWait(pending, deadline, reply, tx, set(pending)))

    def on_outcome(self) -> None:
        """Outcomes were learned: answer the snapshots that no longer wait."""
        keep = []
        for sw in self.waiting:
            sw.waits = {x for x in sw.waits if not self.table.decided(x)}
            if not sw.waits and not sw.reply.done and self._retake(sw):
                self.counters["begin_retakes"] += 1
            if sw.waits:
                keep.append(sw)
            elif not sw.reply.done:
                sw.reply.resolve({"xid": sw.tx.txn.xid, "sts": sw.tx.sts})
        self.waiting = keep

    def _retake(self, sw: SnapshotWait) -> bool:
        """A transaction the snapshot waited for committed at or above its STS: take it again.  Nothing has used
        it yet: the begin or snapshot request has not been answered."""
        if all(self.table.committed.get(x, -1) < sw.tx.sts for x in sw.all):
            return False
        sw.waits = self.take(sw.tx)
        sw.all = set(sw.waits)
        return True

    def expired(self, now: float) -> list[SnapshotWait]:
        """The waits past their deadline, removed (the caller fails their transactions)."""
        late = [sw for sw in self.waiting if now >= sw.deadline]
        self.waiting = [sw for sw in self.waiting if now < sw.deadline]
        return late
