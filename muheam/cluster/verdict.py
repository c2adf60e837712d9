"""What the recoverer decides for a dead member's transactions (pure: the survivors' binding reads the WAL,
logs, and runs the round; the cluster simulator calls the same function).

Inputs are what the dead node's WAL shows and what this node's transaction table knows; the verdict says which
XIDs are newly committed here, which the cluster knows committed though the WAL lost the record (a damaged tail),
which must be aborted (logged, so the merged history shows the end of every transaction others may have waited
on), and the whole outcome round to announce.  The round carries *every* outcome of the dead node, not only the
ones this node lacked: the dead node may have died while sending an outcome round that reached some members and
not others, and a member that missed one would treat the XID as running for ever.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AbstractSet, Mapping

from muheam.cluster.txstate import TxTable


@dataclass(frozen=True)
class Verdict:
    committed: tuple[tuple[int, int], ...]          # (xid, cts) committed in the WAL, new to this node
    known_committed: tuple[int, ...]                # committed per the cluster, COMMIT lost from the WAL
    aborted: tuple[int, ...]                        # undecided: abort (and log the ABORT)
    announce_committed: tuple[tuple[int, int], ...]
    announce_aborted: tuple[int, ...]


def decide(wal_committed: Mapping[int, int], wal_aborted: AbstractSet[int], started: AbstractSet[int],
           undecided: AbstractSet[int], table: TxTable) -> Verdict:
    """``wal_committed``: XID -> commit GLSN of every COMMIT in the dead node's WAL; ``wal_aborted``: its ABORTs;
    ``started``: every XID it began; ``undecided``: XIDs it began or prepared with no outcome in its WAL."""
    found = sorted(wal_committed.items())
    known_committed = sorted(x for x in started if x in table.committed and x not in wal_committed)
    aborted = sorted(x for x in set(undecided) - set(wal_committed) if x not in table.committed)
    return Verdict(
        committed=tuple((x, g) for x, g in found if x not in table.committed),
        known_committed=tuple(known_committed),
        aborted=tuple(aborted),
        announce_committed=tuple(found + [(x, table.committed[x]) for x in known_committed]),
        announce_aborted=tuple(sorted(set(aborted) | {x for x in wal_aborted
                                                      if x not in wal_committed and x not in table.committed})),
    )
