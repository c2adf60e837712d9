"""Single-node storage engine: WAL-logged catalog, transactions over a bounded buffer cache, checkpoints and
crash recovery by physical redo.  See ``engine`` for the API, ``catalog`` for creating and dropping tables, ``walrec`` for the WAL payloads, ``statefiles``
for the files in ``global/`` and ``xact/``, ``recovery`` for what ``Engine.open`` does after a crash, ``flusher`` for commits' WAL flushes in a thread
(the node's loop goes on meanwhile).
"""

from muheam.engine.buffer import BufferCache
from muheam.engine.engine import Engine, EngineConfig, RecoveryReport, Transaction
from muheam.engine.errors import (Deadlock, EngineError, EngineStopped, NoSuchTable, SerializationFailure,
                                  StateFileCorrupt, TableExists, TransactionError, WalDamaged)
from muheam.engine.heapops import Table

__all__ = [
    "BufferCache", "Deadlock", "Engine", "EngineConfig", "EngineError", "EngineStopped", "NoSuchTable",
    "RecoveryReport", "SerializationFailure", "StateFileCorrupt", "Table", "TableExists", "Transaction",
    "TransactionError", "WalDamaged",
]
