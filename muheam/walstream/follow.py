"""``muheam walmerge --follow`` and ``muheam walmerge --subscribe``: the follow loop around ``walmerge.Follower``.

**Who is followed** comes from etcd, through ``muheam.membership`` (a snapshot, then a watch from the next
revision in a background thread that resumes after losing etcd, missing and repeating nothing):

* a live member (any state, ``stopping`` included: it may still write) is followed: the stream waits for its
  WAL (an idle node writes a HEARTBEAT every 0.25 s, so it does not stall the stream);
* a node with a WAL directory that is not a live member is departed at the end of its WAL;
* a member that ``left`` (graceful stop: the shutdown checkpoint is written before the lease is revoked)
  departs at its last record;
* a member that ``expired`` departs at its WAL end as read after the lease is gone: a node fences itself
  before its lease can run out and checks the fence before every write to shared storage, so it writes
  nothing later.  The survivors' recovery of that incarnation records the same point as its fence
  (``global/fence-node-<id>`` and a FENCE record), normally after the follower has read the WAL end; if the
  fence is already there when the follower learns of the expiry, its GLSN is the recovery point;
* a member that joins (a new node, or a restarted one under a new epoch) is followed again.

Fences already recorded when the follower starts apply from the start, as in every merge, so a zombie's writes
after its fence never enter the stream.  Departures at the WAL end fence nothing more, so a restarted follower
re-derives the very same stream whatever the membership history was (``Follower``'s resume check relies on
that).  While etcd is unreachable the follower keeps following the nodes it knows; a node that dies meanwhile
holds the stream until etcd is back.

**Output** is the ordinary merged segments in ``--out`` (``WalReader``, ``muheam walmerge --verify --merged``),
synced after every poll.  A restart resumes at the end of the valid output (or ``--from-lsn``, which cuts the
output back to that LSN).  ``--publish`` serves the stream over ZeroMQ (``muheam.walstream.publisher``).
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, Callable

import click

from muheam.engine.errors import StateFileCorrupt
from muheam.engine.statefiles import read_fences
from muheam.errors import EtcdUnavailable, MuheamError
from muheam.membership import MemberEvent, MembershipBackend, MemberWatch
from muheam.walstream.publisher import Publisher, PublisherUnavailable, StreamError
from muheam.walstream.subscriber import Subscriber
from walmerge.errors import WalError, format_lsn
from walmerge.follow import Follower, cut_output, valid_output_end
from walmerge.sink import MergedSink
from walmerge.merge import detect_segment_size, detect_system_id, node_dirs
from walmerge.segment import list_segments

WAL_END = (1 << 64) - 1
"""Recovery GLSN that keeps a departed node's whole WAL (its stream ends where its WAL ends)."""
POLL_BYTES = 16 << 20
READ_BYTES = 4 << 20
LINGER = 3.0
"""Seconds the publisher keeps serving subscribers that are behind before it sends them ``end`` and exits."""


class UnusableInput(MuheamError):
    """The WAL inputs or the output directory cannot be followed (corruption, another cluster's WAL...)."""

    exit_code = 2


class StopFlag:
    """Set by SIGINT/SIGTERM (installed for the duration of a ``with``): the loops finish cleanly."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __bool__(self) -> bool:
        return self.signal is not None

    def _handler(self, signum: int, _frame: FrameType | None) -> None:
        self.signal = signum

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class MembershipFeed:
    """Member events from etcd, watched in a daemon thread from the snapshot's revision + 1."""

    def __init__(self, backend: MembershipBackend, cluster: str) -> None:
        self.backend = backend
        self.cluster = cluster
        members, self.revision = backend.members(cluster)
        self.members = {m.node_id: m for m in members}
        self.etcd_losses = 0
        # resumes after losing etcd; after a compaction of the revision it would resume from, a fresh listing
        # stands in for the events missed (a vanished member counts as expired: its stream ends at its WAL's end)
        self._watch = MemberWatch(cluster, members, self.revision)
        self._events: queue.Queue[MemberEvent] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="walmerge-membership", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for event in self._watch.events(self.backend):
                    if self._stop.is_set():
                        return
                    if event is not None:
                        self._events.put(event)
            except EtcdUnavailable:
                self.etcd_losses += 1
                self._stop.wait(0.5)
            except Exception:  # noqa: BLE001 - a broken watch must not kill the feed; retry like a lost etcd
                self.etcd_losses += 1
                self._stop.wait(0.5)

    def drain(self) -> list[MemberEvent]:
        out: list[MemberEvent] = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)


