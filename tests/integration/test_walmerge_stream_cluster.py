"""Follow mode next to a live cluster (real etcd, node processes, the CLI as a subprocess; everything stopped by
pid): the follower keeps up with the bank workload and its output equals the bulk merge; subscribers killed and
restarted resume with no gap and no duplicate; an idle node keeps the stream within a second; a restarted node
rejoins the followed stream.  The in-process checks and the helpers are in tests/integration/test_walmerge_stream.py.
"""
from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from muheam.bench.workloads import bank
from muheam.ops.procs import free_port, stop_pid
from muheam.walstream.publisher import record_end
from muheam.walstream.subscriber import Subscriber, request
from tests.support.cluster import MUHEAM, LocalCluster, run_cli
from walmerge import RecordKind
from walmerge.follow import NodeTail
from walmerge.merge import detect_system_id, merge
from tests.integration.test_walmerge_stream import MALFORMED, check_malformed, glsn_of, same_files, stream_records

ROOT = Path(__file__).resolve().parents[2]
SYS = 0x5EED
SEG = 4096
HB = int(RecordKind.HEARTBEAT)
Start = Callable[..., LocalCluster]


# --- a real cluster -----------------------------------------------------------------------------------------------


def endpoints(c: LocalCluster) -> list[str]:
    members = sorted(c.members(), key=lambda m: int(m["node_id"]))
    assert [int(m["node_id"]) for m in members] == [1, 2, 3], members
    return [str(m["client_endpoint"]) for m in members]


class Procs:
    """Subprocesses of one test, stopped by pid however the test ends."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, args: list[str], **kw: Any) -> subprocess.Popen[str]:
        p = subprocess.Popen(args, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                stop_pid(p.pid, signal.SIGKILL, 5)
                p.wait(5)


@pytest.fixture
def procs() -> Iterator[Procs]:
    ps = Procs()
    yield ps
    ps.stop_all()


def start_follow(procs: Procs, c: LocalCluster, out: Path, endpoint: str, *extra: str) -> subprocess.Popen[str]:
    p = procs.start([*MUHEAM, "walmerge", "--follow", "--out", str(out), "--publish", endpoint, "-c", str(c.config),
                     "--format", "json", "--poll-interval", "0.05", "--duration", "150", *extra])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert p.poll() is None, p.communicate()
        try:
            request(endpoint, "ping", timeout=0.5)
            return p
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.1)
    raise AssertionError("the publisher did not come up")


def finish(p: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    stdout, stderr = p.communicate(timeout=timeout)
    assert p.returncode == 0, f"exit {p.returncode}\n{stdout}\n{stderr}"
    assert "Traceback" not in stderr, stderr
    result: dict[str, Any] = json.loads(stdout)
    return result


SUB_SCRIPT = """
import sys, zlib
from muheam.walstream.subscriber import Subscriber
endpoint, start, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(path, "a") as log, Subscriber(endpoint, start, timeout=30) as sub:
    for batch in sub.batches():
        log.write("".join(f"{lsn} {len(d)} {zlib.crc32(d)}\\n" for lsn, d in batch))
        log.flush()
