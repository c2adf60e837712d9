"""The merged WAL stream served live: the follow service that merges growing node WALs (``follow``), the
publisher with its protocol (``publisher``: messages, credit, LSN parsing and formatting) and the subscriber
(``subscriber``).

May import: ``net.wire``, ``membership``, ``walmerge``, ``engine`` (record kinds), ``errors``.  Never imports
``node``, ``cluster``, ``recovery`` or ``cli``.
"""
