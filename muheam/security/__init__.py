"""CURVE security for every ZeroMQ socket: key files (``keys``) and the one place sockets get their security
(``sockets``: CURVE server and client options, the ZAP authenticator that decides which keys get in, and what
it counts and logs).

Every socket that crosses a process boundary is made by ``sockets.server_socket`` or ``sockets.client_socket``
(the peer mesh, the client port, the WAL stream publisher, the client library and the subscriber), so that
whether a port is authenticated is decided in one place.

May import: ``config``, ``errors`` and pyzmq.  Never imports ``net``, ``cluster``, ``node`` or anything above:
those import this.
"""
