"""``muheam user add|list|remove``: SQL users and their SCRAM-SHA-256 verifiers in the shared directory.

The password comes from stdin (``--password-stdin``, for scripts) or a prompt without echo, never from the command
line (it would show in ``ps`` and shell history); only the verifier is stored (``muheam.sql.auth``).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from muheam.cli.common import config_options, emit, format_option, load_config


def _stdin_password() -> str:
    """The first line of stdin, decoded as UTF-8 here: the text stream's decoding depends on the locale and may
    turn bytes that are not UTF-8 into lone surrogates, which SASLprep then refused with an internal error."""
    from muheam.sql.auth import UserError

    stream = getattr(sys.stdin, "buffer", None)
    line = stream.readline() if stream is not None else sys.stdin.readline().encode("utf-8", "surrogateescape")
    try:
        return str(line.decode("utf-8")).rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise UserError(f"the password on stdin is not UTF-8 text (byte {line[exc.start]:#04x} at offset "
                        f"{exc.start}); give the password as UTF-8 text on one line") from None


def _prompted_password() -> str:
    """The password from a prompt without echo.  With no terminal to prompt on (no /dev/tty: a cron job, a pipe
    under ssh without -t), getpass would warn (GetPassWarning) and read stdin with echo; say instead what to do."""
    import getpass
    import warnings

    from muheam.sql.auth import UserError

    with warnings.catch_warnings():
        warnings.simplefilter("error", getpass.GetPassWarning)
        try:
            return str(click.prompt("password", hide_input=True, confirmation_prompt=True))
        except getpass.GetPassWarning:
            raise UserError("no terminal to ask for the password on (the password is never taken from the "
                            "command line); pipe it in with --password-stdin, e.g. "
                            "'printf %s \"$PASSWORD\" | muheam user add NAME --password-stdin'") from None


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
    from muheam.sql.auth import add_user, check_shared_dir

    cfg = load_config(kw)
    check_shared_dir(cfg.shared_dir)
    password = _stdin_password() if password_stdin else _prompted_password()
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
    from muheam.sql.auth import check_shared_dir, load_users

    cfg = load_config(kw)
    check_shared_dir(cfg.shared_dir)
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
    from muheam.sql.auth import check_shared_dir, remove_user

    cfg = load_config(kw)
    check_shared_dir(cfg.shared_dir)
    remove_user(cfg.shared_dir, name)
    if fmt == "json":
        emit({"user": name, "removed": True}, fmt)
    else:
        click.echo(f"user {name} removed")
