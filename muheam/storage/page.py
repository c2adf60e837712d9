"""8 KiB heap pages as numpy structured arrays over one bytearray.

A page is the unit of shared-disk I/O, of block ownership (invariant I2) and of redo, so everything about it
lives in its 8192 bytes: a 64-byte header, then ``nslots`` fixed-size tuple slots, then zero padding.  Both the
header and the slot array are numpy views of the same buffer, so a key search or a visibility check over the
whole page is one vectorised expression, and ``encode`` is a checksum plus a copy.

Header (little-endian, ``HEADER_DTYPE``, 64 bytes)::

    off size field       meaning
      0   4  checksum    CRC-32C of bytes 4..8191 (computed by encode, verified by decode)
      4   4  magic       0x4D484850 ("PHHM" on disk: MUHEAM heap page)
      8   1  version     page format version (1)
      9   1  kind        1 meta, 2 hash bucket, 3 overflow
     10   2  flags       reserved, 0
     12   4  table_id    relation the block belongs to
     16   8  glsn        GLSN of the last change, packed (lamport << 16) | node
     24   4  blkno       this block's number in its relation file
     28   4  next_block  next overflow block of this hash chain, 0 = end of chain
     32   2  nslots      slot capacity (derived from the row width)
     34   2  nused       slots in use
     36   2  free_hint   lowest free slot, nslots if none (canonical: redo yields identical bytes)
     38   2  slot_size   bytes per slot
     40   2  row_width   bytes of row data per slot (schema row width)
     42   2  reserved
     44   4  schema_crc  ``Schema.fingerprint`` of the table (0 on meta pages)
     48   4  payload_len meta pages: bytes of payload after the header; 0 otherwise
     52  12  reserved, 0

Slot (``slot_dtype``, ``layout.slot_size(row_width)`` bytes, starting at offset 64)::

      0   8  key         int64 primary key
      8   8  xmin        uint64 creating XID
     16   8  xmax        uint64 deleting/updating/locking XID, 0 = none
     24   4  ctid_block  block of the newer version (if SLOT_UPDATED)
     28   2  ctid_slot   slot of the newer version (if SLOT_UPDATED)
     30   1  flags       SLOT_USED | SLOT_LOCK_ONLY | SLOT_UPDATED (see ``mvcc``)
     31   1  reserved
     32   W  row         the schema's ``row_dtype`` (W = row_width), then zero padding to a multiple of 8

A free slot is all zeros.  Visibility rules are in ``muheam.storage.mvcc``.
"""

from __future__ import annotations

import bisect
import functools
import struct
from typing import Any, Final, Mapping, NamedTuple, Sequence

import google_crc32c
import numpy as np
from numpy.typing import NDArray

from muheam.storage import mvcc
from muheam.storage.errors import GlsnRegression, PageCorrupt, PageFull, PageZeroed, SlotError
from muheam.storage.layout import BLOCK_SIZE, PAGE_HEADER_SIZE, SLOT_HEADER_SIZE, slot_size, slots_per_page
from muheam.storage.mvcc import SLOT_KNOWN_FLAGS, SLOT_LOCK_ONLY, SLOT_UPDATED, SLOT_USED, Snapshot, StatusFn
from muheam.storage.schema import Row, Schema, check_key

PAGE_MAGIC: Final = 0x4D484850
PAGE_VERSION: Final = 1
KIND_META: Final = 1
KIND_BUCKET: Final = 2
KIND_OVERFLOW: Final = 3
_KIND_NAMES: Final = {KIND_META: "meta", KIND_BUCKET: "bucket", KIND_OVERFLOW: "overflow"}
NO_BLOCK: Final = 0
"""``next_block`` value ending a chain (block 0 is the meta page, so it is never an overflow block)."""
MAX_BLOCK: Final = 0xFFFFFFFF
MAX_META_PAYLOAD: Final = BLOCK_SIZE - PAGE_HEADER_SIZE

