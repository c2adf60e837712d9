"""Operator-facing errors.

Every error the CLI can report is a ``MuheamError`` whose message names the problem and the next step; the CLI
prints it on one line and exits with the error's code, never with a traceback.  Exit codes follow patronictl
and pg tools: 0 success, 1 the operation failed, 2 bad usage or configuration.
"""

from __future__ import annotations


class MuheamError(Exception):
    """An error with a message meant for an operator."""

    exit_code = 1


class ConfigError(MuheamError):
    """A configuration value is missing or wrong; the message names the key and the fix."""

    exit_code = 2


class EtcdUnavailable(MuheamError):
    """etcd could not be reached or did not answer in time."""


class ClusterStateError(MuheamError):
    """The cluster, the shared directory or etcd is not in the state the command needs."""


class NodeIdInUse(MuheamError):
    """Another live node holds the lease on this node id."""


class Fenced(MuheamError):
    """This node lost (or could not renew) its lease and must not touch shared storage."""

    exit_code = 3
