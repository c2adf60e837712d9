"""The named states of a node, of the cluster, and the stop modes, as ``StrEnum``s.

Why enums: the same words were spelled as bare strings in the agent, the membership backend, the operator
commands and the peer watcher, so a typo was a silent never-matching comparison.  They are ``StrEnum``s, so each
member *is* its string: JSON in etcd, ``muheam list`` output and the CLI's ``--mode`` choices stay exactly the
words they were, and a value read back from etcd compares equal to the member.
"""

from __future__ import annotations

import enum


class NodeState(enum.StrEnum):
    """A node's state; every one but ``FENCED`` is also written to its member key in etcd."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    """Written just before a graceful stop revokes the lease: a watcher tells ``left`` from ``expired`` by it."""
    FENCED = "fenced"
    """Local only: the node lost its lease and is exiting (it can no longer write to etcd)."""


class ClusterState(enum.StrEnum):
    """The cluster's ``state`` key in etcd."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class StopMode(enum.StrEnum):
    """How a node stops, as PostgreSQL's ``pg_ctl -m``: ``smart`` waits for sessions, ``fast`` rolls them back,
    ``immediate`` exits at once (recovery then runs as after a crash)."""

    SMART = "smart"
    FAST = "fast"
    IMMEDIATE = "immediate"

    @property
    def harshness(self) -> int:
        """Order of the modes: a second, harsher stop request upgrades a stop in progress."""
        return _HARSHNESS[self]


_HARSHNESS = {StopMode.SMART: 0, StopMode.FAST: 1, StopMode.IMMEDIATE: 2}

__all__ = ["ClusterState", "NodeState", "StopMode"]
