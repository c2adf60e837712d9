"""Cluster configuration: a TOML file, overridden by ``MUHEAM_*`` environment variables, overridden by flags.

One file describes the whole cluster, as with Patroni: cluster-wide keys at the top level and one table per node
under ``[nodes.<id>]``.  Every value is checked here, once, so that the rest of the code can trust it; a bad value
is reported as one line naming the key and the fix (exit code 2).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

import tomli_w

from muheam.errors import ConfigError

#: etcd refuses leases shorter than its minimum TTL (3/2 * election timeout, 1.5 s by default, rounded up).
ETCD_MIN_TTL = 2
DEFAULT_TTL = 2
MAX_NODE_ID = 1023
DEFAULT_LOCK_TIMEOUT = 10.0
DEFAULT_IDLE_TIMEOUT = 300.0
ENV_PREFIX = "MUHEAM_"
NOT_SETTINGS = frozenset({"MUHEAM_CONFIG", "MUHEAM_CLIENT_KEY", "MUHEAM_DEBUG", "MUHEAM_FAILPOINTS", "MUHEAM_FULL", "MUHEAM_NO_JIT",
                          "MUHEAM_PORT_RANGE", "MUHEAM_SIM_EXAMPLES", "MUHEAM_SIM_FIRST_SEED",
                          "MUHEAM_SIM_HAZARD_CHECK"})
"""``MUHEAM_*`` variables that are not cluster settings: the config file, a client's key file (``muheam.security``),
tracebacks (cli), the long test runs
(tests), numpy instead of compiled walmerge kernels (``walmerge.jit``), where ``cluster up`` picks free ports
(``muheam.ops.procs``); ``MUHEAM_TEST*`` is the tests' too."""

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_TOP_KEYS = {"cluster_name", "shared_dir", "run_dir", "etcd_endpoints", "embedded_etcd", "lease_ttl", "nodes",
             "fence_command", "lock_timeout", "idle_in_transaction_timeout",
             "sql_auth", "commit_scope", "security", "client_key", "log_level",
             "wal_flush_thread", "lazy_outcome"}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_NODE_KEYS = {"peer_endpoint", "client_endpoint", "host", "sql_endpoint", "metrics_endpoint"}
SQL_AUTH_METHODS = ("trust", "scram-sha-256")
"""``sql_auth``: ``trust`` lets loopback clients in without a password (others must pass SCRAM);
``scram-sha-256`` asks everyone (``muheam.sql.auth``)."""
SECURITY_MODES = ("curve", "none")
"""``security``: ``curve`` (the default) authenticates and encrypts every ZeroMQ port with CURVE keys made at
init; ``none`` is for a trusted network only: anyone who reaches a port can read and write every table."""
_EMBEDDED_KEYS = {"client_endpoint", "peer_endpoint", "data_dir"}


@dataclass(frozen=True)
class NodeConfig:
    node_id: int
    peer_endpoint: str
    client_endpoint: str
    host: str = "127.0.0.1"
    sql_endpoint: str = ""
    """``tcp://HOST:PORT`` of the PostgreSQL-protocol SQL port; empty: none (configs from before it existed)."""
    metrics_endpoint: str = ""
    """``http://HOST:PORT`` where the node serves Prometheus ``/metrics`` and ``/health``, ``/liveness``,
    ``/readiness`` (``muheam.obs``); empty: none."""


@dataclass(frozen=True)
class EmbeddedEtcd:
    """An etcd the project starts itself (``muheam cluster up``); absent when users bring their own."""

    client_endpoint: str
    peer_endpoint: str
    data_dir: Path


