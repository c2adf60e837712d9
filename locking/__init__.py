"""Pure Lamport-ordered protocols: clocks, GLSNs and the distributed lock manager.

Nothing in this package opens a socket, a file or a thread; transports and membership views are injected so
the same code runs inside a node over ZeroMQ and inside the deterministic simulator.
"""
