"""SQL users and their SCRAM-SHA-256 verifiers, kept in the shared directory; how a node picks the method.

``global/sql_users.json`` holds, per user, the salt, iteration count, StoredKey and ServerKey of RFC 5802/7677
-- what PostgreSQL keeps in ``pg_authid.rolpassword`` -- never the password: a stolen file lets nobody log in
(it still allows an offline guess, as PostgreSQL's does, so keep the directory private).  Every node reads the
same file, so a user added once (``muheam user add``) can log in on any node, and a removal holds at the next
login.  Writes replace the file atomically (temp file, fsync, rename).

Method: ``sql_auth`` in the config.  ``trust`` (the default, for the local demo cluster) lets a client on a
loopback address in as any user without a password, like a fresh ``initdb``; a client from any other address
must still pass SCRAM.  ``scram-sha-256`` makes everyone pass SCRAM.  An unknown user goes through the same
exchange against a made-up verifier and fails with the same message as a wrong password (no user probing).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import secrets
from pathlib import Path
from typing import Any

import scramp

from muheam.errors import ClusterStateError, MuheamError

MECHANISM = "SCRAM-SHA-256"
ITERATIONS = 4096
METHODS = ("trust", "scram-sha-256")


class UserError(MuheamError):
    """A user command that cannot be done (unknown user, bad name, empty password)."""

    exit_code = 2


def users_path(shared_dir: Path) -> Path:
    return shared_dir / "global" / "sql_users.json"


def check_shared_dir(shared_dir: Path) -> None:
    """Refuse a directory that is not a cluster's shared directory (no ``global/control``), as ``recover`` does.

    Without it ``user list`` said "no SQL users" of any directory at all, and ``user add`` failed on the
    temporary file it could not create under the missing ``global/``."""
    if not (shared_dir / "global" / "control").is_file():
        raise ClusterStateError(f"{shared_dir} is not a MUHEAM shared directory (no global/control); point -c or "
                                "--shared-dir at the shared directory of an initialised cluster ('muheam cluster "
                                "init' or 'cluster up' makes one)")


def load_users(shared_dir: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(users_path(shared_dir).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise MuheamError(f"{users_path(shared_dir)} cannot be read ({exc}); restore it or remove it and add "
                          "the users again") from None
    users = data.get("users", {})
    return users if isinstance(users, dict) else {}


def _save(shared_dir: Path, users: dict[str, dict[str, Any]]) -> None:
    path = users_path(shared_dir)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump({"users": users}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def add_user(shared_dir: Path, name: str, password: str) -> bool:
    """Add or replace ``name``'s verifier; True when the user is new."""
    if not name or len(name) > 63 or "\0" in name:
        raise UserError(f"user name {name!r} is not valid: 1-63 characters, no NUL")
    if not password:
        raise UserError("the password is empty; give one on stdin (--password-stdin) or at the prompt")
    try:
        salt, stored_key, server_key, iterations = scramp.ScramMechanism(MECHANISM).make_auth_info(
            password, iteration_count=ITERATIONS)
    except scramp.ScramException as exc:  # SASLprep (RFC 4013), which SCRAM applies to every password
        reason = str(exc).split(":")[0]
        raise UserError(f"the password cannot be used with {MECHANISM}: SASLprep (RFC 4013) refuses it "
                        f"({reason}); use valid UTF-8 text without control characters (tabs and newlines "
                        "included)") from None
    users = load_users(shared_dir)
    new = name not in users
    users[name] = {"mechanism": MECHANISM, "iterations": iterations,
                   **{k: base64.b64encode(v).decode() for k, v in
                      (("salt", salt), ("stored_key", stored_key), ("server_key", server_key))}}
    _save(shared_dir, users)
    return new


def remove_user(shared_dir: Path, name: str) -> None:
    users = load_users(shared_dir)
    if name not in users:
        raise UserError(f"user {name!r} does not exist; 'muheam user list' shows the users")
    del users[name]
    _save(shared_dir, users)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


class ScramExchange:
    """One server side of a SCRAM-SHA-256 exchange for ``user`` (scramp does the cryptography)."""

    def __init__(self, shared_dir: Path | None, user: str) -> None:
        entry = load_users(shared_dir).get(user) if shared_dir is not None else None
        if entry is not None:
            info = (base64.b64decode(entry["salt"]), base64.b64decode(entry["stored_key"]),
                    base64.b64decode(entry["server_key"]), int(entry["iterations"]))
        else:  # a made-up verifier: the exchange runs its course and fails like a wrong password
            info = scramp.ScramMechanism(MECHANISM).make_auth_info(secrets.token_hex(16),
                                                                   iteration_count=ITERATIONS)
        self.server = scramp.ScramMechanism(MECHANISM).make_server(lambda _name: info)

    def first(self, client_first: str) -> str:
        """The server-first message; the user name inside the client's message is ignored, as PostgreSQL
        does (libpq sends it empty: the startup packet named the user)."""
        head_end = client_first.find(",", client_first.find(",") + 1) + 1  # after the GS2 header "n,,"
        bare = client_first[head_end:]
        if head_end > 0 and bare.startswith("n=,"):
            # scramp refuses the empty name libpq sends; parse with a stand-in, but keep the bare message the
            # client signed, which the proof covers
            self.server.set_client_first(client_first[:head_end] + "n=*" + bare[2:])
            self.server.client_first_bare = bare
        else:
            self.server.set_client_first(client_first)
        return str(self.server.get_server_first())

    def final(self, client_final: str) -> str:
        """The server-final message; ``scramp.ScramException`` when the proof is wrong."""
        self.server.set_client_final(client_final)
        return str(self.server.get_server_final())
