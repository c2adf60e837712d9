"""``muheam waldump``: one node's WAL as text, like ``pg_waldump`` (filters by XID and kind; ``--stats``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from walmerge import RecordKind, WalReader
from walmerge.errors import WalCorruption, WalError
from walmerge.merge import detect_system_id
from walmerge.errors import format_lsn
from walmerge.record import HEADER_SIZE, format_glsn
from walmerge.segment import node_wal_dir

from muheam.errors import ClusterStateError


def kind_name(kind: int) -> str:
    try:
        return RecordKind(kind).name
    except ValueError:
        return f"KIND_{kind}"


def parse_kind(name: str) -> int:
    try:
        return int(RecordKind[name.upper()])
    except KeyError:
        raise ClusterStateError(f"unknown record kind {name!r}; known: "
                                + ", ".join(k.name for k in RecordKind)) from None


def records(shared: Path, node_id: int, xid: int | None = None, kind: int | None = None) -> Iterator[dict[str, Any]]:
    directory = node_wal_dir(shared, node_id)
    system_id = detect_system_id(directory)
    if system_id is None:
        raise ClusterStateError(f"no WAL segments in {directory}; check --node-id and the shared directory")
    reader = WalReader(directory, node_id=node_id, system_id=system_id)
    try:
        for rec in reader:
            if (xid is not None and rec.xid != xid) or (kind is not None and rec.kind != kind):
                continue
            yield {"lsn": format_lsn(rec.lsn), "prev": format_lsn(rec.prev_lsn), "glsn": format_glsn(rec.glsn),
                   "xid": rec.xid, "node": rec.node, "epoch": rec.epoch, "kind": kind_name(rec.kind),
                   "len": HEADER_SIZE + len(rec.payload)}
    except WalCorruption as exc:
        raise ClusterStateError(f"WAL is damaged: {exc}") from None
    except WalError as exc:
        raise ClusterStateError(str(exc)) from None
    if reader.torn is not None:
        yield {"torn_tail": str(reader.torn)}


def stats(rows: Iterator[dict[str, Any]]) -> dict[str, Any]:
    count: Counter[str] = Counter()
    size: Counter[str] = Counter()
    xids: set[int] = set()
    for row in rows:
        if "kind" in row:
            count[row["kind"]] += 1
            size[row["kind"]] += row["len"]
            if row["xid"]:
                xids.add(row["xid"])
    return {"records": sum(count.values()), "bytes": sum(size.values()), "transactions": len(xids),
            "by_kind": {k: {"records": count[k], "bytes": size[k]} for k in sorted(count)}}
