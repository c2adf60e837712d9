"""``verify``: check node WALs and/or a merged stream, report every problem found with where it is.

What is checked, and why it is sound:

* Per stream, everything the ordinary reader checks (segment headers, CRC, prev chain, LSN positions, node
  and epoch fields, padding; torn tail vs corruption).  After damage the stream cannot be trusted up to the
  next segment, so verification resumes there (the problem names the file, offset and LSN) and goes on.
* A torn tail is reported too (``allow_torn_tail=True`` after a crash): a flipped byte in a stream's last
  unsynced record looks exactly like an interrupted write, and ``verify`` must not call such damage clean.
* Missing segments: a gap between segment files is reported as "first missing WAL segment is <name>", like
  Barman.  A stream whose first segments were removed after a checkpoint is *not* a problem unless
  ``start_lsns`` asks for a segment that is gone.
* GLSN strictly increasing per stream and in the merged output (every record takes its own Lamport tick; the
  reader itself only rejects decreases).  For a merged output next to its inputs (``compare``), the output
  must be exactly the inputs in GLSN order minus fenced records: same GLSNs, and the same record apart from
  ``lsn``/``prev_lsn``/``durable_lsn`` (checked by folding those fields out of both CRCs, so no payload is
  re-read).
* XIDs, from headers only (I1): an XID's data records (kinds below 32 and page images, not the outcome or
  control kinds, which a recovering node legitimately writes for another node's XID) must all come from one
  node; no data record may follow the XID's COMMIT/ABORT in GLSN order (that is an XID used again); an XID
  must not both commit and abort, nor commit twice.  ``begins_xid(record)`` adds: no XID begins twice.
* Optional payload-level callbacks, run over the records in GLSN order (the output if given, else the inputs
  merged): ``block_of(record)`` -> per block the GLSNs strictly increase (I2/I4: a block changes in GLSN
  order); ``waits_of(record)`` -> every XID the record's transaction waited on has its COMMIT/ABORT earlier
  (I4).  Without them those invariants are not checked: the payload format belongs to ``muheam``.

Classification: ``clean`` (exit 0), ``problems found`` (1), ``unusable input`` (2: nothing to read, foreign or
unreadable files, wrong cluster).
"""

from __future__ import annotations

import enum
import heapq
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Iterator, Mapping

import numpy as np
import numpy.typing as npt

from walmerge.crcfast import fold_fields
from walmerge.errors import WalCorruption, WalMismatch, WalMissingSegment, format_lsn
from walmerge.merge import Fences, detect_system_id, node_dirs
from walmerge.reader import TornTail, WalReader
from walmerge.record import Record, RecordKind, format_glsn
from walmerge.segment import MERGED_NODE_ID, list_segments

Arr = npt.NDArray[Any]

MAX_PER_CHECK = 20
"""Problems of one kind reported per stream before the rest are only counted."""


class Status(str, enum.Enum):
    CLEAN = "clean"
    PROBLEMS = "problems found"
    UNUSABLE = "unusable input"


@dataclass(frozen=True)
class Problem:
    what: str
    file: str | None = None
    offset: int | None = None
    lsn: int | None = None
    stream: str | None = None
    glsn: int | None = None

    def __str__(self) -> str:
        where = []
        if self.stream:
            where.append(self.stream)
        if self.file:
            where.append(self.file + (f" offset {self.offset}" if self.offset is not None else ""))
        if self.lsn is not None:
            where.append(f"LSN {format_lsn(self.lsn)}")
        if self.glsn is not None:
            where.append(f"GLSN {format_glsn(self.glsn)}")
        return f"{', '.join(where)}: {self.what}" if where else self.what


@dataclass
class StreamInfo:
    name: str
    directory: Path
    records: int = 0
    first_glsn: int | None = None
    last_glsn: int | None = None
    first_segment: str | None = None
    end_lsn: int | None = None
    torn: TornTail | None = None


