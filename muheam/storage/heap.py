"""Hash-organised heap relation files ``<shared>/base/<table_id>`` of 8 KiB blocks.

Layout: block 0 is the meta page (table id, bucket count, schema); blocks ``1..nbuckets`` are the hash buckets,
fixed at create time; overflow blocks are appended at the end of the file and chained from their bucket through
``next_block``.  A key lives in the chain of ``bucket_block(key)``, so a lookup reads the bucket block plus its
(expected short) overflow chain: O(1) block reads, independent of the table size.

Three layers, so the same logic serves direct use (tests, offline redo) and the buffer cache built on top:

* pure placement: ``bucket_of``/``bucket_block`` say which chain holds or should hold a key;
* chain logic over an injected ``read(block) -> Page``: ``walk_chain``, ``find_visible``, ``find_space``,
  ``unique_conflict`` -- a buffer cache passes its own ``read``;
* I/O: ``RelationFile`` does pread/pwrite at ``block * 8192`` and fsync when the caller asks; ``Heap`` ties the
  three together, writing every changed page straight through.

What this module does not do: WAL, caching, block ownership, relation-extension locking.  The caller must hold
block ownership of every page it changes (I2), flush WAL up to a page's GLSN before writing it (I3), and hold an
extension lock while appending an overflow block (two nodes appending at once would pick the same block number).
"""

from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import msgpack
import numpy as np
from numpy.typing import NDArray

from muheam.storage import mvcc
from muheam.storage.errors import (DuplicateKey, KeyNotFound, PageCorrupt, PageFull, RelationFileError,
                                   RowConflict, SchemaError)
from muheam.storage.layout import BLOCK_SIZE, slots_per_page
from muheam.storage.mvcc import Snapshot, StatusFn
from muheam.storage.page import (KIND_BUCKET, KIND_OVERFLOW, MAX_BLOCK, NO_BLOCK, OFF_NEXT_BLOCK, Page, TupleId, Version,
                                 decode_meta_page, encode_meta_page)
from muheam.storage.schema import Row, Schema, check_key

META_FORMAT = 1
MAX_BUCKETS = 1 << 24
ReadPage = Callable[[int], Page]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def hash_keys(keys: NDArray[Any]) -> NDArray[np.uint64]:
    """A fixed 64-bit mix of int64 keys (SplitMix64's finaliser): stable across processes and platforms, and
    it spreads sequential keys evenly over the buckets (Python's ``hash`` is neither stable by contract nor
    mixing for ints)."""
    z = np.asarray(keys, dtype=np.int64).astype(np.uint64)
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    result: NDArray[np.uint64] = z ^ (z >> np.uint64(31))
    return result


def buckets_of(keys: NDArray[Any], nbuckets: int) -> NDArray[np.int64]:
    """Bucket index (0-based) of many keys at once."""
    result: NDArray[np.int64] = (hash_keys(keys) % np.uint64(nbuckets)).astype(np.int64)
    return result


_U64 = (1 << 64) - 1


def bucket_of(key: int, nbuckets: int) -> int:
    """Bucket index (0-based) of one key: the same mix as ``hash_keys`` in plain integers (faster for one)."""
    z = key & _U64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64
    return (z ^ (z >> 31)) % nbuckets


def bucket_block(key: int, nbuckets: int) -> int:
    """Block number of the hash bucket page that heads ``key``'s chain (block 0 is the meta page)."""
    return 1 + bucket_of(key, nbuckets)


