"""CURVE on every ZeroMQ port, on real sockets against real nodes (issue 21's "what must hold").

* a process with no key, a key the cluster does not know, or a key of the wrong kind (a node's key on the client
  port, a client's key on the peer port) gets no reply on any port and cannot join the mesh; the client is told
  at once, not after its timeout; the node counts and logs each refusal;
* a client key is added, rotated and revoked with no restart, and a revoked key is cut off even on a connection
  opened before the revocation;
* secret key files are 0600, and no secret shows in ``muheam keys list``, ``muheam list``, errors or node logs;
* the WAL stream publisher refuses the same keys; ``security = "none"`` runs with plain sockets.
(That a member's key cannot take over another member's link is tests/faults/test_faults.py's spoofed
routing-id test.)
"""

from __future__ import annotations

import shutil
import stat
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import zmq

from muheam import config as config_mod
from muheam.client import AuthenticationFailed, connect
from muheam.net import wire
from muheam.ops.procs import wait_until
from muheam.security import keys
from muheam.security.setup import publisher_security
from muheam.security.sockets import ClientSecurity, client_socket
from muheam.walstream.publisher import Publisher, StreamError
from muheam.walstream.subscriber import Subscriber
from tests.support.cluster import LocalCluster

pytestmark = pytest.mark.integration
Start = Callable[..., LocalCluster]


def secrets_of(c: LocalCluster) -> list[str]:
    """Every secret key (z85) of the cluster: none may show anywhere."""
    out = []
    for path in (c.dir / "keys").rglob("*.key_secret"):
        out.append(keys.load_secret(path).secret.decode())
    return out


def stranger() -> keys.KeyPair:
    public, secret = zmq.curve_keypair()
    return keys.KeyPair(public, secret, source="a stranger's key")


def no_reply(ctx: zmq.Context[Any], sock: zmq.Socket[Any], endpoint: str, frames: list[bytes]) -> bool:
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart(frames)
    except zmq.ZMQError:
        pass
    got = sock.poll(1000)
    sock.close(0)
    return not got