@dataclass
class VerifyReport:
    problems: list[Problem] = field(default_factory=list)
    unusable: list[str] = field(default_factory=list)
    streams: list[StreamInfo] = field(default_factory=list)
    suppressed: int = 0

    @property
    def status(self) -> Status:
        if self.unusable:
            return Status.UNUSABLE
        return Status.PROBLEMS if self.problems or self.suppressed else Status.CLEAN

    @property
    def exit_code(self) -> int:
        return {Status.CLEAN: 0, Status.PROBLEMS: 1, Status.UNUSABLE: 2}[self.status]


class _Cols:
    """Header columns of one stream (only what the checks need) plus where each record lives."""

    def __init__(self) -> None:
        self.parts: list[dict[str, Arr]] = []
        self.paths: list[Path] = []

    def add(self, path: Path, offsets: npt.NDArray[np.int64], h: npt.NDArray[np.void]) -> None:
        canon = h.copy()
        canon["lsn"] = 0
        canon["prev_lsn"] = 0
        canon["durable_lsn"] = 0
        self.parts.append({
            "glsn": h["glsn"].copy(), "node": h["node"].copy(), "xid": h["xid"].copy(), "kind": h["kind"].copy(),
            "epoch": h["epoch"].copy(), "lsn": h["lsn"].copy(), "off": offsets.copy(),
            "seg": np.full(len(h), len(self.paths), dtype=np.int32),
            "canon": fold_fields(h["crc"], h, canon),
        })
        self.paths.append(path)

    def cat(self) -> dict[str, Arr]:
        keys = ["glsn", "node", "xid", "kind", "epoch", "lsn", "off", "seg", "canon"]
        if not self.parts:
            return {k: np.zeros(0, dtype=np.uint64) for k in keys}
        return {k: np.concatenate([p[k] for p in self.parts]) for k in keys}


class _Reporter:
    def __init__(self, report: VerifyReport) -> None:
        self.report = report
        self.counts: dict[tuple[str, str], int] = {}

    def add(self, stream: str, check: str, problem: Problem) -> None:
        if problem in self.report.problems:
            return  # the same damage met again while resuming
        key = (stream, check)
        self.counts[key] = self.counts.get(key, 0) + 1
        if self.counts[key] <= MAX_PER_CHECK:
            self.report.problems.append(problem)
        else:
            self.report.suppressed += 1


def _read_stream(rep: _Reporter, name: str, directory: Path, node_id: int, system_id: int,
                 start_lsn: int | None, allow_torn_tail: bool) -> tuple[StreamInfo, _Cols]:
    """Read a stream with the validating reader, resuming after damage at the next segment."""
    info = StreamInfo(name, directory)
    cols = _Cols()
    segs = list_segments(directory)
    info.first_segment = segs[0][1].name if segs else None
    start = start_lsn
    while True:
        reader = WalReader(directory, node_id=node_id, system_id=system_id, start_lsn=start)
        resume_after: int | None = None
        try:
            for batch in reader.batches():
                cols.add(batch.path, batch.offsets, batch.headers)
        except WalMissingSegment as e:
            rep.add(name, "missing", Problem(f"first missing WAL segment is {e.missing.name}", file=e.missing.name,
                                             lsn=e.lsn, stream=name))
            resume_after = int(e.missing.name, 16)
        except WalCorruption as e:
            rep.add(name, "corrupt", Problem(e.reason, file=e.path.name, offset=e.offset, lsn=e.lsn, stream=name))
            resume_after = int(e.path.name, 16) if e.path.name.isalnum() else None
        info.torn = reader.torn
        info.end_lsn = reader.end_lsn
        if reader.torn is not None and not allow_torn_tail:
            t = reader.torn
            rep.add(name, "torn", Problem(f"torn tail: {t.reason}; {t.nonzero_bytes_dropped} non-zero bytes after the "
                                          f"last valid record (normal after a crash of this node: pass "
                                          f"--allow-torn-tail)",
                                          file=t.path.name, offset=t.offset, lsn=t.lsn, stream=name))
        if resume_after is None:
            break
        later = [s for s, _ in segs if s > resume_after and (start is None or s > start)]
        if not later:
            break  # (the reader needs the first segment's header; if that is what is damaged, stop here)
        start = later[0]
    c = cols.cat()
    info.records = len(c["glsn"])
    if info.records:
        info.first_glsn, info.last_glsn = int(c["glsn"][0]), int(c["glsn"][-1])
    _check_glsn_strict(rep, name, cols, c)
    return info, cols


