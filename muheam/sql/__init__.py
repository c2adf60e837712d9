"""SQL over the PostgreSQL wire protocol (v3): the SQL port every node serves next to its client port.

What lives here: ``wire`` (the protocol as a pure state machine: bytes in -> events, calls -> bytes out),
``session`` (one connection: startup, authentication, the simple and extended query protocols, transaction
state; no I/O), ``server`` (the listening and client sockets, registered with the node loop's poller; no
threads), ``plan`` and ``expr`` (statements parsed by PostgreSQL's own grammar through ``pglast`` and compiled
into plans over one table), ``plancache`` (the simple protocol's per-connection plans, integer literals as
parameters), ``execute`` (plans run as generators of session operations) and ``auth`` (SCRAM-
SHA-256 users kept in the shared directory).

What it may import: the client port's ``Deferred``/``RequestError`` (``muheam.net.clientport``) and
``muheam.errors``.  It runs SQL by calling the very operations the client port serves (``muheam.cluster.sessions``
registers them), handed to it by the node as a mapping of callables, so it needs neither the protocols, the
engine nor the node: an import-linter contract (``pyproject.toml``, id ``sql``) keeps it so.  Only the node
agent (and the CLI's ``user`` commands, for ``auth``) import this package.
"""
