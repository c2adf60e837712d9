"""From a config to the security of a process's sockets: a node's (``NodeSecurity``), the WAL stream
publisher's (``publisher_security``) and a client's (``resolve_client``).

A client finds its key the same way everywhere (the Python client, the CLI, the WAL stream subscriber):
``key=`` when the caller gives one (a path or a ``ClientSecurity``), else ``$MUHEAM_CLIENT_KEY`` (a path), else
the config named by ``-c`` or ``$MUHEAM_CONFIG``, else ``./muheam.toml`` (its ``client_key``, or the admin key
made at init under its run directory).  A config with ``security = "none"``, or no key and no config at all,
means a plain connection: a CURVE node refuses it and the client says so (``muheam.net.request``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import zmq

from muheam import config as config_mod
from muheam.config import Config
from muheam.errors import ConfigError
from muheam.security import keys
from muheam.security.keys import CLIENT_KEY_ENV, KeyPair, Keyring
from muheam.security.sockets import DOMAIN_CLIENT, DOMAIN_PEER, ClientSecurity, Guard, ServerSecurity


def server_pair(cfg: Config) -> KeyPair:
    return keys.load_secret(keys.server_secret_file(cfg.run_dir), "server key")


def start_guard(cfg: Config, ctx: zmq.Context[Any]) -> Guard:
    guard = Guard(ctx, Keyring(cfg.shared_dir))
    guard.start()
    return guard


@dataclass
class NodeSecurity:
    """A node's CURVE setup: its own pair (peer port, and as a client of its peers' ports), the server pair of
    its client port, and the guard answering ZAP in its context."""

    cfg: Config
    pair: KeyPair
    guard: Guard
    peer: ServerSecurity
    client: ServerSecurity

    @classmethod
    def start(cls, cfg: Config, node_id: int, ctx: zmq.Context[Any]) -> "NodeSecurity":
        keys.ensure_node_key(cfg.shared_dir, cfg.run_dir, node_id)  # a node added after init, on this host
        pair = keys.load_secret(keys.node_secret_file(cfg.run_dir, node_id), f"node {node_id} key")
        server = server_pair(cfg)
        guard = start_guard(cfg, ctx)
        return cls(cfg, pair, guard, ServerSecurity(pair, DOMAIN_PEER, guard),
                   ServerSecurity(server, DOMAIN_CLIENT, guard))

    def to_peer(self, node_id: int) -> ClientSecurity:
        """How to connect to peer ``node_id``'s port: with our key, expecting its key (read now, so a node that
        restarted with a new key is reached with it)."""
        public = keys.load_public(keys.node_public_file(self.cfg.shared_dir, node_id), f"node {node_id} key")
        return ClientSecurity(self.pair, public)

    def close(self) -> None:
        self.guard.close()


def publisher_security(cfg: Config, ctx: zmq.Context[Any]) -> ServerSecurity | None:
    """The WAL stream publisher's port: the client-facing server key, client keys let in (None: security off)."""
    if cfg.security == "none":
        return None
    pair = server_pair(cfg)
    return ServerSecurity(pair, DOMAIN_CLIENT, start_guard(cfg, ctx))


def client_for_config(cfg: Config) -> ClientSecurity | None:
    if cfg.security == "none":
        return None
    if cfg.client_key is None:
        path = keys.client_secret_file(cfg.run_dir, keys.ADMIN_CLIENT)
        if not path.exists():
            return None  # a host without the admin key (or before init): a CURVE node will say it wants one
    else:
        path = cfg.client_key
    return client_from_file(path, f"client key (config {cfg.source})" if cfg.source else "client key")


def client_from_file(path: Path, what: str = "client key") -> ClientSecurity:
    pair = keys.load_secret(path, what)
    if not pair.server:
        raise ConfigError(f"{what} file {path} does not name the server key (no 'server-key' metadata); make it "
                          "with 'muheam keys add-client NAME'")
    return ClientSecurity(pair, pair.server)


def client_for(cfg: Config, env: Mapping[str, str] | None = None) -> ClientSecurity | None:
    """The CLI's client key once it has loaded its config: ``$MUHEAM_CLIENT_KEY``, else the config's."""
    env = os.environ if env is None else env
    if env.get(CLIENT_KEY_ENV):
        return client_from_file(Path(env[CLIENT_KEY_ENV]), f"client key (${CLIENT_KEY_ENV})")
    return client_for_config(cfg)


def resolve_client(key: "str | os.PathLike[str] | ClientSecurity | None" = None, config: str | Path | None = None,
                   env: Mapping[str, str] | None = None) -> ClientSecurity | None:
    """The client key, by the rule in the module docstring; None: connect without CURVE."""
    if isinstance(key, ClientSecurity):
        return key
    if key is not None:
        return client_from_file(Path(key), "client key (key=)")
    env = os.environ if env is None else env
    if env.get(CLIENT_KEY_ENV):
        return client_from_file(Path(env[CLIENT_KEY_ENV]), f"client key (${CLIENT_KEY_ENV})")
    path = config or env.get("MUHEAM_CONFIG") or None
    if path is None and Path("muheam.toml").is_file():
        path = "muheam.toml"
    if path is None:
        return None
    cfg = config_mod.load(path, env=env, require_shared_dir=False)
    return client_for_config(cfg)