def _where(cols: _Cols, c: dict[str, Arr], i: int, name: str, what: str) -> Problem:
    return Problem(what, file=cols.paths[int(c["seg"][i])].name, offset=int(c["off"][i]), lsn=int(c["lsn"][i]),
                   stream=name, glsn=int(c["glsn"][i]))


def _check_glsn_strict(rep: _Reporter, name: str, cols: _Cols, c: dict[str, Arr]) -> None:
    g = c["glsn"]
    for i in (np.flatnonzero(g[1:] <= g[:-1]) + 1)[: MAX_PER_CHECK + 1].tolist():
        rep.add(name, "glsn", _where(cols, c, i, name, "GLSN not above the previous record's (every record "
                                                       "must take its own Lamport tick)"))


def _check_xids(rep: _Reporter, name: str, g: Arr, node: Arr,
                xid: Arr, kind: Arr) -> None:
    """Header-level XID checks over records in GLSN order (see module docstring)."""
    outcome = (kind == RecordKind.COMMIT) | (kind == RecordKind.ABORT)
    data = (xid != 0) & ((kind < 32) | (kind >= 64))
    xs = np.flatnonzero(data)
    order = xs[np.lexsort((g[xs], xid[xs]))]
    x, nd = xid[order], node[order]
    same = x[1:] == x[:-1]
    for i in np.flatnonzero(same & (nd[1:] != nd[:-1]))[: MAX_PER_CHECK + 1].tolist():
        rep.add(name, "xid-nodes", Problem(f"XID {int(x[i])} has records from node {int(nd[i])} and node "
                                           f"{int(nd[i + 1])} (an XID handed out twice, I1)", stream=name,
                                           glsn=int(g[order[i + 1]])))
    os_ = np.flatnonzero(outcome & (xid != 0))
    if len(os_):
        ox = xid[os_]
        srt = os_[np.lexsort((g[os_], ox))]
        sx = xid[srt]
        first = np.ones(len(srt), dtype=bool)
        first[1:] = sx[1:] != sx[:-1]
        for i in np.flatnonzero(~first)[: MAX_PER_CHECK + 1].tolist():
            a, b = int(kind[srt[i - 1]]), int(kind[srt[i]])
            if a == b == RecordKind.ABORT:
                continue
            rep.add(name, "xid-outcome", Problem(f"XID {int(sx[i])} has two outcomes ({RecordKind(a).name} then "
                                                 f"{RecordKind(b).name})", stream=name, glsn=int(g[srt[i]])))
        # first outcome GLSN per XID vs the last data record of that XID
        fx, fg = sx[first], g[srt[first]]
        if len(order):
            last = np.ones(len(order), dtype=bool)
            last[:-1] = x[1:] != x[:-1]
            lx, lg = x[last], g[order[last]]
            pos = np.searchsorted(fx, lx)
            ok = pos < len(fx)
            hit = np.zeros(len(lx), dtype=bool)
            hit[ok] = fx[pos[ok]] == lx[ok]
            late = np.flatnonzero(hit & (lg > fg[np.minimum(pos, len(fx) - 1)]))
            for i in late[: MAX_PER_CHECK + 1].tolist():
                rep.add(name, "xid-reuse", Problem(f"XID {int(lx[i])} has records after its COMMIT/ABORT (XID used "
                                                   f"again, I1)", stream=name, glsn=int(lg[i])))


