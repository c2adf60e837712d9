"""``muheam demo``: the whole story of a shared-disk cluster in one command, and its report.

``run``: starts embedded etcd and three nodes, runs the bank workload on every node, kills one node halfway,
waits for the survivors to recover it, restarts it, merges and verifies the WAL, replays it into a scratch copy
and compares checksums, and stops everything it started (by pid).  ``checks``: the invariants, computed from what
the clients were acknowledged and what the nodes read.  ``report``: the plots (matplotlib, Agg) and the HTML page,
with the data behind each plot kept in ``report/data.json``.

May import ``ops``, ``client``, ``membership``, ``bench.workloads``, ``obs`` and the standard library; only the
CLI imports it.
"""
