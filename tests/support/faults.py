"""Helpers for the fault-injection suite (tests/faults/test_faults.py): the load, the per-round checks, WAL damage,
a pausable TCP proxy, and a sender of malformed peer/client messages.

Everything here is bounded: threads are daemons with stop events and joins with timeouts, sockets have timeouts,
and every loop has a deadline.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import urlparse

import zmq

from muheam.bench.workloads import bank
from muheam.net import wire
from muheam.client import ClientError, NodeUnavailable, RequestFailed, connect
from muheam.engine import statefiles
from muheam.ops.procs import pid_alive
from muheam.ops.walcheck import Waits, block_of
from walmerge import HEADER_SIZE, WalReader, encode_record, node_wal_dir, verify
from walmerge.segment import list_segments
from tests.support.cluster import LocalCluster
from tests.support.keyed import client_dealer, peer_dealer

ACCOUNTS = 30


def table_digest(ep: str, table: str) -> tuple[int, str]:
    """(row count, digest of the sorted rows) read in one snapshot."""
    with connect(ep, 30) as conn, conn.transaction() as tx:
        rows = sorted((k, json.dumps(r, sort_keys=True)) for k, r in tx.scan(table))
    return len(rows), hashlib.sha256(repr(rows).encode()).hexdigest()


def all_digests(ep: str) -> dict[str, tuple[int, str]]:
    with connect(ep, 10) as conn:
        names = [t["name"] for t in conn.tables()]
    return {name: table_digest(ep, name) for name in sorted(names)}


# -- the load ---------------------------------------------------------------------------------------------------

class Acker(threading.Thread):
    """Inserts unique keys into ``acks`` through one node until stopped; remembers the keys whose COMMIT returned
    (with their XIDs) and the first few distinct error messages (what a client is told when the node fails)."""

    def __init__(self, ep: str, base: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.ep, self.key, self.stop_ = ep, base, stop
        self.acked: dict[int, int] = {}
        self.errors = 0
        self.messages: list[str] = []

    def run(self) -> None:
        while not self.stop_.is_set():
            self.key += 1
            try:
                with connect(self.ep, 3) as conn, conn.transaction() as tx:
                    tx.insert("acks", self.key, {"v": self.key})
                    xid = tx.xid
                assert xid is not None
                self.acked[self.key] = xid
            except (ClientError, NodeUnavailable, RequestFailed, OSError) as e:
                self.errors += 1
                msg = f"{type(e).__name__}: {e}"
                if len(self.messages) < 20 and msg not in self.messages:
                    self.messages.append(msg)
                self.stop_.wait(0.05)


@dataclass
class Load:
    """The bank workload (in a thread) plus one Acker per node, for one round."""

    eps: list[str]
    seconds: float
    seed: int
    base: int
    result: dict[str, Any] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    ackers: list[Acker] = field(default_factory=list)
    loader: threading.Thread | None = None

    def start(self) -> "Load":
        self.loader = threading.Thread(target=lambda: self.result.setdefault("bank", bank.run(
            self.eps, seconds=self.seconds, transfer_clients=3, readers=2, accounts=ACCOUNTS, seed=self.seed,
            timeout=3.0)), daemon=True)
        self.loader.start()
        self.ackers = [Acker(ep, self.base + 1_000_000 * i, self.stop) for i, ep in enumerate(self.eps)]
        for a in self.ackers:
            a.start()
        return self

    def acked_count(self, nodes: Iterable[int] | None = None) -> int:
        keep = set(nodes) if nodes is not None else None
        return sum(len(a.acked) for i, a in enumerate(self.ackers) if keep is None or i + 1 in keep)

    def finish(self) -> bank.BankResult:
        assert self.loader is not None
        self.loader.join(self.seconds + 60)
        self.stop.set()
        for a in self.ackers:
            a.join(30)
        assert not self.loader.is_alive(), "the bank run did not return"
        res: bank.BankResult = self.result["bank"]
        return res

    @property
    def acked(self) -> dict[int, int]:
        return {k: x for a in self.ackers for k, x in a.acked.copy().items()}  # the writers may still run


def setup_tables(ep: str) -> None:
    bank.create_accounts(ep, ACCOUNTS)
    with connect(ep, 30) as conn:
        conn.create_table("acks", {"v": "int64"}, buckets=64)


def live_endpoints(c: LocalCluster) -> dict[int, str]:
    """Members in etcd that answer their client port, by node id."""
    return {int(m["node_id"]): str(m["client_endpoint"]) for m in c.members()
            if m.get("answering") and m.get("state") == "running"}


def check_round(c: LocalCluster, acked: dict[int, int], res: bank.BankResult, label: str,
                allowed_lost: frozenset[int] | set[int] = frozenset(), expect_nodes: int = 3) -> dict[str, Any]:
    """After a round (its load finished): every bank sum was 0, every acknowledged insert is on every live node,
    every live node returns the same digests of every table."""
    assert res.sum_violations == 0 and res.violations == [], f"{label}: {res.to_dict()}"
    assert res.sums > 0, f"{label}: no bank sum was read: {res.to_dict()}"
    eps = live_endpoints(c)
    assert len(eps) == expect_nodes, f"{label}: live nodes {sorted(eps)}, expected {expect_nodes}"
    digests = {}
    lost_by_node = {}
    for node, ep in sorted(eps.items()):
        with connect(ep, 30) as conn, conn.transaction() as tx:
            present = {k for k, _ in tx.scan("acks")}
        lost = set(acked) - present
        lost_by_node[node] = sorted(lost)
        assert lost <= allowed_lost, (f"{label}: node {node} lost {len(lost - allowed_lost)} acknowledged commits, "
                                      f"e.g. {sorted(lost - allowed_lost)[:10]} (xids "
                                      f"{[acked[k] for k in sorted(lost - allowed_lost)[:10]]})")
        digests[node] = all_digests(ep)
    distinct = {json.dumps(d, sort_keys=True) for d in digests.values()}
    assert len(distinct) == 1, f"{label}: nodes disagree: {digests}"
    return {"lost": sum(len(v) for v in lost_by_node.values()), "acked_total": len(acked),
            "transfers": res.transfers, "sums": res.sums}


def final_verify(c: LocalCluster, lost_commits: Iterable[int] = ()) -> list[str]:
    """Stop the cluster (fast) and verify the whole run's WAL: no XID twice, per-block order, waited-on outcomes
    first, with the recorded fences applied.  ``lost_commits``: XIDs whose COMMIT record the test destroyed
    (a damaged WAL tail); a change that waited on one of them has no earlier outcome in the merged history, and
    only that is accepted (returned, for the report)."""
    from tests.support.cluster import run_cli
    proc = run_cli("cluster", "down", "--dir", str(c.dir), "--mode", "fast", timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shared = Path(c.info["config"]["shared_dir"])
    report = verify(shared, block_of=block_of, waits_of=Waits(), fences=statefiles.read_fences(shared))
    lost = set(lost_commits)
    excused = [str(p) for p in report.problems if any(f"waited on XID {x}," in str(p) for x in lost)]
    others = [str(p) for p in report.problems if str(p) not in excused]
    assert not others and not report.unusable, others[:10] + report.unusable
    return excused


def wait_pids_gone(pids: Iterable[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    left = list(pids)
    while left and time.monotonic() < deadline:
        left = [p for p in left if pid_alive(p) and not _zombie(p)]
        time.sleep(0.05)
    return not left


def _zombie(pid: int) -> bool:
    try:
        return "zombie" in Path(f"/proc/{pid}/status").read_text(errors="replace").lower()
    except OSError:
        return True


def wait_for(cond: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return True
        except Exception:  # noqa: BLE001 - etcd or a node may be down for a moment
            pass
        time.sleep(step)
    return False


# -- WAL damage -------------------------------------------------------------------------------------------------

@dataclass
class Damage:
    kind: str
    segment: Path
    offset: int
    lsn: int
    record_kind: int = 0
    record_xid: int = 0
    record_glsn: int = 0
    note: str = ""


def last_record(shared: Path, node: int) -> tuple[Path, int, Any]:
    """(segment, segment start LSN, the last valid record) of ``node``'s WAL."""
    wal = node_wal_dir(shared, node)
    segs = list_segments(wal)
    for start, path in reversed(segs):
        reader = WalReader(wal, node_id=node, system_id=0, start_lsn=start, verify_crc=True)
        last = None
        for batch in reader.batches():
            last = (batch, int(batch.offsets[-1]))
        if last is not None:
            return path, start, last
    raise AssertionError(f"node {node}'s WAL has no record")


