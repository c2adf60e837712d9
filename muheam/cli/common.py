"""What every command group shares: the config options and loading, output formats, a clean exit."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, TypeVar

import click

from muheam import config as config_mod
from muheam.config import Config

F = TypeVar("F", bound=Callable[..., Any])


def config_options(fn: F) -> F:
    """``-c`` plus the flags that override single config keys."""
    for opt in reversed([
        click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), envvar="MUHEAM_CONFIG",
                     help="Cluster config file (TOML). Default: $MUHEAM_CONFIG, else ./muheam.toml."),
        click.option("--etcd", "etcd_endpoints", help="Comma-separated etcd endpoints (overrides etcd_endpoints)."),
        click.option("--shared-dir", help="Shared data directory (overrides shared_dir)."),
        click.option("--cluster-name", help="Cluster name (overrides cluster_name)."),
        click.option("--lease-ttl", type=int, help="Lease TTL in whole seconds (overrides lease_ttl)."),
    ]):
        fn = opt(fn)
    return fn


def load_config(kw: dict[str, Any], require_shared_dir: bool = True, extra: dict[str, Any] | None = None) -> Config:
    path = kw.pop("config_path", None)
    if path is None and Path("muheam.toml").exists():
        path = "muheam.toml"
    etcd = kw.pop("etcd_endpoints", None)
    overrides = {
        "etcd_endpoints": [e.strip() for e in etcd.split(",")] if etcd else None,
        "shared_dir": kw.pop("shared_dir", None),
        "cluster_name": kw.pop("cluster_name", None),
        "lease_ttl": kw.pop("lease_ttl", None),
        **(extra or {}),
    }
    return config_mod.load(path, overrides=overrides, require_shared_dir=require_shared_dir)


def emit(data: Any, fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps(data, indent=None, sort_keys=True, default=str))


format_option = click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
                             show_default=True, help="Output format.")


def leave(code: int) -> NoReturn:
    """Flush and exit at once, skipping the interpreter's shutdown: a process that used an etcd watch can hang
    for ever in gRPC's clean-up at exit (a stopped node; ``walmerge --follow`` after its summary was printed)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    os._exit(code)


node_choice = click.option("--node-id", type=click.IntRange(1, config_mod.MAX_NODE_ID), default=None,
                           help="Node to talk to (default: the lowest configured node id).")