# Hot header fields and slot parts are read and written with ``struct`` at fixed offsets (see the layout in the
# module docstring): a numpy structured-scalar access costs about a microsecond, and redo does several per record.
_U16: Final = struct.Struct("<H")
_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")
_OFF_GLSN: Final = 16
_OFF_BLKNO: Final = 24
_OFF_NEXT: Final = 28
OFF_NEXT_BLOCK: Final = _OFF_NEXT
"""Where a page's ``next_block`` (u32, little-endian) lies, for readers of the pointer alone."""
_OFF_NUSED: Final = 34
_OFF_FREE_HINT: Final = 36
_SLOT_HEAD: Final = struct.Struct("<qQQIHBx")
"""key, xmin, xmax, ctid_block, ctid_slot, flags, reserved: the first ``SLOT_HEADER_SIZE`` bytes of a slot."""
_SLOT_XMAX: Final = struct.Struct("<QIHB")
"""xmax, ctid_block, ctid_slot, flags: bytes 16..30 of a slot."""
_OFF_SLOT_XMAX: Final = 16
_OFF_SLOT_FLAGS: Final = 30
assert _SLOT_HEAD.size == SLOT_HEADER_SIZE

HEADER_DTYPE: Final = np.dtype({
    "names": ["checksum", "magic", "version", "kind", "flags", "table_id", "glsn", "blkno", "next_block",
              "nslots", "nused", "free_hint", "slot_size", "row_width", "reserved0", "schema_crc",
              "payload_len"],
    "formats": ["<u4", "<u4", "u1", "u1", "<u2", "<u4", "<u8", "<u4", "<u4",
                "<u2", "<u2", "<u2", "<u2", "<u2", "<u2", "<u4", "<u4"],
    "offsets": [0, 4, 8, 9, 10, 12, 16, 24, 28, 32, 34, 36, 38, 40, 42, 44, 48],
    "itemsize": PAGE_HEADER_SIZE,
})


@functools.lru_cache(maxsize=256)
def slot_dtype(schema: Schema) -> np.dtype[Any]:
    """The structured dtype of one tuple slot of ``schema``'s pages (layout in the module docstring)."""
    return np.dtype({
        "names": ["key", "xmin", "xmax", "ctid_block", "ctid_slot", "flags", "row"],
        "formats": ["<i8", "<u8", "<u8", "<u4", "<u2", "u1", schema.row_dtype],
        "offsets": [0, 8, 16, 24, 28, 30, SLOT_HEADER_SIZE],
        "itemsize": slot_size(schema.row_width),
    })


