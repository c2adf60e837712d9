"""``muheam user add|list|remove``: SQL users and their SCRAM-SHA-256 verifiers in the shared directory.

The password comes from stdin (``--password-stdin``, for scripts) or a prompt without echo, never from the command
line (it would show in ``ps`` and shell history); only the verifier is stored (``muheam.sql.auth``).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from muheam.cli.common import config_options, emit, format_option, load_config


@click.group()
def user() -> None:
    """SQL users (SCRAM-SHA-256) of the PostgreSQL-protocol SQL port."""


@user.command("add")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin (its first line).")
@format_option
@config_options
def user_add(name: str, password_stdin: bool, fmt: str, **kw: Any) -> None:
    """Add user NAME, or set a new password for it."""
    from muheam.sql.auth import add_user

    cfg = load_config(kw)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    new = add_user(cfg.shared_dir, name, password)
    if fmt == "json":
        emit({"user": name, "created": new}, fmt)
    else:
        click.echo(f"user {name} {'added' if new else 'password changed'}")


@user.command("list")
@format_option
@config_options
def user_list(fmt: str, **kw: Any) -> None:
    """The SQL users (names and mechanism; never a secret)."""
    from muheam.sql.auth import load_users

    cfg = load_config(kw)
    users = [{"user": name, "mechanism": entry.get("mechanism"), "iterations": entry.get("iterations")}
             for name, entry in sorted(load_users(cfg.shared_dir).items())]
    if fmt == "json":
        emit(users, fmt)
        return
    for u in users:
        click.echo(f"{u['user']}\t{u['mechanism']}")
    if not users:
        click.echo(f"no SQL users (sql_auth = {cfg.sql_auth}; add one with 'muheam user add NAME')")


@user.command("remove")
@click.argument("name")
@format_option
@config_options
def user_remove(name: str, fmt: str, **kw: Any) -> None:
    """Remove user NAME; its next login fails (sessions already open stay)."""
    from muheam.sql.auth import remove_user

    cfg = load_config(kw)
    remove_user(cfg.shared_dir, name)
    if fmt == "json":
        emit({"user": name, "removed": True}, fmt)
    else:
        click.echo(f"user {name} removed")
