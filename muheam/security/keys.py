"""CURVE key files: made at ``cluster init``/``cluster up``, added, listed and revoked by ``muheam keys``, found by
clients.

Layout (public keys where every node reads them, secret keys only under the run directory)::

    shared_dir/keys/nodes/node-<id>.key      each node's public key: the peer mesh (who may claim node <id>)
    shared_dir/keys/server.key               the public key of the client-facing ports (client port, publisher)
    shared_dir/keys/clients/<name>.key       the client keys that are let in; revoking a client deletes its file
    run_dir/keys/            (mode 0700)     secret keys, each 0600: node-<id>.key_secret, server.key_secret,
    run_dir/keys/clients/    (mode 0700)     <name>.key_secret, which also names the server key (metadata
                                             ``server-key``), so one file is all a client needs

Files are pyzmq's certificate format (``zmq.auth.create_certificates`` writes them, ``load_certificate`` reads
them).  The client-facing ports of every node share one server key pair so that one client key file works
against any node; the peer ports use one pair per node, because the mesh binds a peer's identity to its key.
Nodes read the key directories again when they change (``Keyring``), so adding, rotating or revoking a client
takes effect without a restart.  Nothing here ever puts a secret key in a message or a log line.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import zmq
import zmq.auth

from muheam.errors import ConfigError, MuheamError

ADMIN_CLIENT = "admin"
"""The client key made at init: what the CLI and a local user of ``connect(endpoint)`` use by default."""
CLIENT_KEY_ENV = "MUHEAM_CLIENT_KEY"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_META_RE = re.compile(rb"^\s*([A-Za-z0-9_-]+)\s*=\s*\"?([^\"]*)\"?\s*$")


class KeysError(MuheamError):
    """A key operation that cannot be done (unknown client, existing name)."""


def public_dir(shared_dir: Path) -> Path:
    return shared_dir / "keys"


def secret_dir(run_dir: Path) -> Path:
    return run_dir / "keys"


def node_public_file(shared_dir: Path, node_id: int) -> Path:
    return public_dir(shared_dir) / "nodes" / f"node-{node_id}.key"


def node_secret_file(run_dir: Path, node_id: int) -> Path:
    return secret_dir(run_dir) / f"node-{node_id}.key_secret"


def server_secret_file(run_dir: Path) -> Path:
    return secret_dir(run_dir) / "server.key_secret"


def client_secret_file(run_dir: Path, name: str) -> Path:
    return secret_dir(run_dir) / "clients" / f"{name}.key_secret"


def fingerprint(public: bytes | str) -> str:
    """The first characters of a public key (z85): enough to tell keys apart in logs and listings."""
    text = public.decode() if isinstance(public, bytes) else public
    return text[:10]


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _make_pair(secret_path: Path, public_path: Path, metadata: Mapping[str, str] | None = None) -> bytes:
    """Create a key pair: the secret file (0600, in a 0700 directory, so it is never readable by others even for
    a moment) and the public file, each put in place by a rename.  Returns the public key (z85)."""
    _private_dir(secret_path.parent)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=secret_path.parent, prefix=".new-") as tmp:
        os.chmod(tmp, 0o700)
        pub, sec = zmq.auth.create_certificates(tmp, "k", metadata=dict(metadata or {}))
        os.chmod(sec, 0o600)
        public, _ = zmq.auth.load_certificate(pub)
        os.replace(sec, secret_path)
        _publish(public_path, Path(pub).read_text())
    return public


def _publish(public_path: Path, certificate: str) -> None:
    """Put a public certificate in place by a rename, readable by all."""
    staged = public_path.with_name(f".{public_path.name}.new")
    staged.write_text(certificate)
    os.chmod(staged, 0o644)
    os.replace(staged, public_path)


def _public_of(path: Path) -> bytes | None:
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError):
        return None
    return public


def ensure_cluster_keys(shared_dir: Path, run_dir: Path, node_ids: list[int]) -> list[str]:
    """The key pairs a cluster needs (server, one per node, the admin client); existing ones are kept.  Returns
    what was made, for the caller's output."""
    made = []
    server_pub = public_dir(shared_dir) / "server.key"
    if not server_secret_file(run_dir).exists() or not server_pub.exists():
        _make_pair(server_secret_file(run_dir), server_pub)
        made.append("server")
    for node_id in node_ids:
        if ensure_node_key(shared_dir, run_dir, node_id):
            made.append(f"node-{node_id}")
    clients = public_dir(shared_dir) / "clients"
    clients.mkdir(parents=True, exist_ok=True)
    if not client_secret_file(run_dir, ADMIN_CLIENT).exists() and not (clients / f"{ADMIN_CLIENT}.key").exists():
        add_client(shared_dir, run_dir, ADMIN_CLIENT)
        made.append(f"client {ADMIN_CLIENT}")
    return made


