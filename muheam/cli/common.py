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


_ESCAPED = re.compile(r"[\\\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def table_text(value: Any) -> str:
    """A value as the table format (``get``, ``scan``) shows it: one row per line, columns separated by tabs.

    A text value holding a newline or a tab broke that layout (a row split over lines, a column that looked like
    two), so control characters (and the Unicode line separators) are written as escapes: ``\\n``, ``\\t``,
    ``\\r``, else ``\\xNN`` / ``\\uNNNN``; a backslash is doubled, so the escapes are unambiguous, as in
    PostgreSQL's COPY text format.  JSON output is not escaped this way: it shows the value as stored."""
    if not isinstance(value, str):
        return str(value)
    return _ESCAPED.sub(lambda m: _NAMED_ESCAPES.get(m.group(), f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256
                                                     else f"\\u{ord(m.group()):04x}"), value)


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
                           help="Node to talk to (default: the lowest configured node not known to be stopped, "
                                "i.e. whose pid file on this host does not name an exited process).")


class FiniteRange(click.FloatRange):
    """A float option that must be a finite number within bounds (seconds, megabytes ...).

    Every float option of the CLI uses it: ``click.FloatRange`` lets ``nan`` through (a comparison with NaN is
    false, so no bound ever refuses it) and ``inf`` when there is no maximum; a sleep then crashed
    (``time.sleep(nan)``: ValueError; ``inf``: OverflowError) and a deadline of NaN never came (``watch --timeout
    nan`` ran for ever).  A value out of range is a usage error (exit 2) naming the range, as click words it."""

    def __init__(self, min: float | None = None, max: float | None = None, *, min_open: bool = False,
                 max_open: bool = False, unit: str = "seconds") -> None:
        super().__init__(min, max, min_open=min_open, max_open=max_open)
        self.unit = unit

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number; give a number of {self.unit} in the range "
                      f"{self._describe_range()}", param, ctx)
        return float(super().convert(number, param, ctx))


REFRESH_MIN_S = 0.1
"""The shortest refresh of ``top --interval`` and ``list --watch``: faster, a view only flickers while the
scrapes (or etcd reads) load the nodes (``list --watch 0`` redrew about 32 times a second)."""

LONGEST_S = 366 * 86400
"""The longest ``--duration``/``--timeout`` taken (a year): past that the option is a typo; leave it out to run
until stopped."""


class TcpEndpoint(click.types.StringParamType):
    """A ZeroMQ endpoint given on the command line (``wal subscribe``, ``--subscribe``, ``--publish``):
    ``tcp://HOST:PORT`` with a port from 1 to 65535, checked as the config's endpoints are.  Unchecked, ZeroMQ
    refused ``garbage`` with an internal error (ZMQError), and ``tcp://127.0.0.1:99999`` was connected to without a
    word: nothing ever answered and the copy ended with 0 records and exit 0."""

    name = "endpoint"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return config_mod.check_tcp_endpoint("endpoint", value)
        except ConfigError:
            self.fail(f"{value!r} is not a ZeroMQ endpoint; write tcp://HOST:PORT with a port from 1 to 65535, "
                      "e.g. tcp://127.0.0.1:5701", param, ctx)


tcp_endpoint = TcpEndpoint()


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
