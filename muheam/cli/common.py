"""What every command group shares: the config options and loading, output formats, a clean exit."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, TypeVar

import click

from muheam import config as config_mod
from muheam.config import Config
from muheam.errors import ConfigError

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
    if path is None and kw.get("shared_dir") is None and not os.environ.get(config_mod.ENV_PREFIX + "SHARED_DIR"):
        raise ConfigError("no config file: none given with -c, $MUHEAM_CONFIG is not set and there is no "
                          "./muheam.toml; pass -c DIR/muheam.toml (the file 'muheam cluster up --dir DIR' wrote)")
    etcd = kw.pop("etcd_endpoints", None)
    overrides = {
        "etcd_endpoints": [e.strip() for e in etcd.split(",")] if etcd else None,
        "shared_dir": kw.pop("shared_dir", None),
        "cluster_name": kw.pop("cluster_name", None),
        "lease_ttl": kw.pop("lease_ttl", None),
        **(extra or {}),
    }
    return config_mod.load(path, overrides=overrides, require_shared_dir=require_shared_dir)


def json_safe(data: Any) -> Any:
    """JSON has no NaN or infinities: such floats become the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``
    (what JavaScript's ``String(x)`` gives), so a float column round-trips and the output stays strict JSON."""
    if isinstance(data, float) and not math.isfinite(data):
        return "NaN" if math.isnan(data) else "Infinity" if data > 0 else "-Infinity"
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(v) for v in data]
    return data


def dumps(data: Any) -> str:
    """Strict JSON (see ``json_safe``), keys sorted, one line."""
    return json.dumps(json_safe(data), indent=None, sort_keys=True, default=str, allow_nan=False)


def emit(data: Any, fmt: str) -> None:
    if fmt == "json":
        click.echo(dumps(data))


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


INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
int64_type = click.IntRange(INT64_MIN, INT64_MAX)
"""A row key: int64 (a value out of range is a usage error, exit 2, naming the range)."""

_NEGATIVE = re.compile(r"^-\d+$")


class SignedArgs(click.Command):
    """A command whose arguments may be negative integers (``muheam get t -5``): click would take ``-5`` for an
    unknown option.  A ``-<digits>`` token that is not an option of the command is passed as an argument; any
    other unknown option is still refused."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        known = {name for param in self.get_params(ctx) for name in getattr(param, "opts", [])
                 + getattr(param, "secondary_opts", [])}
        if "--" not in args and any(_NEGATIVE.match(a) and a not in known for a in args):
            unknown = [a for a in args if a.startswith("-") and not _NEGATIVE.match(a)
                       and a.split("=", 1)[0] not in known]
            if unknown:
                raise click.NoSuchOption(unknown[0].split("=", 1)[0], ctx=ctx)
            ctx.ignore_unknown_options = True
        return super().parse_args(ctx, args)
