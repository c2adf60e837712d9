"""Cluster-wide commit state at the edge: binds the pure commit rounds (``muheam.cluster.rounds``) to the mesh.

The rules live in ``muheam.cluster.rounds`` (who is asked, when a round completes, when a joiner is answered) and
``muheam.cluster.txstate`` (snapshots); the messages in ``muheam.cluster.txmessages``.  This module only feeds the
state machine from the mesh (message kind ``tx``, clocked, so every message merges the Lamport clock, which is
what orders commit timestamps after acknowledgements) and carries out its effects: sends, the callbacks of
completed rounds, outcome wake-ups and the join's ready callbacks.  A malformed body raises ``ValueError`` from
the handler, which the mesh counts (``rejected_body``) and drops.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Callable, Iterable

from muheam import failpoints
from muheam.net import wire
from muheam.net.mesh import Mesh
from muheam.cluster.rounds import CommitRounds, OutcomesLearned, RoundComplete, Send, Synced
from muheam.cluster.txmessages import Done
from muheam.cluster.txstate import TxTable

log = logging.getLogger("muheam.commits")

KIND = "tx"
OUTCOME_DELAY = 0.001
"""Seconds an unacknowledged outcome may wait in the mesh for another frame to the same peer: a snapshot there
that waits for it waits this much longer at most; under load the next prepare or ACK carries it for free."""
LABELS = {"Prep": "round", "Done": "round", "Ack": "round", "Horizon": "gossip", "Waits": "gossip",
          "Sync": "join", "State": "join"}
"""What each message is for, in the mesh's per-label counters (the benchmark's messages per transaction by
kind): the commit rounds proper, periodic gossip, and the one-off join."""


class CommitService:
    def __init__(self, mesh: Mesh, table: TxTable, members: Callable[[], Iterable[int]],
                 on_outcome: Callable[[set[int]], None]) -> None:
        """``members()``: node ids of the other live members (read once: the initial view; later changes come
        through ``member_added``/``member_removed``); ``on_outcome(xids)``: outcomes just learned."""
        self.mesh = mesh
        self.core = CommitRounds(members(), table)
        self.on_outcome = on_outcome
        self.sync_waiters: list[Callable[[], None]] = []
        self.callbacks: dict[int, Callable[[], None]] = {}
        mesh.on(KIND, self._on_message)

    # -- state the node, sessions and survivors read -----------------------------------------------------------
    @property
    def table(self) -> TxTable:
        return self.core.table

    @property
    def rounds(self) -> dict[int, set[int]]:
        return self.core.rounds

    @property
    def prepared_from(self) -> dict[int, set[int]]:
        return self.core.prepared_from

    @property
    def counters(self) -> Counter[str]:
        return self.core.counters

    @property
    def horizons(self) -> dict[int, int]:
        return self.core.horizons

    @property
    def sync_lost(self) -> set[int]:
        return self.core.sync_lost

    @property
    def ready(self) -> bool:
        return self.core.ready

    # -- join -------------------------------------------------------------------------------------------------
    def sync(self, peers: Iterable[int]) -> None:
        """Ask every member of the initial view for its table; ``ready`` once all answered (or left)."""
        self.core.sync(peers)
        self._run()

    def when_ready(self, then: Callable[[], None]) -> None:
        if self.ready:
            then()
        else:
            self.sync_waiters.append(then)

    # -- membership -------------------------------------------------------------------------------------------
    def member_added(self, node: int) -> None:
        self.core.member_added(node)
        self._run()

    def member_removed(self, node: int, outcomes_known: bool = False) -> None:
        self.core.member_removed(node, outcomes_known)
        self._run()

    def departed_known(self, node: int) -> None:
        """``node``'s outcomes are learned (its recovery ended): a joiner that lost its answer may be ready."""
        self.core.departed_known(node)
        self._run()

    # -- rounds -----------------------------------------------------------------------------------------------
    def prepare(self, xids: list[int], then: Callable[[], None]) -> None:
        """Mark ``xids`` prepared here and on every member; ``then()`` once all acknowledged."""
        self._start(self.core.prepare(xids), then)

    def finish(self, committed: list[tuple[int, int]], aborted: list[int], then: Callable[[], None],
               acked: bool = True) -> None:
        """Record outcomes here, tell every member, ``then()`` once all acknowledged; ``acked=False``: once the
        messages are with the links (they arrive unless the member leaves; see ``CommitRounds.finish``)."""
        if acked:
            self._start(self.core.finish(committed, aborted), then)
            return
        self.core.finish(committed, aborted, acked=False)
        self._run()
        then()

    def barrier(self, then: Callable[[], None]) -> None:
        """``then()`` once every member has every outcome this node sent before now: an acknowledged outcome round
        with nothing in it, which each member acknowledges after every earlier message on its FIFO link (lazy,
        unacknowledged outcomes included).  A checkpoint's redo pointer waits for one (``Sessions``)."""
        self.finish([], [], then)

    def _start(self, rid: int, then: Callable[[], None]) -> None:
        self.callbacks[rid] = then
        self._run()

    # -- gossip -----------------------------------------------------------------------------------------------
    def publish(self, horizon: int, waits: list[tuple[int, int]], waits_changed: bool) -> None:
        """Periodic: our pruning horizon, and our long row waits when they changed."""
        if failpoints.hit("commits.gossip"):
            return
        self.core.publish(horizon, waits, waits_changed)
        self._run()

    def horizon(self, local: int) -> int:
        return self.core.horizon(local)

    def stats(self) -> dict[str, int]:
        """Counters, plus what is still open: rounds waiting for acknowledgements, XIDs prepared here or by a
        peer whose outcome this node has not heard (both drain to zero once the cluster is idle)."""
        return {**self.core.counters, "rounds_open": len(self.core.rounds),
                "prepared_now": len(self.core.table.prepared)}

    def remote_waits(self) -> list[tuple[int, int]]:
        return self.core.remote_waits()

    # -- wire -------------------------------------------------------------------------------------------------
    def _on_message(self, msg: wire.PeerMessage) -> None:
        if msg.body == ["sync"] and failpoints.hit("commits.sync_answer"):
            return  # a joiner's table request, not answered (or this node crashes right here)
        self.core.on_wire(msg.sender, msg.body)
        self._run()

    def _run(self) -> None:
        """Carry out the core's effects, including those produced by the callbacks they run."""
        while True:
            effects = self.core.drain()
            if not effects:
                return
            for eff in effects:
                if isinstance(eff, Send):
                    # an unacknowledged outcome waits a moment for the next frame to its peer (the next prepare,
                    # an ACK, lock traffic) instead of costing a frame of its own
                    lazy = OUTCOME_DELAY if isinstance(eff.msg, Done) and eff.msg.round == 0 else None
                    self.mesh.send(eff.dest, KIND, eff.msg.to_wire(), LABELS.get(type(eff.msg).__name__, KIND), lazy)
                elif isinstance(eff, RoundComplete):
                    then = self.callbacks.pop(eff.round, None)
                    if then is not None:
                        then()
                elif isinstance(eff, OutcomesLearned):
                    self.on_outcome(set(eff.xids))
                elif isinstance(eff, Synced):
                    waiters, self.sync_waiters = self.sync_waiters, []
                    for then in waiters:
                        then()
