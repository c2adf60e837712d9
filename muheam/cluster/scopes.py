"""Commit scopes (seed 004): a COMMIT answered only once replicas confirm it, and what the client is told when they
do not in time (pure: no I/O; the node feeds it confirmations and ticks).

A scope is written as PGD's commit scope rules, over the one group this cluster has, its replicas::

    ANY 1 (replicas) ON applied ABORT ON 2s
    ALL (replicas) ON flushed DEGRADE ON 500ms
    ANY 2 (replicas)                             (ON flushed; no timeout: waits until confirmed, as PostgreSQL's
                                                  synchronous replication does)

* ``ANY n``: n distinct replicas confirm; ``ALL``: every replica this node knows (it has heard from since it
  started, or etcd listed when it started), and at least one.
* ``ON received`` (the replicator decoded the COMMIT), ``ON flushed`` (durable in the replica's PostgreSQL),
  ``ON applied`` (visible to the replica's readers).  A replica confirms GLSN positions: a commit with timestamp
  G is confirmed at a level once the replica's position at that level is >= G (replicas apply in commit order).

**When the timeout passes** the transaction is already committed: the scope's wait starts only after its COMMIT
record is durable and every member acknowledged its prepare, its outcome on its way to them (a snapshot taken
anywhere from then on sees it: I5, I7), because a replica can only see a transaction
that the merged stream commits.  It cannot be undone without lying to someone who already read it on another
node, so it never is.  What the client hears:

* ``ABORT ON t``: the error ``ReplicaNotConfirmed``, whose message says that the transaction **is committed** on
  the cluster (durable, visible on every node) and names its XID, commit GLSN, the scope and the time waited.
  The data matches: the change is there, and reaches the replicas when they catch up.  (PGD requests an abort
  and may commit anyway while the client hears "aborted"; PostgreSQL says "committed locally, but might not have
  been replicated".  MUHEAM tells the truth as PostgreSQL does, as an error so a client that required the scope
  does not take it for success.)
* ``DEGRADE ON t``: success, with ``"scope": "degraded"`` in the reply, and the node stops waiting for that scope:
  later commits under it are answered at once, degraded, until a confirmation covers the newest degraded commit;
  then the scope is enforced again.
* Confirmed in time: success with ``"scope": "confirmed"``.  A commit without a scope (no cluster
  ``commit_scope``, none given with the commit) or one that wrote nothing is answered as before.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

LEVELS = ("received", "flushed", "applied")
_RULE = re.compile(
    r"^\s*(?:ANY\s+(?P<n>[1-9][0-9]{0,2})|(?P<all>ALL))\s*\(\s*replicas\s*\)"
    r"(?:\s+ON\s+(?P<level>received|flushed|applied))?"
    r"(?:\s+(?P<action>ABORT|DEGRADE)\s+ON\s+(?P<t>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>ms|s))?\s*$", re.IGNORECASE)
Ok = Callable[[dict[str, Any]], None]
Fail = Callable[[str, str], None]


class ScopeError(ValueError):
    """A commit scope that does not parse; the message shows the form."""


@dataclass(frozen=True)
class CommitScope:
    text: str
    any_n: int | None
    """``ANY n``: n; ``ALL``: None."""
    level: str = "flushed"
    action: str | None = None
    """``abort``, ``degrade`` or None (wait until confirmed)."""
    timeout: float | None = None

    @classmethod
    def parse(cls, text: object) -> "CommitScope":
        m = _RULE.match(text) if isinstance(text, str) else None
        if m is None:
            raise ScopeError(f"commit scope {text!r} is not of the form 'ANY n (replicas) | ALL (replicas)' "
                             "[ON received|flushed|applied] [ABORT|DEGRADE ON <n>s|<n>ms], e.g. "
                             "'ANY 1 (replicas) ON applied ABORT ON 2s'")
        t = None
        if m["t"] is not None:
            t = float(m["t"]) / (1000.0 if m["unit"].lower() == "ms" else 1.0)
        return cls(" ".join(str(text).split()), None if m["all"] else int(m["n"]),
                   (m["level"] or "flushed").lower(), m["action"].lower() if m["action"] else None, t)


@dataclass
class Confirmed:
    """One replica's positions (commit GLSNs), as it last reported them to this node."""

    received: int = 0
    flushed: int = 0
    applied: int = 0
    at: float = 0.0

    def at_level(self, level: str) -> int:
        return int(getattr(self, level))


@dataclass
class _Wait:
    xid: int
    glsn: int
    scope: CommitScope
    deadline: float | None
    started: float
    ok: Ok
    fail: Fail


