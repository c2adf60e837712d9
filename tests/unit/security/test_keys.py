"""Key files and how a client finds its key (``muheam.security``), on a temporary directory: no node needed."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from muheam.errors import ConfigError
from muheam.security import keys
from muheam.security.keys import Keyring
from muheam.security.setup import resolve_client


def make(tmp_path: Path) -> tuple[Path, Path]:
    shared, run = tmp_path / "shared", tmp_path / "run"
    keys.ensure_cluster_keys(shared, run, [1, 2])
    return shared, run


def test_secrets_are_0600_in_a_0700_directory_and_never_listed(tmp_path: Path) -> None:
    shared, run = make(tmp_path)
    secrets = list((run / "keys").rglob("*.key_secret"))
    assert len(secrets) == 4  # server, node 1, node 2, admin
    for path in secrets:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((run / "keys").stat().st_mode) == 0o700
    listing = repr(keys.list_keys(shared, run))
    for path in secrets:
        pair = keys.load_secret(path)
        assert pair.secret.decode() not in listing and pair.secret.decode() not in repr(pair)
    assert not list(shared.rglob("*.key_secret"))
    assert keys.ensure_cluster_keys(shared, run, [1, 2, 3]) == ["node-3"]  # idempotent, adds what is missing


def test_keyring_follows_add_rotate_revoke(tmp_path: Path) -> None:
    shared, run = make(tmp_path)
    ring = Keyring(shared)
    admin = keys.load_secret(keys.client_secret_file(run, "admin"))
    assert ring.clients[admin.public] == "admin" and len(ring.nodes) == 2
    bob = keys.load_secret(keys.add_client(shared, run, "bob"))
    assert bob.server == keys.load_public(shared / "keys" / "server.key", "server")
    with pytest.raises(keys.KeysError):
        keys.add_client(shared, run, "bob")
    new = keys.load_secret(keys.add_client(shared, run, "bob", replace=True))
    ring.refresh()
    assert new.public in ring.clients and bob.public not in ring.clients
    keys.revoke_client(shared, run, "bob")
    ring.refresh()
    assert new.public not in ring.clients and not keys.client_secret_file(run, "bob").exists()
    with pytest.raises(keys.KeysError, match="no client 'bob'"):
        keys.revoke_client(shared, run, "bob")
    with pytest.raises(ConfigError):
        keys.add_client(shared, run, "bad name!")


def test_client_key_is_found_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared, run = make(tmp_path)
    bob = keys.add_client(shared, run, "bob")
    cfg = tmp_path / "muheam.toml"
    cfg.write_text(f'shared_dir = "{shared}"\nrun_dir = "{run}"\n')
    monkeypatch.chdir(tmp_path)
    env: dict[str, str] = {}
    admin = keys.load_secret(keys.client_secret_file(run, "admin")).public
    found = resolve_client(env=env)  # ./muheam.toml
    assert found is not None and found.pair.public == admin
    env["MUHEAM_CLIENT_KEY"] = str(bob)
    found = resolve_client(env=env)
    assert found is not None and found.pair.public == keys.load_secret(bob).public
    found = resolve_client(keys.client_secret_file(run, "admin"), env=env)  # key= wins
    assert found is not None and found.pair.public == admin
    cfg.write_text(f'shared_dir = "{shared}"\nrun_dir = "{run}"\nsecurity = "none"\n')
    assert resolve_client(env={}) is None
    with pytest.raises(ConfigError, match="does not exist") as err:
        resolve_client(tmp_path / "missing.key_secret", env={})
    assert "missing.key_secret" in str(err.value)
    with pytest.raises(ConfigError, match="no secret key"):
        resolve_client(shared / "keys" / "server.key", env={})


def test_a_node_key_whose_public_file_is_missing_keeps_its_secret(tmp_path: Path) -> None:
    """A node started on a shared directory restored from a backup older than its key found no public file and
    made a new pair, replacing its secret: back on the cluster's directory, its secret no longer matched the
    public file there and every handshake failed (a review).  The public file is restored from the secret."""
    shared, run = make(tmp_path)
    before = keys.load_secret(keys.node_secret_file(run, 2))
    keys.node_public_file(shared, 2).unlink()
    assert keys.ensure_node_key(shared, run, 2)
    after = keys.load_secret(keys.node_secret_file(run, 2))
    assert after.secret == before.secret and after.public == before.public
    assert keys._public_of(keys.node_public_file(shared, 2)) == before.public
    assert not keys.ensure_node_key(shared, run, 2)
