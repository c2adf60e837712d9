"""Payload-level WAL checks that ``walmerge.verify`` runs through its callbacks (it must not know table formats).

* ``block_of``: the page a heap record changes (the new version's block for an update), so ``verify`` can check
  that each block changes in strictly increasing GLSN order (I2/I4).
* ``Waits``: a heap change of a row version another transaction created, or of a version another transaction had
  locked or deleted, could only happen after that transaction ended (a row held by a running transaction makes
  the writer wait; a version is only updated once its creator committed).  So in the merged order the creator's
  or holder's COMMIT/ABORT must come earlier (I4: a commit follows every commit it waited on).  The class follows
  creators and holders per slot through the stream, forgetting slots that pruning frees; versions created before
  the stream starts (before a checkpoint) have no known creator and give no edge.
"""

from __future__ import annotations

from typing import Iterable

from muheam.engine import walrec
from walmerge import Record

Slot = tuple[int, int, int]


def block_of(rec: Record) -> tuple[int, int] | None:
    """``(table, block)`` of a heap record's main change, or ``None`` for other records."""
    kind = rec.kind
    if kind == walrec.HEAP_INSERT:
        i = walrec.decode_insert(rec.payload)
        return i.table_id, i.block
    if kind == walrec.HEAP_UPDATE:
        u = walrec.decode_update(rec.payload)
        return u.table_id, u.new_block
    if kind in (walrec.HEAP_DELETE, walrec.HEAP_LOCK):
        d = walrec.decode_delete(rec.payload)
        return d.table_id, d.block
    if kind == walrec.HEAP_PRUNE:
        p = walrec.decode_prune(rec.payload)
        return p.table_id, p.block
    return None


class Waits:
    """``waits(rec)``: the XIDs whose outcome must precede ``rec`` (call it on every record, in GLSN order)."""

    def __init__(self) -> None:
        self.creator: dict[Slot, int] = {}
        self.holder: dict[Slot, int] = {}

    def __call__(self, rec: Record) -> Iterable[int]:
        kind, xid = rec.kind, rec.xid
        if kind not in walrec.HEAP_KINDS:
            return ()
        if kind == walrec.HEAP_INSERT:
            i = walrec.decode_insert(rec.payload)
            self._new(i.table_id, i.block, i.slot, xid)
            return ()
        if kind == walrec.HEAP_PRUNE:
            p = walrec.decode_prune(rec.payload)
            for s in p.freed:
                self.creator.pop((p.table_id, p.block, s), None)
                self.holder.pop((p.table_id, p.block, s), None)
            for s in p.cleared:
                self.holder.pop((p.table_id, p.block, s), None)
            return ()
        if kind == walrec.HEAP_UPDATE:
            u = walrec.decode_update(rec.payload)
            old: Slot = (u.table_id, u.old_block, u.old_slot)
            self._new(u.table_id, u.new_block, u.new_slot, xid)
        else:
            d = walrec.decode_delete(rec.payload)
            old = (d.table_id, d.block, d.slot)
        waits = {x for x in (self.creator.get(old), self.holder.get(old)) if x is not None and x != xid}
        self.holder[old] = xid
        return waits

    def _new(self, table: int, block: int, slot: int, xid: int) -> None:
        self.creator[(table, block, slot)] = xid
        self.holder.pop((table, block, slot), None)
