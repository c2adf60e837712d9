"""Recovering what a node left behind: survivor-driven recovery of a dead peer (``survivors``), the dead node's WAL
read and indexed by block (``deadwal``), every page it touched rebuilt at once (``staging``), and point-in-time
recovery onto a base copy (``restore``).  Whole-cluster redo and a node's own redo stay in ``muheam.engine``
(``replay``, ``recovery``): they are the engine's redo applied to a merged stream, with no protocol in them.

May import: ``cluster`` (outcome rounds, ownership), ``engine``, ``storage``, ``membership``, ``walmerge``,
``locking``, ``errors``, ``failpoints``.  Never imports ``node``, ``ops`` or ``cli``.
"""