def damage_wal(shared: Path, node: int, kind: str) -> Damage:
    """``torn``: write the first half of a plausible next record (rest zeros) after the last record.
    ``corrupt``: flip one byte in the middle of the last complete record."""
    path, start, (batch, off) = last_record(shared, node)
    h = batch.headers[-1]
    lsn, total = int(h["lsn"]), int(h["total_len"])
    assert lsn == start + off
    if kind == "torn":
        end = off + ((total + 7) & ~7)
        # a non-zero payload: the half never written must differ from the zeros the segment holds there
        rec = encode_record(kind=int(h["kind"]), payload=os.urandom(64), lsn=start + end, prev_lsn=lsn,
                            lamport=(int(h["glsn"]) >> 16) + 1, node=node, xid=int(h["xid"]),
                            epoch=int(h["epoch"]), durable_lsn=int(h["durable_lsn"]))
        part = rec[: len(rec) // 2]
        with open(path, "r+b") as f:
            f.seek(end)
            f.write(part)
            f.flush()
            os.fsync(f.fileno())
        return Damage("torn", path, end, start + end, note=f"{len(part)} of {len(rec)} bytes of a next record")
    assert kind == "corrupt"
    at = off + total // 2
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0x5A]))
        f.flush()
        os.fsync(f.fileno())
    return Damage("corrupt", path, off, lsn, int(h["kind"]), int(h["xid"]), int(h["glsn"]),
                  note=f"flipped byte at record offset {total // 2} of {total}")