def test_strangers_get_no_reply_on_any_port_and_are_counted(local_cluster: Start) -> None:
    c = local_cluster(2)
    members = {m["node_id"]: m for m in c.members()}
    admin = keys.load_secret(Path(c.client_key or ""))
    node2 = keys.load_secret(keys.node_secret_file(c.dir, 2))
    ep = members[1]["client_endpoint"]
    # the client library: told at once (well inside its timeout), with the reason
    for key, label in ((None, "no key"), (ClientSecurity(stranger(), admin.server), "stranger"),
                       (ClientSecurity(node2, admin.server), "node 2's key"),
                       (ClientSecurity(admin, node2.public), "another server's key")):
        t0 = time.monotonic()
        with pytest.raises(AuthenticationFailed) as err:
            with connect(ep, timeout=20, key=key) as conn:
                if key is None:
                    conn.security = None  # no key at all, whatever MUHEAM_CLIENT_KEY says
                conn.call("ping")
        assert time.monotonic() - t0 < 10, label
        assert "key" in str(err.value) and not any(s in str(err.value) for s in secrets_of(c)), label
    # raw sockets on the peer port: no key, a stranger's key, a client's key; none joins the mesh
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        hello = wire.encode_peer(9, 1, 5, "hello", {}, dest_epoch=int(members[1]["epoch"]), seq=1)
        server = keys.load_public(keys.node_public_file(c.dir / "shared", 1), "node 1")
        for sock in (ctx.socket(zmq.DEALER), client_socket(ctx, zmq.DEALER, ClientSecurity(stranger(), server)),
                     client_socket(ctx, zmq.DEALER, ClientSecurity(admin, server))):
            assert no_reply(ctx, sock, members[1]["peer_endpoint"], [hello])
        sock = client_socket(ctx, zmq.DEALER, ClientSecurity(stranger(), admin.server))
        assert no_reply(ctx, sock, ep, [b"", wire.pack({"op": "ping"})])
    finally:
        ctx.term()

    def counted() -> bool:
        row = next(m for m in c.members() if m["node_id"] == 1)
        sec = row["counters"]["security"]
        return sec.get("refused_key_client", 0) >= 3 and sec.get("refused_key_peer", 0) >= 2 \
            and row["counters"]["peer"].get("handshake_failed", 0) >= 1
    assert wait_until(counted, 10), c.members()
    with connect(ep) as conn:  # the cluster's own client still gets in; node 9 never joined node 1's mesh
        assert "9" not in conn.call("status")["links"]
    status = c.cli("list", "--format", "json").stdout
    log = c.log(1)
    assert "refused a connection to the client port" in log and "refused a connection to the peer port" in log
    listing = c.cli("keys", "list", "--format", "json").stdout
    for secret in secrets_of(c):
        assert secret not in log and secret not in status and secret not in listing and secret not in c.log(2)
    for path in (c.dir / "keys").rglob("*.key_secret"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((c.dir / "keys").stat().st_mode) == 0o700


def test_clients_are_added_rotated_and_revoked_without_a_restart(local_cluster: Start, tmp_path: Path) -> None:
    c = local_cluster(1)
    ep = c.members()[0]["client_endpoint"]
    pid = c.node_pid(1)
    held = tmp_path / "bob.key_secret"  # what bob holds: revoking deletes the cluster's copy, not his
    c.cli("keys", "add-client", "bob")
    shutil.copy(keys.client_secret_file(c.dir, "bob"), held)
    bob = connect(ep, key=held)
    assert bob.call("ping")["node_id"] == 1
    c.cli("keys", "revoke", "bob")
    with pytest.raises(AuthenticationFailed, match="revoked"):
        bob.call("ping")  # the connection opened before the revocation is cut off
    with pytest.raises(AuthenticationFailed):
        connect(ep, key=held).call("ping")
    c.cli("keys", "add-client", "carol")
    old = tmp_path / "carol-old.key_secret"
    shutil.copy(keys.client_secret_file(c.dir, "carol"), old)
    assert connect(ep, key=old).call("ping")["node_id"] == 1
    c.cli("keys", "add-client", "carol", "--rotate")
    assert connect(ep, key=keys.client_secret_file(c.dir, "carol")).call("ping")["node_id"] == 1
    with pytest.raises(AuthenticationFailed):
        connect(ep, key=old).call("ping")
    assert c.node_pid(1) == pid  # no restart
    bad = c.cli("keys", "revoke", "nobody", check=False)
    assert bad.returncode == 1 and "no client 'nobody'" in bad.stderr


def test_the_wal_stream_publisher_refuses_strangers(local_cluster: Start, tmp_path: Path) -> None:
    c = local_cluster(1)
    cfg = config_mod.load(c.config)
    pub = Publisher("tcp://127.0.0.1:0", tmp_path / "out", system_id=1, segment_size=1 << 20, end_lsn=0,
                    security=lambda ctx: publisher_security(cfg, ctx))
    try:
        admin = keys.load_secret(Path(c.client_key or ""))
        sub = Subscriber(pub.endpoint, 0, timeout=20, key=ClientSecurity(stranger(), admin.server))
        t0 = time.monotonic()
        with pytest.raises(StreamError, match="refused this client's key"):
            while time.monotonic() - t0 < 15:
                pub.wait(0.05)
                sub.receive(0.05)
        sub.close()
        assert pub.status()["security"]["refused_key_client"] >= 1
        good = Subscriber(pub.endpoint, 0, timeout=20)  # MUHEAM_CLIENT_KEY: the cluster's admin key
        for _ in range(100):
            pub.wait(0.02)
            good.receive(0.02)
            if good.info is not None:
                break
        assert good.info is not None and good.info.system_id == 1
        good.close()
    finally:
        pub.close()


def test_security_none_is_plain(local_cluster: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    c = local_cluster(1, security="none")
    assert c.client_key is None and "security = \"none\"" in c.config.read_text()
    monkeypatch.delenv("MUHEAM_CLIENT_KEY", raising=False)
    with connect(c.members()[0]["client_endpoint"]) as conn:
        assert conn.call("ping")["node_id"] == 1
    assert not (c.dir / "keys").exists()
    refused = c.cli("keys", "list", check=False)
    assert refused.returncode == 2 and "security = 'none'" in refused.stderr
