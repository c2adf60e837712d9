"""The simulator's vocabulary: its configuration and fix switches, what a run explored, a chain's image, and the
per-node and per-client state that ``muheam.sim.cluster.Cluster`` steps through."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from locking.clock import LamportClock
from locking.manager import LockManager
from muheam.cluster.rounds import CommitRounds
from muheam.net.peerlink import Inbound

FAULTS = ("crash", "pause", "reset", "reorder", "duplicate", "join", "claim_fail", "cut", "stop")


class Violation(AssertionError):
    """An invariant failed (or progress stopped); ``str`` names seed, step and why."""


@dataclass(frozen=True)
class Switches:
    """Each fix of issue 16 that the simulator models; all on is the shipped behaviour."""

    fix_clock_floor: bool = True    # (a) survivors' clocks pass the dead node's last GLSN before acting for it
    fix_ext_floor: bool = True      # (b) an invalid ext: grant keeps the lock's last released size
    fix_fence: bool = True          # (c) survivors kill a removed (paused) node before recovering it
    fix_peer_links: bool = True     # (d) resets lose nothing: links resend, drop duplicates, restore order
    fix_claim_retry: bool = True    # (f) a failed recovery claim is retried
    fix_partition: bool = True      # (e) a member cut off from its peers only is removed by the largest clique
    fix_learn_outcomes: bool = True  # (g) a cleanly stopped member's outcomes are learned from its xact file
    fix_retake: bool = True         # (h) the outcome round is not acknowledged; a snapshot that waited
                                    # for a commit at or above its STS is taken again
    fix_sync_loss: bool = True      # (i) a joiner whose sync peer left unanswered waits for its recovery


@dataclass(frozen=True)
class SimConfig:
    nodes: int = 3
    txns: int = 2                   # transactions per client
    chains: int = 2
    faults: int = 3                 # at most this many faults, within the fault window
    fault_window: int = 120         # steps
    fault_kinds: tuple[str, ...] = FAULTS
    lease: int = 25                 # steps a paused node keeps its lease
    max_steps: int = 4000
    lazy_outcome: bool = False      # the outcome round unacknowledged (the config's lazy_outcome), else acknowledged
    switches: Switches = field(default_factory=Switches)


@dataclass
class Explored:
    """What a run (or many) exercised."""

    schedules: int = 0
    steps: int = 0
    frames: int = 0
    commits_acked: int = 0
    snapshots_checked: int = 0
    invalid_grants: int = 0
    recoveries: int = 0
    faults: Counter[str] = field(default_factory=Counter)

    def add(self, other: "Explored") -> None:
        for name in ("schedules", "steps", "frames", "commits_acked", "snapshots_checked", "invalid_grants",
                     "recoveries"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.faults.update(other.faults)


@dataclass(frozen=True)
class Image:
    glsn: int                       # packed GLSN of the last change
    xids: frozenset[int]

    def encode(self) -> bytes:
        return self.glsn.to_bytes(8, "big") + b"".join(x.to_bytes(4, "big") for x in sorted(self.xids))

    @classmethod
    def decode(cls, raw: bytes) -> "Image":
        return cls(int.from_bytes(raw[:8], "big"),
                   frozenset(int.from_bytes(raw[i:i + 4], "big") for i in range(8, len(raw), 4)))


EMPTY = Image(0, frozenset())


@dataclass
class Client:
    txns: int
    phase: str = "idle"             # idle xid snap write hold ext prep commit done-wait
    xid: int = 0
    sts: int = 0
    waits: frozenset[int] = frozenset()
    acked_then: frozenset[int] = frozenset()
    todo: list[bytes] = field(default_factory=list)
    wrote: list[bytes] = field(default_factory=list)
    images: dict[bytes, Image] = field(default_factory=dict)
    grant_size: int = 0
    hold: int = 0                   # client turns a chain (or the extension lock) is kept before it goes


@dataclass
class Node:
    nid: int
    clock: LamportClock
    locks: LockManager
    rounds: CommitRounds
    client: Client
    cursor: int
    alive: bool = True
    paused_until: int | None = None
    zombie: bool = False
    stopping: bool = False          # a clean stop: no membership events, no new transactions
    stop_timed_out: bool = False    # its last rounds did not finish in time: it leaves anyway
    size: int = 0                   # the relation size this node's cache knows
    wal: list[tuple[str, int, int, object]] = field(default_factory=list)  # (kind, glsn, xid, what)
    inbound: dict[int, Inbound[tuple[str, int, object]]] = field(default_factory=dict)
    seq_out: dict[int, int] = field(default_factory=dict)
    sent: dict[int, list[tuple[int, str, int, object]]] = field(default_factory=dict)  # per dest, by seq
    callbacks: dict[int, str] = field(default_factory=dict)
    dead_known: set[int] = field(default_factory=set)
    to_claim: list[int] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.alive and self.paused_until is None
