"""The node agent process: its lifecycle and event loop (``agent``), the lease and self-fencing, and fencing a
dead peer from outside (``fence``), the peer beats that end a peer-only (``peerwatch``, the loop's binding of ``muheam.cluster.partition``), and the work memory (``workmem``).

This is where I/O meets the protocols: sockets, threads, signals and etcd calls live here, and everything below
is driven from the loop.  May import every package below it (``cluster``, ``recovery``, ``net``,
``membership``, ``engine``, ``storage``, ``ops.procs``/``ops.control``, ``walmerge``, ``locking``); never ``cli``.
"""
