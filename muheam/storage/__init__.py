"""Storage page layer of the shared-disk tables: schemas, 8 KiB numpy pages with MVCC slots, hash heap files.

No WAL, no buffer cache, no networking here: those layers sit on top and decide when pages are written, fsynced
and shipped.  See ``mvcc`` for the visibility rules, ``page`` for the byte layout, ``heap`` for the file layout.
"""

from muheam.storage.errors import (DuplicateKey, GlsnRegression, KeyNotFound, PageCorrupt, PageFull, PageZeroed,
                                   RelationFileError, RowConflict, RowValueError, SchemaError, SlotError,
                                   StorageError, ValueOutOfRange)
from muheam.storage.heap import (Heap, HeapMeta, RelationFile, bucket_block, bucket_of, buckets_of,
                                 default_nbuckets, find_space, find_visible, relation_path, unique_conflict,
                                 walk_chain)
from muheam.storage.layout import BLOCK_SIZE
from muheam.storage.mvcc import (FROZEN_XID, INVALID_XID, Snapshot, StatusFn, version_visible, visible_mask,
                                 xid_visible)
from muheam.storage.page import KIND_BUCKET, KIND_META, KIND_OVERFLOW, Page, PruneResult, TupleId, Version
from muheam.storage.schema import Row, Schema

__all__ = [
    "BLOCK_SIZE", "DuplicateKey", "FROZEN_XID", "GlsnRegression", "Heap", "HeapMeta", "INVALID_XID",
    "KIND_BUCKET", "KIND_META", "KIND_OVERFLOW", "KeyNotFound", "Page", "PageCorrupt", "PageFull", "PageZeroed",
    "PruneResult", "RelationFile", "RelationFileError", "Row", "RowConflict", "RowValueError", "Schema",
    "SchemaError", "SlotError", "Snapshot", "StatusFn", "StorageError", "TupleId", "ValueOutOfRange", "Version",
    "bucket_block",
    "bucket_of", "buckets_of", "default_nbuckets", "find_space", "find_visible", "relation_path",
    "unique_conflict", "version_visible", "visible_mask", "walk_chain", "xid_visible",
]
