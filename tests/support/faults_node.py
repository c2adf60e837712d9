"""Run ``muheam node start`` with its peer traffic routed through the test's proxies (tests/faults/test_faults.py).

    python -m tests.support.faults_node --bind tcp://127.0.0.1:REAL [--route tcp://A:1=tcp://B:2 ...] -- node start ...

A node binds and advertises the same ``peer_endpoint``, so a proxy cannot sit between it and its peers without
help.  This wrapper changes addresses only, nothing of the protocol: the node's ROUTER binds ``--bind`` while the
node still advertises its configured endpoint (where the test's proxy listens and forwards to ``--bind``), and
each outbound DEALER connects to the ``--route`` replacement of a peer's endpoint (a proxy forwarding to that
peer).  Pausing the proxies cuts the node off from its peers and from nothing else.  An exception escaping the
node is logged with its traceback before the CLI turns it into one line.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Any


def main(argv: list[str]) -> None:
    bind = ""
    routes: dict[str, str] = {}
    while argv and argv[0] != "--":
        flag, value, argv = argv[0], argv[1], argv[2:]
        if flag == "--bind":
            bind = value
        elif flag == "--route":
            old, new = value.split("=", 1)
            routes[old] = new
        else:
            raise SystemExit(f"unknown flag {flag}")
    argv = argv[1:]

    from muheam.node import agent as node_mod
    from muheam.net import mesh as transport

    init, connect = transport.Mesh.__init__, transport.Mesh.connect

    def patched_init(self: Any, ctx: Any, node_id: int, clock: Any, endpoint: str, *rest: Any, **kw: Any) -> None:
        init(self, ctx, node_id, clock, bind or endpoint, *rest, **kw)  # the rest: security settings, as given
        self.endpoint = endpoint

    def patched_connect(self: Any, node_id: int, epoch: int, endpoint: str) -> None:
        connect(self, node_id, epoch, routes.get(endpoint, endpoint))

    transport.Mesh.__init__ = patched_init  # type: ignore[method-assign]
    transport.Mesh.connect = patched_connect  # type: ignore[method-assign]
    run_node = node_mod.run_node

    def logged_run_node(*a: Any, **kw: Any) -> int:
        try:
            return run_node(*a, **kw)
        except BaseException:
            logging.getLogger("muheam.node").critical("node exits on an exception:\n%s", traceback.format_exc())
            raise

    node_mod.run_node = logged_run_node
    sys.argv = ["muheam", *argv]
    from muheam.cli import main as cli_main
    cli_main()


if __name__ == "__main__":
    main(sys.argv[1:])