def ensure_node_key(shared_dir: Path, run_dir: Path, node_id: int) -> bool:
    """Make node ``node_id``'s pair unless it has one (a node added later, on this host, gets one at start).  A
    secret key kept while its public file is missing (a shared directory restored from a backup older than the
    node's key) gets its public file back, never a new pair: a new secret no longer matched the public file of
    the directory the cluster runs on, and every handshake of the node failed (a review)."""
    secret, public = node_secret_file(run_dir, node_id), node_public_file(shared_dir, node_id)
    if secret.exists() and public.exists():
        return False
    kept = _public_of(secret) if secret.exists() else None
    if kept is not None:
        public.parent.mkdir(parents=True, exist_ok=True)
        _publish(public, f'#   ZeroMQ CURVE Public Certificate of node {node_id} (restored from its secret key)\n'
                         f'metadata\n    node-id = "{node_id}"\ncurve\n    public-key = "{kept.decode()}"\n')
        return True
    _make_pair(secret, public, {"node-id": str(node_id)})
    return True


def check_client_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ConfigError(f"client name {name!r} is not valid; use letters, digits, '.', '_' or '-' (max 63)")
    return name


def add_client(shared_dir: Path, run_dir: Path, name: str, replace: bool = False) -> Path:
    """A new client key pair named ``name``; ``replace``: rotate an existing one (its old key is refused from
    now on, without a restart).  Returns the secret file to hand to the client (``MUHEAM_CLIENT_KEY``)."""
    check_client_name(name)
    public = public_dir(shared_dir) / "clients" / f"{name}.key"
    if public.exists() and not replace:
        raise KeysError(f"client {name!r} has a key already; revoke it first, or pass --rotate to replace it")
    if not replace and client_secret_file(run_dir, name).exists():
        raise KeysError(f"a secret key for client {name!r} exists in {secret_dir(run_dir) / 'clients'} although "
                        "the cluster does not know the client; remove that file or pass --rotate")
    server = _public_of(public_dir(shared_dir) / "server.key")
    if server is None:
        raise KeysError(f"no server key in {public_dir(shared_dir)}; run 'muheam cluster init' first")
    _make_pair(client_secret_file(run_dir, name), public, {"client": name, "server-key": server.decode()})
    return client_secret_file(run_dir, name)


def revoke_client(shared_dir: Path, run_dir: Path, name: str) -> None:
    """Remove a client's key: nodes refuse it at its next connection and its next request (no restart)."""
    check_client_name(name)
    public = public_dir(shared_dir) / "clients" / f"{name}.key"
    if not public.exists():
        known = ", ".join(sorted(p.stem for p in public.parent.glob("*.key"))) or "none"
        raise KeysError(f"no client {name!r} (clients: {known}); 'muheam keys list' shows them")
    public.unlink()
    client_secret_file(run_dir, name).unlink(missing_ok=True)


def list_keys(shared_dir: Path, run_dir: Path) -> list[dict[str, Any]]:
    """Every key the cluster knows: kind, name, public fingerprint, where the secret is and its mode.  Never the
    secret itself."""
    rows: list[dict[str, Any]] = []
    pub = public_dir(shared_dir)

    def row(kind: str, name: str, public_path: Path, secret_path: Path) -> None:
        key = _public_of(public_path)
        mode = None
        if secret_path.exists():
            mode = oct(stat.S_IMODE(secret_path.stat().st_mode))
        rows.append({"kind": kind, "name": name, "public_key": fingerprint(key) if key else None,
                     "public_file": str(public_path), "secret_file": str(secret_path) if mode else None,
                     "secret_mode": mode})

    if (pub / "server.key").exists():
        row("server", "server", pub / "server.key", server_secret_file(run_dir))
    for path in sorted((pub / "nodes").glob("node-*.key")):
        node = path.stem.split("-", 1)[1]
        row("node", node, path, secret_dir(run_dir) / f"node-{node}.key_secret")
    for path in sorted((pub / "clients").glob("*.key")):
        row("client", path.stem, path, client_secret_file(run_dir, path.stem))
    return rows


