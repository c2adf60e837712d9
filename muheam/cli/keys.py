"""``muheam keys add-client|list|revoke``: the CURVE keys of a cluster (``muheam.security.keys``).

Secret keys stay in files (mode 0600 under ``run_dir/keys``); no command prints one: ``add-client`` prints the
path of the file to hand to the client, ``list`` prints public-key fingerprints and file modes.
"""

from __future__ import annotations

from typing import Any

import click

from muheam.cli.common import config_options, emit, format_option, load_config
from muheam.errors import ConfigError


def _curve_config(kw: dict[str, Any]) -> Any:
    cfg = load_config(kw)
    if cfg.security == "none":
        raise ConfigError(f"the cluster runs with security = 'none' ({cfg.source}): it uses no keys; set security "
                          "= 'curve' (and restart its nodes) to authenticate its ports")
    return cfg


@click.group()
def keys() -> None:
    """CURVE keys: who may connect to the cluster's ZeroMQ ports (made by 'cluster init'/'cluster up').

    Rotate a client's key without a restart: 'add-client NAME --rotate' (the old key is refused from then on),
    or 'add-client NEW', move the client to it, then 'revoke OLD'."""


@keys.command("add-client")
@click.argument("name")
@click.option("--rotate", is_flag=True, help="Replace NAME's key: its old key is refused from now on.")
@format_option
@config_options
def keys_add_client(name: str, rotate: bool, fmt: str, **kw: Any) -> None:
    """Make a key pair for client NAME; print the secret key file to give it (MUHEAM_CLIENT_KEY=FILE).

    Nodes let it in at once (no restart)."""
    from muheam.security.keys import add_client

    cfg = _curve_config(kw)
    path = add_client(cfg.shared_dir, cfg.run_dir, name, replace=rotate)
    if fmt == "json":
        emit({"client": name, "secret_file": str(path), "rotated": rotate}, fmt)
    else:
        click.echo(f"client {name} {'rotated' if rotate else 'added'}; its key file is {path} (mode 0600): "
                   f"give it to the client as MUHEAM_CLIENT_KEY={path}")


@keys.command("list")
@format_option
@config_options
def keys_list(fmt: str, **kw: Any) -> None:
    """Every key: kind (server, node, client), name, public-key fingerprint, secret file and its mode."""
    from muheam.security.keys import list_keys

    cfg = _curve_config(kw)
    rows = list_keys(cfg.shared_dir, cfg.run_dir)
    if fmt == "json":
        emit(rows, fmt)
        return
    for r in rows:
        secret = f"{r['secret_file']} ({r['secret_mode']})" if r["secret_file"] else "(secret not on this host)"
        click.echo(f"{r['kind']}\t{r['name']}\t{r['public_key']}...\t{secret}")


@keys.command("revoke")
@click.argument("name")
@format_option
@config_options
def keys_revoke(name: str, fmt: str, **kw: Any) -> None:
    """Revoke client NAME: nodes refuse its next connection and its next request (no restart)."""
    from muheam.security.keys import revoke_client

    cfg = _curve_config(kw)
    revoke_client(cfg.shared_dir, cfg.run_dir, name)
    if fmt == "json":
        emit({"client": name, "revoked": True}, fmt)
    else:
        click.echo(f"client {name} revoked")
