"""The node's side of commit scopes: replicas' confirmations in, scoped commits answered
(``muheam.cluster.scopes`` holds the rules and what a client is told).

A replicator (``muheam replicate -c``) sends ``replica_confirm`` to every node's client port whenever its positions
move (and every half second anyway, so a restarted node learns them): ``{"op": "replica_confirm", "name",
"received_glsn", "flushed_glsn", "applied_glsn"}``.  Replicas etcd lists at start count for ``ALL`` at once.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from muheam.cluster.scopes import ScopeError, ScopeWaits
from muheam.cluster.sessions import Sessions
from muheam.errors import ConfigError, EtcdUnavailable, MuheamError
from muheam.membership import MembershipBackend
from muheam.net.clientport import ClientPort, Deferred, RequestError

log = logging.getLogger("muheam.replicas")


def _glsn(req: dict[str, Any], key: str) -> int:
    v = req.get(key, 0)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 1 << 64:
        raise RequestError("bad_request", f"replica_confirm needs an unsigned 64-bit integer '{key}'")
    return v


def wire(sessions: Sessions, port: ClientPort, default: str, backend: Callable[[], MembershipBackend],
         cluster: str) -> ScopeWaits:
    try:
        scopes = ScopeWaits(default or None)
    except ScopeError as exc:
        raise ConfigError(f"commit_scope: {exc}") from None
    try:
        scopes.known(backend().replicas(cluster))
    except (EtcdUnavailable, MuheamError) as exc:
        log.warning("could not list the replicas in etcd (%s); ALL scopes count those that confirm from now", exc)

    def after_commit(xid: int, glsn: int, scope: str | None, reply: Deferred, released: bool) -> None:
        scopes.wait(xid, glsn, scope, reply.resolve, reply.fail, released)

    def confirm(req: dict[str, Any]) -> Any:
        name = req.get("name")
        if not isinstance(name, str) or not 0 < len(name) <= 63:
            raise RequestError("bad_request", "replica_confirm needs the replica's 'name'")
        scopes.confirm(name, _glsn(req, "received_glsn"), _glsn(req, "flushed_glsn"), _glsn(req, "applied_glsn"))
        return {"waiting": len(scopes.waits)}

    def check(text: str) -> None:
        scopes.scope(text)  # ScopeError (a ValueError) names the form

    sessions.after_commit = after_commit
    sessions.release_scope = scopes.release
    sessions.check_scope = check
    port.register("replica_confirm", confirm)
    return scopes


__all__ = ["wire"]