# --- loading -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KeyPair:
    """A public/secret pair (z85) and where it came from (named in errors; never the secret)."""

    public: bytes
    secret: bytes = b""
    server: bytes = b""
    """For a client key: the public key of the client-facing ports it talks to."""
    source: str = ""

    def __repr__(self) -> str:  # never show the secret, even in a traceback
        return f"KeyPair(public={fingerprint(self.public)!r}..., source={self.source!r})"


_cache: dict[tuple[str, int, int], KeyPair] = {}


def load_secret(path: Path, what: str = "key") -> KeyPair:
    """Read a secret key file (cached by path, size and mtime).  A missing or unreadable file is a
    ``ConfigError`` naming the file and what to do, never showing its content."""
    try:
        st = path.stat()
    except OSError:
        raise ConfigError(f"{what} file {path} does not exist; make keys with 'muheam cluster init' or "
                          "'muheam keys add-client NAME'") from None
    cache_key = (str(path), st.st_size, st.st_mtime_ns)
    hit = _cache.get(cache_key)
    if hit is not None:
        return hit
    try:
        public, secret = zmq.auth.load_certificate(path)
        data = path.read_bytes()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what} file {path} cannot be read as a CURVE key ({type(exc).__name__}); make a new "
                          "one with 'muheam keys add-client NAME'") from None
    if not secret:
        raise ConfigError(f"{what} file {path} holds no secret key (is it the public .key file?); use the "
                          ".key_secret file")
    server = b""
    for line in data.splitlines():
        m = _META_RE.match(line)
        if m and m.group(1) == b"server-key":
            server = m.group(2).strip()
    pair = KeyPair(public, secret, server, str(path))
    _cache[cache_key] = pair
    return pair


def load_public(path: Path, what: str) -> bytes:
    key = _public_of(path)
    if key is None:
        raise ConfigError(f"{what}: no public key in {path}; run 'muheam cluster init' (or 'cluster up') to "
                          "make the cluster's keys")
    return key


class Keyring:
    """The public keys a node lets in, read again from the shared directory when it changes.

    ``nodes``: public key -> node id (the peer port); ``clients``: public key -> client name (client-facing
    ports).  ``refresh`` stats three directories; callers on a hot path pass ``every`` to do it at most that
    often.  Safe to read from the authenticator thread while the node's loop refreshes (dicts are replaced
    whole)."""

    def __init__(self, shared_dir: Path) -> None:
        self.root = public_dir(shared_dir)
        self.nodes: dict[bytes, int] = {}
        self.clients: dict[bytes, str] = {}
        self._stamp: tuple[int, ...] = ()
        self._checked = 0.0
        self._watched = [os.fspath(self.root / sub) for sub in ("nodes", "clients")]
        self.refresh()

    def _dir_stamp(self) -> tuple[int, ...]:
        """The key directories' change stamps: the client port takes them per batch of requests, so the paths are
        strings made once (building them anew each time cost more than the two ``stat`` calls)."""
        out = []
        for path in self._watched:
            try:
                st = os.stat(path)
                out += [st.st_mtime_ns, st.st_ino]
            except OSError:
                out += [0, 0]
        return tuple(out)

    def refresh(self, every: float = 0.0) -> None:
        now = time.monotonic()
        if every and now - self._checked < every:
            return
        self._checked = now
        stamp = self._dir_stamp()
        if stamp == self._stamp:
            return
        nodes: dict[bytes, int] = {}
        for path in (self.root / "nodes").glob("node-*.key"):
            key = _public_of(path)
            try:
                node_id = int(path.stem.split("-", 1)[1])
            except ValueError:
                continue
            if key:
                nodes[key] = node_id
        clients: dict[bytes, str] = {}
        for path in (self.root / "clients").glob("*.key"):
            key = _public_of(path)
            if key:
                clients[key] = path.stem
        self.nodes, self.clients, self._stamp = nodes, clients, stamp
