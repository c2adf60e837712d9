"""The peer mesh over ZeroMQ: frames and their validation (``wire``), reliable FIFO links per pair of node
incarnations (``peerlink``, pure), the sockets that carry them (``mesh``), and the client
port (``clientport``: one ROUTER answering client requests; the protocols register their operations on it).

May import: ``locking`` (the Lamport clock), ``errors``, ``failpoints``.  Knows nothing of what the messages mean:
never imports ``cluster``, ``engine`` or anything above.
"""