@dataclass
class ScopeWaits:
    """Commits waiting for their scope; confirmations and timeouts settle them (module docstring)."""

    default: str | None = None
    replicas: dict[str, Confirmed] = field(default_factory=dict)
    waits: list[_Wait] = field(default_factory=list)
    degraded: dict[str, int] = field(default_factory=dict)
    """Scope text -> newest commit GLSN answered degraded."""
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("waited", "confirmed", "timed_out", "degraded", "confirmations", "cancelled"), 0))
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._parsed: dict[str, CommitScope] = {}
        if self.default is not None:
            self.scope(self.default)

    def known(self, names: Iterable[str]) -> None:
        """Replicas listed elsewhere (etcd at start): ``ALL`` waits for them too."""
        for n in names:
            self.replicas.setdefault(n, Confirmed())

    def scope(self, text: str) -> CommitScope:
        if not isinstance(text, str):
            return CommitScope.parse(text)  # raises ScopeError naming the form
        s = self._parsed.get(text)
        if s is None:
            if len(self._parsed) > 64:
                self._parsed.clear()
            s = self._parsed[text] = CommitScope.parse(text)
        return s

    def satisfied(self, scope: CommitScope, glsn: int) -> bool:
        have = sum(1 for c in self.replicas.values() if c.at_level(scope.level) >= glsn)
        if scope.any_n is None:
            return bool(self.replicas) and have == len(self.replicas)
        return have >= scope.any_n

    def wait(self, xid: int, glsn: int, scope_text: str | None, ok: Ok, fail: Fail, released: bool = False) -> None:
        """A commit that is durable and known to every member; answer it under its scope (or the default).
        ``released``: its client cancelled on the way here; a wait it would start ends at once (``release``)."""
        text = scope_text if scope_text is not None else self.default
        if text is None:
            ok({"xid": xid})
            return
        scope = self.scope(text)
        if self.satisfied(scope, glsn):
            self.counters["confirmed"] += 1
            ok({"xid": xid, "scope": "confirmed"})
            return
        if scope.text in self.degraded:
            self.degraded[scope.text] = max(self.degraded[scope.text], glsn)
            self.counters["degraded"] += 1
            ok({"xid": xid, "scope": "degraded"})
            return
        if released:
            self.counters["cancelled"] += 1
            ok({"xid": xid, "scope": "cancelled"})
            return
        now = self.clock()
        self.counters["waited"] += 1
        self.waits.append(_Wait(xid, glsn, scope, None if scope.timeout is None else now + scope.timeout, now,
                                ok, fail))

    def confirm(self, name: str, received: int, flushed: int, applied: int) -> None:
        c = self.replicas.setdefault(name, Confirmed())
        c.received, c.flushed, c.applied = max(c.received, received), max(c.flushed, flushed), max(c.applied, applied)
        c.at = self.clock()
        self.counters["confirmations"] += 1
        for text, glsn in list(self.degraded.items()):
            if self.satisfied(self.scope(text), glsn):
                del self.degraded[text]
        if self.waits:
            keep = []
            for w in self.waits:
                if self.satisfied(w.scope, w.glsn):
                    self.counters["confirmed"] += 1
                    w.ok({"xid": w.xid, "scope": "confirmed"})
                else:
                    keep.append(w)
            self.waits = keep

    def release(self, xid: int) -> bool:
        """Stop waiting for ``xid``'s scope now (its client cancelled): answered ``"scope": "cancelled"``, the
        transaction committed; False if it does not wait."""
        for w in self.waits:
            if w.xid == xid:
                self.waits.remove(w)
                self.counters["cancelled"] += 1
                w.ok({"xid": xid, "scope": "cancelled"})
                return True
        return False

    def tick(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        if not any(w.deadline is not None and now >= w.deadline for w in self.waits):
            return
        keep = []
        for w in self.waits:
            if w.deadline is None or now < w.deadline:
                keep.append(w)
                continue
            self.counters["timed_out"] += 1
            if w.scope.action == "degrade":
                self.degraded[w.scope.text] = max(self.degraded.get(w.scope.text, 0), w.glsn)
                w.ok({"xid": w.xid, "scope": "degraded"})
            else:
                w.fail("ReplicaNotConfirmed", not_confirmed_message(w.xid, w.glsn, w.scope, now - w.started))
        self.waits = keep

    def status(self) -> dict[str, Any]:
        now = self.clock()
        return {"default": self.default, "waiting": len(self.waits), "degraded": sorted(self.degraded),
                "counters": dict(self.counters),
                "replicas": {n: {"received_glsn": c.received, "flushed_glsn": c.flushed, "applied_glsn": c.applied,
                                 "age_s": round(now - c.at, 3) if c.at else None}
                             for n, c in sorted(self.replicas.items())}}


def not_confirmed_message(xid: int, glsn: int, scope: CommitScope, waited: float) -> str:
    return (f"transaction {xid} IS COMMITTED on the cluster (durable, visible on every node; commit GLSN {glsn}), "
            f"but the replicas did not confirm it within {waited:.1f} s under commit scope '{scope.text}'; it is "
            "not rolled back and reaches the replicas once they catch up")


__all__ = ["CommitScope", "Confirmed", "LEVELS", "ScopeError", "ScopeWaits", "not_confirmed_message"]
