"""The test suite mirrors the packages: ``unit/<package>/`` (one module, in-process), ``integration/`` (real etcd
and node processes), ``faults/`` (fault injection under load).  Fixtures live in ``tests/support/`` as pytest
plugins, loaded for every test by ``pyproject.toml``'s ``-p tests.support.cluster``; ``tests.support.workers``
says how the suite shares its two xdist workers."""