def slot_images(schema: Schema, keys: NDArray[np.int64], xmins: NDArray[np.uint64],
                rows: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """The bytes of new versions (``rows``: one row's bytes per line) as ``insert`` writes them into free slots,
    one slot per line, for ``Page.insert_many``."""
    dt = slot_dtype(schema)
    if rows.shape != (len(keys), schema.row_width):
        raise ValueError(f"rows are {rows.shape[1:]} bytes wide, table {schema.name!r} needs {schema.row_width}")
    new = np.zeros(len(keys), dtype=dt)
    new["key"], new["xmin"], new["flags"] = keys, xmins, SLOT_USED
    images = new.view(np.uint8).reshape(len(keys), dt.itemsize)
    images[:, SLOT_HEADER_SIZE:SLOT_HEADER_SIZE + schema.row_width] = rows
    return images


@functools.lru_cache(maxsize=256)
def _empty_image(schema: Schema, kind: int, table_id: int) -> bytes:
    """The bytes of an empty tuple page of ``schema`` (block number 0): ``Page.new`` copies them (redo creates a
    page per allocated overflow block, and setting the header field by field costs more than the copy)."""
    buf = bytearray(BLOCK_SIZE)
    h = np.frombuffer(buf, dtype=HEADER_DTYPE, count=1)
    dt = slot_dtype(schema)
    h["magic"], h["version"], h["kind"], h["table_id"] = PAGE_MAGIC, PAGE_VERSION, kind, table_id
    h["nslots"], h["slot_size"] = slots_per_page(schema.row_width), dt.itemsize
    h["row_width"], h["schema_crc"] = schema.row_width, schema.fingerprint
    return bytes(buf)


def page_checksum(buf: bytes | bytearray | memoryview) -> int:
    """CRC-32C over everything but the checksum field itself."""
    return int(google_crc32c.value(bytes(memoryview(buf)[4:])))


class TupleId(NamedTuple):
    """Where a row version lives: (block number, slot index), like PostgreSQL's ctid."""

    block: int
    slot: int


class Version(NamedTuple):
    """One row version as plain Python values (for callers and tests; hot paths use the arrays)."""

    tid: TupleId
    key: int
    xmin: int
    xmax: int
    flags: int
    ctid: TupleId | None
    row: Row

    @property
    def lock_only(self) -> bool:
        return bool(self.flags & SLOT_LOCK_ONLY)


class PruneResult(NamedTuple):
    """What ``Page.prune`` changed, slot numbers in ascending order, so the caller can WAL-log exactly that."""

    freed: tuple[int, ...]
    xmax_cleared: tuple[int, ...]

    def __bool__(self) -> bool:
        return bool(self.freed or self.xmax_cleared)


def _where(what: str, block: int) -> str:
    return f"block {block}: {what}"


_NO_SLOTS: tuple[int, ...] = ()


class Page:
    """A tuple page (hash bucket or overflow block) of one table; build with ``new`` or ``decode``."""

    __slots__ = ("schema", "buf", "header", "slots", "_h", "_ss", "_nslots", "_raw", "prune_floor", "_keys")

    schema: Schema
    buf: bytearray
    header: NDArray[Any]
    slots: NDArray[Any]

    def __init__(self, schema: Schema, buf: bytearray) -> None:
        if len(buf) != BLOCK_SIZE:
            raise ValueError(f"a page buffer is {BLOCK_SIZE} bytes, got {len(buf)}")
        self.schema = schema
        self.buf = buf
        self.header = np.frombuffer(buf, dtype=HEADER_DTYPE, count=1)
        self._h = self.header[0]
        self.slots = np.frombuffer(buf, dtype=slot_dtype(schema), count=slots_per_page(schema.row_width),
                                   offset=PAGE_HEADER_SIZE)
        self._ss = int(self.slots.dtype.itemsize)
        self._nslots = int(self.slots.size)
        self._raw = self.slots.view(np.uint8).reshape(self._nslots, self._ss)
        """The slots as raw bytes, one slot per line."""
        self.prune_floor = 0
        """In memory only, for the engine's opportunistic pruning: versions left by the last prune (live rows
        and versions some snapshot may still see), so it does not prune again before more accumulated."""
        self._keys: dict[int, list[int]] | None = None
        """In memory only, built at the first lookup: key -> its used slots, ascending.  Every change of a
        slot's key or use goes through ``insert``, ``insert_many`` or ``free``, which keep it (or drop it)."""

    @classmethod
    def new(cls, schema: Schema, *, block: int, kind: int = KIND_BUCKET, table_id: int = 0) -> "Page":
        """An empty page; ``glsn`` 0 until the first change is stamped."""
        if kind not in (KIND_BUCKET, KIND_OVERFLOW):
            raise ValueError(f"tuple pages are bucket or overflow pages, not kind {kind}")
        if not 0 <= block <= MAX_BLOCK:
            raise ValueError(f"block number {block} out of range")
        buf = bytearray(_empty_image(schema, kind, table_id))
        _U32.pack_into(buf, _OFF_BLKNO, block)
        return cls(schema, buf)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview, schema: Schema, *, block: int,
               table_id: int | None = None, path: Any = None) -> "Page":
        """Verify and load a block read from disk; raises ``PageCorrupt`` (or ``PageZeroed``) naming the block."""
        _verify_common(data, block, table_id, path)
        page = cls(schema, bytearray(data))
        h = page._h
        kind = int(h["kind"])
        if kind not in (KIND_BUCKET, KIND_OVERFLOW):
            raise PageCorrupt(_where(f"is a {_KIND_NAMES.get(kind, kind)} page, expected a tuple page", block),
                              block=block, path=path)
        if (int(h["row_width"]), int(h["schema_crc"])) != (schema.row_width, schema.fingerprint):
            raise PageCorrupt(_where(f"was written for another schema (row width {int(h['row_width'])}, "
                                     f"fingerprint {int(h['schema_crc']):08x}) than {schema!r}", block),
                              block=block, path=path)
        if (int(h["nslots"]), int(h["slot_size"])) != (page.slots.size, page.slots.dtype.itemsize):
            raise PageCorrupt(_where("slot geometry does not match the schema", block), block=block, path=path)
        flags = page.slots["flags"]
        if np.any(flags & ~np.uint8(SLOT_KNOWN_FLAGS)):
            raise PageCorrupt(_where("a slot has unknown flag bits", block), block=block, path=path)
        used = flags & SLOT_USED
        nused = int(np.count_nonzero(used))
        free = np.flatnonzero(used == 0)
        lowest_free = int(free[0]) if free.size else page.slots.size
        if nused != int(h["nused"]) or int(h["free_hint"]) != lowest_free:
            raise PageCorrupt(_where(f"header says {int(h['nused'])} slots used and slot {int(h['free_hint'])} "
                                     f"the first free one; the slots say {nused} and {lowest_free}", block),
                              block=block, path=path)
        raw = page.slots.view(np.uint8).reshape(page.slots.size, -1)
        if raw[free].any():
            raise PageCorrupt(_where("a free slot holds data (free slots are all zeros)", block),
                              block=block, path=path)
        return page

    def encode(self) -> bytes:
        """The block's on-disk bytes, with a fresh checksum (also stored in this page's header)."""
        self._h["checksum"] = page_checksum(self.buf)
        return bytes(self.buf)

    def copy(self) -> "Page":
        return Page(self.schema, bytearray(self.buf))

    # -- header ---------------------------------------------------------------------------------------------------

    @property
    def block(self) -> int:
        return int(_U32.unpack_from(self.buf, _OFF_BLKNO)[0])

    @property
    def kind(self) -> int:
        return self.buf[9]

    @property
    def table_id(self) -> int:
        return int(self._h["table_id"])

    @property
    def glsn(self) -> int:
        """Packed GLSN of the last change (``locking.glsn.Glsn.unpack`` splits it)."""
        return int(_U64.unpack_from(self.buf, _OFF_GLSN)[0])

    def stamp(self, glsn: int) -> None:
        """Record that a change with this GLSN was applied; GLSNs of a block only grow (invariant I2)."""
        if glsn < self.glsn:
            raise GlsnRegression(f"block {self.block}: refusing to stamp GLSN {glsn:#x} over newer "
                                 f"{self.glsn:#x}; the change was ordered before the block's last change")
        _U64.pack_into(self.buf, _OFF_GLSN, glsn)

    @property
    def next_block(self) -> int:
        return int(_U32.unpack_from(self.buf, _OFF_NEXT)[0])

    @next_block.setter
    def next_block(self, block: int) -> None:
        if not 0 <= block <= MAX_BLOCK or (block != NO_BLOCK and block == self.block):
            raise ValueError(f"block {self.block}: invalid next overflow block {block}")
        _U32.pack_into(self.buf, _OFF_NEXT, block)

    @property
    def nslots(self) -> int:
        return self._nslots

    @property
    def nused(self) -> int:
        return int(_U16.unpack_from(self.buf, _OFF_NUSED)[0])

    @property
    def nfree(self) -> int:
        return self.nslots - self.nused

    # -- reading --------------------------------------------------------------------------------------------------

    def used_mask(self) -> NDArray[np.bool_]:
        mask: NDArray[np.bool_] = (self.slots["flags"] & SLOT_USED) != 0
        return mask

    def find(self, key: int) -> NDArray[np.intp]:
        """Slot indices of every version (visible or not) of ``key`` on this page, ascending."""
        return np.array(self.slots_of(key), dtype=np.intp)

    def slots_of(self, key: int) -> Sequence[int]:
        """``find`` as a sequence of ints, from the page's key index: a key lookup is a dict lookup instead of
        two passes over every slot (the passes' set-up was most of a hot row's lookup; the index is built once
        per page in memory and kept by the page's own changes).  Not to be changed by the caller."""
        keys = self._keys
        if keys is None:
            keys = self._keys = {}
            used = np.flatnonzero(self.used_mask())
            for k, i in zip(self.slots["key"][used].tolist(), used.tolist()):
                slots = keys.get(k)
                if slots is None:
                    keys[k] = [i]
                else:
                    slots.append(i)
        return keys.get(key, _NO_SLOTS)

    def visible_mask(self, snap: Snapshot, status: StatusFn) -> NDArray[np.bool_]:
        s = self.slots
        return mvcc.visible_mask(s["xmin"], s["xmax"], s["flags"], snap, status)

    def visible_slot(self, key: int, snap: Snapshot, status: StatusFn) -> int | None:
        """The slot of the version of ``key`` that ``snap`` sees, or ``None``.

        A loop over the key's slots, read straight from the page bytes: a hot row keeps a few dozen versions
        between prunes, and for that few numpy's set-up (``np.unique`` over the XIDs) costs twice the loop.  The
        versions are tried newest XID first (ties: highest slot first), because a snapshot nearly always sees a
        hot row's newest committed version, while slot order says little about age (an insert takes the lowest
        free slot, so after a prune new versions go below the survivors).  A valid history has at most one
        version of a key visible to a snapshot, so the order changes only how many are judged.  Each version is
        judged by ``version_visible`` itself, so the status lookups are exactly the rules' (xmin first: a lookup
        of an xmax the rules never ask about must not fail a read)."""
        idx = self.slots_of(key)
        if not idx:
            return None
        st, buf, ss = mvcc.checked(status), self.buf, self._ss
        visible = mvcc.version_visible
        heads = []
        for i in idx:
            _, xmin, xmax, _, _, flags = _SLOT_HEAD.unpack_from(buf, PAGE_HEADER_SIZE + i * ss)
            heads.append((xmin, i, xmax, flags))
        heads.sort(reverse=True)
        for xmin, i, xmax, flags in heads:
            if visible(xmin, xmax, flags, snap, st):
                return int(i)
        return None

    def _check_slot(self, slot: int, *, used: bool) -> int:
        """The slot's byte offset in the page, after checking it is in range and used (or free)."""
        if not 0 <= slot < self._nslots:
            raise SlotError(f"block {self.block}: slot {slot} out of range 0..{self._nslots - 1}")
        base = PAGE_HEADER_SIZE + int(slot) * self._ss
        if bool(self.buf[base + _OFF_SLOT_FLAGS] & SLOT_USED) != used:
            raise SlotError(f"block {self.block}: slot {slot} is {'free' if used else 'in use'}")
        return base

    def version(self, slot: int) -> Version:
        self._check_slot(slot, used=True)
        s = self.slots[slot]
        flags = int(s["flags"])
        ctid = TupleId(int(s["ctid_block"]), int(s["ctid_slot"])) if flags & SLOT_UPDATED else None
        return Version(TupleId(self.block, slot), int(s["key"]), int(s["xmin"]), int(s["xmax"]), flags, ctid,
                       self.schema.from_record(s["row"]))

    def versions(self, key: int | None = None) -> list[Version]:
        """Every used version (of ``key`` if given), in slot order."""
        idx = self.find(key) if key is not None else np.flatnonzero(self.used_mask())
        return [self.version(int(i)) for i in idx]

    # -- changing -------------------------------------------------------------------------------------------------

    def insert(self, key: int, row: Mapping[str, object] | NDArray[Any] | np.void | bytes, xmin: int, *,
               slot: int | None = None) -> int:
        """Put a new version in the lowest free slot (or exactly ``slot``, for redo); returns the slot.

        The page bytes depend only on the slots' contents, never on the order of operations, so replaying a
        change onto an older image yields byte-identical pages (and checksums) on every node.

        ``row`` is a dict (validated against the schema), or an already-encoded record / row bytes (trusted).
        Raises ``PageFull`` when no slot is free.
        """
        key = check_key(key, self.schema.name)
        if xmin == mvcc.INVALID_XID:
            raise ValueError("a tuple version needs a creating XID (xmin), not 0")
        width = self.schema.row_width
        if isinstance(row, Mapping):
            data = self.schema.to_record(row).tobytes()
        elif isinstance(row, (bytes, bytearray, memoryview)):
            data = bytes(row)
            if len(data) != width:
                raise ValueError(f"row bytes are {len(data)} long, table {self.schema.name!r} needs {width}")
        else:
            data = np.asarray(row, dtype=self.schema.row_dtype).tobytes()
        buf, n, ss = self.buf, self._nslots, self._ss
        hint = _U16.unpack_from(buf, _OFF_FREE_HINT)[0]
        if slot is None:
            if hint >= n:
                raise PageFull(f"block {self.block}: all {n} slots are in use")
            slot = hint
            base = PAGE_HEADER_SIZE + slot * ss
        else:
            slot = int(slot)
            base = self._check_slot(slot, used=False)
        _SLOT_HEAD.pack_into(buf, base, key, xmin, 0, 0, 0, SLOT_USED)
        buf[base + SLOT_HEADER_SIZE:base + SLOT_HEADER_SIZE + width] = data
        if self._keys is not None:
            bisect.insort(self._keys.setdefault(key, []), slot)
        _U16.pack_into(buf, _OFF_NUSED, _U16.unpack_from(buf, _OFF_NUSED)[0] + 1)
        if slot == hint:  # the hint stays the lowest free slot: walk to the next free one
            nxt, flag = slot + 1, base + ss + _OFF_SLOT_FLAGS
            while nxt < n and buf[flag] & SLOT_USED:
                nxt, flag = nxt + 1, flag + ss
            _U16.pack_into(buf, _OFF_FREE_HINT, nxt)
        return slot

    def insert_many(self, slots: NDArray[np.int64], images: NDArray[np.uint8]) -> None:
        """Redo of many inserts into the given free slots at once; ``images`` are the new slots' bytes, one per
        line, from ``slot_images``.  The same bytes as ``insert(key, row, xmin, slot=s)`` for each, in one
        vectorised write.  Anything ``insert`` would refuse (a slot out of range, in use or given twice, xmin 0)
        raises the same error, before the page changes."""
        k, n = len(slots), self._nslots
        if k == 0:
            return
        raw = self._raw
        increasing = k == 1 or bool((slots[1:] > slots[:-1]).all())
        lo, hi = (int(slots[0]), int(slots[-1])) if increasing else (int(slots.min()), int(slots.max()))
        if lo < 0 or hi >= n:
            raise SlotError(f"block {self.block}: slot {lo if lo < 0 else hi} out of range 0..{n - 1}")
        if images.shape != (k, self._ss):
            raise ValueError(f"slot images are {images.shape}, block {self.block} needs ({k}, {self._ss})")
        if not images[:, 8:16].any(axis=1).all():
            raise ValueError("a tuple version needs a creating XID (xmin), not 0")
        used = raw[slots, _OFF_SLOT_FLAGS] & SLOT_USED
        if used.any():
            raise SlotError(f"block {self.block}: slot {int(slots[used != 0][0])} is in use")
        if not increasing and np.unique(slots).size != k:
            raise SlotError(f"block {self.block}: a slot is filled twice by one batch of inserts")
        raw[slots] = images
        self._keys = None  # redo of a batch: rebuilt at the next lookup
        buf = self.buf
        _U16.pack_into(buf, _OFF_NUSED, _U16.unpack_from(buf, _OFF_NUSED)[0] + k)
        hint = _U16.unpack_from(buf, _OFF_FREE_HINT)[0]
        if hint < n and raw[hint, _OFF_SLOT_FLAGS] & SLOT_USED:  # the lowest free slot was just filled
            free = np.flatnonzero((raw[hint:, _OFF_SLOT_FLAGS] & SLOT_USED) == 0)
            _U16.pack_into(buf, _OFF_FREE_HINT, hint + int(free[0]) if free.size else n)

    def set_xmax(self, slot: int, xid: int, *, lock_only: bool = False, ctid: TupleId | None = None) -> None:
        """Mark a version deleted (or updated, with ``ctid`` of the new version, or row-locked) by ``xid``.

        Raw: the caller has already checked ``mvcc.write_conflict`` under the row's block ownership.
        """
        base = self._check_slot(slot, used=True)
        if xid < mvcc.FIRST_NORMAL_XID:
            raise ValueError(f"xmax must be a normal XID (>= {mvcc.FIRST_NORMAL_XID}), got {xid}")
        if lock_only and ctid is not None:
            raise ValueError("a row lock does not point to a newer version")
        buf = self.buf
        flags = (buf[base + _OFF_SLOT_FLAGS] & SLOT_USED) | (SLOT_LOCK_ONLY if lock_only else 0)
        if ctid is not None:
            _SLOT_XMAX.pack_into(buf, base + _OFF_SLOT_XMAX, xid, ctid.block, ctid.slot, flags | SLOT_UPDATED)
        else:
            _SLOT_XMAX.pack_into(buf, base + _OFF_SLOT_XMAX, xid, 0, 0, flags)

    def clear_xmax(self, slot: int) -> None:
        """Forget an aborted or finished-lock xmax (the version is live again for every later writer)."""
        base = self._check_slot(slot, used=True)
        _SLOT_XMAX.pack_into(self.buf, base + _OFF_SLOT_XMAX, 0, 0, 0, SLOT_USED)

    def _clear_xmax(self, idx: NDArray[np.intp]) -> None:
        s = self.slots
        s["xmax"][idx] = 0
        s["ctid_block"][idx] = 0
        s["ctid_slot"][idx] = 0
        s["flags"][idx] = SLOT_USED

    def free(self, slots: Any) -> None:
        """Reclaim slots (zero them); used by ``prune`` and by redo of a logged prune."""
        idx = np.unique(np.asarray(slots, dtype=np.intp))
        if idx.size == 0:
            return
        if idx[0] < 0 or idx[-1] >= self.nslots or not np.all(self.used_mask()[idx]):
            raise SlotError(f"block {self.block}: cannot free slots {idx.tolist()}: out of range or not in use")
        keys = self._keys
        if keys is not None:
            for k, i in zip(self.slots["key"][idx].tolist(), idx.tolist()):
                slots = keys[k]
                slots.remove(i)
                if not slots:
                    del keys[k]
        raw = self.slots.view(np.uint8).reshape(self.nslots, -1)
        raw[idx] = 0
        buf = self.buf
        _U16.pack_into(buf, _OFF_NUSED, _U16.unpack_from(buf, _OFF_NUSED)[0] - idx.size)
        _U16.pack_into(buf, _OFF_FREE_HINT, min(_U16.unpack_from(buf, _OFF_FREE_HINT)[0], int(idx[0])))

    def prune(self, oldest_xmin: int, status: StatusFn) -> PruneResult:
        """Reclaim versions no snapshot at or above ``oldest_xmin`` can see; clear stale xmax values.

        Returns exactly what changed so the caller can WAL-log it (redo: ``free`` + ``clear_xmax``) and stamp
        the page; an empty result means the page is unchanged and need not be written.
        """
        st = mvcc.checked(status)
        s = self.slots
        dead = mvcc.dead_mask(s["xmin"], s["xmax"], s["flags"], oldest_xmin, st)
        stale = mvcc.stale_xmax_mask(s["xmax"], s["flags"], st) & ~dead
        freed = np.flatnonzero(dead)
        cleared = np.flatnonzero(stale)
        self.free(freed)
        if cleared.size:
            self._clear_xmax(cleared)
        return PruneResult(tuple(int(i) for i in freed), tuple(int(i) for i in cleared))


