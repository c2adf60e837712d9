"""Whole-cluster crash recovery, replay equivalence (I4) and point-in-time recovery, on real 3-node clusters.

* ``kill -9`` every node under the bank load plus writers that record every acknowledged commit; start the
  cluster again: every acknowledged commit is there on every node, every bank sum is 0, the nodes agree.
* A bank run and a random insert/update/delete run; the merged stream replayed onto a copy of the empty cluster
  gives exactly the live cluster's rows in every table; the same stream replayed up to one XID keeps exactly the
  transactions committed up to it.

``MUHEAM_FULL=1`` makes the loads longer.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from muheam.bench.workloads import bank
from muheam.client import (
    ClientError, DeadlockDetected, DuplicateKey, KeyNotFound, LockTimeout, SerializationFailure, connect,
)
from muheam.engine import walrec
from muheam.ops.procs import stop_pid
from muheam.ops.walcheck import Waits, block_of
from walmerge import MERGED_NODE_ID, WalReader, verify
from walmerge.merge import detect_system_id
from tests.support.cluster import FULL, LocalCluster, run_cli, snapshot_tree
from tests.support.faults import ACCOUNTS, Acker, Load, all_digests, setup_tables

pytestmark = pytest.mark.integration
Start = Callable[..., LocalCluster]


def endpoints(c: LocalCluster) -> list[str]:
    members = sorted(c.members(), key=lambda m: int(m["node_id"]))
    return [str(m["client_endpoint"]) for m in members]


def kill_all(c: LocalCluster) -> None:
    for node_id in (1, 2, 3):
        pid = c.node_pid(node_id)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
    for node_id in (1, 2, 3):
        pid = c.node_pid(node_id)
        if pid is not None:
            stop_pid(pid, signal.SIGKILL, 5)


@pytest.mark.timeout(600 if FULL else 240)
def test_kill_all_nodes_under_bank_load(local_cluster: Start) -> None:
    c = local_cluster(3)
    eps = endpoints(c)
    rounds = 3 if FULL else 1
    seconds_per_round = 12.0
    setup_tables(eps[0])
    load = Load(eps, seconds_per_round * rounds + 8, seed=11, base=10_000_000).start()
    ackers, accounts = load.ackers, ACCOUNTS
    for _ in range(rounds):
        time.sleep(5)
        before = sum(len(a.acked) for a in ackers)
        kill_all(c)
        proc = run_cli("cluster", "up", "--dir", str(c.dir), "--format", "json", timeout=120, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert endpoints(c) == eps
        logs = "".join(c.log(n) for n in (1, 2, 3))
        assert "whole-cluster redo" in logs, "no node ran whole-cluster recovery after every node was killed"
        time.sleep(max(0.0, seconds_per_round - 5))
        assert sum(len(a.acked) for a in ackers) > before, "no commit was acknowledged after the restart"
    res = load.finish()
    assert res.sum_violations == 0 and res.violations == [], res.to_dict()
    assert res.transfers > 0 and res.sums > 0, res.to_dict()

    acked = sorted(k for a in ackers for k in a.acked)
    assert acked, "nothing was acknowledged"
    for ep in eps:
        with connect(ep, 30) as conn, conn.transaction() as tx:
            present = {k for k, _ in tx.scan("acks")}
            balances = [r[bank.COLUMN] for _, r in tx.scan(bank.TABLE)]
        missing = sorted(set(acked) - present)
        assert not missing, f"{ep}: {len(missing)} acknowledged commits lost, e.g. {missing[:10]}"
        assert len(balances) == accounts and sum(balances) == 0, f"{ep}: bank sum {sum(balances)}"
    digests = {ep: all_digests(ep) for ep in eps}
    assert len({json.dumps(d, sort_keys=True) for d in digests.values()}) == 1, digests

    # the history across the crashes is one consistent merged stream: per-block order, and every change that
    # depended on another transaction (including the ones recovery aborted) comes after that one's outcome
    assert run_cli("cluster", "down", "--dir", str(c.dir), "--mode", "fast", timeout=120,
                   check=False).returncode == 0
    report = verify(Path(c.info["config"]["shared_dir"]), block_of=block_of, waits_of=Waits())
    assert report.exit_code == 0, [str(p) for p in report.problems[:10]] + report.unusable


class RandomOps(threading.Thread):
    """Random insert/update/delete on table ``rand`` through one node; errors of contention are expected."""

    def __init__(self, ep: str, seed: int, seconds: float) -> None:
        super().__init__(daemon=True)
        self.ep, self.rng, self.seconds = ep, random.Random(seed), seconds
        self.commits = 0
        self.unexpected: list[str] = []

    def run(self) -> None:
        deadline = time.monotonic() + self.seconds
        with connect(self.ep, 15) as conn:
            while time.monotonic() < deadline:
                try:
                    with conn.transaction() as tx:
                        for _ in range(self.rng.randint(1, 4)):
                            key = self.rng.randrange(200)
                            row = tx.get("rand", key)
                            if row is None:
                                tx.insert("rand", key, {"a": self.rng.randrange(1000), "s": f"k{key}"})
                            elif self.rng.random() < 0.3:
                                tx.delete("rand", key)
                            else:
                                tx.update("rand", key, {"a": self.rng.randrange(1000)})
                    self.commits += 1
                except (SerializationFailure, DeadlockDetected, LockTimeout, DuplicateKey, KeyNotFound):
                    pass  # contention between the nodes' clients: the transaction was rolled back
                except ClientError as e:
                    self.unexpected.append(f"{e.code}: {e}")


def merged_commit_order(merged: Path) -> list[int]:
    system_id = detect_system_id(merged)
    assert system_id is not None
    return [r.xid for r in WalReader(merged, node_id=MERGED_NODE_ID, system_id=system_id)
            if r.kind == walrec.COMMIT]


def swap_in(shared: Path, base: Path, name: str) -> Path:
    """Put a copy of ``base`` where the cluster's shared directory is; the current one moves to ``name``."""
    kept = shared.with_name(name)
    os.rename(shared, kept)
    shutil.copytree(base, shared)
    return kept


