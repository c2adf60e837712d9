"""Benchmarks: each starts what it needs, measures, prints JSON, and cleans up.  Never timed asserts in tests."""

from muheam.errors import MuheamError


class BenchmarkFailed(MuheamError):
    """A benchmark could not finish (a baseline that would not start, a load tool that aborted, a node that was
    not recovered): the message says what happened and shows the tool's last output."""