# -- meta pages ---------------------------------------------------------------------------------------------------

def _verify_common(data: bytes | bytearray | memoryview, block: int, table_id: int | None, path: Any) -> None:
    if len(data) != BLOCK_SIZE:
        raise PageCorrupt(_where(f"is {len(data)} bytes, expected {BLOCK_SIZE} (truncated file?)", block),
                          block=block, path=path)
    if not any(data):
        raise PageZeroed(_where("is all zeros: never written (torn extension?); redo it from the WAL", block),
                         block=block, path=path)
    h = np.frombuffer(bytes(data[:PAGE_HEADER_SIZE]), dtype=HEADER_DTYPE, count=1)[0]
    if int(h["magic"]) != PAGE_MAGIC:
        raise PageCorrupt(_where(f"bad magic {int(h['magic']):#010x}: not a MUHEAM heap page", block),
                          block=block, path=path)
    crc = page_checksum(data)
    if crc != int(h["checksum"]):
        raise PageCorrupt(_where(f"checksum mismatch (stored {int(h['checksum']):08x}, computed {crc:08x}): "
                                 f"the block is damaged; restore it by redo from the merged WAL or a backup",
                                 block), block=block, path=path)
    if int(h["version"]) != PAGE_VERSION:
        raise PageCorrupt(_where(f"page format version {int(h['version'])}, this build reads {PAGE_VERSION}",
                                 block), block=block, path=path)
    if int(h["blkno"]) != block:
        raise PageCorrupt(_where(f"holds block {int(h['blkno'])}'s image: misplaced write", block),
                          block=block, path=path)
    if table_id is not None and int(h["table_id"]) != table_id:
        raise PageCorrupt(_where(f"belongs to table id {int(h['table_id'])}, not {table_id}", block),
                          block=block, path=path)