def _callback_checks(rep: _Reporter, name: str, records: Iterable[Record],
                     block_of: Callable[[Record], Hashable | None] | None,
                     waits_of: Callable[[Record], Iterable[int]] | None,
                     begins_xid: Callable[[Record], int | None] | None) -> None:
    last_by_block: dict[Hashable, int] = {}
    finished: set[int] = set()
    begun: set[int] = set()
    for r in records:
        if block_of is not None:
            b = block_of(r)
            if b is not None:
                prev = last_by_block.get(b)
                if prev is not None and r.glsn <= prev:
                    rep.add(name, "block", Problem(f"block {b!r} changed at GLSN not above its previous change "
                                                   f"{format_glsn(prev)} (I2/I4)", stream=name,
                                                   lsn=r.lsn, glsn=r.glsn))
                last_by_block[b] = r.glsn
        if waits_of is not None:
            for w in waits_of(r):
                if w not in finished:
                    rep.add(name, "waits", Problem(f"XID {r.xid} waited on XID {w}, whose COMMIT/ABORT does not come "
                                                   f"earlier (I4)", stream=name, lsn=r.lsn, glsn=r.glsn))
        if begins_xid is not None:
            x = begins_xid(r)
            if x is not None:
                if x in begun:
                    rep.add(name, "begin", Problem(f"XID {x} begins twice (I1)", stream=name, lsn=r.lsn, glsn=r.glsn))
                begun.add(x)
        if r.kind in (RecordKind.COMMIT, RecordKind.ABORT):
            finished.add(r.xid)


def _merged_records(dirs: Mapping[int, Path], system_id: int, start_lsns: Mapping[int, int] | None,
                    fences: Fences | None) -> Iterator[Record]:
    def one(node: int, d: Path) -> Iterator[Record]:
        rules = list((fences or {}).get(node, ()))
        try:
            for r in WalReader(d, node_id=node, system_id=system_id, start_lsn=(start_lsns or {}).get(node)):
                if not any(r.epoch == e and r.glsn > f for e, f in rules):
                    yield r
        except (WalCorruption, WalMismatch):
            return  # already reported by the header pass
    return heapq.merge(*(one(n, d) for n, d in dirs.items()), key=lambda r: r.glsn)


