"""Compiled inner loops of the bulk merge (numba): the clean-segment walk of the reader and the piece build of
the bulk sink.

Why: in numpy every header field, check and copy is its own pass over the records with its own temporaries,
and moving variable-length records takes a block plan and two fancy-indexing copies per block size.  A
compiled loop reads each header once and copies each record with one ``memcpy``.  Measured here on the bench's
1 GiB of 3-node WAL (see ``docs/architecture.md``).

The numpy code in ``scan`` and ``sink`` stays the reference and the fallback:

* ``scan_clean`` answers only for a segment in which every record passes every check of
  ``scan.validate`` (with its CRC) and the walk ends cleanly; anything else (damage, a torn tail, a truncated
  file) returns None and the reference walks the segment again and names the problem exactly.
* ``build_piece`` only handles records whose bytes (with their padding) lie inside their buffers; the sink
  uses the reference for a piece holding a record cut inside its padding.

``MUHEAM_NO_JIT=1`` (or numba missing) turns both off; tests compare both paths byte for byte.  Compiled code is
cached on disk (numba's ``cache=True``), so only the first run on a machine pays the compile.  The two C
functions called per record (``crc32c_extend`` of the library ``google_crc32c`` wraps, and libc ``memcpy``)
are bound by symbol name, not by address, which keeps the cache valid across processes.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from walmerge.record import HEADER_DTYPE, HEADER_SIZE

if TYPE_CHECKING:
    from walmerge.scan import Expect, HeaderScan

log = logging.getLogger("walmerge.jit")

Buf = bytes | bytearray | memoryview
_WORDS = HEADER_SIZE // 8


_ready = False


def turned_off() -> bool:
    """``MUHEAM_NO_JIT=1`` (or any value but 0): compiled code stays off."""
    return os.environ.get("MUHEAM_NO_JIT", "").strip() not in ("", "0")


def use_compiled(*, load: bool = True) -> bool:
    """The one place that decides between compiled code and the numpy reference (walmerge's walk and piece build,
    and through ``muheam.engine.rebuild`` the page redo): never with ``MUHEAM_NO_JIT`` or where numba cannot
    be loaded.  ``load=True`` loads numba now if needed (the bulk merge, benchmarks); ``load=False`` answers
    only whether it is loaded already, for callers that must not wait for numba (a node reading a dead peer's
    WAL while its background warm-up may still run)."""
    if turned_off():
        return False
    return kernels() is not None if load else _ready


def ready() -> bool:
    """``use_compiled(load=False)`` (the older name)."""
    return use_compiled(load=False)


@functools.cache
def kernels() -> ModuleType | None:
    """The compiled kernels (``walmerge._kernels``), or None if turned off or numba cannot be loaded."""
    global _ready
    if turned_off():
        return None
    try:
        import llvmlite.binding as llvm  # numba's own dependency
        from google_crc32c import _crc32c

        fn = ctypes.CDLL(_crc32c.__file__).crc32c_extend
        address = ctypes.cast(fn, ctypes.c_void_p).value
        if not address:
            return None
        llvm.add_symbol("crc32c_extend", address)
        from walmerge import _kernels

        _warm_up(_kernels)
        _ready = True
    except Exception as e:  # noqa: BLE001 - numba raises RuntimeError too (e.g. no writable cache directory)
        log.warning("compiled merge kernels unavailable (%s: %s); using the numpy code (about half the speed)",
                    type(e).__name__, e)
        return None
    return _kernels


def _warm_up(k: ModuleType) -> None:
    """Compile (or load from the cache) both kernels now, for the argument types the merge passes, so that a
    failure shows here (and turns them off) rather than in the middle of a merge."""
    zero = bytes(64)
    k.walk_clean(_ro(zero, np.uint8), _ro(zero, np.uint64), address(zero), 8, np.uint64(0), 64, False,
                 np.uint64(0), np.uint64(0), np.uint64(0), -1, True, np.empty(2, np.int64),
                 np.empty(2 * _WORDS, np.uint64))
    dst = bytearray(64)
    i64 = np.zeros(0, np.int64)
    u64 = np.zeros(0, np.uint64)
    from walmerge.record import _lin_table

    k.build_piece(np.frombuffer(dst, np.uint8), _u64(dst), 0, i64, np.zeros(0, np.int32), i64, i64, i64, u64, u64,
                  _lin_table())


def _ro(buf: Buf, dtype: type[np.generic]) -> npt.NDArray[np.generic]:
    """``buf`` as a read-only array (one compiled variant, whether the bytes are ``bytes``, a map or not)."""
    a = np.frombuffer(buf, dtype=dtype, count=len(buf) // np.dtype(dtype).itemsize)
    a.flags.writeable = False
    return a


def enabled() -> bool:
    """``use_compiled()`` (the older name)."""
    return use_compiled()


def _u64(buf: Buf) -> npt.NDArray[np.uint64]:
    return np.frombuffer(buf, dtype="<u8", count=len(buf) // 8)


def address(buf: Buf) -> int:
    return int(np.frombuffer(buf, dtype=np.uint8).ctypes.data) if len(buf) else 0


def scan_clean(buf: Buf, base_lsn: int, start: int, segment_size: int, expect: Expect, *,
               stream_node: int | None, verify_crc: bool) -> HeaderScan | None:
    """``scan_headers`` + ``validate`` of one segment buffer in one compiled walk, if the segment is clean (every
    record valid, the rest zeros or the segment full); None otherwise, or when compiled code is off."""
    k = kernels() if use_compiled() else None
    if k is None or start % 8 or len(buf) < 8:
        return None
    from walmerge.scan import END, HeaderScan

    room = max(0, (min(len(buf), segment_size) - start) // HEADER_SIZE + 1)
    offsets = np.empty(room, dtype=np.int64)
    heads = np.empty(room * _WORDS, dtype=np.uint64)
    n, stop = k.walk_clean(
        _ro(buf, np.uint8), _ro(buf, np.uint64), address(buf), start, np.uint64(base_lsn), segment_size,
        expect.prev_lsn is not None, np.uint64(expect.prev_lsn or 0), np.uint64(expect.glsn), np.uint64(expect.epoch),
        -1 if stream_node is None else stream_node, verify_crc, offsets, heads)
    if n < 0:
        return None
    headers = heads[: n * _WORDS].copy().view(HEADER_DTYPE)
    return HeaderScan(offsets[:n].copy(), headers, int(stop), END)


def build_piece(dst: bytearray, base: int, addresses: npt.NDArray[np.int64], src: npt.NDArray[np.int32],
                off: npt.NDArray[np.int64], aligned: npt.NDArray[np.int64], dst_off: npt.NDArray[np.int64],
                lsns: npt.NDArray[np.uint64], prevs: npt.NDArray[np.uint64]) -> None:
    """Copy each record ``i`` (``aligned[i]`` bytes at ``addresses[src[i]] + off[i]``, buffers kept alive by the
    caller) to ``dst[dst_off[i] - base:]`` and give it its new ``lsn``, ``prev_lsn`` and ``durable_lsn``
    (= ``lsn``, as the bulk sink writes) with the CRC folded to match."""
    k = kernels()
    assert k is not None
    from walmerge.record import _lin_table

    k.build_piece(np.frombuffer(dst, dtype=np.uint8), _u64(dst), base, addresses, src, off, aligned, dst_off,
                  lsns, prevs, _lin_table())


__all__ = ["address", "build_piece", "enabled", "kernels", "ready", "scan_clean", "turned_off", "use_compiled"]
