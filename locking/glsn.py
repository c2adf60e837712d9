"""GLSN: the one global order of the cluster, ``(lamport, node_id)``.

A GLSN packs into one unsigned 64-bit integer (48 bits of Lamport time, 16 bits of node id) so that numpy can
sort millions of WAL record keys at once; the packed order equals the tuple order.
"""

from __future__ import annotations

from typing import NamedTuple

NODE_BITS = 16
MAX_NODE_ID = (1 << NODE_BITS) - 1
MAX_LAMPORT = (1 << (64 - NODE_BITS)) - 1


class Glsn(NamedTuple):
    lamport: int
    node: int

    def pack(self) -> int:
        """The uint64 form, ordered exactly like the tuple."""
        if not 0 <= self.node <= MAX_NODE_ID:
            raise ValueError(f"node id {self.node} out of range 0..{MAX_NODE_ID}")
        if not 0 <= self.lamport <= MAX_LAMPORT:
            raise ValueError(f"Lamport time {self.lamport} out of range 0..{MAX_LAMPORT}")
        return (self.lamport << NODE_BITS) | self.node

    @classmethod
    def unpack(cls, packed: int) -> "Glsn":
        return cls(packed >> NODE_BITS, packed & MAX_NODE_ID)

    def __str__(self) -> str:
        return f"{self.lamport}/{self.node}"


ZERO = Glsn(0, 0)
