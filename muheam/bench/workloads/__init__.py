"""Workloads shared by benchmarks and tests: the bank (``bank``, Jepsen's bank test as a module)."""
