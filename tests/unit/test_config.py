"""Configuration: every bad value is one clear line naming the key, exit code 2 from the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from muheam import config
from muheam.errors import ConfigError

from tests.support.cluster import run_cli

GOOD_NODE = {"peer_endpoint": "tcp://127.0.0.1:5001", "client_endpoint": "tcp://127.0.0.1:6001"}


def test_defaults_and_round_trip(tmp_path: Path) -> None:
    cfg = config.validate({"shared_dir": str(tmp_path), "nodes": {"1": GOOD_NODE}})
    assert cfg.lease_ttl == 2
    assert cfg.cluster_name == "muheam"
    assert cfg.etcd_endpoints == ("http://127.0.0.1:2379",)
    path = tmp_path / "muheam.toml"
    path.write_text(cfg.to_toml())
    again = config.load(path, env={})
    assert again.nodes == cfg.nodes and again.shared_dir == cfg.shared_dir
    assert again.fence_command == ""
    fenced = config.validate({"shared_dir": str(tmp_path), "fence_command": " ipmitool power off "})
    path.write_text(fenced.to_toml())
    assert config.load(path, env={}).fence_command == "ipmitool power off"


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"lease_ttl": 1}, "lease_ttl"),
        ({"lease_ttl": "soon"}, "lease_ttl"),
        ({"colour": "blue"}, "colour"),
        ({"etcd_endpoints": ["127.0.0.1:2379"]}, "etcd_endpoints"),
        ({"etcd_endpoints": ["http://127.0.0.1:notaport"]}, "etcd_endpoints"),
        ({"nodes": {"1": {"peer_endpoint": "tcp://127.0.0.1:5001"}}}, "nodes.1.client_endpoint"),
        ({"nodes": {"0": GOOD_NODE}}, "nodes.0"),
        ({"nodes": {"x": GOOD_NODE}}, "nodes.x"),
        ({"nodes": {"1": {**GOOD_NODE, "peer_endpoint": "udp://1.2.3.4:5"}}}, "nodes.1.peer_endpoint"),
        ({"nodes": {"1": GOOD_NODE, "2": GOOD_NODE}}, "nodes.2.peer_endpoint"),
        ({"cluster_name": "bad name!"}, "cluster_name"),
        ({"fence_command": ["fence", "node"]}, "fence_command"),
        ({"lazy_outcome": "yes"}, "lazy_outcome"),
        ({"wal_flush_thread": 1}, "wal_flush_thread"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, raw: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.validate({"shared_dir": str(tmp_path), **raw})
    assert str(err.value).startswith(key), str(err.value)
    assert "\n" not in str(err.value)


def test_missing_shared_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^shared_dir: .* does not exist"):
        config.validate({"shared_dir": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="^shared_dir: missing"):
        config.validate({})


def test_environment_overrides_file_and_flags_override_environment(tmp_path: Path) -> None:
    path = tmp_path / "muheam.toml"
    path.write_text(f'shared_dir = "{tmp_path}"\nlease_ttl = 5\n[nodes.1]\npeer_endpoint = "tcp://127.0.0.1:5001"\n'
                    'client_endpoint = "tcp://127.0.0.1:6001"\n')
    env = {"MUHEAM_LEASE_TTL": "4", "MUHEAM_ETCD_ENDPOINTS": "http://127.0.0.1:1,http://127.0.0.1:2",
           "MUHEAM_NODES__1__PEER_ENDPOINT": "tcp://127.0.0.1:5999"}
    cfg = config.load(path, env=env)
    assert cfg.lease_ttl == 4
    assert cfg.etcd_endpoints == ("http://127.0.0.1:1", "http://127.0.0.1:2")
    assert cfg.nodes[1].peer_endpoint == "tcp://127.0.0.1:5999"
    assert config.load(path, env=env, overrides={"lease_ttl": 7}).lease_ttl == 7
    with pytest.raises(ConfigError, match="MUHEAM_COLOUR"):
        config.load(path, env={"MUHEAM_COLOUR": "x"})
    # the switches the README documents are not settings, and must not be refused as unknown ones
    for name in ("MUHEAM_DEBUG", "MUHEAM_NO_JIT", "MUHEAM_FULL", "MUHEAM_CONFIG", "MUHEAM_SIM_FIRST_SEED"):
        assert config.load(path, env={name: "1"}).lease_ttl == 5
    # a boolean from the environment is its text; the file keeps it only when it is not the default
    lazy = config.load(path, env={"MUHEAM_LAZY_OUTCOME": "true"})
    assert lazy.lazy_outcome and not config.load(path, env={"MUHEAM_LAZY_OUTCOME": "False"}).lazy_outcome
    assert "lazy_outcome = true" in lazy.to_toml() and "lazy_outcome" not in config.load(path, env={}).to_toml()


def test_cli_reports_bad_config_in_one_line_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "muheam.toml"
    path.write_text(f'shared_dir = "{tmp_path}"\nlease_ttl = 1\n')
    proc = run_cli("list", "-c", str(path), check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "lease_ttl" in lines[0] and "Traceback" not in proc.stderr
    proc = run_cli("list", "-c", str(tmp_path / "missing.toml"), check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    path.write_text("this is = = not toml")
    proc = run_cli("list", "-c", str(path), check=False)
    assert proc.returncode == 2 and "not valid TOML" in proc.stderr


def test_lock_and_idle_timeouts_are_settings(tmp_path: Path) -> None:
    cfg = config.validate({"shared_dir": str(tmp_path)})
    assert (cfg.lock_timeout, cfg.idle_in_transaction_timeout) == (10.0, 300.0)
    cfg = config.validate({"shared_dir": str(tmp_path), "lock_timeout": 2.5, "idle_in_transaction_timeout": 60})
    assert (cfg.lock_timeout, cfg.idle_in_transaction_timeout) == (2.5, 60.0)
    path = tmp_path / "muheam.toml"
    path.write_text(cfg.to_toml())
    assert config.load(path, env={}).lock_timeout == 2.5
    env = config.load(path, env={"MUHEAM_LOCK_TIMEOUT": "0.5", "MUHEAM_IDLE_IN_TRANSACTION_TIMEOUT": "7"})
    assert (env.lock_timeout, env.idle_in_transaction_timeout) == (0.5, 7.0)
    for key, bad in (("lock_timeout", 0), ("lock_timeout", "soon"), ("lock_timeout", float("nan")),
                     ("idle_in_transaction_timeout", -1), ("idle_in_transaction_timeout", True)):
        with pytest.raises(ConfigError, match=f"^{key}: "):
            config.validate({"shared_dir": str(tmp_path), key: bad})


def test_client_waits_longer_than_the_node_lock_and_idle_timeouts() -> None:
    """A row-lock wait must end as LockTimeout from the node, not as NodeUnavailable in the client."""
    import inspect

    from muheam.client import connect

    client_default = inspect.signature(connect).parameters["timeout"].default
    assert client_default > config.DEFAULT_LOCK_TIMEOUT + 5
