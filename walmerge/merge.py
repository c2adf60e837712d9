"""Batch merge: every node's WAL under a shared directory -> one merged stream in GLSN order (DESIGN.md 7).

The merge is a sort of already-sorted runs, done a window at a time so memory stays at about one segment per
node (plus up to two per node read ahead).  Each node's validated segments come from the ordinary ``WalReader`` (same checks as recovery: CRC,
chain, missing segments, torn tail vs corruption) as numpy header arrays.  A window ends at
``bound`` = the smallest "last GLSN loaded" among nodes that still have unread WAL: nothing unread can sort
below it, so every loaded record with GLSN <= bound can be emitted.  The records of a window are ordered by
one stable ``argsort`` on the packed uint64 GLSN (the node id is in the low bits, so two nodes never tie, and
stability keeps a node's own order), and handed to ``MergedSink`` which re-serialises them in bulk.  Headers
move as raw 56-byte items (numpy copies structured items field by field, 25 times slower).

Input: complete segment files (full size, not the last of a stream) are mapped read-only
(``WalReader.segments(mapped=True)``) instead of read: a read of a cached file copies every byte once more
(measured here 2.7 GB/s, the slowest step of all).  A map stays open while anything refers to it (a chunk, or a piece job copying from
it) and is unmapped when the last reference goes; segment files are never truncated, so a map cannot fault.

Threads (``threads=True``, the default): one ``ReadAhead`` thread maps and validates every node's next segments
(scan, CRC: mostly C code that releases the GIL) while the calling thread merges, and one write-behind thread of
the sink copies the records into pieces and writes them; the output is the same byte for byte.
``keep_freed_memory`` stops glibc from returning freed buffers to the kernel (re-faulting them cost more than
the copying).

Fencing (I6): ``fences[node]`` lists ``(epoch, fence_glsn)`` pairs; a record of that node written under that
epoch with a GLSN above ``fence_glsn`` is left out.  The caller reads the fence records (etcd / FENCE records);
this module only applies them.  ``stop_glsn`` ends the merge after that GLSN (a recovery target).

On error (``WalCorruption`` in an input...) the exception propagates; the segments already published in the
output directory are a valid prefix of the merged stream, and the partial last segment is not written.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import functools
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Generic, Iterable, Iterator, Mapping, Sequence, TypeVar

import numpy as np
import numpy.typing as npt

from walmerge.errors import WalError
from walmerge.reader import TornTail, ValidatedSegment, WalReader
from walmerge.record import HEADER_DTYPE, HEADER_SIZE
from walmerge.segment import DEFAULT_SEGMENT_SIZE, SEGMENT_HEADER_SIZE, list_segments
from walmerge.sink import MergedSink

RAW_HEADER = np.dtype((np.void, HEADER_SIZE))
"""A header as an opaque 56-byte item (fast to gather, concatenate and copy)."""

Fences = Mapping[int, Iterable[tuple[int, int]]]
"""``node -> [(epoch, fence_glsn), ...]``: records of ``node`` with that epoch and GLSN > fence_glsn are ignored."""
Progress = Callable[[int, int], None]
"""``progress(bytes_done, bytes_total)`` over the input segment files."""

_NODE_DIR = re.compile(r"^node-(\d+)$")


def node_dirs(shared_root: str | os.PathLike[str]) -> dict[int, Path]:
    """``{node_id: <shared>/wal/node-<id>}`` for every node WAL directory present."""
    wal = Path(shared_root) / "wal"
    out: dict[int, Path] = {}
    if wal.is_dir():
        for entry in sorted(wal.iterdir()):
            m = _NODE_DIR.match(entry.name)
            if m and entry.is_dir():
                out[int(m.group(1))] = entry
    return out


def detect_system_id(directory: Path) -> int | None:
    """System id from the first segment header of a stream (None if there is no segment)."""
    segs = list_segments(directory)
    if not segs:
        return None
    with open(segs[0][1], "rb") as f:
        head = f.read(SEGMENT_HEADER_SIZE)
    return int.from_bytes(head[32:40], "little") if len(head) >= 40 else None


def detect_segment_size(directory: Path) -> int | None:
    segs = list_segments(directory)
    if not segs:
        return None
    with open(segs[0][1], "rb") as f:
        head = f.read(SEGMENT_HEADER_SIZE)
    return int.from_bytes(head[16:20], "little") if len(head) >= 20 else None


def fence_mask(node: int, headers: npt.NDArray[np.void], fences: Fences | None,
               stop_glsn: int | None = None) -> npt.NDArray[np.bool_] | None:
    """Which records to drop (fenced, or past ``stop_glsn``); None if none can be."""
    entries = list(fences.get(node, ())) if fences else []
    if not entries and stop_glsn is None:
        return None
    glsn = headers["glsn"]
    drop = np.zeros(len(headers), dtype=bool)
    for epoch, fence_glsn in entries:
        drop |= (headers["epoch"] == epoch) & (glsn > np.uint64(fence_glsn))
    if stop_glsn is not None:
        drop |= glsn > np.uint64(stop_glsn)
    return drop


@dataclass
class HeldChunk:
    """The not yet emitted records of one input segment (after fencing); ``data`` may map the segment file."""

    node: int
    data: bytes | memoryview
    offsets: npt.NDArray[np.int64]
    headers: npt.NDArray[np.void]
    file_bytes: int
    pos: int = 0

    @property
    def left(self) -> int:
        return len(self.offsets) - self.pos

    @property
    def last_glsn(self) -> int:
        return int(self.headers["glsn"][-1])


@dataclass
class Chunk(HeldChunk):
    """A ``HeldChunk`` whose records are in ``bytes`` (follow mode reads its input)."""

    data: bytes


@dataclass
class MergeSummary:
    """What a merge did (the CLI prints it; tests check it)."""

    records: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    record_bytes: int = 0
    per_node: dict[int, int] = field(default_factory=dict)
    first_glsn: int | None = None
    last_glsn: int | None = None
    segments: list[str] = field(default_factory=list)
    skipped_fenced: int = 0
    end_lsn: int = 0
    torn: dict[int, TornTail] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes_in / self.seconds / 1e6 if self.seconds > 0 else 0.0


class WindowMerger:
    """The windowed k-way merge over per-node chunk sources, shared by ``merge`` and follow mode.

    ``emit_window(bound)`` emits every held record with GLSN <= ``bound`` in GLSN order into the sink.
    """

    def __init__(self, sink: MergedSink, summary: MergeSummary) -> None:
        self.sink = sink
        self.summary = summary
        self.held: dict[int, list[HeldChunk]] = {}

    def add(self, chunk: HeldChunk) -> None:
        if chunk.left:
            self.held.setdefault(chunk.node, []).append(chunk)

    def emit_window(self, bound: int | None) -> int:
        """Emit held records with GLSN <= bound (all of them if bound is None); return how many."""
        pieces: list[tuple[HeldChunk, int, int]] = []
        for chunks in self.held.values():
            for c in chunks:
                g = c.headers["glsn"]
                stop = len(g) if bound is None else int(np.searchsorted(g, np.uint64(bound), side="right"))
                if stop > c.pos:
                    pieces.append((c, c.pos, stop))
                if stop < len(g):
                    break  # later chunks of this node are above the bound too
        if not pieces:
            return 0
        if len(pieces) > 1:  # headers move as plain 56-byte items: numpy copies structured ones field by field
            raw = np.concatenate([c.headers[a:b].view(RAW_HEADER) for c, a, b in pieces])
            offs = np.concatenate([c.offsets[a:b] for c, a, b in pieces])
            src = np.concatenate([np.full(b - a, i, dtype=np.int32) for i, (c, a, b) in enumerate(pieces)])
            order = np.argsort(raw.view(HEADER_DTYPE)["glsn"], kind="stable")
            heads, offs, src = raw[order].view(HEADER_DTYPE), offs[order], src[order]
        else:
            c, a, b = pieces[0]
            heads, offs, src = c.headers[a:b], c.offsets[a:b], np.zeros(b - a, dtype=np.int32)
        self.sink.append(heads, src, offs, [c.data for c, _, _ in pieces])
        s = self.summary
        n = len(heads)
        s.records += n
        s.record_bytes += int(heads["total_len"].sum(dtype=np.int64))
        if s.first_glsn is None:
            s.first_glsn = int(heads["glsn"][0])
        s.last_glsn = int(heads["glsn"][-1])
        for c, a, b in pieces:
            s.per_node[c.node] = s.per_node.get(c.node, 0) + (b - a)
            c.pos = b
        for node in list(self.held):
            self.held[node] = [c for c in self.held[node] if c.left]
            if not self.held[node]:
                del self.held[node]
        s.end_lsn = self.sink.end_lsn
        return n


T = TypeVar("T")


class ReadAhead(Generic[T]):
    """One thread reading ahead in several iterators (a ``WalReader.batches()`` per node: file read, scan, CRC
    check), at most ``depth`` items per iterator, always serving the one with the fewest items waiting.

    The heavy parts (``read``, the CRC-32C C function, numpy loops) release the GIL, so reading overlaps with
    merging on another core; one thread for all nodes keeps the GIL hand-offs (and memory arenas) few.
    ``source(i)`` yields iterator ``i``'s items and then raises its exception, if any, in order; ``close``
    stops the thread early."""

    def __init__(self, its: Sequence[Iterator[T]], depth: int = 2, name: str = "walmerge-read") -> None:
        self._its = list(its)
        self._depth = depth
        self._queues: list[collections.deque[tuple[int, T | BaseException | None]]] = [
            collections.deque() for _ in self._its]
        self._ended = [False] * len(self._its)
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _next_source(self) -> int | None:
        """Index of the source to read next (None: nothing to do now); called with the lock held."""
        best = None
        for i, q in enumerate(self._queues):
            if not self._ended[i] and len(q) < self._depth and (best is None or len(q) < len(self._queues[best])):
                best = i
        return best

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stop:
                        return
                    i = self._next_source()
                    if i is not None:
                        break
                    if all(self._ended):
                        return
                    self._cond.wait()
            entry: tuple[int, T | BaseException | None]
            try:
                entry = (0, next(self._its[i]))
            except StopIteration:
                entry = (2, None)
            except BaseException as e:  # handed to the consumer in order
                entry = (1, e)
            with self._cond:
                self._queues[i].append(entry)
                self._ended[i] = entry[0] != 0
                self._cond.notify_all()

    def source(self, i: int) -> Iterator[T]:
        while True:
            with self._cond:
                while not self._queues[i]:
                    self._cond.wait()
                kind, value = self._queues[i].popleft()
                self._cond.notify_all()
            if kind == 0:
                yield value  # type: ignore[misc]
            elif isinstance(value, BaseException):
                raise value
            else:
                return

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()


def _chunks(node: int, reader: WalReader, batches: Iterable[ValidatedSegment], fences: Fences | None,
            stop_glsn: int | None, summary: MergeSummary) -> Iterator[HeldChunk]:
    for batch in batches:
        heads, offs = batch.headers, batch.offsets
        drop = fence_mask(node, heads, fences, stop_glsn)
        if drop is not None and drop.any():
            if stop_glsn is not None:
                summary.skipped_fenced += int((drop & (heads["glsn"] <= np.uint64(stop_glsn))).sum())
            else:
                summary.skipped_fenced += int(drop.sum())
            heads, offs = heads[~drop], offs[~drop]
        yield HeldChunk(node, batch.data, offs, heads, len(batch.data))
    if reader.torn is not None:
        summary.torn[node] = reader.torn


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_tuned = 0
_tune_lock = threading.Lock()


@functools.cache
def _mallopt() -> Callable[[int, int], int] | None:
    try:
        fn: Callable[[int, int], int] = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError, TypeError):
        return None
    return fn


@contextlib.contextmanager
def keep_freed_memory() -> Iterator[None]:
    """While active (nestable), glibc keeps freed memory for reuse instead of returning it to the kernel.

    The merge allocates and frees a segment-sized buffer per input segment (in the reader threads) and numpy
    temporaries per window.  By default glibc serves such blocks with ``mmap`` and gives them back on ``free``
    (or trims its heap, or drops a thread arena's heap), so the next one page-faults fresh zero-filled pages in
    again: measured here, 20-80k faults and 0.2-0.5 s of system time per GB merged with the reader threads.
    Inside, blocks up to 32 MiB come from the heap, up to 1 GiB of free heap is kept, and new threads share the
    main arena (the reader threads free each other's buffers).  On exit the arena limit goes back to glibc's
    default and the trim threshold to 64 MiB; the mmap threshold stays at 32 MiB: that is where glibc's own
    adaptive thresholds end up in a process that frees blocks this large (setting them turns the adaptation
    off, and going back to the 128 KiB start value would make every later segment read fault its pages in).
    A no-op where ``mallopt`` is unavailable (not glibc).
    """
    global _tuned
    mallopt = _mallopt()
    with _tune_lock:
        if _tuned == 0 and mallopt is not None:
            mallopt(_M_MMAP_THRESHOLD, 32 << 20)
            mallopt(_M_TRIM_THRESHOLD, 1 << 30)
            mallopt(_M_ARENA_MAX, 1)
        _tuned += 1
    try:
        yield
    finally:
        with _tune_lock:
            _tuned -= 1
            if _tuned == 0 and mallopt is not None:
                mallopt(_M_ARENA_MAX, 0)
                mallopt(_M_TRIM_THRESHOLD, 64 << 20)


def merge(shared_root: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, system_id: int | None = None,
          start_lsns: Mapping[int, int] | None = None, fences: Fences | None = None, stop_glsn: int | None = None,
          nodes: Sequence[int] | None = None, segment_size: int | None = None, epoch: int = 0,
          verify_crc: bool = True, fsync: bool = True, progress: Progress | None = None,
          threads: bool = True) -> MergeSummary:
    """Merge the WAL of every node under ``shared_root`` into a new merged stream in ``out_dir``.

    ``start_lsns[node]`` is where that node's stream starts (a checkpoint's redo LSN; default: its first
    segment).  ``system_id`` defaults to the one in the first segment found (every stream must agree).
    ``segment_size`` defaults to the inputs'.  ``out_dir`` must not already hold WAL segments.  ``fsync=False``
    skips syncing the output (benchmarks and throwaway copies only).  ``threads`` reads each node's WAL and
    writes the output in background threads (``False``: everything in the calling thread; same output).
    Returns a ``MergeSummary``.
    """
    t0 = time.perf_counter()
    dirs = node_dirs(shared_root)
    if nodes is not None:
        missing = [n for n in nodes if n not in dirs]
        if missing:
            raise WalError(f"no WAL directory for node(s) {missing} under {Path(shared_root) / 'wal'}")
        dirs = {n: dirs[n] for n in nodes}
    if system_id is None:
        for d in dirs.values():
            system_id = detect_system_id(d)
            if system_id is not None:
                break
    if segment_size is None:
        sizes = [s for s in (detect_segment_size(d) for d in dirs.values()) if s]
        segment_size = max(sizes) if sizes else DEFAULT_SEGMENT_SIZE
    out = Path(out_dir)
    if out.is_dir() and list_segments(out):
        raise WalError(f"{out} already holds WAL segments; merge into an empty directory")
    summary = MergeSummary()
    if system_id is None:  # no input segment at all: an empty merged stream
        system_id = 0
    total = _input_bytes(dirs, start_lsns)
    with keep_freed_memory():
        sink = MergedSink(out, system_id=system_id, segment_size=segment_size, epoch=epoch, fsync=fsync,
                          write_threads=1 if threads else 0)
        wm = WindowMerger(sink, summary)
        sources: dict[int, Iterator[HeldChunk]] = {}
        ahead: ReadAhead[ValidatedSegment] | None = None
        try:
            readers = {node: WalReader(d, node_id=node, system_id=system_id, start_lsn=(start_lsns or {}).get(node),
                                       verify_crc=verify_crc, compiled=True) for node, d in dirs.items()}
            if threads:
                ahead = ReadAhead([r.segments(mapped=True) for r in readers.values()])
            for k, (node, reader) in enumerate(readers.items()):
                batches = reader.segments(mapped=True) if ahead is None else ahead.source(k)
                sources[node] = _chunks(node, reader, batches, fences, stop_glsn, summary)
            done = _merge_loop(wm, sources, total, progress)
            sink.close()
        except BaseException:
            sink.abort()
            raise
        finally:
            if ahead is not None:
                ahead.close()
        del wm, sources
    summary.segments = sink.segments
    summary.bytes_out = sink.bytes_written
    summary.bytes_in = done
    summary.end_lsn = sink.end_lsn
    summary.seconds = time.perf_counter() - t0
    if progress is not None:
        progress(total, total)
    return summary


def _merge_loop(wm: WindowMerger, sources: dict[int, Iterator[HeldChunk]], total: int,
                progress: Progress | None) -> int:
    """Load a chunk for every node that holds none, emit up to the smallest last-loaded GLSN among nodes
    with unread WAL, repeat; return the input bytes consumed."""
    last_loaded: dict[int, int] = {}
    done = 0
    while True:
        for node in list(sources):
            if node in wm.held:
                continue
            chunk = next(sources[node], None)
            while chunk is not None and not chunk.left:
                done += chunk.file_bytes
                chunk = next(sources[node], None)
            if chunk is None:
                del sources[node]
                continue
            done += chunk.file_bytes
            wm.add(chunk)
            last_loaded[node] = chunk.last_glsn
        if not wm.held:
            return done
        live = [last_loaded[n] for n in sources]
        wm.emit_window(min(live) if live else None)
        if progress is not None:
            progress(min(done, total), total)


def _input_bytes(dirs: Mapping[int, Path], start_lsns: Mapping[int, int] | None) -> int:
    total = 0
    for node, d in dirs.items():
        start = (start_lsns or {}).get(node, 0)
        for seg_start, path in list_segments(d):
            size = path.stat().st_size
            if seg_start + size > start:
                total += size
    return total


__all__ = ["Chunk", "Fences", "HeldChunk", "MergeSummary", "Progress", "WindowMerger", "detect_system_id",
           "fence_mask", "merge", "node_dirs"]
