"""One resource as one node sees it: the GLSN-ordered request queue, the best-known value block, and the
recovery marks left by dead members.

Kept separate from the manager so the ordering and the value-merge rules can be read (and tested) on their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from locking.glsn import Glsn
from locking.messages import ZERO_VERSION, Mode, Version


@dataclass(slots=True)
class Entry:
    """A queued request (pending, granted or cached at its owner; only the owner knows which)."""

    owner: int
    glsn: Glsn
    mode: Mode
    have: Version | None  # the version whose bytes the owner holds, as far as we know (for value shipping)


@dataclass(slots=True)
class ResourceState:
    """Queue + value knowledge of one resource at one node.

    ``version``/``value``: the highest version this node knows, and its bytes (None when only the version
    number is known, e.g. from a release that did not need to carry an 8 KiB image to us).
    ``marks``: GLSNs of exclusive entries of dead members that may have been granted; a version written under
    a later GLSN supersedes them.  Every node starts knowing ``(ZERO_VERSION, b"")``.
    """

    entries: dict[int, Entry] = field(default_factory=dict)
    version: Version = ZERO_VERSION
    value: bytes | None = b""
    marks: set[Glsn] = field(default_factory=set)

    def put(self, entry: Entry) -> Entry | None:
        """Queue ``entry``; a node has at most one entry per resource, so a newer one replaces the older."""
        old = self.entries.get(entry.owner)
        self.entries[entry.owner] = entry
        return old

    def drop(self, owner: int, glsn: Glsn | None = None) -> Entry | None:
        """Remove ``owner``'s entry (only if it is the one named ``glsn``, when given)."""
        entry = self.entries.get(owner)
        if entry is None or (glsn is not None and entry.glsn != glsn):
            return None
        del self.entries[owner]
        return entry

    def blocked(self, owner: int) -> bool:
        """Lamport's head-of-queue test: some earlier entry conflicts with ``owner``'s entry."""
        mine = self.entries[owner]
        return any(e.glsn < mine.glsn and e.mode.conflicts(mine.mode) for e in self.entries.values()
                   if e.owner != owner)

    def contended(self, owner: int) -> bool:
        """Another node waits for something that conflicts with ``owner``'s entry (a release is wanted)."""
        mine = self.entries[owner]
        return any(e.mode.conflicts(mine.mode) for e in self.entries.values() if e.owner != owner)

    def exclusive_before(self, glsn: Glsn, exclude: tuple[int, ...]) -> tuple[tuple[int, Glsn], ...]:
        """Exclusive entries earlier than ``glsn`` of owners not in ``exclude`` (reported in acks)."""
        return tuple(sorted((e.owner, e.glsn) for e in self.entries.values()
                            if e.mode is Mode.EXCLUSIVE and e.glsn < glsn and e.owner not in exclude))

    def learn(self, version: Version, value: bytes | None) -> bool:
        """Merge a peer's knowledge: the highest version wins; bytes fill in a version we knew only by number.
        Returns whether anything changed."""
        if version > self.version:
            self.version, self.value = version, value
        elif version == self.version and self.value is None and value is not None:
            self.value = value
        else:
            return False
        self.prune()
        return True

    def prune(self) -> None:
        """Drop marks superseded by the known version (it was written by a grant that followed them)."""
        if self.marks:
            self.marks = {m for m in self.marks if not self.version.glsn > m}

    def add_mark(self, glsn: Glsn) -> None:
        if not self.version.glsn > glsn:
            self.marks.add(glsn)

    def valid_for(self, glsn: Glsn, global_marks: list[Glsn]) -> bool:
        """Whether a grant under ``glsn`` may trust the known value.

        A dead member's exclusive entry later than ``glsn`` cannot have been granted before us (our earlier
        entry blocked it), so only earlier marks count; global marks (state we never got to see) always count.
        """
        if self.value is None:
            return False
        if any(m < glsn and not self.version.glsn > m for m in self.marks):
            return False
        return all(self.version.glsn > g for g in global_marks)
