"""Follow mode: merge the node WALs into one stream *while they grow* (DESIGN.md 7).

``NodeTail`` polls one node stream for records appended since the last poll.  It reuses the reader's bulk
scan and validation (``scan_headers`` + ``validate``: length, LSN, prev chain, GLSN/epoch order, padding, CRC)
on the newly written part of the current segment, read in windows so an idle node costs one small ``pread``
per poll.  A writer ``pwrite``s records into zero-filled segments, so a poll can see a record half written:
anything invalid at the tail of the *last* segment is "not complete yet" (``pending``) and returned by a later
poll once whole.  It is corruption only with the reader's proof that the bytes had been written in full: a later
segment exists (the writer fsyncs a segment before creating the next), or a valid later record carries a
``durable_lsn`` past it; both are re-checked by a fresh read after the proof was seen, so a racing write is
never called damage.

``Follower`` runs the windowed merge of ``merge.py`` over the tails.  Watermark = min over live nodes of the
GLSN of the last record read from that node (a node's GLSNs never decrease, so nothing it writes later sorts
below it); every held record with GLSN <= watermark goes out in GLSN order.  A live node from which nothing has
been read yet stalls the stream.  HEARTBEAT records are ordinary records here, exactly as in the bulk merge:
they move their node's watermark and are *kept* in the output, so the followed stream is byte for byte the bulk
merge of the same inputs (redo ignores them).  An idle node that writes no heartbeat stalls the stream (by
design: it could still write a record with a low GLSN).

Re-serialisation is the bulk merge's: ``walmerge.sink``'s placement (``place_records``) and new headers
(``rewrite_headers``), so output LSNs depend only on the merged order.  With ``out_dir`` the records go through
the same writer, ``MergedSink`` in incremental mode (zero-filled segment files, records ``pwrite``n and
fdatasync'ed before ``poll`` returns); a crash inside a poll can leave a hole that the ordinary reader calls
corruption (records claim their own LSN durable, as in bulk output): restart the follower, which cuts the
output back to its valid prefix.

Resume: the follower re-derives the stream from the inputs' start (``start_lsns``, as for ``merge``) and emits
only records at merged LSN >= ``resume_lsn``; earlier ones are placed, checked and dropped.  With ``out_dir`` and
no ``resume_lsn`` it resumes at the end of the valid output, checks that the re-derived record at the output's
last LSN has the same GLSN, and cuts the output there.  Membership (live set, departures, fences) must be
re-declared the same way after a restart; changed inputs are detected at the boundary and raise ``WalError``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple

import numpy as np
import numpy.typing as npt

from walmerge.errors import WalCorruption, WalError, WalMissingSegment, format_lsn
from walmerge.merge import Chunk, Fences, detect_segment_size, fence_mask, node_dirs
from walmerge.reader import WalReader
from walmerge.record import HEADER_SIZE, align8, format_glsn
from walmerge.sink import MergedSink, place_records, rewrite_headers
from walmerge.scan import END, Expect, scan_headers, valid_records_after, validate
from walmerge.segment import (
    DEFAULT_SEGMENT_SIZE, MERGED_NODE_ID, SEGMENT_HEADER_SIZE, SegmentHeader, check_segment_size,
    decode_segment_header, fsync_dir, list_segments, node_wal_dir, segment_name, zero_tail,
)

WINDOW = 256 * 1024
"""First read size at a tail position; grown when a single record is larger."""
NO_LIVE_NODE = (1 << 64) - 1
"""Watermark when no node is live: everything read is final."""


class NodeTail:
    """Polls one node WAL directory for complete, validated records appended since the last poll.

    ``poll`` returns ``Chunk``s (numpy headers + offsets into a read buffer, the merge's input).  ``last_glsn``
    and ``last_epoch`` describe the last record returned (None before the first); ``pending`` is
    ``(lsn, reason)`` while the tail waits on bytes that are not a complete valid record yet.  ``start_lsn``
    must be a record or segment start (default: the first segment present).
    """

    def __init__(self, directory: str | os.PathLike[str], *, node_id: int, system_id: int,
                 start_lsn: int | None = None, window: int = WINDOW) -> None:
        self.directory = Path(directory)
        self.node_id = node_id
        self.system_id = system_id
        self.window = window
        self.segment_size = 0
        self.pending: tuple[int, str] | None = None
        self.records = 0
        self._start_lsn = start_lsn
        self._seg_start = -1
        self._off = 0
        self._expect = Expect(None, 0, 0)
        self._seen = False
        self._stuck_at: int | None = None

    @property
    def last_glsn(self) -> int | None:
        return self._expect.glsn if self._seen else None

    @property
    def last_epoch(self) -> int | None:
        return self._expect.epoch if self._seen else None

    @property
    def next_lsn(self) -> int | None:
        """Where the next record is expected (None until the first segment was found)."""
        return self._seg_start + self._off if self._seg_start >= 0 else None

    def _path(self, start: int) -> Path:
        return self.directory / segment_name(start)

    def _header(self, path: Path) -> SegmentHeader:
        with open(path, "rb") as f:
            return decode_segment_header(f.read(SEGMENT_HEADER_SIZE), path, node_id=self.node_id,
                                         system_id=self.system_id, segment_size=self.segment_size or None)

    def _locate(self) -> bool:
        """Find the segment to start in (once).  False while the stream has no segment yet."""
        if self._seg_start >= 0:
            return True
        segs = list_segments(self.directory) if self.directory.is_dir() else []
        if not segs:
            return False
        self.segment_size = self._header(segs[0][1]).segment_size
        size = self.segment_size
        start, off = segs[0][0], SEGMENT_HEADER_SIZE
        if self._start_lsn is not None:
            start = self._start_lsn - self._start_lsn % size
            off = max(SEGMENT_HEADER_SIZE, self._start_lsn - start)
            if start not in dict(segs):
                raise WalMissingSegment(path=self._path(start), lsn=self._start_lsn)
        hdr = self._header(self._path(start))
        if off == SEGMENT_HEADER_SIZE:
            self._expect = self._expect._replace(prev_lsn=hdr.prev_lsn)
        self._seg_start, self._off = start, off
        return True

    def poll(self, max_bytes: int | None = None) -> list[Chunk]:
        """Records completed since the last poll (stops early after ``max_bytes`` of records)."""
        out: list[Chunk] = []
        if not self._locate():
            return out
        while True:
            got = self._read(out, final=False, max_bytes=max_bytes)
            if max_bytes is not None and got >= max_bytes:
                return out
            nxt = self._path(self._seg_start + self.segment_size)
            if not nxt.exists():
                later = [s for s, _ in list_segments(self.directory) if s > self._seg_start]
                if not later:
                    if self.pending is not None:
                        self._check_damage(out)
                    return out
                if not nxt.exists():  # checked after the listing: the writer creates segments in order
                    raise WalMissingSegment(path=nxt, lsn=self._seg_start + self._off)
            # The writer fsynced this segment in full before creating the next: read it to its end.
            self._read(out, final=True, max_bytes=None)
            if self.pending is not None:
                raise WalCorruption(f"{self.pending[1]}; a later segment exists, so this segment had been "
                                    f"written in full", path=self._path(self._seg_start), offset=self._off,
                                    lsn=self.pending[0])
            hdr = self._header(nxt)
            if self._expect.prev_lsn is not None and hdr.prev_lsn != self._expect.prev_lsn:
                raise WalCorruption(
                    f"next segment {nxt.name} says the last record before it is at LSN {format_lsn(hdr.prev_lsn)}, "
                    f"but this segment's records end with LSN {format_lsn(self._expect.prev_lsn)}",
                    path=self._path(self._seg_start), offset=self._off, lsn=self._seg_start + self._off)
            self._seg_start += self.segment_size
            self._off = SEGMENT_HEADER_SIZE

    def _read(self, out: list[Chunk], *, final: bool, max_bytes: int | None) -> int:
        """Consume valid records of the current segment from the tail position; set ``pending``."""
        size = self.segment_size
        path = self._path(self._seg_start)
        need, got = 0, 0
        self.pending = None
        with open(path, "rb", buffering=0) as f:
            while True:
                remaining = size - self._off
                if remaining < HEADER_SIZE:
                    return got
                w = remaining if final else min(remaining, max(self.window, need))
                buf = os.pread(f.fileno(), w, self._off)
                base = self._seg_start + self._off
                if len(buf) < w:
                    raise WalCorruption(f"segment file is shorter than its {size} bytes", path=path,
                                        offset=self._off + len(buf), lsn=base + len(buf))
                scan = scan_headers(buf, base, 0, w)
                n_ok, why = validate(buf, scan, base, self._expect, stream_node=self.node_id)
                if n_ok:
                    h = scan.headers[:n_ok]
                    out.append(Chunk(self.node_id, buf, scan.offsets[:n_ok], h, len(buf)))
                    last = h[-1]
                    self._expect = Expect(int(last["lsn"]), int(last["glsn"]), int(last["epoch"]))
                    self._seen = True
                    end = align8(int(last["lsn"]) + int(last["total_len"]))
                    got += end - base
                    self.records += n_ok
                    self._off = end - self._seg_start
                if n_ok == len(scan.offsets) and scan.stop_reason == END and (n_ok == 0 or w == remaining):
                    return got  # zeros follow: nothing more written yet (or the segment is full)
                if n_ok:
                    if max_bytes is not None and got >= max_bytes:
                        return got
                    continue  # the window may have cut the next record: read on from it
                tl = int.from_bytes(buf[:4], "little")
                if w < remaining and w < tl <= remaining:
                    need = align8(tl)  # one record larger than the window
                    continue
                self.pending = (base, why or scan.stop_reason)
                return got

    def _check_damage(self, out: list[Chunk]) -> None:
        """Stuck at the same bytes for a second poll: raise if the stream proves they had been written."""
        assert self.pending is not None
        lsn, reason = self.pending
        if self._stuck_at != lsn:
            self._stuck_at = lsn
            return
        path = self._path(self._seg_start)
        with open(path, "rb", buffering=0) as f:
            rest = os.pread(f.fileno(), self.segment_size - self._off, self._off)
        proof = [d for _, d in valid_records_after(rest, 8, lsn, len(rest)) if d > lsn]
        if not proof:
            return
        self._read(out, final=False, max_bytes=None)  # the proof was written after these bytes: read them again
        if self.pending is not None and self.pending[0] == lsn:
            raise WalCorruption(f"{reason}; a valid later record was appended after the WAL had been fsynced up "
                                f"to LSN {format_lsn(max(proof))}, so these bytes had been written",
                                path=path, offset=self._off, lsn=lsn)


class Emitted(NamedTuple):
    """One record of the merged stream: its merged LSN, origin GLSN/node, and its bytes (``total_len`` of them;
    a consumer writing its own segments puts them at ``lsn`` and pads with zeros to 8 bytes)."""

    lsn: int
    glsn: int
    node: int
    data: bytes


def valid_output_end(out_dir: Path, system_id: int) -> tuple[int, tuple[int, int] | None]:
    """End of the valid prefix of a merged stream and ``(lsn, glsn)`` of its last record (from its last
    segment holding a record; a hole left by a crash ends the prefix even if the reader calls it corruption)."""
    segs = list_segments(out_dir)
    if not segs:
        return SEGMENT_HEADER_SIZE, None
    for start, _ in reversed(segs):
        reader = WalReader(out_dir, node_id=MERGED_NODE_ID, system_id=system_id, start_lsn=start)
        try:
            for _ in reader.batches():
                pass
        except WalCorruption:
            pass
        if reader.last is not None or start == segs[0][0]:
            break
    assert reader.end_lsn is not None
    last = None if reader.last is None else (reader.last.lsn, reader.last.glsn)
    return reader.end_lsn, last


def cut_output(out_dir: Path, lsn: int, segment_size: int) -> None:
    """Remove everything at or after merged LSN ``lsn`` (zero the rest of its segment, drop later segments)."""
    seg = lsn - lsn % segment_size
    for start, path in list_segments(out_dir):
        if start > seg or (start == seg and lsn - seg <= SEGMENT_HEADER_SIZE):
            path.unlink()
        elif start == seg:
            zero_tail(path, lsn - seg, segment_size)
    fsync_dir(out_dir)


class Follower:
    """Follow-mode merge of ``<shared_root>/wal/node-*`` into an ordered stream (see the module docstring).

    ``nodes``: the live nodes (default: every node directory present now).  ``poll()`` returns the newly
    emitted records (``Emitted``) and, with ``out_dir``, has appended and synced them to merged segments there.
    ``fences``/``start_lsns``/``segment_size``/``epoch`` mean what they mean for ``merge``.  One poll reads at
    most about ``poll_bytes`` (call it again: it returns early, possibly with nothing, while catching up).
    Not thread-safe: one thread polls and calls the membership hooks.
    """

    def __init__(self, shared_root: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None, *,
                 system_id: int, nodes: Iterable[int] | None = None, resume_lsn: int | None = None,
                 start_lsns: Mapping[int, int] | None = None, fences: Fences | None = None,
                 segment_size: int | None = None, epoch: int = 0, fsync: bool = True,
                 poll_bytes: int = 64 << 20, read_bytes: int = 4 << 20) -> None:
        self.root = Path(shared_root)
        self.system_id = system_id
        self.start_lsns = dict(start_lsns or {})
        self.fences: dict[int, list[tuple[int, int]]] = {n: list(v) for n, v in (fences or {}).items()}
        self.live: set[int] = set(node_dirs(self.root) if nodes is None else nodes)
        self.departed: dict[int, int] = {}
        """node -> recovery GLSN of the nodes whose stream has ended."""
        self.poll_bytes = poll_bytes
        self.read_bytes = read_bytes
        self.records_emitted = 0
        self.skipped_fenced = 0
        self._tails: dict[int, NodeTail] = {}
        for n in sorted(self.live):
            self._add_tail(n)
        self._held: dict[int, list[Chunk]] = {}
        self._last_emitted: dict[int, tuple[int, int]] = {}  # node -> (glsn, epoch)
        self._frontier = 0  # GLSN of the last record placed
        if segment_size is None:
            sizes = [s for s in (detect_segment_size(node_wal_dir(self.root, n)) for n in self.live
                                 if node_wal_dir(self.root, n).is_dir()) if s]
            segment_size = max(sizes) if sizes else DEFAULT_SEGMENT_SIZE
        check_segment_size(segment_size)
        self.segment_size = segment_size
        self._pos = SEGMENT_HEADER_SIZE  # merged LSN where the next record would start
        self._last_lsn = 0
        self._check_last: tuple[int, int] | None = None
        self._out: MergedSink | None = None
        if out_dir is not None:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            end, last = valid_output_end(out, system_id)
            if resume_lsn is None:
                resume_lsn, self._check_last = end, last
            elif resume_lsn > end:
                raise WalError(f"cannot resume at merged LSN {format_lsn(resume_lsn)}: the output in {out} is "
                               f"valid only up to {format_lsn(end)}")
            cut_output(out, resume_lsn, segment_size)
            self._out = MergedSink(out, system_id=system_id, segment_size=segment_size, epoch=epoch, fsync=fsync,
                                   incremental=True)
            if resume_lsn <= SEGMENT_HEADER_SIZE:
                self._out.open_segment(0, 0)  # like the bulk merge, an empty stream still has its first segment
        self._resume = resume_lsn or 0

    # --- membership ---------------------------------------------------------------------------------------

    def _add_tail(self, node: int) -> NodeTail:
        tail = NodeTail(node_wal_dir(self.root, node), node_id=node, system_id=self.system_id,
                        start_lsn=self.start_lsns.get(node))
        self._tails[node] = tail
        return tail

    def node_joined(self, node: int) -> None:
        """``node`` is live (again): it holds the watermark back until a record of it (a heartbeat) is read."""
        self.live.add(node)
        self.departed.pop(node, None)
        if node not in self._tails:
            self._add_tail(node)

    def node_departed(self, node: int, recovery_glsn: int, *, epoch: int | None = None) -> None:
        """``node``'s stream ends at ``recovery_glsn``: its records of ``epoch`` (default: the last epoch in its
        WAL) above it are left out, like fenced records in ``merge``, and it no longer holds the watermark.

        Its WAL is final (the node fenced itself, I6), so it is read to its end now.  Raises ``WalError`` if a
        record past the recovery point was already emitted (the caller declared the departure too late).
        """
        tail = self._tails.get(node) or self._add_tail(node)
        for chunk in tail.poll():
            self._take(node, chunk)
        ep = epoch if epoch is not None else tail.last_epoch
        if ep is not None:
            done = self._last_emitted.get(node)
            if done is not None and done[1] == ep and done[0] > recovery_glsn:
                raise WalError(f"node {node} departed at GLSN {format_glsn(recovery_glsn)}, but its record at GLSN "
                               f"{format_glsn(done[0])} (epoch {ep}) is already in the merged stream")
            self.fences.setdefault(node, []).append((ep, recovery_glsn))
            self._held[node] = [c for c in (self._fence(node, c) for c in self._held.get(node, [])) if c.left]
            if not self._held[node]:
                del self._held[node]
        self.live.discard(node)
        self.departed[node] = recovery_glsn

    # --- merging ------------------------------------------------------------------------------------------

    @property
    def watermark(self) -> int | None:
        """Records with GLSN <= this can go out; None while a live node has shown no record yet."""
        marks = [self._tails[n].last_glsn for n in self.live]
        if any(m is None for m in marks):
            return None
        return min(m for m in marks if m is not None) if marks else NO_LIVE_NODE

    @property
    def end_lsn(self) -> int:
        """Merged LSN just past the last record emitted (resume here to continue with no gap); while a resumed
        follower is still re-deriving what precedes its resume LSN, that LSN."""
        return max(self._pos, self._resume)

    @property
    def resuming(self) -> bool:
        """Still re-deriving the stream below the resume LSN (polls emit nothing until it is reached)."""
        return self._resume != 0

    def _fence(self, node: int, chunk: Chunk) -> Chunk:
        heads, offs = chunk.headers[chunk.pos:], chunk.offsets[chunk.pos:]
        drop = fence_mask(node, heads, self.fences)
        if drop is None or not drop.any():
            return chunk
        self.skipped_fenced += int(drop.sum())
        return Chunk(node, chunk.data, offs[~drop], heads[~drop], chunk.file_bytes)

    def _take(self, node: int, chunk: Chunk) -> None:
        chunk = self._fence(node, chunk)
        if not chunk.left:
            return
        first = int(chunk.headers["glsn"][0])
        if first < self._frontier:
            raise WalError(f"node {node} wrote GLSN {format_glsn(first)} below the merged stream's frontier "
                           f"{format_glsn(self._frontier)}; a node must start its clock above the watermark "
                           f"(a joining node: write a heartbeat first and seed its clock from the cluster)")
        self._held.setdefault(node, []).append(chunk)

    def poll(self) -> list[Emitted]:
        """Read what the nodes appended, emit every record at or below the watermark (in GLSN order).

        Catching up on a backlog goes in rounds of at most ``read_bytes`` per node (a node already holding that
        much is not read: memory stays bounded, as in the bulk merge); a poll returns after a round that read
        no backlog (the tails are caught up), or after ``poll_bytes``.  It does not chase writers that keep
        appending: call it again.
        """
        out: list[Emitted] = []
        budget = self.poll_bytes
        while True:
            read, backlog = 0, False
            for node in sorted(self.live):
                if self._held_bytes(node) >= self.read_bytes:
                    backlog = True  # above the watermark: this node is not the one holding it back
                    continue
                got = 0
                for chunk in self._tails[node].poll(self.read_bytes):
                    got += int(chunk.headers["total_len"].sum(dtype=np.int64))
                    self._take(node, chunk)
                read += got
                backlog |= got >= self.read_bytes
            wm = self.watermark
            if wm is not None:
                self._emit(wm, out)
            budget -= read
            if read == 0 or budget <= 0 or not backlog:
                break
        if self._out is not None:
            self._out.flush()
        return out

    def _held_bytes(self, node: int) -> int:
        return sum(int(c.headers["total_len"][c.pos:].sum(dtype=np.int64)) for c in self._held.get(node, ()))

    def _emit(self, bound: int, out: list[Emitted]) -> None:
        pieces: list[tuple[Chunk, int, int]] = []
        for chunks in self._held.values():
            for c in chunks:
                g = c.headers["glsn"]
                stop = int(np.searchsorted(g, np.uint64(bound), side="right"))
                if stop > c.pos:
                    pieces.append((c, c.pos, stop))
                if stop < len(g):
                    break
        if not pieces:
            return
        heads = np.concatenate([c.headers[a:b] for c, a, b in pieces])
        offs = np.concatenate([c.offsets[a:b] for c, a, b in pieces])
        src = np.concatenate([np.full(b - a, i, dtype=np.int32) for i, (c, a, b) in enumerate(pieces)])
        order = np.argsort(heads["glsn"], kind="stable")
        heads, offs, src = heads[order], offs[order], src[order]
        self._serialise(heads, offs, src, [c.data for c, _, _ in pieces], out)
        for c, _, b in pieces:
            c.pos = b
        for node in list(self._held):
            self._held[node] = [c for c in self._held[node] if c.left]
            if not self._held[node]:
                del self._held[node]

    def _serialise(self, heads: npt.NDArray[np.void], offs: npt.NDArray[np.int64], src: npt.NDArray[np.int32],
                   bufs: list[bytes], out: list[Emitted]) -> None:
        total = heads["total_len"].astype(np.int64)
        before = self._pos
        lsns = place_records(self._pos, total, self.segment_size)
        self._pos = int(lsns[-1] + ((total[-1] + 7) & ~7))
        new = rewrite_headers(heads, lsns, self._last_lsn)
        self._last_lsn = int(lsns[-1])
        glsn = heads["glsn"]
        self._frontier = int(glsn[-1])
        k = 0
        if self._resume:
            k = int(np.searchsorted(lsns, self._resume))
            self._check_resume(lsns, glsn, total, before, k)
        hb = new.tobytes()
        node, epoch = heads["node"], heads["epoch"]
        for i in range(k, len(lsns)):
            o, t, lsn = int(offs[i]), int(total[i]), int(lsns[i])
            data = hb[i * HEADER_SIZE:(i + 1) * HEADER_SIZE] + bufs[int(src[i])][o + HEADER_SIZE:o + t]
            out.append(Emitted(lsn, int(glsn[i]), int(node[i]), data))
            if self._out is not None:
                self._out.add(lsn, int(new["prev_lsn"][i]), data)
        for i in np.unique(node).tolist():
            last = int(np.flatnonzero(node == i)[-1])
            self._last_emitted[i] = (int(glsn[last]), int(epoch[last]))
        self.records_emitted += len(lsns) - k

    def _check_resume(self, lsns: npt.NDArray[np.int64], glsn: npt.NDArray[np.uint64], total: npt.NDArray[np.int64],
                      before: int, k: int) -> None:
        """While skipping to the resume LSN: the re-derived stream must agree with what was emitted before."""
        if self._check_last is not None:
            hit = np.flatnonzero(lsns == self._check_last[0])
            if len(hit):
                if int(glsn[hit[0]]) != self._check_last[1]:
                    raise WalError(f"the re-derived merged stream has GLSN {format_glsn(int(glsn[hit[0]]))} at LSN "
                                   f"{format_lsn(self._check_last[0])}, the output has "
                                   f"{format_glsn(self._check_last[1])}: the inputs or membership changed")
                self._check_last = None
        if k == len(lsns):
            return
        prev_end = before if k == 0 else int(lsns[k - 1]) + int(total[k - 1])
        if not (align8(prev_end) == self._resume or int(lsns[k]) == self._resume):
            raise WalError(f"merged LSN {format_lsn(self._resume)} is not a record boundary of the re-derived "
                           f"stream (the record there starts at {format_lsn(int(lsns[k]))}); the inputs, "
                           f"start LSNs or membership differ from the run that produced it")
        self._resume = 0

    def close(self) -> None:
        if self._out is not None:
            self._out.close()


__all__ = ["Emitted", "Follower", "NO_LIVE_NODE", "NodeTail", "cut_output", "valid_output_end"]
