"""The ``muheam`` command line.

Conventions from patronictl and the pg tools: ``-c/--config`` (TOML; ``MUHEAM_*`` environment variables and
flags override it), ``--format table|json``, ``--watch`` to refresh, and exit codes 0 (success), 1 (the operation
failed) and 2 (bad usage or configuration).  Errors are one line naming the problem and what to do next.

Every command group lives in its own module and is registered here, explicitly, in ``COMMANDS``.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import click

from muheam import __version__
from muheam.cli import admin, bench, cluster, data, demo, keys, node, recover, replica, top, user, wal
from muheam.errors import MuheamError, operator_error


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="muheam")
def cli() -> None:
    """MUHEAM: a shared-disk database cluster manager.

    Start a local 3-node cluster with 'muheam cluster up --nodes 3 --dir DIR', look at it with
    'muheam list -c DIR/muheam.toml', stop it with 'muheam cluster down --dir DIR'.
    """


COMMANDS = (cluster.cluster, node.node, node.list_cmd, node.watch_cmd, data.table, data.get_cmd, data.put_cmd,
            data.scan_cmd, wal.wal, wal.waldump_cmd, wal.walmerge_cmd, recover.recover_cmd, bench.bench,
            user.user, replica.replicate_cmd, replica.replicas_cmd, keys.keys, top.top_cmd, demo.demo_cmd,
            admin.history_cmd, admin.restart_cmd, admin.reload_cmd, admin.remove_cmd)
for command in COMMANDS:
    cli.add_command(command)


def os_error_text(exc: OSError) -> str:
    """An OSError for the operator: the path, or where it happened when the call had none (``os.write`` on a
    descriptor: a full disk said only "No space left on device"), and what to do about a full file system."""
    where = f"{exc.filename}: " if exc.filename else ""
    if not where:
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is not None:
            code = tb.tb_frame.f_code
            where = f"{Path(code.co_filename).parent.name}/{Path(code.co_filename).name}:{code.co_name}: "
    text = f"{where}{exc.strerror or exc}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        text += ("; the file system is full: free space where the shared directory, the WAL and run_dir live "
                 "(their paths are in the config file), then start again")
    return text


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except MuheamError as exc:
        click.echo(f"muheam: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - never a bare traceback at the operator
        known = operator_error(exc)  # walmerge's errors, which cannot be MuheamErrors
        if known is not None:
            click.echo(f"muheam: error: {known}", err=True)
            sys.exit(known.exit_code)
        if os.environ.get("MUHEAM_DEBUG"):
            raise
        from muheam.client import ValueOutOfRange

        if isinstance(exc, ValueOutOfRange):  # user input the client refused before sending it
            click.echo(f"muheam: error: {exc}", err=True)
            sys.exit(2)
        if isinstance(exc, OSError):  # the file system said no: name the path, it is not a bug of ours
            click.echo(f"muheam: error: {os_error_text(exc)}", err=True)
            sys.exit(1)
        click.echo(f"muheam: internal error: {type(exc).__name__}: {exc} (set MUHEAM_DEBUG=1 for a traceback "
                   "and report it)", err=True)
        sys.exit(1)
    sys.exit(0)
