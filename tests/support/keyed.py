"""Sockets for tests that talk ZeroMQ to nodes directly (garbage, hostile peers): made through the same
``muheam.security`` factories as the code's own, with the keys a real client or member would hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zmq

from muheam.security import keys
from muheam.security.setup import resolve_client
from muheam.security.sockets import ClientSecurity, client_socket


def client_dealer(ctx: zmq.Context[Any]) -> zmq.Socket[Any]:
    """A DEALER with the client key a program finds (``MUHEAM_CLIENT_KEY``: the fixture's cluster)."""
    return client_socket(ctx, zmq.DEALER, resolve_client())


def node_key(cluster_dir: Path, node_id: int) -> keys.KeyPair:
    """Node ``node_id``'s key pair of a local cluster; made (and so let in by every node) if it has none: a
    member-to-be, e.g. the made-up node 9 the garbage tests pretend to be."""
    keys.ensure_node_key(cluster_dir / "shared", cluster_dir, node_id)
    return keys.load_secret(keys.node_secret_file(cluster_dir, node_id))


def peer_dealer(ctx: zmq.Context[Any], cluster_dir: Path, as_node: int, to_node: int,
                pair: keys.KeyPair | None = None) -> zmq.Socket[Any]:
    """A DEALER to node ``to_node``'s peer port holding ``as_node``'s key (or ``pair``); None-keyed if the
    cluster runs without security."""
    server_file = keys.node_public_file(cluster_dir / "shared", to_node)
    if not server_file.exists():
        return ctx.socket(zmq.DEALER)
    own = pair if pair is not None else node_key(cluster_dir, as_node)
    return client_socket(ctx, zmq.DEALER, ClientSecurity(own, keys.load_public(server_file, "server")))