def _system_id(shared: Path, out: Path) -> int | None:
    for d in node_dirs(shared).values():
        sid = detect_system_id(d)
        if sid is not None:
            return sid
    return detect_system_id(out) if out.is_dir() else None


class FollowRun:
    """One ``--follow`` run: membership feed + follower + optional publisher, until stopped."""

    def __init__(self, shared: Path, out: Path, backend: MembershipBackend, cluster: str, *,
                 publish: str | None = None, from_lsn: int | None = None, poll_interval: float = 0.05,
                 duration: float | None = None, until_idle: bool = False, stop: StopFlag | None = None,
                 note: Callable[[str], None] | None = None, progress: bool = False,
                 publish_security: Callable[[Any], Any] | None = None) -> None:
        self.shared, self.out, self.backend, self.cluster = shared, out, backend, cluster
        self.publish_security = publish_security
        self.publish_at, self.from_lsn = publish, from_lsn
        self.poll_interval, self.duration, self.until_idle = poll_interval, duration, until_idle
        self.stop = stop if stop is not None else StopFlag()
        self._note = note or (lambda _msg: None)
        self.progress = progress
        self.records = 0
        self.bytes = 0
        self.joined: list[dict[str, Any]] = []
        self.departed: dict[int, dict[str, Any]] = {}
        self.events = 0

    def note(self, msg: str) -> None:
        if self.progress:
            sys.stderr.write("\r" + " " * 100 + "\r")  # clear the progress line first
        self._note(msg)

    def _fences(self) -> dict[int, list[tuple[int, int]]]:
        try:
            return read_fences(self.shared)
        except StateFileCorrupt as exc:
            raise UnusableInput(f"fence file {exc.path}: {exc}") from None

    def _depart(self, f: Follower, node: int, epoch: int | None, how: str) -> None:
        point, at = WAL_END, "WAL end"
        if epoch is not None:
            fenced = [g for e, g in self._fences().get(node, []) if e == epoch]
            if fenced:
                point, at = min(fenced), "fence"
        try:
            f.node_departed(node, point, epoch=epoch)
        except WalError as exc:
            raise UnusableInput(f"WAL of node {node}: {exc}") from None
        self.departed[node] = {"epoch": epoch, "how": how, "at": at}

    def _apply(self, f: Follower, event: MemberEvent) -> None:
        m = event.member
        self.events += 1
        if event.kind == "joined":
            f.node_joined(m.node_id)
            self.departed.pop(m.node_id, None)
            self.joined.append({"node": m.node_id, "epoch": m.epoch})
            self.note(f"node {m.node_id} joined (epoch {m.epoch}): following its WAL")
        elif event.kind in ("left", "expired") and m.node_id in f.live:
            self._depart(f, m.node_id, m.epoch, event.kind)
            at = "its fence" if self.departed[m.node_id]["at"] == "fence" else "the end of its WAL"
            self.note(f"node {m.node_id} {'left' if event.kind == 'left' else 'expired (lease lost)'} "
                      f"(epoch {m.epoch}): its stream ends at {at}")

    def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        deadline = None if self.duration is None else t0 + self.duration
        feed = MembershipFeed(self.backend, self.cluster)
        f: Follower | None = None
        pub: Publisher | None = None
        stopped = "signal"
        try:
            sid = _system_id(self.shared, self.out)
            while sid is None:  # a cluster that has not written any WAL yet
                if self.stop or (deadline is not None and time.monotonic() >= deadline):
                    return self._summary(None, None, t0, "signal" if self.stop else "duration", 0)
                time.sleep(self.poll_interval)
                sid = _system_id(self.shared, self.out)
            live = sorted(feed.members)
            try:
                f = Follower(self.shared, self.out, system_id=sid, nodes=live, resume_lsn=self.from_lsn,
                             fences=self._fences(), poll_bytes=POLL_BYTES, read_bytes=READ_BYTES)
                for node in sorted(node_dirs(self.shared)):
                    if node not in feed.members:
                        self._depart(f, node, None, "not a member")
            except WalError as exc:
                raise UnusableInput(f"cannot follow the WAL under {self.shared} into {self.out}: {exc}") from None
            start_lsn = f.end_lsn
            if self.publish_at is not None:
                pub = Publisher(self.publish_at, self.out, system_id=sid, segment_size=f.segment_size,
                                end_lsn=f.end_lsn, security=self.publish_security)
                self.note(f"publishing the merged stream on {pub.endpoint}")
            shown = 0.0
            while True:
                try:
                    for event in feed.drain():
                        self._apply(f, event)
                    emitted = f.poll()
                except WalError as exc:
                    raise UnusableInput(f"following the WAL under {self.shared}: {exc}") from None
                size = sum(len(e.data) for e in emitted)
                self.records += len(emitted)
                self.bytes += size
                if pub is not None:
                    pub.publish([(e.lsn, e.data) for e in emitted], f.end_lsn)
                now = time.monotonic()
                if self.stop:
                    stopped = "signal"
                    break
                if deadline is not None and now >= deadline:
                    stopped = "duration"
                    break
                if self.until_idle and not f.live and not emitted:
                    stopped = "idle"
                    break
                if self.progress and now - shown >= 0.5:
                    shown = now
                    self._show(f, pub)
                wait = 0.0 if size >= READ_BYTES else self.poll_interval
                if deadline is not None:
                    wait = max(0.0, min(wait, deadline - now))
                if pub is not None:
                    pub.wait(wait)
                elif wait:
                    time.sleep(wait)
            if self.progress:
                sys.stderr.write("\n")
            if pub is not None:
                pub.close(LINGER if stopped == "idle" else 0.5)
            return self._summary(f, pub, t0, stopped, start_lsn)
        finally:
            feed.close()
            if f is not None:
                f.close()
            if pub is not None and not pub.sock.closed:
                pub.close()

    def _show(self, f: Follower, pub: Publisher | None) -> None:
        subs = f", {len(pub.subs)} subscribers" if pub is not None else ""
        line = (f"following: {self.records} records, {self.bytes / 1e6:.1f} MB, end LSN {format_lsn(f.end_lsn)}, "
                f"live nodes {','.join(map(str, sorted(f.live))) or 'none'}{subs}")
        sys.stderr.write("\r" + line[:160].ljust(100))
        sys.stderr.flush()

    def _summary(self, f: Follower | None, pub: Publisher | None, t0: float, stopped: str,
                 start_lsn: int) -> dict[str, Any]:
        end = f.end_lsn if f is not None else 0
        return {
            "records": self.records, "bytes": self.bytes, "start_lsn": start_lsn, "end_lsn": end,
            "end_lsn_text": format_lsn(end), "seconds": round(time.monotonic() - t0, 3), "stopped": stopped,
            "live": sorted(f.live) if f is not None else [],
            "departed": {str(n): d for n, d in sorted(self.departed.items())}, "joined": self.joined,
            "membership_events": self.events, "skipped_fenced": f.skipped_fenced if f is not None else 0,
            "segments": len(list_segments(self.out)) if self.out.is_dir() else 0, "out": str(self.out),
            "publisher": pub.status() if pub is not None else None,
        }


