"""Observability of a running node: Prometheus metrics and the health endpoints (``metrics``: the metric families
built from a status snapshot; ``server``: the HTTP thread serving ``/metrics``, ``/health``, ``/liveness``,
``/readiness``).

The node is one event loop; these modules never touch its state.  The loop *publishes* a snapshot (its ``status``
dict) a few times a second and the HTTP thread reads only the last one, so a loop that stops turning shows as a
stale snapshot instead of a blocked scrape.  May import ``prometheus_client`` and the standard library only: no
other ``muheam`` package (the node imports it, the CLI parses what it serves).
"""
