"""A thread's way to wake the node's loop: a socketpair whose read end the loop's poller watches.

Used by the threads that work beside the loop (the WAL flusher, the SQL port's parse worker): they leave their
results in a deque and ``notify``; the loop, woken, ``clear``s and takes the results, so every callback runs in
the loop.  One byte may stand for many results, and a full pair means a wake-up is pending already.
"""

from __future__ import annotations

import socket


class Wakeup:
    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)

    @property
    def fd(self) -> int:
        """Readable after ``notify``: register it with the loop's poller."""
        return self._r.fileno()

    def notify(self) -> bool:
        """Wake the loop (from any thread); False once the pair is closed (the node is going away)."""
        try:
            self._w.send(b"\0")
        except (BlockingIOError, InterruptedError):
            pass  # the loop has a wake-up waiting already
        except OSError:
            return False
        return True

    def clear(self) -> None:
        """Take the pending wake-ups (in the loop, before it takes the results)."""
        try:
            while self._r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def close(self) -> None:
        self._r.close()
        self._w.close()