def encode_meta_page(payload: bytes, *, table_id: int, glsn: int = 0) -> bytes:
    """Block 0 of a relation file: a header plus an opaque payload (the heap stores its msgpack'd metadata)."""
    if len(payload) > MAX_META_PAYLOAD:
        raise ValueError(f"meta payload is {len(payload)} bytes, at most {MAX_META_PAYLOAD} fit")
    buf = bytearray(BLOCK_SIZE)
    h = np.frombuffer(buf, dtype=HEADER_DTYPE, count=1)
    h["magic"], h["version"], h["kind"], h["table_id"] = PAGE_MAGIC, PAGE_VERSION, KIND_META, table_id
    h["glsn"], h["blkno"], h["payload_len"] = glsn, 0, len(payload)
    buf[PAGE_HEADER_SIZE:PAGE_HEADER_SIZE + len(payload)] = payload
    h["checksum"] = page_checksum(buf)
    return bytes(buf)


def decode_meta_page(data: bytes | bytearray | memoryview, *, table_id: int | None = None,
                     path: Any = None) -> bytes:
    """Verify block 0 and return its payload."""
    _verify_common(data, 0, table_id, path)
    h = np.frombuffer(bytes(data[:PAGE_HEADER_SIZE]), dtype=HEADER_DTYPE, count=1)[0]
    n = int(h["payload_len"])
    if int(h["kind"]) != KIND_META or n > MAX_META_PAYLOAD:
        raise PageCorrupt(_where("is not a valid meta page (wrong kind or payload length)", 0), block=0, path=path)
    return bytes(data[PAGE_HEADER_SIZE:PAGE_HEADER_SIZE + n])
