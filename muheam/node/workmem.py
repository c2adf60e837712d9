"""A node's work memory: large temporary arrays reuse heap memory that is already mapped.

Redoing a dead peer's WAL builds tens of megabytes of temporary numpy arrays in a few tens of milliseconds.  By
default glibc serves every allocation above 128 KiB (a threshold that adapts, up to 32 MiB) with a fresh
``mmap`` and unmaps it when freed, so each such array costs one page fault per 4 KiB touched; on a virtual
machine a fault costs several microseconds, which measured here made the first redo of a process about half
again slower than the next ones.  At start a node therefore (1) asks glibc to serve allocations up to 32 MiB
from the heap and to keep up to ``keep_mib`` of freed heap instead of returning it, and (2) touches and frees
``reserve_mib`` once, so the heap already holds that much mapped memory when a peer dies.  The cost is that
much resident memory per node.  96 MiB covers the recoverer's peak for the bench's 17 MB of a dead peer's WAL
(two 16 MiB segments, the decoded records, 15 MB of rebuilt pages): with 64 the rebuild still took about 550
faults, with 96 about 30.  Nothing happens on a C library without ``mallopt`` (musl, macOS).
"""

from __future__ import annotations

import ctypes
import logging

import numpy as np

log = logging.getLogger("muheam.workmem")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MIB = 1 << 20


def reserve(reserve_mib: int = 96, keep_mib: int = 256) -> bool:
    """Set the heap policy and fault in ``reserve_mib`` (call from the thread that will do the work: glibc
    keeps a heap per thread).  Returns whether the C library took the policy."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    if not (mallopt(_M_MMAP_THRESHOLD, 32 * _MIB) and mallopt(_M_TRIM_THRESHOLD, keep_mib * _MIB)):
        return False
    chunks = [np.ones(8 * _MIB, np.uint8) for _ in range(reserve_mib // 8)]  # below the threshold: heap memory
    del chunks
    return True