@pytest.mark.timeout(900 if FULL else 300)
def test_replay_equivalence_and_point_in_time(local_cluster: Start) -> None:
    c = local_cluster(3)
    shared = Path(c.info["config"]["shared_dir"])
    config = str(c.config)
    # the empty cluster, copied while stopped: the base every replay below starts from
    assert run_cli("cluster", "down", "--dir", str(c.dir), "--mode", "fast", timeout=120,
                   check=False).returncode == 0
    base = c.dir / "base-empty"
    shutil.copytree(shared, base)
    run_cli("cluster", "up", "--dir", str(c.dir), timeout=120)
    eps = endpoints(c)

    accounts = 30
    bank.create_accounts(eps[1], accounts)
    with connect(eps[2]) as conn:
        conn.create_table("rand", {"a": "int64", "s": "text(12)"}, buckets=16)
        conn.create_table("acks", {"v": "int64"}, buckets=32)
    seconds = 30 if FULL else 8
    stop = threading.Event()
    ackers = [Acker(ep, 1_000_000 * (i + 1), stop) for i, ep in enumerate(eps)]
    ops = [RandomOps(ep, seed=i, seconds=seconds) for i, ep in enumerate(eps)]
    for t in [*ackers, *ops]:
        t.start()
    res = bank.run(eps, seconds=seconds, transfer_clients=3, readers=1, accounts=accounts, seed=5)
    for t in ops:
        t.join(60)
    stop.set()
    for a in ackers:
        a.join(30)
    assert res.sum_violations == 0 and res.transfers > 0, res.to_dict()
    assert all(o.commits > 0 and not o.unexpected for o in ops), [(o.commits, o.unexpected[:3]) for o in ops]
    live = all_digests(eps[0])
    assert set(live) == {bank.TABLE, "rand", "acks"} and live["rand"][0] > 0, live

    # recover refuses while the cluster runs, and changes nothing
    proc = run_cli("recover", "-c", config, "--from-merged", str(c.dir), check=False)
    assert proc.returncode == 1 and "stop the cluster first" in proc.stderr, proc.stderr

    assert run_cli("cluster", "down", "--dir", str(c.dir), "--mode", "fast", timeout=120,
                   check=False).returncode == 0
    merged = c.dir / "merged"
    run_cli("walmerge", "--shared-dir", str(shared), "--out", str(merged), "--verify")

    # 1. replay equivalence: the whole stream onto the empty cluster gives the live rows in every table
    live_dir = swap_in(shared, base, "shared-live")
    proc = run_cli("recover", "-c", config, "--from-merged", str(merged), "--skip-etcd-check", "--format", "json")
    summary = json.loads(proc.stdout)
    assert summary["records"] > 0 and summary["committed"] > 0, summary
    run_cli("cluster", "up", "--dir", str(c.dir), timeout=120)
    replayed = {ep: all_digests(ep) for ep in endpoints(c)}
    for ep, d in replayed.items():
        assert d == live, f"{ep}: replayed tables differ from the live cluster's:\n{d}\n{live}"
    assert run_cli("cluster", "down", "--dir", str(c.dir), "--mode", "fast", timeout=120,
                   check=False).returncode == 0

    # 2. point in time: up to one acknowledged XID in the middle of the commit order
    order = merged_commit_order(merged)
    key_of = {xid: key for a in ackers for key, xid in a.acked.items()}
    acked_in_order = [x for x in order if x in key_of]
    assert len(acked_in_order) > 10
    target = acked_in_order[len(acked_in_order) // 2]
    pos = order.index(target)
    before = {key_of[x] for x in order[:pos + 1] if x in key_of}
    after = {key_of[x] for x in order[pos + 1:] if x in key_of}
    assert target in order[:pos + 1] and before and after

    shutil.rmtree(shared)
    shutil.copytree(base, shared)
    proc = run_cli("recover", "-c", config, "--from-merged", str(merged), "--until-xid", "999999999999",
                   "--skip-etcd-check", check=False)
    assert proc.returncode == 1 and "no COMMIT" in proc.stderr, proc.stderr
    proc = run_cli("recover", "-c", config, "--from-merged", str(merged), "--until-xid", str(target),
                   "--skip-etcd-check", "--format", "json")
    summary = json.loads(proc.stdout)
    assert summary["target_xid"] == target, summary
    run_cli("cluster", "up", "--dir", str(c.dir), timeout=120)
    eps = endpoints(c)
    with connect(eps[1], 30) as conn, conn.transaction() as tx:
        present = {k for k, _ in tx.scan("acks")}
    assert before <= present, f"{len(before - present)} transactions committed before the target are missing"
    assert not (after & present), f"{len(after & present)} transactions committed after the target are present"
    # the restored cluster takes new work, with XIDs above everything in the archive
    with connect(eps[0]) as conn, conn.transaction() as tx:
        tx.insert("acks", 1, {"v": 1})
        new_xid = tx.xid
    assert new_xid is not None and new_xid > max(order)
    assert live_dir.is_dir()


def _last_commit_and_glsn(merged: Path) -> tuple[int, int]:
    """The XID of the merged stream's last COMMIT and the stream's last GLSN."""
    system_id = detect_system_id(merged)
    assert system_id is not None
    last_xid = last_glsn = 0
    for r in WalReader(merged, node_id=MERGED_NODE_ID, system_id=system_id):
        last_glsn = r.glsn
        if r.kind == walrec.COMMIT:
            last_xid = r.xid
    return last_xid, last_glsn


@pytest.mark.timeout(180)
def test_base_newer_than_the_archive_is_refused_for_every_target(local_cluster: Start) -> None:
    """Issue 16, item 8: a base copy taken after the archive's end (here the shared directory as it is after more
    work than the archive holds) must be refused for every target that reaches the stream's end -- none,
    ``--until-time`` after every commit, ``--until-glsn`` past the end, ``--until-xid`` of the last commit -- with
    nothing moved; replaying onto it would leave pages newer than the restored history, and every later write
    failed.  The cluster still starts on the untouched base, and a good base restores with the same archive."""
    c = local_cluster(1)
    shared = Path(c.info["config"]["shared_dir"])
    config = str(c.config)

    def down() -> None:
        assert run_cli("cluster", "down", "--dir", str(c.dir), "--mode", "fast", timeout=120,
                       check=False).returncode == 0

    def up() -> str:
        run_cli("cluster", "up", "--dir", str(c.dir), timeout=120)
        return endpoints(c)[0]

    down()
    good_base = c.dir / "base-empty"
    shutil.copytree(shared, good_base)
    ep = up()
    with connect(ep, 30) as conn:
        conn.create_table("t", {"v": "int64"}, buckets=8)
        for k in range(20):
            with conn.transaction() as tx:
                tx.insert("t", k, {"v": k})
    down()
    merged = c.dir / "merged"
    run_cli("walmerge", "--shared-dir", str(shared), "--out", str(merged), "--verify")
    last_xid, last_glsn = _last_commit_and_glsn(merged)
    ep = up()
    with connect(ep, 30) as conn:
        for k in range(20, 30):
            with conn.transaction() as tx:
                tx.insert("t", k, {"v": k})
    down()

    # the shared directory now holds ten commits the archive does not: as a base it is too new
    before = snapshot_tree(shared)
    past_end = f"{(last_glsn >> 16) + 1_000_000}/{last_glsn & 0xFFFF}"
    soon = str(time.time() + 3600)  # after every commit: the whole stream (1e30 is refused as a likely typo)
    for form in ([], ["--until-time", soon], ["--until-glsn", past_end], ["--until-xid", str(last_xid)]):
        proc = run_cli("recover", "-c", config, "--from-merged", str(merged), "--skip-etcd-check", *form,
                       check=False)
        assert proc.returncode == 1, (form, proc.returncode, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "newer than" in lines[0] and "base copy" in lines[0], (form, proc.stderr)
        assert "nothing was changed" in lines[0], (form, proc.stderr)
        assert not list(shared.glob("pre-recovery-*")), form
        assert snapshot_tree(shared) == before, form
    proc = run_cli("recover", "-c", config, "--from-merged", str(merged), "--skip-etcd-check", "--until-time", "inf",
                   check=False)
    assert proc.returncode == 2 and "finite time" in proc.stderr, proc.stderr
    proc = run_cli("recover", "-c", config, "--from-merged", str(merged), "--skip-etcd-check", "--until-time", "1e30",
                   check=False)
    assert proc.returncode == 2 and "after now" in proc.stderr and "no --until-time" in proc.stderr, proc.stderr
    assert snapshot_tree(shared) == before

    # the refused base is untouched: the cluster starts on it with every row and takes new work
    ep = up()
    with connect(ep, 30) as conn:
        with conn.transaction() as tx:
            assert {k for k, _ in tx.scan("t")} == set(range(30))
        with conn.transaction() as tx:
            tx.insert("t", 30, {"v": 30})
    down()

    # positive control: a base taken before the archive, the whole stream by a far-future time
    swap_in(shared, good_base, "shared-newer")
    proc = run_cli("recover", "-c", config, "--from-merged", str(merged), "--skip-etcd-check", "--until-time",
                   str(time.time() + 3600), "--format", "json")
    summary = json.loads(proc.stdout)
    assert summary["stopped_before_lsn"] is None and summary["committed"] >= 20, summary
    ep = up()
    with connect(ep, 30) as conn:
        with conn.transaction() as tx:
            assert {k for k, _ in tx.scan("t")} == set(range(20))
        with conn.transaction() as tx:
            tx.insert("t", 20, {"v": 20})
