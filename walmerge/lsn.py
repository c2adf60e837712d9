"""LSNs and GLSNs as text: the one place they are spelled and parsed.

Why one module: the publisher, the CLI (``--from-lsn``, ``--until-glsn``), ``waldump`` and every error message
spell positions; when each had its own parser, ``muheam recover`` accepted ``LAMPORT.NODE`` while nothing printed
it, and an LSN typed back exactly as a message printed it could be refused.  Everything here is pure and raises
``ValueError`` (the caller turns it into its own usage error); a leaf module, so ``walmerge.errors`` can use it.

* LSN (a byte position in a stream, 64 bits): printed ``HI/LO`` in hex as PostgreSQL does (``0/1A2B3C40``);
  parsed from that, from ``0x`` hex or from decimal.
* GLSN (``(lamport << 16) | node``, ordered like the tuple): printed ``LAMPORT/NODE`` in decimal; parsed from
  that or ``LAMPORT.NODE``.
"""

from __future__ import annotations

NODE_BITS = 16
MAX_NODE_ID = (1 << NODE_BITS) - 1
MAX_LAMPORT = (1 << (64 - NODE_BITS)) - 1
MAX_LSN = (1 << 64) - 1


def format_lsn(lsn: int) -> str:
    """PostgreSQL-style ``HI/LO`` hex spelling of a 64-bit LSN, for messages, logs and JSON ``*_text`` fields."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:08X}"


def parse_lsn(text: str) -> int:
    """An LSN as ``format_lsn`` prints it (``HI/LO`` hex), ``0x`` hex or decimal; ``ValueError`` otherwise."""
    s = text.strip()
    try:
        if "/" in s:
            hi, lo = s.split("/", 1)
            high, low = int(hi, 16), int(lo, 16)
            if not 0 <= low <= 0xFFFFFFFF or high < 0:
                raise ValueError
            value = (high << 32) | low
        else:
            value = int(s, 0)
    except ValueError:
        raise ValueError(f"{text!r} is not an LSN; write it as HI/LO hex (0/1A2B3C40, as printed), 0x hex or "
                         "decimal") from None
    if not 0 <= value <= MAX_LSN:
        raise ValueError(f"LSN {text!r} is out of range")
    return value


def pack_glsn(lamport: int, node: int) -> int:
    """GLSN ``(lamport, node)`` as one uint64 ordered like the tuple (same packing as ``locking.glsn``)."""
    if not 0 <= node <= MAX_NODE_ID:
        raise ValueError(f"node id {node} out of range 0..{MAX_NODE_ID}")
    if not 0 <= lamport <= MAX_LAMPORT:
        raise ValueError(f"Lamport time {lamport} out of range 0..{MAX_LAMPORT}")
    return (lamport << NODE_BITS) | node


def unpack_glsn(glsn: int) -> tuple[int, int]:
    return glsn >> NODE_BITS, glsn & MAX_NODE_ID


def format_glsn(glsn: int) -> str:
    """``LAMPORT/NODE``, the one way a GLSN is shown (and typed, e.g. ``muheam recover --until-glsn``)."""
    return f"{glsn >> NODE_BITS}/{glsn & MAX_NODE_ID}"


def parse_glsn(text: str) -> int:
    """A GLSN as ``format_glsn`` prints it (``LAMPORT/NODE``) or ``LAMPORT.NODE``; ``ValueError`` otherwise."""
    s = text.strip()
    for sep in ("/", "."):
        if sep in s:
            lam, _, node = s.partition(sep)
            if lam.isdigit() and node.isdigit():
                return pack_glsn(int(lam), int(node))
            break
    raise ValueError(f"{text!r} is not a GLSN; write LAMPORT/NODE, e.g. 1234/2 (as 'muheam waldump' prints GLSNs)")


__all__ = ["MAX_LAMPORT", "MAX_LSN", "MAX_NODE_ID", "NODE_BITS", "format_glsn", "format_lsn", "pack_glsn",
           "parse_glsn", "parse_lsn", "unpack_glsn"]
