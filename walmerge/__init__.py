"""Per-node WAL format and the consolidator that merges the streams into one single-node-format stream.

Knows records, segments, orders and checksums; never tables (redo lives in ``muheam``).  Never imports
``muheam`` or ``locking``.
"""

from walmerge.errors import (
    RecordTooLarge, WalCorruption, WalError, WalMismatch, WalMissingSegment, WalWriteError, format_lsn,
)
from walmerge.lsn import parse_glsn, parse_lsn
from walmerge.follow import Emitted, Follower, NodeTail
from walmerge.merge import MergeSummary, merge
from walmerge.reader import LastRecord, SegmentBatch, TornTail, TruncateReport, WalReader, read_wal, truncate_at
from walmerge.record import (
    HEADER_DTYPE, HEADER_SIZE, Record, RecordKind, encode_record, fold_crc, fold_crcs, format_glsn, pack_glsn,
    rewrite_header, unpack_glsn,
)
from walmerge.scan import HeaderScan, scan_headers
from walmerge.segment import (
    DEFAULT_SEGMENT_SIZE, MERGED_NODE_ID, SEGMENT_HEADER_SIZE, SegmentHeader, node_wal_dir, segment_name,
)
from walmerge.verify import VerifyReport, verify
from walmerge.writer import WalWriter

__all__ = [
    "DEFAULT_SEGMENT_SIZE", "Emitted", "Follower", "MergeSummary", "NodeTail", "VerifyReport", "merge", "verify",
    "HEADER_DTYPE", "HEADER_SIZE", "HeaderScan", "LastRecord", "MERGED_NODE_ID", "Record",
    "RecordKind", "RecordTooLarge", "SEGMENT_HEADER_SIZE", "SegmentBatch", "SegmentHeader", "TornTail",
    "TruncateReport", "WalCorruption", "WalError", "WalMismatch", "WalMissingSegment", "WalReader", "WalWriteError",
    "WalWriter", "encode_record", "fold_crc", "fold_crcs", "format_glsn", "format_lsn", "node_wal_dir", "pack_glsn", "parse_glsn", "parse_lsn", "read_wal",
    "rewrite_header", "scan_headers", "segment_name", "truncate_at", "unpack_glsn",
]