# -- a pausable TCP proxy ---------------------------------------------------------------------------------------

class TcpProxy:
    """Forwards connections from a free loopback port to ``target`` (``host:port``).

    ``pause()`` stops moving bytes (both directions, existing and new connections): the kernel buffers fill and
    TCP flow control stalls the senders, as in a network partition where packets are dropped and retransmitted
    later; nothing is lost or reordered.  ``resume()`` lets the bytes flow again.  ``reset()`` aborts the
    connections (RST both ways, what was in flight is lost).  ``close()`` ends everything.
    """

    def __init__(self, target: str) -> None:
        url = urlparse(target if "://" in target else f"tcp://{target}")
        self.target = (str(url.hostname), int(url.port or 0))
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.1)
        self.port = int(self.listener.getsockname()[1])
        self.flowing = threading.Event()
        self.flowing.set()
        self._closed = threading.Event()
        self._conns: list[tuple[socket.socket, socket.socket]] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.bytes = 0
        self.accepted = 0
        self.resets = 0
        t = threading.Thread(target=self._accept, daemon=True, name=f"proxy-{self.port}")
        t.start()
        self._threads.append(t)

    def url(self, scheme: str) -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    def pause(self) -> None:
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    def reset(self) -> int:
        """Abort every connection as a network reset does: both sockets closed with SO_LINGER 0, so each end
        gets a TCP RST and whatever was in flight (the proxy's buffers, the kernel's) is lost; the peers reconnect
        through the proxy.  Returns how many connections were reset."""
        with self._lock:
            conns, self._conns = self._conns, []
        for a, b in conns:
            for s in (a, b):
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    s.close()
                except OSError:
                    pass
        self.resets += len(conns)
        return len(conns)

    def drop_connections(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for a, b in conns:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            self.accepted += 1
            for s in (client, upstream):
                s.setblocking(False)
            with self._lock:
                self._conns.append((client, upstream))
            t = threading.Thread(target=self._pump, args=(client, upstream), daemon=True)
            t.start()
            self._threads = [x for x in self._threads if x.is_alive()] + [t]

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        pending: dict[socket.socket, bytes] = {a: b"", b: b""}  # bytes read from the key, not yet sent on
        try:
            while not self._closed.is_set():
                if not self.flowing.wait(0.1):
                    continue
                readers = [s for s in (a, b) if not pending[s]]
                writers = [peer[s] for s in (a, b) if pending[s]]
                r, w, _ = select.select(readers, writers, [], 0.1)
                if not self.flowing.is_set():
                    continue
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        return
                    pending[s] = data
                for s in (a, b):
                    if pending[s] and peer[s] in w:
                        n = peer[s].send(pending[s])
                        self.bytes += n
                        pending[s] = pending[s][n:]
        except (OSError, ValueError):  # closed under us (drop_connections, close)
            return
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self._closed.set()
        self.flowing.set()
        try:
            self.listener.close()
        except OSError:
            pass
        self.drop_connections()
        for t in self._threads:
            t.join(2)


# -- malformed messages -----------------------------------------------------------------------------------------

class Garbage(threading.Thread):
    """Sends malformed peer and client messages to every endpoint ``targets()`` returns, every ``period`` s:
    raw TCP garbage, wrong frame counts, bad msgpack, unknown kinds and ops, forged stamps, oversized frames,
    bodies that claim another sender.  Spoofs only routing ids no live incarnation uses (``n<id>e<epoch>`` of
    a live member would take over its connection: see the report)."""

    def __init__(self, targets: Callable[[], list[tuple[str, bool, set[bytes]]]], period: float = 1.0,
                 seed: int = 1, cluster_dir: Path | None = None) -> None:
        """``cluster_dir``: under CURVE, peer garbage comes with the key of a made-up node 9 and client garbage
        with the test's client key (garbage from parties that got in: keyless garbage never reaches a parser)."""
        super().__init__(daemon=True)
        self.cluster_dir = cluster_dir
        self.peer_nodes: dict[str, str] = {}
        if cluster_dir is not None:
            import tomllib
            nodes = tomllib.loads((cluster_dir / "muheam.toml").read_text()).get("nodes", {})
            self.peer_nodes = {n: str(v["peer_endpoint"]) for n, v in nodes.items()}
        self.targets, self.period = targets, period
        self.rng = random.Random(seed)
        self.stop_ = threading.Event()
        self.sent = 0
        self.failures: list[str] = []

    def run(self) -> None:
        ctx: zmq.Context[Any] = zmq.Context()
        try:
            while not self.stop_.wait(self.period):
                try:
                    targets = self.targets()
                except Exception as e:  # noqa: BLE001 - etcd may be down right now
                    self.failures.append(f"targets: {e}")
                    continue
                for endpoint, peer, taken in targets:
                    if self.stop_.is_set():
                        break
                    try:
                        self._raw(endpoint)
                        self._zmq(ctx, endpoint, peer, taken)
                        self.sent += 1
                    except OSError as e:
                        self.failures.append(f"{endpoint}: {e}")
        finally:
            ctx.destroy(0)

    def _raw(self, endpoint: str) -> None:
        url = urlparse(endpoint)
        with socket.create_connection((url.hostname, url.port), timeout=1) as sock:
            sock.sendall(os.urandom(self.rng.randint(1, 2048)))

    def _zmq(self, ctx: zmq.Context[Any], endpoint: str, peer: bool, taken: set[bytes]) -> None:
        if self.cluster_dir is None:
            dealer: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
        elif peer:
            to_node = next((int(n) for n, ep in self.peer_nodes.items() if ep == endpoint), 1)
            dealer = peer_dealer(ctx, self.cluster_dir, 9, to_node)
        else:
            dealer = client_dealer(ctx)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.SNDTIMEO, 200)
        sender = self.rng.choice([n for n in range(1, 9) if all(not t.startswith(f"n{n}e".encode())
                                                                  for t in taken)] or [99])
        if peer:
            dealer.setsockopt(zmq.ROUTING_ID, f"n{sender}e1".encode())
        dealer.connect(endpoint)
        limit = wire.MAX_PEER_FRAME if peer else wire.MAX_CLIENT_FRAME
        frames: list[list[bytes]] = [
            [os.urandom(64)],
            [b"a", b"b", b"c"],
            [b"\xc1"],
            [wire.encode_peer(99, 5, 10, "hello", {})],
            [wire.encode_peer(sender, 1, 7, "no-such-kind", None)],
            [wire.encode_peer(sender, 1, 2**62, "hello", {})],
            [wire.encode_peer(sender, 1, 5, "lock", ["not", "a", "lock", "message"])],
            [wire.encode_peer(sender, 1, 6, "tx", ["prep", "junk"])],
        ]
        if self.sent % 10 == 0:  # oversized frames cost the node a full read: now and then
            frames.append([b"x" * (limit + 1)])
        import msgpack
        if not peer:
            frames += [[msgpack.packb({"op": 7})], [msgpack.packb({"op": "no-such-op"})],
                       [msgpack.packb({"op": "commit", "xid": "nope"})], [msgpack.packb({"op": "insert"})]]
        try:
            for parts in frames:
                dealer.send_multipart([b"", *parts] if not peer else parts)
            if not peer:
                deadline = time.monotonic() + 1.0
                while time.monotonic() < deadline and dealer.poll(100):
                    dealer.recv_multipart()
        except zmq.ZMQError:
            pass
        finally:
            dealer.close(0)

    def stop(self) -> None:
        self.stop_.set()
        self.join(10)


def garbage_targets(c: LocalCluster) -> Callable[[], list[tuple[str, bool, set[bytes]]]]:
    """Peer and client endpoints of every configured node, and the routing ids live incarnations use."""
    nodes = c.info["config"]["nodes"]

    def targets() -> list[tuple[str, bool, set[bytes]]]:
        from muheam.membership import connect as etcd_connect
        taken: set[bytes] = set()
        try:
            backend = etcd_connect([c.etcd_endpoint], timeout=1.0)
            try:
                for m in backend.members(str(c.info["config"]["cluster_name"]))[0]:
                    taken.add(f"n{m.node_id}e".encode())
            finally:
                backend.close()
        except Exception:  # noqa: BLE001 - no etcd: spoof nobody's id
            taken = {f"n{n}e".encode() for n in range(1, 9)}
        out = []
        for n, cfg in nodes.items():
            out.append((str(cfg["peer_endpoint"]), True, taken))
            out.append((str(cfg["client_endpoint"]), False, taken))
        return out

    return targets


__all__ = ["Acker", "Load", "TcpProxy", "Garbage", "damage_wal", "check_round", "final_verify", "setup_tables",
           "live_endpoints", "wait_for", "wait_pids_gone", "garbage_targets", "HEADER_SIZE"]
