"""Deterministic cluster simulation (FoundationDB style): many nodes' pure cores driven by one seeded schedule.

What lives here: ``muheam.sim.cluster``, a world of simulated nodes, each running the real pure cores of a node
(``locking.LockManager`` for chains, the relation-extension lock and the XID counter; ``muheam.cluster.rounds``
for the prepare/outcome/sync rounds over a ``TxTable``; ``muheam.net.peerlink.Inbound`` for the reliable links)
plus small models of what sits around them in a real node (chain images with their GLSN on a shared "disk", a
per-node WAL of changes and COMMITs, survivor recovery, fencing of a paused node, etcd's membership log).

What it may import: pure cores only (``locking``, ``muheam.cluster.rounds``/``txmessages``/``txstate``/``verdict``/``partition``,
``muheam.net.peerlink``, ``muheam.storage.mvcc`` constants).  Never sockets, files, threads or the wall clock: a
schedule is a function of its seed, so a failure replays exactly.
"""
