"""Pure Lamport-ordered protocols: clocks, GLSNs and the distributed lock manager.

Nothing in this package opens a socket, a file or a thread; transports and membership views are injected so
the same code runs inside a node over ZeroMQ and inside the deterministic simulator.
"""

from locking.clock import LamportClock
from locking.effects import Effect, Granted, NeedsRecovery, ReleaseDemanded, Send, Ticket
from locking.glsn import Glsn
from locking.manager import LockManager
from locking.messages import Message, Mode, Version, from_wire

__all__ = ["Effect", "Glsn", "Granted", "LamportClock", "LockManager", "Message", "Mode", "NeedsRecovery",
           "ReleaseDemanded", "Send", "Ticket", "Version", "from_wire"]
