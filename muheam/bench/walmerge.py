"""``muheam bench walmerge``: merge throughput against ``heapq.merge`` and ``cp`` of the same bytes.

Input: ``nodes`` node WALs written with the real ``WalWriter`` (16 MiB segments), heap-like records of 100-2000
payload bytes (uniform) and a 16-byte COMMIT ending a transaction every few records, stamped with Lamport
clocks as real nodes produce them: each node ticks its own clock per record and, now and then, receives a
message from another node (``L = max(L, L_other) + 1``), so the streams interleave finely in GLSN order.

Measured in one run, on the same input files, each contender ``repeat`` times with the best run reported (the
machine is shared and noisy), page cache warm for all three (every input file is read once right before each
measurement), nobody fsyncs (``cp`` does not, so the merge runs with ``fsync=False`` and the heapq baseline
with the writer's syncs stubbed out), output on the same file system as the input, every output deleted before
the next measurement and one unmeasured copy first (on this VM the first write to a page of RAM costs several
times a later one: whoever wrote first into never-used memory used to be charged for it, and that was ``cp``)
and one unmeasured merge (it loads the compiled kernels of ``walmerge.jit``), all in one process under the
merge's allocator setting (``keep_freed_memory``):

* ``mb_per_s``: ``walmerge.merge`` (input CRCs verified, as recovery would; with its read-ahead thread, as by
  default); ``mb_per_s_no_crc`` without the CRC check.
* ``heapq_mb_per_s``: ``heapq.merge`` over the records read with the ordinary ``WalReader`` and re-serialised
  with the ordinary ``WalWriter``, measured on the first ``heapq_sample_bytes`` of input and scaled (it is
  per-record Python; running it on 1 GB would only take longer and say the same).
* ``cp_mb_per_s``: ``shutil.copyfile`` of every input segment file (a kernel-side copy).

MB/s are input segment bytes (10^6) per second.  Ratios: ``ratio_vs_cp = mb_per_s / cp_mb_per_s`` (goal >= 0.5),
``ratio_vs_heapq = mb_per_s / heapq_mb_per_s`` (goal >= 20).  ``cpu_seconds`` (user + system, all threads, of
each best run) and ``cpu_mb_per_s`` say how much of a wall-clock figure was CPU this process got;
``compiled`` whether the merge ran its compiled kernels (``MUHEAM_NO_JIT=1`` measures the numpy reference).
"""

from __future__ import annotations

import heapq
import json
import os
import random
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator
from unittest import mock

from walmerge import MERGED_NODE_ID, Record, RecordKind, WalReader, WalWriter, jit
import walmerge.writer as writer_mod
from walmerge.merge import keep_freed_memory, merge, node_dirs
from walmerge.segment import list_segments

SYSTEM_ID = 0x5EED_0001
SEGMENT = 16 << 20


def generate(root: Path, total_bytes: int, nodes: int, payload: tuple[int, int] = (100, 2000),
             seed: int = 1) -> tuple[int, int]:
    """Write about ``total_bytes`` of WAL for ``nodes`` nodes under ``root``; return (records, file bytes)."""
    rnd = random.Random(seed)
    pool = rnd.randbytes(1 << 22)
    lo, hi = payload
    writers = [WalWriter(root / "wal" / f"node-{k}", node_id=k, system_id=SYSTEM_ID, epoch=1,
                         segment_size=SEGMENT) for k in range(1, nodes + 1)]
    clocks = [0] * nodes
    written = records = 0
    heap_kinds = (RecordKind.HEAP_INSERT, RecordKind.HEAP_UPDATE, RecordKind.HEAP_DELETE)
    xid = [k << 40 for k in range(1, nodes + 1)]
    with mock.patch.object(writer_mod, "_datasync", lambda fd: None):
        while written < total_bytes:
            k = rnd.randrange(nodes)
            if rnd.random() < 0.05:
                clocks[k] = max(clocks[k], clocks[rnd.randrange(nodes)])
            for _ in range(rnd.randint(1, 8)):  # a short burst from one node, then another node runs
                clocks[k] += 1
                n = rnd.randint(lo, hi)
                o = rnd.randrange(len(pool) - n)
                commit = rnd.random() < 0.15
                if commit:
                    kind, data = RecordKind.COMMIT, pool[o: o + 16]
                else:
                    kind, data = heap_kinds[rnd.randrange(3)], pool[o: o + n]
                writers[k].append(kind, data, lamport=clocks[k], xid=xid[k])
                if commit:
                    xid[k] += 1
                written += 56 + len(data)
                records += 1
        for w in writers:
            w.close()
    return records, _tree_bytes(root)


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for sub in node_dirs(root).values() for _, p in list_segments(sub))


def _warm(root: Path) -> None:
    for sub in node_dirs(root).values():
        for _, p in list_segments(sub):
            with open(p, "rb") as f:
                while f.read(1 << 24):
                    pass