# --- a subscriber writing a copy of the stream ----------------------------------------------------------------


def run_subscribe(endpoint: str, out: Path, *, from_lsn: int | None = None, duration: float | None = None,
                  timeout: float = 30.0, stop: StopFlag | None = None,
                  note: Callable[[str], None] | None = None, key: Any = None) -> dict[str, Any]:
    """Copy the published stream into ``out`` as merged segments (byte for byte the publisher's output), resuming
    at the end of what ``out`` holds (``from_lsn``: cut the copy back to that LSN first)."""
    stop = stop if stop is not None else StopFlag()
    note = note or (lambda _msg: None)
    t0 = time.monotonic()
    deadline = None if duration is None else t0 + duration
    out.mkdir(parents=True, exist_ok=True)
    sid, seg_size = detect_system_id(out), detect_segment_size(out)
    start = 0
    if sid is not None and seg_size is not None:
        try:
            end, _ = valid_output_end(out, sid)
        except WalError as exc:
            raise UnusableInput(f"--out {out}: {exc}") from None
        if from_lsn is not None and from_lsn > end:
            raise UnusableInput(f"--from-lsn {format_lsn(from_lsn)} is beyond the copy in {out}, which is valid "
                                f"up to {format_lsn(end)}")
        start = end if from_lsn is None else from_lsn
        cut_output(out, start, seg_size)
    elif from_lsn:
        raise UnusableInput(f"--from-lsn needs a copy to resume: {out} holds no merged segment (a copy starts "
                            "at LSN 0)")
    sub = Subscriber(endpoint, start, timeout=timeout, key=key)
    writer: MergedSink | None = None
    records = 0
    stopped = "signal"
    try:
        while True:
            if stop:
                break
            if deadline is not None and time.monotonic() >= deadline:
                stopped = "duration"
                break
            try:
                batch = sub.receive(0.2)
            except (StreamError, PublisherUnavailable) as exc:
                raise MuheamError(f"subscription to {endpoint}: {exc}") from None
            if sub.info is not None and writer is None:
                got_sid, got_size = sub.info.system_id, sub.info.segment_size
                if sid is not None and (got_sid, got_size) != (sid, seg_size):
                    raise UnusableInput(f"{out} holds a copy of another stream (system id {sid:#x}, segments of "
                                        f"{seg_size} bytes; the publisher has {got_sid:#x}, {got_size}); use an "
                                        "empty directory")
                writer = MergedSink(out, system_id=got_sid, segment_size=got_size, incremental=True)
                if start == 0:
                    writer.open_segment(0, 0)  # as the follower does: an empty stream still has its first segment
            if batch and writer is not None:
                for lsn, data in batch:
                    writer.add(lsn, int.from_bytes(data[16:24], "little"), data)
                writer.flush()
                records += len(batch)
            if sub.ended:
                stopped = "end"
                break
    finally:
        if writer is not None:
            writer.close()
        sub.close()
    behind = sub.ended and sub.end_lsn is not None and sub.next_lsn < sub.end_lsn
    if behind:
        note(f"the publisher stopped at {format_lsn(sub.end_lsn or 0)} before this copy caught up "
             f"({format_lsn(sub.next_lsn)}); run again against a running publisher to resume")
    return {"records": records, "start_lsn": start, "next_lsn": sub.next_lsn, "next_lsn_text": format_lsn(sub.next_lsn),
            "end_lsn": sub.end_lsn, "stopped": stopped, "caught_up": not behind,
            "seconds": round(time.monotonic() - t0, 3), "out": str(out)}


def stderr_note(enabled: bool) -> Callable[[str], None]:
    def note(msg: str) -> None:
        if enabled:
            click.echo(f"muheam walmerge: {msg}", err=True)
    return note


def isatty_stderr() -> bool:
    try:
        return os.isatty(sys.stderr.fileno())
    except (OSError, ValueError):
        return False


__all__ = ["FollowRun", "MembershipFeed", "StopFlag", "UnusableInput", "WAL_END", "run_subscribe"]
