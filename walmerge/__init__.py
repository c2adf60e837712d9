"""Per-node WAL format and the consolidator that merges the streams into one single-node-format stream.

Knows records, segments, orders and checksums; never tables (redo lives in ``muheam``).  Never imports
``muheam`` or ``locking``.
"""