@dataclass(frozen=True)
class Config:
    cluster_name: str
    shared_dir: Path
    run_dir: Path
    etcd_endpoints: tuple[str, ...]
    lease_ttl: int = DEFAULT_TTL
    nodes: Mapping[int, NodeConfig] = field(default_factory=dict)
    embedded_etcd: EmbeddedEtcd | None = None
    source: Path | None = None
    sql_auth: str = "trust"
    security: str = "curve"
    """``curve`` or ``none`` (``SECURITY_MODES``)."""
    client_key: Path | None = None
    """The client key file the CLI and ``connect`` use with this config (default: the admin key under run_dir)."""
    fence_command: str = ""
    commit_scope: str = ""
    """Default commit scope of every COMMIT (``muheam.cluster.scopes``, e.g. 'ANY 1 (replicas) ON applied ABORT ON
    2s'); empty: commits do not wait for replicas unless a transaction asks."""
    """Shell command that fences a dead node on another host before survivors recover it (``muheam.node.fence``)."""
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    """Seconds a transaction waits for a row lock (or a begin for prepared outcomes) before ``LockTimeout``."""
    idle_in_transaction_timeout: float = DEFAULT_IDLE_TIMEOUT
    """Seconds a transaction may sit idle between requests before the node rolls it back."""
    log_level: str = "INFO"
    """The nodes' log level; with the two timeouts above, what ``muheam reload`` changes on running nodes."""
    wal_flush_thread: bool = False
    """Commits' WAL fsync in a thread while the loop goes on (``muheam.engine.flusher``); off by default until
    the kill -9 rounds under bank load pass with it (docs/measurements.md)."""
    lazy_outcome: bool = False
    """Answer a COMMIT once every member acknowledged its prepare, sending the outcome without waiting for
    acknowledgements (``muheam.cluster.rounds``: ``finish(acked=False)``).  Off by default: the acknowledged outcome
    round means every member knows an acknowledged commit, which keeps it committed even if the deciding node's
    COMMIT record is later destroyed (a corrupted WAL tail); lazily, that record is its only trace until the
    outcome arrives (docs/architecture.md, "Cheaper commit rounds")."""

    def node(self, node_id: int) -> NodeConfig:
        try:
            return self.nodes[node_id]
        except KeyError:
            known = ", ".join(str(n) for n in sorted(self.nodes)) or "none"
            where = f" in {self.source}" if self.source else ""
            raise ConfigError(
                f"node {node_id} is not configured{where} (configured nodes: {known}); "
                f"add a [nodes.{node_id}] table with peer_endpoint and client_endpoint"
            ) from None

    @property
    def prefix(self) -> str:
        """The etcd key prefix of this cluster."""
        return f"/muheam/{self.cluster_name}/"

    def to_toml(self) -> str:
        doc: dict[str, Any] = {
            "cluster_name": self.cluster_name,
            "shared_dir": str(self.shared_dir),
            "run_dir": str(self.run_dir),
            "etcd_endpoints": list(self.etcd_endpoints),
            "lease_ttl": self.lease_ttl,
        }
        if self.fence_command:
            doc["fence_command"] = self.fence_command
        if self.lock_timeout != DEFAULT_LOCK_TIMEOUT:
            doc["lock_timeout"] = self.lock_timeout
        if self.idle_in_transaction_timeout != DEFAULT_IDLE_TIMEOUT:
            doc["idle_in_transaction_timeout"] = self.idle_in_transaction_timeout
        if self.wal_flush_thread:
            doc["wal_flush_thread"] = True
        if self.lazy_outcome:
            doc["lazy_outcome"] = True
        if self.sql_auth != "trust":
            doc["sql_auth"] = self.sql_auth
        if self.commit_scope:
            doc["commit_scope"] = self.commit_scope
        if self.security != "curve":
            doc["security"] = self.security
        if self.client_key is not None:
            doc["client_key"] = str(self.client_key)
        if self.log_level != "INFO":
            doc["log_level"] = self.log_level
        if self.embedded_etcd is not None:
            doc["embedded_etcd"] = {
                "client_endpoint": self.embedded_etcd.client_endpoint,
                "peer_endpoint": self.embedded_etcd.peer_endpoint,
                "data_dir": str(self.embedded_etcd.data_dir),
            }
        doc["nodes"] = {
            str(n.node_id): {"host": n.host, "peer_endpoint": n.peer_endpoint, "client_endpoint": n.client_endpoint,
                             **({"sql_endpoint": n.sql_endpoint} if n.sql_endpoint else {}),
                             **({"metrics_endpoint": n.metrics_endpoint} if n.metrics_endpoint else {})}
            for n in self.nodes.values()
        }
        return tomli_w.dumps(doc)

    def as_dict(self) -> dict[str, Any]:
        return tomllib.loads(self.to_toml())


