"""The bank benchmark's measuring helpers: affinity shares and node CPU time."""

from __future__ import annotations

import os

from muheam.bench.harness import cpu_seconds
from muheam.bench.workloads.bank import account_buckets, shares
from muheam.storage.heap import bucket_of


def test_shares_partition_the_accounts_by_hash_chain() -> None:
    split = shares(100, 3)
    assert sorted(k for share in split for k in share) == list(range(100))
    buckets = account_buckets(100)
    chains = [{bucket_of(k, buckets) for k in share} for share in split]
    assert not (chains[0] & chains[1]) and not (chains[0] & chains[2]) and not (chains[1] & chains[2])
    assert all(len(share) >= 2 for share in split)


def test_cpu_seconds_reads_this_process_and_grows_with_work() -> None:
    before = cpu_seconds(os.getpid())
    x = 0
    for i in range(3_000_000):
        x += i
    assert cpu_seconds(os.getpid()) > before
