"""What the survivors do when a member departs, before anything else may take what it held: fence a crashed
member from outside (STONITH, ``muheam.node.fence``), or take the outcomes a cleanly stopped member decided last
from its outcome file."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from muheam.cluster.txstate import TxTable
from muheam.engine import statefiles
from muheam.errors import MuheamError
from muheam.membership import Member
from muheam.node import fence as fence_mod

log = logging.getLogger("muheam.node")


def fence_peer(member: Member, our_host: str, fence_command: str) -> None:
    """Make sure a crashed peer's process can write nothing more: a node stopped inside a loop turn resumes past
    its lease and finishes the turn -- page write-through, checkpoint, outcome file -- before its own fence check.
    Every survivor does it (idempotent) before reading the dead node's WAL tail, so the WAL it reads is final."""
    if member.host == our_host:
        outcome = fence_mod.kill_incarnation(member.pid, member.node_id, member.started_at)
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
                   on_outcome: Callable[[set[int]], None] | None) -> None:
    """A member that stopped cleanly wrote every outcome it decided into its ``xact`` file (shutdown checkpoint)
    before revoking its lease.  Its last outcome rounds went only to the members it knew: a node that joined while
    it was stopping would treat those XIDs as running for ever (rows locked, begins waiting), so every outcome there
    that ``table`` lacks is taken from the file, commits at ``now_glsn`` (``TxTable.learn_departed`` says why that
    timestamp is safe).  The cluster simulator's ``stop`` fault reaches this window (``fix_learn_outcomes``)."""
    try:
        committed, aborted = statefiles.read_xact(shared, node_id)
    except MuheamError as exc:
        log.warning("could not read node %d's outcomes after it left (%s)", node_id, exc)
        return
    new = table.learn_departed(committed, aborted, now_glsn)
    if not new:
        return
    log.info("learned %d outcome(s) of node %d from its outcome file after it left", len(new), node_id)
    if on_outcome is not None:
        on_outcome(new)
