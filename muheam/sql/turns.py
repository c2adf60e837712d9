"""A time budget for the SQL statements of one loop turn.

A statement's row operations usually answer at once (a row the node owns, a lock nobody else holds), and its
generator then goes on in the same call: a 5,000-row ``INSERT`` is 5,000 operations in one loop turn.  The node's
loop watch takes a turn longer than half its lease for a stalled loop and fences the node (``muheam.node.watch``),
and everything else the loop serves (peers' lock requests, beats, other clients) waits that long.  So a task whose
operations keep answering at once checks the turn's budget after each one; past it, the rest of the statement
continues at the next turn, exactly as if that last operation had answered later (``Task``: cancelling and closing
treat it alike).  Each parked task runs at least one operation per turn, oldest first: none starves.

As the recovery sweep's ``SWEEP_BUDGET`` (``muheam.recovery.survivors``): the node's loop asks ``pending`` to poll
without sleeping while statements wait here.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Callable

STATEMENT_BUDGET = 0.05
"""Seconds of synchronous statement work per loop turn, for all the node's SQL connections together."""


class Turns:
    def __init__(self, budget: float = STATEMENT_BUDGET, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget, self.clock = budget, clock
        self.deadline = math.inf
        self.parked: deque[Callable[[], None]] = deque()
        self.slices = 0
        """Times a statement was continued at a later turn (the node's status shows it)."""

    def start(self) -> None:
        """A loop turn begins: its statements may run ``budget`` seconds from now."""
        self.deadline = self.clock() + self.budget

    def spent(self) -> bool:
        return self.clock() >= self.deadline

    def later(self, resume: Callable[[], None]) -> None:
        self.slices += 1
        self.parked.append(resume)

    @property
    def pending(self) -> bool:
        return bool(self.parked)

    def run(self) -> None:
        """Continue the statements parked before this call (one parked again now waits for the next turn)."""
        for _ in range(len(self.parked)):
            self.parked.popleft()()