def verify(shared_root: str | os.PathLike[str] | None = None, output: str | os.PathLike[str] | None = None, *,
           system_id: int | None = None, start_lsns: Mapping[int, int] | None = None, fences: Fences | None = None,
           block_of: Callable[[Record], Hashable | None] | None = None,
           waits_of: Callable[[Record], Iterable[int]] | None = None,
           begins_xid: Callable[[Record], int | None] | None = None, compare: bool = True,
           allow_torn_tail: bool = False, stop_glsn: int | None = None) -> VerifyReport:
    """Verify the node WALs under ``shared_root`` and/or the merged stream in ``output``; see module docstring.

    A torn tail (what the reader accepts as an interrupted last write) is a problem unless ``allow_torn_tail``:
    after a node crash it is expected, in an archive of a cleanly stopped cluster it is damage.
    ``stop_glsn``: the output was merged up to this GLSN (``merge(stop_glsn=...)``, a cut of running nodes'
    WAL); it is compared with the inputs' records up to there.
    """
    report = VerifyReport()
    rep = _Reporter(report)
    dirs = node_dirs(shared_root) if shared_root is not None else {}
    out = Path(output) if output is not None else None
    if shared_root is not None and not dirs:
        report.unusable.append(f"no node WAL directories (wal/node-<id>) under {shared_root}")
    if out is not None and not (out.is_dir() and list_segments(out)):
        report.unusable.append(f"no WAL segments in {out}")
    if shared_root is None and out is None:
        report.unusable.append("nothing to verify: give a shared directory and/or a merged output directory")
    if system_id is None:
        for d in [*dirs.values(), *([out] if out is not None and out.is_dir() else [])]:
            system_id = detect_system_id(d)
            if system_id is not None:
                break
    if report.unusable or system_id is None:
        if system_id is None and not report.unusable:
            report.unusable.append("no WAL segment found")
        return report
    inputs: list[tuple[int, StreamInfo, _Cols]] = []
    try:
        for node, d in dirs.items():
            info, cols = _read_stream(rep, f"node-{node}", d, node, system_id, (start_lsns or {}).get(node),
                                       allow_torn_tail)
            report.streams.append(info)
            inputs.append((node, info, cols))
        out_cols: _Cols | None = None
        if out is not None:
            info, out_cols = _read_stream(rep, "merged", out, MERGED_NODE_ID, system_id, None, allow_torn_tail)
            report.streams.append(info)
    except (WalMismatch, OSError) as e:
        report.unusable.append(str(e))
        return report
    merged_in = _merge_inputs(inputs, fences)
    if inputs:
        _check_xids(rep, "inputs", merged_in["glsn"], merged_in["node"], merged_in["xid"], merged_in["kind"])
    if out_cols is not None:
        oc = out_cols.cat()
        _check_xids(rep, "merged", oc["glsn"], oc["node"], oc["xid"], oc["kind"])
        if inputs and compare:
            upto = merged_in
            if stop_glsn is not None:
                keep = merged_in["glsn"] <= np.uint64(stop_glsn)
                upto = {k: v[keep] for k, v in merged_in.items()}
            _compare(rep, out_cols, oc, upto)
    if block_of or waits_of or begins_xid:
        if out is not None:
            recs: Iterable[Record] = _safe_iter(WalReader(out, node_id=MERGED_NODE_ID, system_id=system_id))
            _callback_checks(rep, "merged", recs, block_of, waits_of, begins_xid)
        else:
            _callback_checks(rep, "inputs", _merged_records(dirs, system_id, start_lsns, fences), block_of, waits_of,
                             begins_xid)
    return report


def _safe_iter(reader: WalReader) -> Iterator[Record]:
    try:
        yield from reader
    except (WalCorruption, WalMismatch):
        return


def _merge_inputs(inputs: list[tuple[int, StreamInfo, _Cols]], fences: Fences | None
                  ) -> dict[str, Arr]:
    parts = []
    for node, _, cols in inputs:
        c = cols.cat()
        g = c["glsn"]
        if fences and len(g):
            drop = np.zeros(len(g), dtype=bool)
            for epoch, f in fences.get(node, ()):
                drop |= (c["epoch"] == epoch) & (g > np.uint64(f))
            c = {k: v[~drop] for k, v in c.items()}
        parts.append(c)
    keys = ["glsn", "node", "xid", "kind", "epoch", "canon"]
    if not parts:
        return {k: np.zeros(0, dtype=np.uint64) for k in keys}
    cat = {k: np.concatenate([p[k] for p in parts]) for k in keys}
    order = np.argsort(cat["glsn"], kind="stable")
    return {k: v[order] for k, v in cat.items()}


def _compare(rep: _Reporter, cols: _Cols, oc: dict[str, Arr],
             mi: dict[str, Arr]) -> None:
    """The output must be the (unfenced) inputs in GLSN order, record for record."""
    n, m = len(oc["glsn"]), len(mi["glsn"])
    k = min(n, m)
    diff = np.flatnonzero((oc["glsn"][:k] != mi["glsn"][:k]) | (oc["canon"][:k] != mi["canon"][:k]))
    if len(diff):
        i = int(diff[0])
        what = ("record differs from the input record with the same GLSN" if oc["glsn"][i] == mi["glsn"][i] else
                f"expected the input record with GLSN {format_glsn(int(mi['glsn'][i]))}")
        rep.add("merged", "compare", _where(cols, oc, i, "merged", what + " (the merge does not match its inputs)"))
    elif n != m:
        rep.add("merged", "compare", Problem(f"merged stream has {n} records, its inputs {m} (after fencing)",
                                             stream="merged"))


__all__ = ["Problem", "Status", "StreamInfo", "VerifyReport", "verify"]
