"""Benchmarks: each starts what it needs, measures, prints JSON, and cleans up.  Never timed asserts in tests."""