def _heapq_merge(root: Path, out: Path, sample_bytes: int) -> tuple[int, float]:
    """The straightforward merge on the first ``sample_bytes`` of input; return (input bytes, seconds)."""
    dirs = node_dirs(root)
    per_node = max(SEGMENT, sample_bytes // max(1, len(dirs)))
    stop = per_node - per_node % SEGMENT
    used = 0
    for d in dirs.values():
        used += sum(p.stat().st_size for s, p in list_segments(d) if s < stop)
    t0 = time.perf_counter()

    def records(node: int, d: Path) -> Iterator[Record]:
        return iter(WalReader(d, node_id=node, system_id=SYSTEM_ID, stop_lsn=stop))

    with mock.patch.object(writer_mod, "_datasync", lambda fd: None), mock.patch.object(os, "fsync", lambda fd: None):
        with WalWriter(out, node_id=MERGED_NODE_ID, system_id=SYSTEM_ID, epoch=0, segment_size=SEGMENT,
                       merged=True) as w:
            for r in heapq.merge(*(records(n, d) for n, d in dirs.items()), key=lambda r: r.glsn):
                w.append(r.kind, r.payload, lamport=r.glsn >> 16, xid=r.xid, node=r.node, epoch=r.epoch)
    return used, time.perf_counter() - t0


def _cp(root: Path, out: Path) -> float:
    t0 = time.perf_counter()
    for node, d in node_dirs(root).items():
        dst = out / f"node-{node}"
        dst.mkdir(parents=True)
        for _, p in list_segments(d):
            shutil.copyfile(p, dst / p.name)
    return time.perf_counter() - t0


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(total_bytes: int = 1 << 30, nodes: int = 3, payload: tuple[int, int] = (100, 2000),
        tmpdir: str | None = None, heapq_sample_bytes: int = 96 << 20, repeat: int = 3) -> dict[str, Any]:
    """Generate, measure each contender ``repeat`` times (best run counts, for all three alike), clean up;
    return the figures."""
    if nodes < 1:
        raise ValueError("need at least one node")
    with tempfile.TemporaryDirectory(prefix="muheam-bench-walmerge-", dir=tmpdir) as tmp:
        root = Path(tmp) / "shared"
        t0 = time.perf_counter()
        records, input_bytes = generate(root, total_bytes, nodes, payload)
        gen_s = time.perf_counter() - t0
        sample = min(heapq_sample_bytes, input_bytes)

        def fresh(name: str) -> Path:
            p = Path(tmp) / name
            shutil.rmtree(p, ignore_errors=True)
            return p

        best: dict[str, tuple[float, float]] = {}  # name -> (seconds, CPU seconds of the best run)

        def note(name: str, seconds: float, cpu: float) -> None:
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, cpu)

        summary = None
        sample_in = 0
        # One unmeasured copy first: on a fresh VM the first write of each page of RAM is several times slower
        # than later ones (the page-cache pages of whatever runs first would pay it).  Every output is deleted
        # before the next measurement, so all contenders write into recycled memory.
        # (After one unmeasured merge, which loads the compiled kernels of walmerge.jit: compiling them takes
        # seconds on a machine's first run.)
        merge(root, fresh("merged"), system_id=SYSTEM_ID, fsync=False)
        shutil.rmtree(Path(tmp) / "merged")
        _cp(root, fresh("cp"))
        shutil.rmtree(Path(tmp) / "cp")
        with keep_freed_memory():  # the merge's allocator setting, for every contender in this process
            for _ in range(repeat):
                _warm(root)
                c0 = _cpu()
                note("cp", _cp(root, fresh("cp")), _cpu() - c0)
                shutil.rmtree(Path(tmp) / "cp")
                _warm(root)
                c0 = _cpu()
                summary = merge(root, fresh("merged"), system_id=SYSTEM_ID, fsync=False)
                note("merge", summary.seconds, _cpu() - c0)
                assert summary.records == records, "merge lost records"
                _warm(root)
                c0 = _cpu()
                s2 = merge(root, fresh("merged"), system_id=SYSTEM_ID, fsync=False, verify_crc=False)
                note("merge_no_crc", s2.seconds, _cpu() - c0)
                shutil.rmtree(Path(tmp) / "merged")
                _warm(root)
                c0 = _cpu()
                sample_in, heapq_s = _heapq_merge(root, fresh("heapq"), sample)
                note("heapq", heapq_s, _cpu() - c0)
                shutil.rmtree(Path(tmp) / "heapq")
        assert summary is not None
        mb = input_bytes / best["merge"][0] / 1e6
        cp_mb = input_bytes / best["cp"][0] / 1e6
        hq_mb = sample_in / best["heapq"][0] / 1e6
        return {
            "mb_per_s": round(mb, 1),
            "mb_per_s_no_crc": round(input_bytes / best["merge_no_crc"][0] / 1e6, 1),
            "heapq_mb_per_s": round(hq_mb, 2),
            "cp_mb_per_s": round(cp_mb, 1),
            "ratio_vs_cp": round(mb / cp_mb, 3),
            "ratio_vs_heapq": round(mb / hq_mb, 1),
            "input_bytes": input_bytes,
            "records": records,
            "nodes": nodes,
            "heapq_sample_bytes": sample_in,
            "output_bytes": summary.bytes_out,
            "merge_seconds": round(best["merge"][0], 3),
            "cpu_seconds": {k: round(v[1], 3) for k, v in best.items()},
            "cpu_mb_per_s": {k: round((sample_in if k == "heapq" else input_bytes) / v[1] / 1e6, 1)
                             for k, v in best.items() if v[1] > 0},
            "repeat": repeat,
            "cores": os.cpu_count(),
            "generate_seconds": round(gen_s, 1),
            "fsync": False,
            "compiled": jit.use_compiled(),
            "page_cache": "warm (inputs read right before each measurement); outputs into recycled memory",
        }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