def default_nbuckets(schema: Schema, expected_rows: int) -> int:
    """Enough buckets for ``expected_rows`` at half fill, leaving room for old versions awaiting pruning."""
    per_page = slots_per_page(schema.row_width)
    return max(1, min(MAX_BUCKETS, -(-2 * max(0, expected_rows) // per_page)))


def relation_path(shared: Path | str, table_id: int) -> Path:
    """``<shared>/base/<table_id>``, as in DESIGN.md section 6."""
    return Path(shared) / "base" / str(table_id)


_FALLOC_FL_KEEP_SIZE = 1


@functools.cache
def _fallocate() -> Callable[[int, int, int, int], int] | None:
    """libc's ``fallocate`` (Linux), or None."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


@dataclass(frozen=True)
class HeapMeta:
    """What block 0 says about the file; enough to open it without the catalog."""

    table_id: int
    nbuckets: int
    schema: Schema

    def encode(self) -> bytes:
        payload = msgpack.packb({"format": META_FORMAT, "table_id": self.table_id, "nbuckets": self.nbuckets,
                                 "schema": self.schema.to_dict()}, use_bin_type=True)
        return encode_meta_page(payload, table_id=self.table_id)

    @classmethod
    def decode(cls, data: bytes, *, table_id: int | None = None, path: Path | None = None) -> "HeapMeta":
        payload = decode_meta_page(data, table_id=table_id, path=path)
        try:
            d = msgpack.unpackb(payload, raw=False)
            if d["format"] != META_FORMAT:
                raise RelationFileError(f"{path}: meta page format {d['format']}, this build reads "
                                        f"{META_FORMAT}; upgrade muheam", path=path)
            return cls(int(d["table_id"]), int(d["nbuckets"]), Schema.from_dict(d["schema"]))
        except (ValueError, KeyError, TypeError, msgpack.UnpackException, SchemaError) as e:
            raise PageCorrupt(f"block 0 of {path}: unreadable meta payload ({e})", block=0, path=path) from e


class RelationFile:
    """Plain block I/O on one relation file: pread/pwrite of whole 8 KiB blocks, fsync on request."""

    def __init__(self, path: Path | str, *, readonly: bool = False, _create: bool = False) -> None:
        self.path = Path(path)
        flags = (os.O_RDONLY if readonly else os.O_RDWR) | getattr(os, "O_CLOEXEC", 0)
        if _create:
            flags |= os.O_CREAT | os.O_EXCL
        try:
            self.fd: int | None = os.open(self.path, flags, 0o600)
        except FileExistsError as e:
            raise RelationFileError(f"{self.path} already exists; drop the table or pick another table id",
                                    path=self.path) from e
        except FileNotFoundError as e:
            raise RelationFileError(f"{self.path} does not exist; is the shared directory mounted and the "
                                    f"table id right?", path=self.path) from e
        self.readonly = readonly

    @classmethod
    def create(cls, path: Path | str) -> "RelationFile":
        """A new, empty file (never overwrites: an existing file is somebody's table)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return cls(path, _create=True)

    def _fd(self) -> int:
        if self.fd is None:
            raise RelationFileError(f"{self.path} is closed", path=self.path)
        return self.fd

    def nblocks(self) -> int:
        """Whole blocks in the file now (other nodes may append; a torn partial block is not counted)."""
        return os.fstat(self._fd()).st_size // BLOCK_SIZE

    def next_block(self, block: int) -> int | None:
        """The ``next_block`` pointer of ``block`` as the file has it (``None`` beyond the file's end): for a walk
        that needs only a chain's pointers, without reading and checking whole pages."""
        if not 0 <= block <= MAX_BLOCK:
            return None
        data = os.pread(self._fd(), 4, block * BLOCK_SIZE + OFF_NEXT_BLOCK)
        return int.from_bytes(data, "little") if len(data) == 4 else None

    def read_block(self, block: int) -> bytes:
        if not 0 <= block <= MAX_BLOCK:
            raise RelationFileError(f"{self.path}: block number {block} out of range", path=self.path)
        data = os.pread(self._fd(), BLOCK_SIZE, block * BLOCK_SIZE)
        if len(data) != BLOCK_SIZE:
            raise RelationFileError(f"{self.path}: block {block} is beyond the end of the file "
                                    f"({self.nblocks()} blocks); the file was truncated or a chain points "
                                    f"past its end", path=self.path)
        return data

    def write_block(self, block: int, data: bytes | bytearray | memoryview) -> None:
        """Write one block image; durable only after ``fsync`` (the caller decides when, after the WAL)."""
        if len(data) != BLOCK_SIZE or not 0 <= block <= MAX_BLOCK:
            raise ValueError(f"write_block needs a {BLOCK_SIZE}-byte image and a valid block, got "
                             f"{len(data)} bytes for block {block}")
        view = memoryview(data)
        done = 0
        while done < BLOCK_SIZE:
            try:
                n = os.pwrite(self._fd(), view[done:], block * BLOCK_SIZE + done)
            except OSError as e:
                raise RelationFileError(f"{self.path}: writing block {block} failed ({e.strerror}); check "
                                        f"free space and the shared mount, then redo from the WAL",
                                        path=self.path) from e
            done += n

    def preallocate(self, lo: int, hi: int) -> bool:
        """Reserve disk space for blocks ``lo..hi-1`` without changing the file's size or any byte of it (Linux
        ``fallocate`` with ``FALLOC_FL_KEEP_SIZE``), so that writing many pages there later skips the file
        system's block allocation page by page.  Best effort: False where the system or file system lacks it
        (never glibc's ``posix_fallocate`` emulation, which writes bytes another node may be writing too)."""
        fn = _fallocate()
        if fn is None or hi <= lo:
            return False
        return fn(self._fd(), _FALLOC_FL_KEEP_SIZE, lo * BLOCK_SIZE, (hi - lo) * BLOCK_SIZE) == 0

    def fsync(self) -> None:
        os.fsync(self._fd())

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RelationFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- chain logic over an injected page reader ------------------------------------------------------------------

Bound = int | Callable[[], int] | None
"""A chain walk's bound on block numbers: the number, a callable giving it, or none."""


def walk_chain(start: int, read: ReadPage, *, max_blocks: Bound = None,
               first_overflow: int | None = None) -> Iterator[Page]:
    """The bucket page ``start`` and then its overflow pages, checking kinds and catching cycles.

    ``max_blocks`` (the file's length) bounds pointers and hops; ``first_overflow`` (``nbuckets + 1``) refuses
    pointers back into the bucket area.  Both are optional so a buffer cache can walk without a file at hand.
    ``max_blocks`` may be a callable, asked only when the chain has an overflow page: finding the length is an
    ``fstat``, which most walks (a chain of one page) do not need.
    """
    lowest = start + 1 if first_overflow is None else first_overflow
    block, hops = start, 0
    while True:
        page = read(block)
        want = KIND_BUCKET if hops == 0 else KIND_OVERFLOW
        if page.kind != want:
            raise PageCorrupt(f"block {block}: expected a {'bucket' if hops == 0 else 'overflow'} page in the "
                              f"chain of bucket block {start}", block=block)
        yield page
        nxt = page.next_block
        if nxt == NO_BLOCK:
            return
        hops += 1
        if callable(max_blocks):
            max_blocks = max_blocks()
        if nxt < lowest or (max_blocks is not None and (nxt >= max_blocks or hops >= max_blocks)):
            raise PageCorrupt(f"block {block}: overflow pointer to block {nxt} is invalid or loops (chain of "
                              f"bucket block {start}); rebuild the chain by redo from the WAL", block=block)
        block = nxt


def find_visible(start: int, key: int, snap: Snapshot, status: StatusFn, read: ReadPage, *,
                 max_blocks: Bound = None, first_overflow: int | None = None) -> tuple[Page, int] | None:
    """(page, slot) of the version of ``key`` that ``snap`` sees, or ``None``."""
    for page in walk_chain(start, read, max_blocks=max_blocks, first_overflow=first_overflow):
        slot = page.visible_slot(key, snap, status)
        if slot is not None:
            return page, slot
    return None


def find_space(start: int, read: ReadPage, *, max_blocks: Bound = None,
               first_overflow: int | None = None) -> tuple[Page | None, Page]:
    """(first page of the chain with a free slot or ``None``, last page of the chain)."""
    last: Page | None = None
    for page in walk_chain(start, read, max_blocks=max_blocks, first_overflow=first_overflow):
        if page.nfree:
            return page, page
        last = page
    assert last is not None
    return None, last


DUPLICATE = "duplicate"
WAIT = "wait"
SERIALIZE = "serialize"


def unique_conflict(versions: list[Version], snap: Snapshot, status: StatusFn) -> tuple[str, int] | None:
    """Can transaction ``snap.xid`` insert this key?  ``None``, or ``(verdict, blocking xid)``.

    Verdicts, strongest first (the first that applies to any version wins, so chain order does not matter):

    * ``DUPLICATE`` -- a live committed version exists, whether the snapshot sees its creator or not, or one of
      ours: unique violation, as PostgreSQL reports a key a concurrent transaction inserted (or updated) and
      committed; retrying would meet the same row, so ``40001`` would only send the client round again;
    * ``SERIALIZE`` -- a transaction the snapshot does not see committed a delete of this key: under REPEATABLE
      READ the inserter must roll back and retry (first committer wins).  PostgreSQL lets this insert through;
      refusing it keeps a key chain to one version that any snapshot sees (README, "SQL");
    * ``WAIT`` -- a transaction still running created or deleted a version: wait for it, then retry.

    Versions created by aborted transactions, and versions we or a visible transaction deleted, do not count.
    """
    st = mvcc.checked(status)
    xid = snap.xid
    found: dict[str, int] = {}
    for v in versions:
        if v.xmin != xid and v.xmin >= mvcc.FIRST_NORMAL_XID:
            creator = st(v.xmin)
            if creator == mvcc.ABORTED:
                continue
            if creator == mvcc.IN_PROGRESS:
                found.setdefault(WAIT, v.xmin)
                continue
        if v.xmax and not v.lock_only and v.xmax != xid:
            deleter = st(v.xmax)
            if deleter == mvcc.IN_PROGRESS:
                found.setdefault(WAIT, v.xmax)
                continue
            if deleter == mvcc.COMMITTED:
                if not mvcc.xid_visible(v.xmax, snap, st):
                    found.setdefault(SERIALIZE, v.xmax)
                continue
        elif v.xmax == xid and not v.lock_only:
            continue
        found.setdefault(DUPLICATE, v.xmin)
    for verdict in (DUPLICATE, SERIALIZE, WAIT):
        if verdict in found:
            return verdict, found[verdict]
    return None


def raise_insert_conflict(table: str, key: int, verdict: str, who: int) -> None:
    """Turn a ``unique_conflict`` verdict into the error the caller acts on (wait, retry, or give up)."""
    if verdict == DUPLICATE:
        raise DuplicateKey(f"table {table!r}: key {key} already exists", key=key)
    if verdict == WAIT:
        raise RowConflict(f"table {table!r}: key {key} is being inserted or deleted by transaction "
                          f"{who}; wait for it to finish and retry", key=key, blocker=who, committed=False)
    raise RowConflict(f"table {table!r}: transaction {who} changed key {key} after this transaction's "
                      f"snapshot; roll back and retry the transaction", key=key, blocker=who, committed=True)


# -- the heap used directly ----------------------------------------------------------------------------------------

class Heap:
    """A table's relation file used directly: every changed page is written through (no cache, no WAL)."""

    def __init__(self, file: RelationFile, meta: HeapMeta) -> None:
        self.file = file
        self.meta = meta

    @classmethod
    def create(cls, path: Path | str, schema: Schema, *, table_id: int, nbuckets: int | None = None,
               expected_rows: int = 0, fsync: bool = True) -> "Heap":
        """Create ``path`` with its meta page and ``nbuckets`` empty bucket pages (derived if not given)."""
        n = default_nbuckets(schema, expected_rows) if nbuckets is None else nbuckets
        if not 1 <= n <= MAX_BUCKETS:
            raise SchemaError(f"table {schema.name!r}: bucket count {n} out of range 1..{MAX_BUCKETS}")
        if not 0 <= table_id <= 0xFFFFFFFF:
            raise SchemaError(f"table id {table_id} out of range 0..{0xFFFFFFFF}")
        meta = HeapMeta(table_id, n, schema)
        f = RelationFile.create(path)
        try:
            f.write_block(0, meta.encode())
            for b in range(1, n + 1):
                f.write_block(b, Page.new(schema, block=b, kind=KIND_BUCKET, table_id=table_id).encode())
            if fsync:
                f.fsync()
                dfd = os.open(f.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except BaseException:
            f.close()
            raise
        return cls(f, meta)

    @classmethod
    def open(cls, path: Path | str, *, table_id: int | None = None, readonly: bool = False) -> "Heap":
        f = RelationFile(path, readonly=readonly)
        try:
            meta = HeapMeta.decode(f.read_block(0), table_id=table_id, path=f.path)
            if f.nblocks() < meta.nbuckets + 1:
                raise RelationFileError(f"{f.path} has {f.nblocks()} blocks but {meta.nbuckets} buckets: "
                                        f"the file was truncated; restore it", path=f.path)
        except BaseException:
            f.close()
            raise
        return cls(f, meta)

    @property
    def schema(self) -> Schema:
        return self.meta.schema

    @property
    def table_id(self) -> int:
        return self.meta.table_id

    @property
    def nbuckets(self) -> int:
        return self.meta.nbuckets

    def bucket_block(self, key: int) -> int:
        return bucket_block(key, self.meta.nbuckets)

    # -- block I/O -------------------------------------------------------------------------------------------------

    def read_page(self, block: int) -> Page:
        return Page.decode(self.file.read_block(block), self.schema, block=block, table_id=self.table_id,
                           path=self.file.path)

    def write_page(self, page: Page) -> None:
        self.file.write_block(page.block, page.encode())

    def sync(self) -> None:
        self.file.fsync()

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "Heap":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def walk(self, start: int) -> Iterator[Page]:
        """The chain of bucket block ``start``, read from the file and fully checked."""
        return walk_chain(start, self.read_page, max_blocks=self.file.nblocks(), first_overflow=self.nbuckets + 1)

    def chain(self, key: int) -> Iterator[Page]:
        return self.walk(self.bucket_block(key))

    def _changed(self, page: Page, glsn: int | None) -> None:
        if glsn is not None:
            page.stamp(glsn)
        self.write_page(page)

    # -- reads -----------------------------------------------------------------------------------------------------

    def lookup(self, key: int, snap: Snapshot, status: StatusFn) -> Version | None:
        """The version of ``key`` visible to ``snap`` (reads the bucket block and its overflow chain)."""
        key = check_key(key, self.schema.name)
        hit = find_visible(self.bucket_block(key), key, snap, status, self.read_page,
                           max_blocks=self.file.nblocks(), first_overflow=self.nbuckets + 1)
        return None if hit is None else hit[0].version(hit[1])

    def get(self, key: int, snap: Snapshot, status: StatusFn) -> Row | None:
        v = self.lookup(key, snap, status)
        return None if v is None else v.row

    def versions(self, key: int) -> list[Version]:
        """Every stored version of ``key``, visible or not (for conflict checks, debugging, tests)."""
        key = check_key(key, self.schema.name)
        return [v for page in self.chain(key) for v in page.versions(key)]

    def scan(self, snap: Snapshot, status: StatusFn) -> Iterator[tuple[NDArray[np.int64], NDArray[Any]]]:
        """Visible (keys, rows) per page, bucket by bucket: exactly what lookups see, as numpy arrays."""
        for b in range(1, self.nbuckets + 1):
            for page in self.walk(b):
                mask = page.visible_mask(snap, status)
                if mask.any():
                    sel = page.slots[mask]
                    yield sel["key"].copy(), sel["row"].copy()

    def rows(self, snap: Snapshot, status: StatusFn) -> Iterator[tuple[int, Row]]:
        """Visible rows as (key, dict), for callers that want Python values."""
        for keys, recs in self.scan(snap, status):
            for k, r in zip(keys.tolist(), recs):
                yield int(k), self.schema.from_record(r)

    def blocks(self) -> Iterator[Page]:
        """Every tuple page in file order (physical: for verification and bulk tools)."""
        for b in range(1, self.file.nblocks()):
            yield self.read_page(b)

    # -- writes ----------------------------------------------------------------------------------------------------

    def _place(self, key: int, row: Mapping[str, object] | NDArray[Any] | np.void, xid: int, glsn: int | None,
               oldest_xmin: int | None, status: StatusFn | None) -> TupleId:
        start = self.bucket_block(key)
        page, last = find_space(start, self.read_page, max_blocks=self.file.nblocks(),
                                first_overflow=self.nbuckets + 1)
        if page is None and oldest_xmin is not None and status is not None:
            for candidate in self.walk(start):
                if candidate.prune(oldest_xmin, status):
                    self._changed(candidate, glsn)
                if candidate.nfree:
                    page = candidate
                    break
        if page is None:
            page = self.allocate_overflow(last, glsn=glsn)
        slot = page.insert(key, row, xid)
        self._changed(page, glsn)
        return TupleId(page.block, slot)

    def allocate_overflow(self, last: Page, *, glsn: int | None = None) -> Page:
        """Append an empty overflow block and link it after ``last`` (caller holds the extension lock)."""
        block = self.file.nblocks()
        if block > MAX_BLOCK:
            raise PageFull(f"{self.file.path}: the relation file has reached {MAX_BLOCK} blocks")
        page = Page.new(self.schema, block=block, kind=KIND_OVERFLOW, table_id=self.table_id)
        if glsn is not None:
            page.stamp(glsn)
        self.write_page(page)          # the block exists before anything points to it
        last.next_block = block
        self._changed(last, glsn)
        return page

    def insert(self, key: int, row: Mapping[str, object], snap: Snapshot, status: StatusFn, *,
               glsn: int | None = None, oldest_xmin: int | None = None) -> TupleId:
        """Insert a new row by ``snap.xid``; raises ``DuplicateKey``, or ``RowConflict`` (see ``unique_conflict``).

        With ``oldest_xmin``, a full chain is pruned before a new overflow block is allocated.
        """
        xid = self._check_writer(snap)
        key = check_key(key, self.schema.name)
        rec = self.schema.to_record(row)
        blocker = unique_conflict(self.versions(key), snap, status)
        if blocker is not None:
            raise_insert_conflict(self.schema.name, key, *blocker)
        return self._place(key, rec, xid, glsn, oldest_xmin, status)

    def _check_writer(self, snap: Snapshot) -> int:
        if snap.xid < mvcc.FIRST_NORMAL_XID:
            raise ValueError(f"writes need the snapshot of a transaction with an XID, got xid {snap.xid}")
        return snap.xid

    def _writable(self, key: int, snap: Snapshot, status: StatusFn) -> tuple[Page, int]:
        xid = self._check_writer(snap)
        key = check_key(key, self.schema.name)
        hit = find_visible(self.bucket_block(key), key, snap, status, self.read_page,
                           max_blocks=self.file.nblocks(), first_overflow=self.nbuckets + 1)
        if hit is None:
            raise KeyNotFound(f"table {self.schema.name!r}: no row with key {key} is visible to transaction "
                              f"{xid}", key=key)
        page, slot = hit
        s = page.slots[slot]
        blocker = mvcc.write_conflict(int(s["xmax"]), int(s["flags"]), xid, mvcc.checked(status))
        if blocker is not None:
            who, committed = blocker
            what = ("changed it after this transaction's snapshot; roll back and retry the transaction"
                    if committed else "is changing or locking it; wait for it to finish and retry")
            raise RowConflict(f"table {self.schema.name!r}, key {key}: transaction {who} {what}", key=key,
                              blocker=who, committed=committed)
        return page, slot

    def update(self, key: int, row: Mapping[str, object], snap: Snapshot, status: StatusFn, *,
               glsn: int | None = None, oldest_xmin: int | None = None) -> TupleId:
        """Replace the visible version of ``key`` by a new one written by ``snap.xid``; returns its id.

        Raises ``KeyNotFound`` or ``RowConflict`` (see ``mvcc.write_conflict``); ``oldest_xmin`` as for insert.
        """
        xid = snap.xid
        page, slot = self._writable(key, snap, status)
        rec = self.schema.to_record(row)
        if glsn is not None:
            page.stamp(glsn)    # refuse a GLSN regression before writing anything (this image is not written)
        new = self._place(key, rec, xid, glsn, oldest_xmin, status)
        # _place may have rewritten this very block (new version or overflow link): never write a stale image.
        page = self.read_page(page.block)
        page.set_xmax(slot, xid, ctid=new)
        self._changed(page, glsn)
        return new

    def delete(self, key: int, snap: Snapshot, status: StatusFn, *, glsn: int | None = None) -> TupleId:
        """Mark the visible version of ``key`` deleted by ``snap.xid``."""
        page, slot = self._writable(key, snap, status)
        page.set_xmax(slot, snap.xid)
        self._changed(page, glsn)
        return TupleId(page.block, slot)

    def lock_row(self, key: int, snap: Snapshot, status: StatusFn, *, glsn: int | None = None) -> TupleId:
        """SELECT ... FOR UPDATE: lock the visible version of ``key`` for ``snap.xid`` (exclusive)."""
        page, slot = self._writable(key, snap, status)
        if int(page.slots["xmax"][slot]) != snap.xid:
            page.set_xmax(slot, snap.xid, lock_only=True)
            self._changed(page, glsn)
        return TupleId(page.block, slot)

    def prune(self, oldest_xmin: int, status: StatusFn, *, glsn: int | None = None) -> int:
        """Prune every page (vacuum-like); returns the number of slots reclaimed."""
        freed = 0
        for page in self.blocks():
            result = page.prune(oldest_xmin, status)
            if result:
                self._changed(page, glsn)
                freed += len(result.freed)
        return freed
