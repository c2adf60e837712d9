"""``muheam reload``: a running node re-reads its config file and applies what can change live.

Live: ``lock_timeout`` and ``idle_in_transaction_timeout`` (the sessions read them at every check) and
``log_level``.  Everything else (endpoints, lease TTL, etcd, the shared directory) needs a restart: the answer
lists such settings that differ, so the operator knows, and nothing of them is applied.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from muheam import config as config_mod
from muheam.errors import MuheamError
from muheam.net.clientport import RequestError

if TYPE_CHECKING:
    from muheam.node.agent import NodeAgent

log = logging.getLogger("muheam.node")

LIVE = ("lock_timeout", "idle_in_transaction_timeout", "log_level")
RESTART = ("lease_ttl", "etcd_endpoints", "shared_dir", "cluster_name", "fence_command", "sql_auth")


def apply(agent: "NodeAgent") -> dict[str, Any]:
    """Called on the event loop (a client-port request): returns what changed and what would need a restart."""
    if agent.cfg.source is None:
        raise RequestError("bad_request", "this node was started without a config file; nothing to reload")
    try:
        new = config_mod.load(agent.cfg.source, require_shared_dir=False)
    except MuheamError as exc:
        raise RequestError("bad_request", f"{agent.cfg.source}: {exc}; fix it and reload again") from None
    old = agent.cfg
    changed = {k: [getattr(old, k), getattr(new, k)] for k in LIVE if getattr(old, k) != getattr(new, k)}
    restart = [k for k in RESTART if getattr(old, k) != getattr(new, k)]
    mine_old, mine_new = old.nodes.get(agent.node_id), new.nodes.get(agent.node_id)
    if mine_old != mine_new:
        restart.append(f"nodes.{agent.node_id}")
    if agent.sessions is not None:
        agent.sessions.lock_timeout = new.lock_timeout
        agent.sessions.idle_timeout = new.idle_in_transaction_timeout
    logging.getLogger().setLevel(getattr(logging, new.log_level, logging.INFO))
    agent.cfg = dataclasses.replace(old, **{k: getattr(new, k) for k in LIVE})
    log.info("reloaded %s: changed %s%s", old.source, changed or "nothing",
             f"; needs a restart to apply: {', '.join(restart)}" if restart else "")
    return {"node_id": agent.node_id, "changed": changed, "needs_restart": restart}
