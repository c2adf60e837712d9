"""The WAL flusher: flushes in a thread, callbacks in the caller's loop, in order, after the flush returned."""

from __future__ import annotations

import select
import threading

from muheam.engine.flusher import WalFlusher


def _wait_readable(fl: WalFlusher) -> None:
    ready, _, _ = select.select([fl.fd], [], [], 10)
    assert ready, "the flusher never signalled"


def _drain_until(fl: WalFlusher, done: list[object], n: int) -> None:
    while len(done) < n:
        _wait_readable(fl)
        fl.drain()


def test_callbacks_run_in_drain_after_the_flush_covered_their_lsn() -> None:
    flushed: list[int] = []
    gate = threading.Event()

    def flush(lsn: int) -> None:
        gate.wait(10)
        flushed.append(lsn)

    fl = WalFlusher(flush)
    done: list[tuple[int, object]] = []
    for lsn in (10, 20, 30):
        fl.request(lsn, lambda err, lsn=lsn: done.append((lsn, err)))
    fl.drain()
    assert done == [] and fl.pending == 3  # nothing is answered before its flush returned
    gate.set()
    _drain_until(fl, done, 3)
    assert done == [(10, None), (20, None), (30, None)]
    assert fl.pending == 0
    assert max(flushed) == 30 and len(flushed) <= 3  # requests made during a flush share the next one
    fl.close()


def test_a_failed_flush_reaches_every_callback_of_its_batch() -> None:
    def flush(lsn: int) -> None:
        raise OSError(5, "Input/output error")

    fl = WalFlusher(flush)
    done: list[object] = []
    fl.request(1, done.append)
    fl.request(2, done.append)
    _drain_until(fl, done, 2)
    assert all(isinstance(e, OSError) for e in done)
    fl.close()


def test_close_finishes_what_was_requested() -> None:
    flushed: list[int] = []
    fl = WalFlusher(flushed.append)
    done: list[object] = []
    fl.request(7, done.append)
    fl.close()
    fl.drain()
    assert flushed == [7] and done == [None]
