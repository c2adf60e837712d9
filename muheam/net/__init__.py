"""The peer mesh over ZeroMQ: frames and their validation (``wire``), reliable FIFO links per pair of node
incarnations (``peerlink``, pure), the sockets that carry them (``mesh``), the client port (``clientport``: one
ROUTER answering client requests; the protocols register their operations on it), and ``request``, the
one-request, one-reply helper with a deadline that the client and the WAL stream's ``request`` share.

May import: ``locking`` (the Lamport clock), ``errors``, ``failpoints``.  Knows nothing of what the messages mean:
never imports ``cluster``, ``engine`` or anything above.
"""