def check_tcp_endpoint(key: str, value: object, scheme: str = "tcp") -> str:
    """A ``scheme://host:port`` endpoint with a numeric port; ZeroMQ and etcd accept nothing vaguer."""
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string like '{scheme}://127.0.0.1:5432', got {value!r}")
    parsed = urlparse(value)
    schemes = ("http", "https") if scheme == "http" else (scheme,)
    try:
        port = parsed.port
    except ValueError:
        port = None
    if parsed.scheme not in schemes or not parsed.hostname or port is None or not 0 < port < 65536:
        raise ConfigError(
            f"{key}: {value!r} is not a valid endpoint; write it as '{schemes[0]}://HOST:PORT', "
            f"e.g. '{schemes[0]}://127.0.0.1:{2379 if scheme == 'http' else 5701}'"
        )
    if parsed.path not in ("", "/") or parsed.query:
        raise ConfigError(f"{key}: {value!r} must not have a path or query; write '{schemes[0]}://HOST:PORT'")
    return value.rstrip("/")


def _check_ttl(value: object) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"lease_ttl: expected whole seconds (etcd leases have 1 s granularity), got {value!r}")
    if value < ETCD_MIN_TTL:
        raise ConfigError(
            f"lease_ttl: {value} s is below etcd's minimum lease TTL of {ETCD_MIN_TTL} s; set lease_ttl >= {ETCD_MIN_TTL}"
        )
    if value > 600:
        raise ConfigError(f"lease_ttl: {value} s would delay failure detection by minutes; use at most 600")
    return value


def _check_seconds(key: str, value: object, default: float, most: float) -> float:
    """A positive number of seconds (``MUHEAM_LOCK_TIMEOUT=2.5`` arrives as a string)."""
    if value is None:
        return default
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: expected a number of seconds, e.g. {key} = {default:g}; got {value!r}")
    if not 0 < value <= most:
        raise ConfigError(f"{key}: {value!r} s is out of range; use more than 0 and at most {most:g} s "
                          f"(default {default:g})")
    return float(value)


def _check_node_id(key: str, raw: object) -> int:
    try:
        node_id = int(str(raw))
    except ValueError:
        raise ConfigError(f"{key}: node ids are integers 1..{MAX_NODE_ID}, got {raw!r}") from None
    if not 1 <= node_id <= MAX_NODE_ID:
        raise ConfigError(f"{key}: node id {node_id} is out of range; use 1..{MAX_NODE_ID}")
    return node_id