"""


def log_lines(path: Path) -> list[tuple[int, int, int]]:
    """The complete lines a subscriber logged (a SIGKILL may cut the last one)."""
    text = path.read_text() if path.exists() else ""
    out = []
    for line in text.split("\n")[:-1]:
        lsn, n, crc = line.split()
        out.append((int(lsn), int(n), int(crc)))
    return out


class LagProbe(threading.Thread):
    """Sees each node's WAL records as they are written (tails polled every 10 ms) and each record of the
    followed stream as it arrives at a subscriber; lag of a record = arrival - first sight in its node's WAL."""

    def __init__(self, shared: Path, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.tails = {k: NodeTail(shared / "wal" / f"node-{k}", node_id=k, system_id=detect_system_id(
            shared / "wal" / f"node-{k}") or 0) for k in (1, 2, 3)}
        for t in self.tails.values():
            while t.poll():  # what is there already is not timed
                pass
        self.seen: dict[int, tuple[float, int, int]] = {}  # glsn -> (time, node, kind)
        self.arrived: dict[int, float] = {}
        self.order: list[int] = []
        self.sub = Subscriber(endpoint, 0, timeout=20)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.sub_thread = threading.Thread(target=self._subscribe, daemon=True)

    def run(self) -> None:
        self.sub_thread.start()
        try:
            while not self.stop.is_set():
                for k, t in self.tails.items():
                    for chunk in t.poll():
                        now = time.monotonic()
                        for g, kind in zip(chunk.headers["glsn"].tolist(), chunk.headers["kind"].tolist()):
                            self.seen.setdefault(int(g), (now, k, int(kind)))
                time.sleep(0.01)
        except BaseException as exc:  # noqa: BLE001
            self.error = exc

    def _subscribe(self) -> None:
        try:
            while not self.stop.is_set():
                for _, data in self.sub.receive(0.2):
                    g = glsn_of(data)
                    self.arrived.setdefault(g, time.monotonic())
                    self.order.append(g)
        except BaseException as exc:  # noqa: BLE001
            self.error = exc

    def finish(self) -> None:
        self.stop.set()
        self.join(10)
        self.sub_thread.join(10)
        self.sub.close()
        assert self.error is None, self.error

    def lags(self, nodes: set[int], until: float) -> list[float]:
        """Lags of the data records (not heartbeats) of ``nodes`` first seen before ``until``; a record that
        never arrived counts as infinitely late."""
        return [self.arrived.get(g, float("inf")) - t for g, (t, k, kind) in self.seen.items()
                if k in nodes and kind != HB and t < until]


def newest_glsn(shared: Path) -> int:
    best = 0
    for k in (1, 2, 3):
        d = shared / "wal" / f"node-{k}"
        tail = NodeTail(d, node_id=k, system_id=detect_system_id(d) or 0)
        while chunks := tail.poll():
            best = max(best, max(int(c.headers["glsn"][-1]) for c in chunks))
    return best


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_follow_bank_load_equals_bulk_merge_and_subscribers_resume(local_cluster: Start, procs: Procs,
                                                                    tmp_path: Path) -> None:
    c = local_cluster(3)
    eps = endpoints(c)
    shared = Path(c.info["config"]["shared_dir"])
    bank.create_accounts(eps[0], 30)
    out, mirror = tmp_path / "follow", tmp_path / "copy"
    ep = f"tcp://127.0.0.1:{free_port()}"
    follow = start_follow(procs, c, out, ep, "--until-idle")
    check_malformed(ep)  # (d) against the live publisher, before the load

    log1, log2 = tmp_path / "sub1.log", tmp_path / "sub2.log"
    sub1 = procs.start([sys.executable, "-c", SUB_SCRIPT, ep, "0", str(log1)])
    copy_cmd = [*MUHEAM, "walmerge", "--subscribe", ep, "--out", str(mirror), "--format", "json"]
    copy1 = procs.start(copy_cmd)
    probe = LagProbe(shared, ep)
    probe.start()
    outcome: dict[str, Any] = {}
    load = threading.Thread(target=lambda: outcome.setdefault("bank", bank.run(
        eps, seconds=8, transfer_clients=4, readers=1, accounts=30, seed=11)), daemon=True)
    t_load = time.monotonic()
    load.start()
    # kill both subscribers mid-stream, while the load runs, and restart them where they stopped
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline and (len(log_lines(log1)) < 300 or time.monotonic() - t_load < 3):
        time.sleep(0.05)
    for p in (sub1, copy1):
        assert p.poll() is None, p.communicate()
        os.kill(p.pid, signal.SIGKILL)
        p.wait(5)
    had = log_lines(log1)
    assert had, "the first subscriber received nothing before it was killed"
    resume = (had[-1][0] + had[-1][1] + 7) & ~7  # the end of the last record it has (record_end)
    sub2 = procs.start([sys.executable, "-c", SUB_SCRIPT, ep, str(resume), str(log2)])
    copy2 = procs.start(copy_cmd)
    load.join(60)
    t_end = time.monotonic()
    result = outcome["bank"]
    assert result.violations == [] and result.transfers > 100, result.to_dict()

    # (a) keeping up: what every node had written when the load stopped is followed within a few seconds
    target = newest_glsn(shared)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(g >= target for g in probe.order[-50:]):
        time.sleep(0.02)
    caught_up = time.monotonic() - t_end
    lags = probe.lags({1, 2, 3}, t_end)
    probe.finish()
    print(f"bank {result.transfers} transfers; lag over {len(lags)} records: median {statistics.median(lags):.3f} s, "
          f"max {max(lags):.3f} s; caught up {caught_up:.2f} s after the load; subscriber killed after "
          f"{len(had)} records")
    assert caught_up < 5, f"the followed stream reached the WAL end {caught_up:.1f} s after the load stopped"
    assert len(lags) > 200 and statistics.median(lags) < 1.0, \
        f"median lag {statistics.median(lags):.2f} s over {len(lags)} records during the bank load"
    assert probe.order == sorted(probe.order), "the followed stream is not in GLSN order"

    for k in (1, 2, 3):  # the nodes leave: the follower ends their streams, emits the rest, and exits by itself
        c.cli("node", "stop", "--node-id", str(k), "--mode", "fast", timeout=60)
    summary = finish(follow, 60)
    assert summary["stopped"] == "idle" and summary["live"] == [], summary
    assert {n: d["how"] for n, d in summary["departed"].items()} == {"1": "left", "2": "left", "3": "left"}
    publisher = summary["publisher"]
    assert publisher["counters"]["malformed"] == sum(code == "malformed" for _, code in MALFORMED), publisher
    copy_result = finish(copy2, 30)
    assert copy_result["stopped"] == "end" and copy_result["caught_up"], copy_result
    stdout, stderr = sub2.communicate(timeout=30)
    assert sub2.returncode == 0, stderr

    followed = stream_records(out)
    merge(shared, tmp_path / "bulk", fsync=False)
    bulk = stream_records(tmp_path / "bulk")
    assert len(followed) == len(bulk) and followed == bulk, "the followed stream differs from the bulk merge"
    same_files(out, tmp_path / "bulk")
    assert summary["records"] == len(followed) and summary["end_lsn"] == record_end(*followed[-1])
    verify = run_cli("walmerge", "--verify", "--merged", str(out), "--shared-dir", str(shared), check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # (c) the killed-and-restarted subscriber has every record exactly once; the copy is the output, byte for byte
    want = [(lsn, len(d), zlib.crc32(d)) for lsn, d in followed]
    got = had + log_lines(log2)
    assert len(got) == len(want) and got == want, \
        f"{len(got)} records logged, {len(want)} followed; first difference at " \
        f"{next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))}"
    same_files(mirror, out)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_idle_node_keeps_the_stream_within_a_second(local_cluster: Start, procs: Procs, tmp_path: Path) -> None:
    c = local_cluster(3)
    eps = endpoints(c)
    shared = Path(c.info["config"]["shared_dir"])
    bank.create_accounts(eps[0], 20)
    ep = f"tcp://127.0.0.1:{free_port()}"
    follow = start_follow(procs, c, tmp_path / "follow", ep)  # stopped by SIGTERM, not --until-idle
    probe = LagProbe(shared, ep)
    probe.start()
    t0 = time.monotonic()
    result = bank.run(eps[:2], seconds=8, transfer_clients=3, readers=1, accounts=20, seed=7)  # nothing on node 3
    t_end = time.monotonic()
    assert result.violations == [] and result.transfers > 50, result.to_dict()
    time.sleep(1.5)
    lags = sorted(probe.lags({1, 2}, t_end))
    kinds3 = {kind for t, k, kind in probe.seen.values() if k == 3 and t0 < t < t_end}
    probe.finish()
    assert kinds3 == {HB}, f"node 3 was meant to be idle but wrote record kinds {kinds3}"
    assert len(lags) > 100
    median, p90 = lags[len(lags) // 2], lags[int(len(lags) * 0.9)]
    late = sum(lag > 1.0 for lag in lags)
    print(f"idle node 3: lag over {len(lags)} records: median {median:.3f} s, p90 {p90:.3f} s, max {lags[-1]:.3f} s, "
          f"{late} over 1 s")
    # the bound is one second; a shared 2-core machine may stall any process now and then, so a few outliers
    # (at most 5 %) are tolerated, the median and the 90th percentile are not
    assert median < 1.0 and p90 < 1.0 and late <= 0.05 * len(lags), \
        f"lag over {len(lags)} records: median {median:.3f} s, p90 {p90:.3f} s, max {lags[-1]:.3f} s, " \
        f"{late} over 1 s"

    # node 3 dies (its lease expires: its stream ends at its WAL end), nodes 1 and 2 leave; then SIGTERM
    pid3 = c.node_pid(3)
    assert pid3 is not None
    os.kill(pid3, signal.SIGKILL)
    for k in (1, 2):
        c.cli("node", "stop", "--node-id", str(k), "--mode", "fast", timeout=60)
    bulk = tmp_path / "bulk"
    merge(shared, bulk, fsync=False)
    want = stream_records(bulk)
    deadline = time.monotonic() + 20  # node 3's lease runs out within its TTL (2 s); then all goes out
    while time.monotonic() < deadline and len(stream_records(tmp_path / "follow")) < len(want):
        time.sleep(0.2)
    follow.send_signal(signal.SIGTERM)
    summary = finish(follow, 20)
    assert summary["stopped"] == "signal" and summary["live"] == [], summary
    assert {n: d["how"] for n, d in summary["departed"].items()} == {"1": "left", "2": "left", "3": "expired"}
    assert stream_records(tmp_path / "follow") == want, "the followed stream differs from the bulk merge"

    junk = tmp_path / "junk"  # an output directory that holds something else: unusable, exit 2, one line
    junk.mkdir()
    (junk / "0000000000000000").write_bytes(os.urandom(4096))
    proc = c.cli("walmerge", "--follow", "--out", str(junk), "--duration", "5", check=False, timeout=30)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert proc.stderr.startswith("muheam: error:") and str(junk) in proc.stderr, proc.stderr


def test_follow_cli_refuses_bad_usage(tmp_path: Path) -> None:
    """Bad usage and unusable arguments: exit 2 with one line, no traceback (caught before etcd is asked)."""
    cases = [
        (["walmerge", "--follow"], "--out"),
        (["walmerge", "--publish", "tcp://127.0.0.1:1", "--out", str(tmp_path / "o")], "--follow"),
        (["walmerge", "--follow", "--subscribe", "tcp://127.0.0.1:1", "--out", str(tmp_path / "o")], "go together"),
        (["walmerge", "--follow", "--out", str(tmp_path / "o"), "--from-lsn", "zz"], "LSN"),
        (["walmerge", "--subscribe", "tcp://127.0.0.1:1", "--out", str(tmp_path / "o"), "--from-lsn", "0/100"],
         "--from-lsn"),
    ]
    for args, needle in cases:
        proc = run_cli(*args, check=False, timeout=30)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert needle in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_restarted_node_rejoins_the_followed_stream(local_cluster: Start, procs: Procs, tmp_path: Path) -> None:
    c = local_cluster(3)
    eps = endpoints(c)
    shared = Path(c.info["config"]["shared_dir"])
    out = tmp_path / "follow"
    follow = start_follow(procs, c, out, f"tcp://127.0.0.1:{free_port()}", "--until-idle")
    bank.create_accounts(eps[0], 12)
    bank.run(eps, seconds=2, transfer_clients=3, readers=0, accounts=12, seed=3)
    c.cli("node", "stop", "--node-id", "3", "--mode", "fast", timeout=60)
    bank.run(eps[:2], seconds=2, transfer_clients=2, readers=0, accounts=12, seed=4)
    c.cli("node", "start", "--daemon", "--node-id", "3", timeout=60)
    bank.run(eps, seconds=2, transfer_clients=3, readers=0, accounts=12, seed=5)
    for k in (1, 2, 3):
        c.cli("node", "stop", "--node-id", str(k), "--mode", "fast", timeout=60)
    summary = finish(follow, 60)
    assert [j["node"] for j in summary["joined"]] == [3], summary
    merge(shared, tmp_path / "bulk", fsync=False)
    assert stream_records(out) == stream_records(tmp_path / "bulk")
