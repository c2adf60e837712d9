"""What the survivors do when a member departs, before anything else may take what it held: fence a crashed
member from outside (STONITH, ``muheam.node.fence``), or take the outcomes a cleanly stopped member decided last
from its outcome file; and, once a crashed member is recovered, what a joiner it never answered must learn."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from muheam.cluster.txstate import TxTable
from muheam.engine import statefiles
from muheam.errors import MuheamError
from muheam.membership import Member
from muheam.node import fence as fence_mod

if TYPE_CHECKING:
    from muheam.cluster.commits import CommitService

log = logging.getLogger("muheam.node")


def fence_peer(member: Member, our_host: str, fence_command: str) -> None:
    """Make sure a crashed peer's process can write nothing more: a node stopped inside a loop turn resumes past
    its lease and finishes the turn -- page write-through, checkpoint, outcome file -- before its own fence check.
    Every survivor does it (idempotent) before reading the dead node's WAL tail, so the WAL it reads is final."""
    if member.host == our_host:
        outcome = fence_mod.kill_incarnation(member.pid, member.node_id, member.started_at, member.stamp)
        log_at = log.critical if outcome == "still-there" else log.info
        log_at("fenced node %d (epoch %d, pid %d on this host) before recovering it: %s", member.node_id,
               member.epoch, member.pid, outcome)
    elif fence_command:
        if fence_mod.run_fence_command(fence_command, member.node_id, member.host, member.pid, member.epoch):
            log.info("fenced node %d (epoch %d) on host %s with the fence command", member.node_id, member.epoch,
                     member.host)
    else:
        log.warning("node %d (epoch %d) runs on host %s: not fenced from here (no fence_command); relying on its "
                    "self-fencing", member.node_id, member.epoch, member.host)


def learn_outcomes(shared: Path, node_id: int, table: TxTable, now_glsn: int,
                   on_outcome: Callable[[set[int]], None] | None) -> bool:
    """A member that stopped cleanly wrote every outcome it decided into its ``xact`` file (shutdown checkpoint)
    before revoking its lease.  Its last outcome rounds went only to the members it knew: a node that joined while
    it was stopping would treat those XIDs as running for ever (rows locked, begins waiting), so every outcome there
    that ``table`` lacks is taken from the file, commits at ``now_glsn`` (``TxTable.learn_departed`` says why that
    timestamp is safe).  The cluster simulator's ``stop`` fault reaches this window (``fix_learn_outcomes``).
    Returns whether the file was read."""
    try:
        committed, aborted = statefiles.read_xact(shared, node_id)
    except MuheamError as exc:
        log.warning("could not read node %d's outcomes after it left (%s)", node_id, exc)
        return False
    new = table.learn_departed(committed, aborted, now_glsn)
    if new:
        log.info("learned %d outcome(s) of node %d from its outcome file after it left", len(new), node_id)
        if on_outcome is not None:
            on_outcome(new)
    return True


def sync_peer_recovered(shared: Path, node_id: int, commits: "CommitService", now_glsn: int,
                        on_outcome: Callable[[set[int]], None] | None) -> None:
    """``node_id``'s recovery ended.  If this node is a joiner that ``node_id`` never answered (it crashed before
    it sent its table), the outcomes it decided are learned from the outcome file its recoverer just wrote, and
    only then may the joiner take snapshots (``CommitRounds.member_removed``; the simulator's ``fix_sync_loss``).
    An unreadable file keeps the joiner waiting (its begins time out with a clear error) rather than letting a
    snapshot miss an acknowledged commit."""
    if node_id not in commits.sync_lost:
        return
    if learn_outcomes(shared, node_id, commits.table, now_glsn, on_outcome):
        log.info("learned node %d's outcomes from its recovery: the join may end", node_id)
        commits.departed_known(node_id)
    else:
        log.error("node %d's outcome file is unreadable after its recovery: this node cannot know whether it "
                  "acknowledged commits only it knew, and stays not ready; check the shared directory", node_id)
