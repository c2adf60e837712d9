"""WAL flushes off the node's loop: the loop hands over an LSN and a callback, a thread fsyncs.

Why: the node serves every client from one loop.  A commit used to fsync the WAL inside that loop, so for the
whole fsync (about a millisecond on this project's disks) no other client's statement ran, and commits that
arrived meanwhile waited for the next turn's fsync.  With the flush in a thread, the loop goes on serving (reads,
row changes, more COMMIT records) while the fsync runs, and one fsync covers every commit requested while the
previous one ran: group commit across everything that arrived during a flush, not just one loop turn.

What does not change (I7): a commit is answered, and becomes visible to other transactions, only after its
COMMIT record is durable.  Until the callback runs in the loop the transaction reads as running (its XID is
prepared: new snapshots wait for its outcome, writers of its rows wait for it), exactly as while the loop was
blocked in the fsync before.

Threads: ``request`` and ``drain`` run in the loop; the thread only calls ``flush(lsn)`` (the WAL writer is
thread-safe and appends go on during its fsync) and hands the outcome back through a deque and a socketpair the
loop's poller watches (``fd``), so callbacks always run in the loop.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Callable

from muheam.wakeup import Wakeup

log = logging.getLogger("muheam.engine")

Done = Callable[[BaseException | None], None]


class WalFlusher:
    def __init__(self, flush: Callable[[int], None]) -> None:
        """``flush(lsn)`` makes the WAL durable up to ``lsn`` or raises (the engine then stops)."""
        self._flush = flush
        self._cond = threading.Condition()
        self._waiting: list[tuple[int, Done]] = []
        self._done: deque[tuple[Done, BaseException | None]] = deque()
        self._inflight = 0
        self._stopping = False
        self._wakeup = Wakeup()
        self.fsyncs = 0
        self._thread = threading.Thread(target=self._run, name="wal-flush", daemon=True)
        self._thread.start()

    @property
    def fd(self) -> int:
        """Readable when flushes have finished: register it with the loop's poller, then call ``drain``."""
        return self._wakeup.fd

    @property
    def pending(self) -> int:
        """Flushes requested whose callback has not run yet."""
        return self._inflight

    def request(self, lsn: int, then: Done) -> None:
        """Make the WAL durable up to ``lsn``; ``then(None)`` or ``then(error)`` later, from ``drain``."""
        with self._cond:
            if self._stopping:
                raise RuntimeError("the WAL flusher is closed")
            self._inflight += 1
            self._waiting.append((lsn, then))
            self._cond.notify()

    def drain(self) -> None:
        """Run the callbacks of finished flushes (in the loop)."""
        if not self._done:
            return
        self._wakeup.clear()
        while self._done:
            then, error = self._done.popleft()
            self._inflight -= 1
            then(error)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if not self._waiting:
                    return
                batch, self._waiting = self._waiting, []
            error: BaseException | None = None
            try:
                self._flush(max(lsn for lsn, _ in batch))
                self.fsyncs += 1
            except BaseException as exc:  # noqa: BLE001 - handed to the loop, which fails the commits
                error = exc
            self._done.extend((then, error) for _, then in batch)
            if not self._wakeup.notify():
                return  # closed under us: the node is going away

    def close(self, timeout: float = 10.0) -> None:
        """Finish the flushes requested, stop the thread; run ``drain`` afterwards for their callbacks."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("the WAL flush thread did not stop within %g s", timeout)
