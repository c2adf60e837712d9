"""Named failpoints: places inside a node's loop turn where a test makes the node pause, stop, crash or drop a
message (as etcd's gofail).  They are always compiled in and do nothing unless armed by the environment:

    MUHEAM_FAILPOINTS="ownership.export@2=1*sigstop;commits.gossip=drop"

Each entry is ``NAME[@NODE]=[COUNT*]ACTION``: ``@NODE`` arms it only in that node's process (the variable is
inherited by every node of a ``cluster up``), ``COUNT*`` fires it that many times and then disarms it.  Actions:

* ``pause(S)``: sleep S seconds right there (the whole loop turn waits, as under a long GC pause);
* ``sigstop``: the process stops itself with SIGSTOP (a test resumes it with SIGCONT, or the survivors fence it);
* ``crash``: the process kills itself with SIGKILL (a crash at exactly that point);
* ``drop``: ``hit`` returns True and the caller drops what it was about to send or do;
* ``fail``: ``hit`` returns True and the caller fails that step as it fails in the field (a write: ``OSError``
  ENOSPC, as on a full file system).

Unarmed, ``hit`` is one dictionary lookup on an empty dict.  A malformed spec is refused at node start with an
error naming the entry, never ignored: a test that believes a failpoint armed must not pass by accident.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from dataclasses import dataclass

from muheam.errors import ConfigError

log = logging.getLogger("muheam.failpoints")

ENV = "MUHEAM_FAILPOINTS"
_ENTRY = re.compile(r"^(?P<name>[a-z][a-z0-9_.]*)(?:@(?P<node>\d+))?=(?:(?P<count>\d+)\*)?"
                    r"(?P<action>pause\((?P<seconds>\d+(?:\.\d+)?)\)|sigstop|crash|drop|fail)$")


@dataclass
class _Point:
    action: str
    seconds: float = 0.0
    remaining: int | None = None
    fired: int = 0


_armed: dict[str, _Point] = {}


def parse(spec: str, node_id: int | None) -> dict[str, _Point]:
    """The failpoints of ``spec`` that apply to ``node_id`` (entries for other nodes are checked, then left)."""
    points: dict[str, _Point] = {}
    for entry in (e.strip() for e in spec.split(";")):
        if not entry:
            continue
        m = _ENTRY.match(entry)
        if m is None:
            raise ConfigError(f"{ENV}: cannot read {entry!r}; write NAME[@NODE]=[COUNT*]ACTION with ACTION one of "
                              f"pause(SECONDS), sigstop, crash, drop, fail")
        if m["node"] is not None and node_id is not None and int(m["node"]) != node_id:
            continue
        action = m["action"].split("(")[0]
        points[m["name"]] = _Point(action, float(m["seconds"] or 0), int(m["count"]) if m["count"] else None)
    return points


def arm_from_env(node_id: int | None, environ: dict[str, str] | None = None) -> list[str]:
    """Arm what ``MUHEAM_FAILPOINTS`` says for this process; returns the names armed (logged: a node running
    with failpoints must say so)."""
    spec = (os.environ if environ is None else environ).get(ENV, "")
    _armed.clear()
    _armed.update(parse(spec, node_id))
    if _armed:
        log.warning("failpoints armed (%s): %s", ENV, ", ".join(sorted(_armed)))
    return sorted(_armed)


def disarm() -> None:
    _armed.clear()


def hit(name: str) -> bool:
    """Run the failpoint ``name`` if armed; True means "drop it" (``drop``) or "fail it" (``fail``); the other
    actions return False."""
    if not _armed:
        return False
    point = _armed.get(name)
    if point is None:
        return False
    if point.remaining is not None:
        if point.remaining <= 0:
            return False
        point.remaining -= 1
    point.fired += 1
    if point.action in ("drop", "fail"):
        if point.action == "fail":
            log.warning("failpoint %s: fail", name)
        return True
    log.warning("failpoint %s: %s", name, point.action if point.action != "pause" else f"pause {point.seconds} s")
    for handler in logging.getLogger().handlers:  # the log line must be on disk before the process stops
        handler.flush()
    if point.action == "pause":
        time.sleep(point.seconds)
    elif point.action == "sigstop":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif point.action == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    return False


def fired(name: str) -> int:
    point = _armed.get(name)
    return 0 if point is None else point.fired
