"""The ``muheam`` command line: the click app (``app``: the group, ``main``, the explicit list of command groups),
one module per command group (``cluster``, ``node``, ``data``, ``wal``, ``recover``, ``bench``), what they share
(``common``), and the member views of ``list`` and ``watch`` (``views``).

The top of the tree: may import anything in ``muheam``; nothing imports it.
"""

from muheam.cli.app import cli, main

__all__ = ["cli", "main"]
