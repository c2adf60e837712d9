"""The demo's run: real etcd, three real node processes, the bank workload, a kill -9, recovery, rejoin, WAL merge,
replay, and the stop of everything it started.

Every wait is bounded; every process it starts is recorded by pid and stopped by pid at the end, whatever
happened (``Demo.run``'s ``finally``).  The progress callback gets the phase, the events so far and the latest
scrape of every node; the CLI draws it live.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from muheam import config as config_mod
from muheam.bench.workloads import bank
from muheam.demo import checks
from muheam.errors import ClusterStateError, MuheamError
from muheam.membership import connect
from muheam.obs.scrape import Sample, scrape
from muheam.ops import cluster as cluster_mod
from muheam.ops.procs import pid_alive, stop_pid
from muheam.security import keys

NODES = 3
VICTIM = 2
LEASE_TTL = 2
ACCOUNTS = 60
WARM_UP_WAIT = 120.0
MARKER = ".muheam-demo"
"""A file in the demo directory saying it is ours: a rerun may clear it, and nothing else."""


@dataclass
class Event:
    t: float
    name: str
    detail: str = ""


@dataclass
class Progress:
    phase: str = "starting"
    started: float = field(default_factory=time.monotonic)
    events: list[Event] = field(default_factory=list)
    scrapes: list[tuple[float, dict[int, Sample]]] = field(default_factory=list)
    load_until: float | None = None


class Demo:
    def __init__(self, directory: Path, seconds: float, on_update: Callable[[Progress], None] = lambda p: None,
                 clients_per_node: int = 2) -> None:
        self.dir = directory.resolve()
        self.seconds = seconds
        self.clients = clients_per_node * NODES
        self.progress = Progress()
        self.on_update = on_update
        self.pids: set[int] = set()
        self.cluster_dir = self.dir / "cluster"
        self.work = self.dir / "work"
        self.wall0 = time.time() - time.monotonic()  # wall clock of monotonic 0: etcd's times onto ours
        self._stop_sampling = threading.Event()

    # -- the story --------------------------------------------------------------------------------------------
    def phase(self, text: str) -> None:
        self.progress.phase = text
        self.on_update(self.progress)

    def event(self, name: str, detail: str = "", t: float | None = None) -> None:
        self.progress.events.append(Event(time.monotonic() if t is None else t, name, detail))
        self.on_update(self.progress)

    def run(self) -> dict[str, Any]:
        self._prepare()
        data: dict[str, Any] = {"seconds": self.seconds, "nodes": NODES, "victim": VICTIM, "accounts": ACCOUNTS,
                                "clients": self.clients, "readers": NODES, "lease_ttl": LEASE_TTL}
        results: list[dict[str, Any]] = []
        sampler = threading.Thread(target=self._sample, name="demo-sampler", daemon=True)
        try:
            cfg, eps = self._start()
            sampler.start()
            self._load(cfg, eps, data, results)
            self.phase("stopping the cluster")
            self._stop_sampling.set()
            sampler.join(10)
            cluster_mod.cluster_down(self.cluster_dir, "fast")
            self.event("cluster stopped")
            self._merge_and_replay(cfg, data, results)
        finally:
            self._stop_sampling.set()
            self._stop_everything()
        results.append(checks.stopped(sorted(p for p in self.pids if pid_alive(p))))
        data["checks"] = results
        data["passed"] = all(c["passed"] for c in results)
        data["events"] = [{"t": round(e.t - self.progress.started, 3), "name": e.name, "detail": e.detail}
                          for e in self.progress.events]
        data["metrics"] = self._metric_series()
        return data

    def _prepare(self) -> None:
        if self.dir.exists() and any(self.dir.iterdir()):
            if not (self.dir / MARKER).exists():
                raise ClusterStateError(f"{self.dir} is not empty and was not made by 'muheam demo'; give --dir a "
                                        "new or empty directory")
            if (self.cluster_dir / cluster_mod.CONFIG_NAME).exists():  # a previous demo's leftovers, if any ran
                try:
                    cluster_mod.cluster_down(self.cluster_dir, "immediate")
                except MuheamError:
                    pass
            for name in ("cluster", "work", "replay", "report"):
                shutil.rmtree(self.dir / name, ignore_errors=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / MARKER).write_text("made by 'muheam demo'; the demo clears this directory when run again\n")
        self.work.mkdir()

    def _start(self) -> tuple[Any, dict[int, str]]:
        self.phase("starting etcd and 3 nodes")
        cfg = cluster_mod.load_or_create(self.cluster_dir, NODES, LEASE_TTL)
        server = cluster_mod.embedded_server(cfg)
        assert server is not None
        self.pids.add(server.start())
        self.event("etcd started", server.client_url)
        backend = connect(cfg.etcd_endpoints)
        try:
            cluster_mod.init_cluster(cfg, backend)
            # every client this process opens talks to the demo's own cluster, with its admin key (init made it);
            # a key the user has in the environment belongs to some other cluster
            if cfg.security == "curve":
                os.environ["MUHEAM_CLIENT_KEY"] = str(keys.client_secret_file(cfg.run_dir, keys.ADMIN_CLIENT))
            # the empty cluster before any node ran: the base the merged WAL is replayed onto at the end
            shutil.copytree(cfg.shared_dir, self.work / "base")
            eps = {}
            for n in range(1, NODES + 1):
                member = cluster_mod.start_node_daemon(cfg, n, backend)
                self.pids.add(member.pid)
                eps[n] = member.client_endpoint
                self.event(f"node {n} running", f"pid {member.pid}, epoch {member.epoch}")
        finally:
            backend.close()
        return cfg, eps

    def _warm_up(self) -> None:
        """Wait (bounded) until every node loaded its compiled redo: in a fresh installation each node compiles it
        in the background at its first start, which takes both cores for a while and would show as a slow first
        half of the throughput plot, not as anything the cluster does."""
        if os.environ.get("MUHEAM_NO_JIT") == "1":
            return
        self.phase("nodes compiling their redo kernels (first run of an installation only)")
        deadline = time.monotonic() + WARM_UP_WAIT
        while time.monotonic() < deadline:
            scrapes = self.progress.scrapes
            if scrapes and all(s.get("muheam_compiled_redo_loaded") >= 1 for s in scrapes[-1][1].values()):
                self.event("nodes warm", "compiled redo loaded on every node")
                return
            time.sleep(0.2)
        self.event("warm-up not finished", f"after {WARM_UP_WAIT:g} s; going on")

    def _load(self, cfg: Any, eps: dict[int, str], data: dict[str, Any], results: list[dict[str, Any]]) -> None:
        self._warm_up()
        self.phase("creating the bank accounts")
        bank.create_accounts(eps[1], ACCOUNTS)
        self.phase("bank workload on every node")
        box: dict[str, Any] = {}
        t0 = time.monotonic()
        loader = threading.Thread(target=lambda: box.setdefault("res", bank.run(
            [eps[n] for n in sorted(eps)], seconds=self.seconds, transfer_clients=self.clients, readers=NODES,
            accounts=ACCOUNTS, timeout=3.0, seed=22, trace=True)), name="demo-bank", daemon=True)
        loader.start()
        self.progress.load_until = t0 + self.seconds + 1
        self.event("load started", f"{self.clients} transfer clients, {NODES} readers")
        kill_at = t0 + 1 + self.seconds / 2  # the clients start about a second after the thread
        while time.monotonic() < kill_at and loader.is_alive():
            time.sleep(0.05)
        backend = connect(cfg.etcd_endpoints)
        rec: dict[str, Any] | None = None
        rejoined = False
        try:
            victim = next(m for m in backend.members(cfg.cluster_name)[0] if m.node_id == VICTIM)
            self.phase(f"kill -9 node {VICTIM}")
            os.kill(victim.pid, signal.SIGKILL)
            stop_pid(victim.pid, signal.SIGKILL, 5)
            self.event("kill", f"SIGKILL node {VICTIM} (pid {victim.pid})")
            self.phase(f"survivors detect and recover node {VICTIM}")
            deadline = time.monotonic() + LEASE_TTL + 90
            while time.monotonic() < deadline:
                rec = backend.get_recovery(cfg.cluster_name, VICTIM)
                if rec and rec.get("state") == "recovered" and int(rec.get("epoch", 0)) >= victim.epoch:
                    break
                time.sleep(0.05)
            if rec and rec.get("state") == "recovered":
                self.event("detection", f"lease expired (TTL {LEASE_TTL} s)", float(rec["expired_at"]) - self.wall0)
                self.event("recovered", f"by node {rec.get('by')} in {rec.get('duration_ms')} ms",
                           float(rec["finished_at"]) - self.wall0)
                self.phase(f"restart node {VICTIM}")
                member = cluster_mod.start_node_daemon(cfg, VICTIM, backend)
                self.pids.add(member.pid)
                rejoined = True
                self.event("rejoin", f"node {VICTIM} running again, epoch {member.epoch}")
                eps[VICTIM] = member.client_endpoint
            self.phase("bank workload on every node")
            loader.join(self.seconds + 120)
            res: bank.BankResult | None = box.get("res")
            if res is None:
                raise MuheamError("the bank workload did not finish within its time limit")
            self.event("load finished", f"{res.transfers} transfers, {res.sums} full reads")
            self.phase("checking the table on every node")
            live = {str(n): bank.checksum(ep, 30) for n, ep in sorted(eps.items())}
            session = bank.MuheamSession(eps[1], 30)
            try:
                rows = session.read_all()
            finally:
                session.close()
        finally:
            backend.close()
        data["bank"] = {k: v for k, v in res.to_dict().items() if k != "violations"}
        data["live_checksums"] = live
        data["recovery"] = rec
        data["trace"] = [{"endpoint": r["endpoint"], "trace": [[round(t - self.progress.started, 4),
                                                                round(lat, 6)] for t, lat in r["trace"]]}
                         for r in res.reports if "trace" in r]
        data["client_endpoints"] = {str(n): ep for n, ep in eps.items()}
        results.append(checks.sums(res.sum_violations, res.sums))
        results.append(checks.acknowledged(res.reports, rows))
        results.append(checks.recovery(rec, rejoined))
        self._live = live

    def _merge_and_replay(self, cfg: Any, data: dict[str, Any], results: list[dict[str, Any]]) -> None:
        self.phase("merging and verifying the WAL")
        merged = self.work / "merged"
        proc = self._cli("walmerge", "--shared-dir", str(cfg.shared_dir), "--out", str(merged), "--verify",
                         "--format", "json")
        summary: dict[str, Any] | None = None
        error = ""
        try:
            summary = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else None
        except json.JSONDecodeError:
            summary = None
        if proc.returncode != 0 or summary is None:
            error = f"walmerge exited {proc.returncode}: {proc.stderr.strip()[-300:]}"
        data["walmerge"] = summary
        results.append(checks.wal(summary, error))
        self.event("WAL merged", error or f"{(summary or {}).get('merge', {}).get('records', '?')} records")

        self.phase("replaying the merged WAL into a scratch copy")
        replay_dir = self.dir / "replay"
        shutil.copytree(self.work / "base", replay_dir / "shared")
        # the scratch copy is one local node that only this process reads: plain sockets, no keys to make
        rcfg = replace(cfg, shared_dir=replay_dir / "shared", run_dir=replay_dir, nodes={1: cfg.node(1)},
                       source=replay_dir / cluster_mod.CONFIG_NAME, security="none")
        rcfg.source.write_text(rcfg.to_toml())
        replayed: str | None = None
        if not error:
            proc = self._cli("recover", "-c", str(rcfg.source), "--from-merged", str(merged), "--skip-etcd-check",
                             "--format", "json")
            if proc.returncode == 0:
                info = cluster_mod.cluster_up(replay_dir, 1)
                self.pids.update(int(e["pid"]) for e in info["etcd"])
                self.pids.update(int(n["pid"]) for n in info["nodes"])
                os.environ.pop("MUHEAM_CLIENT_KEY", None)
                os.environ["MUHEAM_CONFIG"] = str(rcfg.source)
                try:
                    replayed = bank.checksum(info["nodes"][0]["client_endpoint"], 30)
                finally:
                    cluster_mod.cluster_down(replay_dir, "fast")
                self.event("replayed", "scratch copy started on one node and read")
            else:
                data["replay_error"] = proc.stderr.strip()[-500:]
        data["replayed_checksum"] = replayed
        results.append(checks.checksums(self._live, replayed))

    def _cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "muheam", *args], capture_output=True, text=True, timeout=600)

    # -- watching and stopping --------------------------------------------------------------------------------
    def _sample(self) -> None:
        cfg = config_mod.load(self.cluster_dir / cluster_mod.CONFIG_NAME, require_shared_dir=False)
        eps = {n: c.metrics_endpoint for n, c in cfg.nodes.items() if c.metrics_endpoint}
        while not self._stop_sampling.is_set():
            t = time.monotonic()
            self.progress.scrapes.append((t, {n: scrape(ep, timeout=1.0, health=True) for n, ep in eps.items()}))
            self.on_update(self.progress)
            self._stop_sampling.wait(max(0.0, 0.5 - (time.monotonic() - t)))

    def _metric_series(self) -> dict[str, Any]:
        """Per scrape: time, and per node its counters the plots need (messages, commits, WAL bytes, state)."""
        out = []
        for t, per_node in self.progress.scrapes:
            out.append({"t": round(t - self.progress.started, 3), "nodes": {
                str(n): {"state": s.state, "commits": s.get("muheam_commits_total"),
                         "messages": s.get("muheam_peer_messages_sent_total"),
                         "wal_bytes": s.get("muheam_wal_written_bytes_total"),
                         "ready": s.health.get("readiness")} for n, s in per_node.items()}})
        return {"scrapes": out}

    def _stop_everything(self) -> None:
        for directory in (self.dir / "replay", self.cluster_dir):
            if (directory / cluster_mod.CONFIG_NAME).exists():
                try:
                    cluster_mod.cluster_down(directory, "immediate")
                except MuheamError:
                    pass
        for pid in sorted(self.pids):
            if pid_alive(pid):
                stop_pid(pid, signal.SIGKILL, 5)