def _check_bool(key: str, value: Any) -> bool:
    """A TOML boolean, or its text from the environment (``MUHEAM_LAZY_OUTCOME=true``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(f"{key}: {value!r} is not true or false")


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """``MUHEAM_LEASE_TTL=3``, ``MUHEAM_ETCD_ENDPOINTS=http://a:1,http://b:2``, ``MUHEAM_NODES__2__PEER_ENDPOINT=...``."""
    out: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name in NOT_SETTINGS or name.startswith("MUHEAM_TEST"):
            continue
        path = name[len(ENV_PREFIX):].lower().split("__")
        if path[0] not in _TOP_KEYS:
            raise ConfigError(
                f"environment variable {name}: unknown setting {path[0]!r}; known: "
                + ", ".join("MUHEAM_" + k.upper() for k in sorted(_TOP_KEYS - {"nodes", "embedded_etcd"}))
            )
        parsed: Any = value
        if path == ["etcd_endpoints"]:
            parsed = [v.strip() for v in value.split(",") if v.strip()]
        cursor = out
        for part in path[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[path[-1]] = parsed
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def load(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    require_shared_dir: bool = True,
) -> Config:
    """Read the config file (or ``$MUHEAM_CONFIG``), apply environment and flag overrides, validate everything."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    source: Path | None = None
    if path is None and env.get("MUHEAM_CONFIG"):
        path = env["MUHEAM_CONFIG"]
    if path is not None:
        source = Path(path).expanduser().resolve()
        try:
            # TOML is UTF-8 by definition: decode it as such whatever the locale, and say so when it is not
            raw = tomllib.loads(source.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {source} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
                              f"offset {exc.start}); a muheam.toml is TOML, which must be UTF-8: fix or rewrite "
                              "the file, or pass -c with the right path") from None
        except FileNotFoundError:
            raise ConfigError(f"config file {source} does not exist; pass -c with the path of muheam.toml") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {source} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"config file {source} cannot be read: {exc.strerror}") from None
    raw = _merge(raw, _env_overrides(env))
    raw = _merge(raw, {k: v for k, v in (overrides or {}).items() if v is not None})
    return validate(raw, source=source, require_shared_dir=require_shared_dir)


def validate(raw: Mapping[str, Any], source: Path | None = None, require_shared_dir: bool = True) -> Config:
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"{key}: unknown setting; known settings are " + ", ".join(sorted(_TOP_KEYS)))
    name = raw.get("cluster_name", "muheam")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"cluster_name: {name!r} is not valid; use letters, digits, '.', '_' or '-' (max 63)")
    base = source.parent if source else Path.cwd()

    if "shared_dir" not in raw:
        raise ConfigError("shared_dir: missing; set shared_dir in the config file or MUHEAM_SHARED_DIR")
    shared = (base / Path(str(raw["shared_dir"])).expanduser()).resolve()
    if require_shared_dir and not shared.is_dir():
        raise ConfigError(
            f"shared_dir: {shared} does not exist; create the cluster with 'muheam cluster init' or fix the path"
        )
    run_dir = (base / Path(str(raw.get("run_dir", base))).expanduser()).resolve()

    endpoints_raw = raw.get("etcd_endpoints", ["http://127.0.0.1:2379"])
    if isinstance(endpoints_raw, str):
        endpoints_raw = [endpoints_raw]
    if not isinstance(endpoints_raw, list) or not endpoints_raw:
        raise ConfigError("etcd_endpoints: expected a non-empty list like ['http://127.0.0.1:2379']")
    endpoints = tuple(check_tcp_endpoint("etcd_endpoints", e, "http") for e in endpoints_raw)

    embedded = None
    if "embedded_etcd" in raw:
        emb = raw["embedded_etcd"]
        if not isinstance(emb, Mapping):
            raise ConfigError("embedded_etcd: expected a table with client_endpoint, peer_endpoint, data_dir")
        bad = set(emb) - _EMBEDDED_KEYS
        if bad:
            raise ConfigError(f"embedded_etcd.{sorted(bad)[0]}: unknown setting; known: {', '.join(sorted(_EMBEDDED_KEYS))}")
        for key in _EMBEDDED_KEYS:
            if key not in emb:
                raise ConfigError(f"embedded_etcd.{key}: missing")
        embedded = EmbeddedEtcd(
            client_endpoint=check_tcp_endpoint("embedded_etcd.client_endpoint", emb["client_endpoint"], "http"),
            peer_endpoint=check_tcp_endpoint("embedded_etcd.peer_endpoint", emb["peer_endpoint"], "http"),
            data_dir=(base / Path(str(emb["data_dir"]))).resolve(),
        )

    nodes_raw = raw.get("nodes", {})
    if not isinstance(nodes_raw, Mapping):
        raise ConfigError("nodes: expected tables like [nodes.1] with peer_endpoint and client_endpoint")
    nodes: dict[int, NodeConfig] = {}
    seen: dict[str, str] = {}
    for key, value in nodes_raw.items():
        node_id = _check_node_id(f"nodes.{key}", key)
        if not isinstance(value, Mapping):
            raise ConfigError(f"nodes.{key}: expected a table with peer_endpoint and client_endpoint")
        bad = set(value) - _NODE_KEYS
        if bad:
            raise ConfigError(f"nodes.{key}.{sorted(bad)[0]}: unknown setting; known: {', '.join(sorted(_NODE_KEYS))}")
        for part in ("peer_endpoint", "client_endpoint"):
            if part not in value:
                raise ConfigError(f"nodes.{key}.{part}: missing; write it as 'tcp://HOST:PORT'")
        peer = check_tcp_endpoint(f"nodes.{key}.peer_endpoint", value["peer_endpoint"])
        client = check_tcp_endpoint(f"nodes.{key}.client_endpoint", value["client_endpoint"])
        sql = check_tcp_endpoint(f"nodes.{key}.sql_endpoint", value["sql_endpoint"]) if "sql_endpoint" in value else ""
        metrics = check_tcp_endpoint(f"nodes.{key}.metrics_endpoint", value["metrics_endpoint"], "http") \
            if "metrics_endpoint" in value else ""
        for label, ep in (("peer_endpoint", peer), ("client_endpoint", client), ("sql_endpoint", sql),
                          ("metrics_endpoint", metrics)):
            if not ep:
                continue
            if ep in seen:
                raise ConfigError(f"nodes.{key}.{label}: {ep} is already used by {seen[ep]}; give every endpoint its own port")
            seen[ep] = f"nodes.{key}.{label}"
        host = value.get("host", urlparse(peer).hostname or "127.0.0.1")
        nodes[node_id] = NodeConfig(node_id, peer, client, str(host), sql, metrics)

    fence_command = raw.get("fence_command", "")
    if not isinstance(fence_command, str):
        raise ConfigError(f"fence_command: expected a shell command as a string, got {fence_command!r}")

    sql_auth = raw.get("sql_auth", "trust")
    if sql_auth not in SQL_AUTH_METHODS:
        raise ConfigError(f"sql_auth: {sql_auth!r} is not a method; use one of {', '.join(SQL_AUTH_METHODS)}")

    commit_scope = raw.get("commit_scope", "")
    if not isinstance(commit_scope, str):
        raise ConfigError(f"commit_scope: expected a string such as 'ANY 1 (replicas) ON applied ABORT ON 2s', got "
                          f"{commit_scope!r}")
    security = raw.get("security", "curve")
    if security not in SECURITY_MODES:
        raise ConfigError(f"security: {security!r} is not a mode; use 'curve' (the default) or 'none' (a trusted "
                          "network only)")
    client_key = raw.get("client_key")
    if client_key is not None and not isinstance(client_key, str):
        raise ConfigError(f"client_key: expected the path of a .key_secret file, got {client_key!r}")

    log_level = str(raw.get("log_level", "INFO")).upper()
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"log_level: {raw.get('log_level')!r} is not a level; use one of {', '.join(LOG_LEVELS)}")

    wal_flush_thread = _check_bool("wal_flush_thread", raw.get("wal_flush_thread", False))
    lazy_outcome = _check_bool("lazy_outcome", raw.get("lazy_outcome", False))

    return Config(
        commit_scope=commit_scope.strip(),
        log_level=log_level,
        wal_flush_thread=wal_flush_thread,
        lazy_outcome=lazy_outcome,
        sql_auth=sql_auth,
        security=security,
        client_key=(base / Path(client_key).expanduser()).resolve() if client_key else None,
        fence_command=fence_command.strip(),
        lock_timeout=_check_seconds("lock_timeout", raw.get("lock_timeout"), DEFAULT_LOCK_TIMEOUT, 3600),
        idle_in_transaction_timeout=_check_seconds("idle_in_transaction_timeout",
                                                   raw.get("idle_in_transaction_timeout"), DEFAULT_IDLE_TIMEOUT,
                                                   7 * 86400),
        cluster_name=name,
        shared_dir=shared,
        run_dir=run_dir,
        etcd_endpoints=endpoints,
        lease_ttl=_check_ttl(raw.get("lease_ttl", DEFAULT_TTL)),
        nodes=nodes,
        embedded_etcd=embedded,
        source=source,
    )
