"""The distributed protocols every node runs: transaction state and snapshots (``txstate``, pure), commit and
outcome rounds (``commits``), locks over the mesh (``locks``, binding ``locking.LockManager``), global XIDs
(``xids``, ``xidstore``), block ownership and cache fusion (``ownership``), client sessions and cluster
transactions (``sessions``), and which side of a peer-only partition stays (``partition``, pure).

May import: ``engine``, ``storage``, ``net``, ``membership``, ``locking``, ``walmerge``, ``errors``,
``failpoints``.  Never imports ``node``, ``recovery``, ``walstream``, ``ops`` or ``cli``.
"""
