"""Rate-limit buckets: the local one, and the table every worker of a proxy shares (real processes, one file)."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from proxy import buckets
from proxy.buckets import SharedBuckets, TokenBucket


@pytest.fixture
def table(tmp_path: Path) -> SharedBuckets:
    return SharedBuckets(tmp_path / buckets.BUCKETS_FILE)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda _: TokenBucket(2.0, 3.0), id="local"),
        pytest.param(lambda table: table.bucket("team-a", "requests", 2.0, 3.0), id="shared"),
    ],
)
def test_a_bucket_starts_full_refuses_with_the_wait_and_refills(table: SharedBuckets, make) -> None:
    bucket = make(table)
    assert [bucket.take(1, 1, 10.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(1, 1, 10.0) == 0.5  # empty: one token at 2 a second; nothing taken
    assert bucket.take(1, 1, 10.25) == 0.25
    assert bucket.take(1, 1, 10.5) == 0.0
    bucket.charge(4, 10.5)  # into debt
    assert bucket.take(0, 0, 10.5) == 2.0
    assert bucket.take(1, 1, 9.0) == 2.5  # a clock read before the last look refills nothing
    assert bucket.limit == 2.0


def test_workers_find_the_same_bucket_and_a_changed_limit_a_fresh_one(tmp_path: Path) -> None:
    path = tmp_path / buckets.BUCKETS_FILE
    one, two = SharedBuckets(path), SharedBuckets(path)
    first = one.bucket("team-a", "requests", 1.0, 2.0)
    assert first.take(1, 1, 5.0) == 0.0
    assert two.bucket("team-a", "requests", 1.0, 2.0).take(1, 1, 5.0) == 0.0
    assert first.take(1, 1, 5.0) == 1.0  # both tokens gone, whichever worker took them
    assert two.bucket("team-a", "rows", 1.0, 2.0).take(1, 1, 5.0) == 0.0  # another kind, another bucket
    assert two.bucket("team-b", "requests", 1.0, 2.0).take(1, 1, 5.0) == 0.0  # another tenant
    assert two.bucket("team-a", "requests", 1.0, 3.0).take(3, 3, 5.0) == 0.0  # new figures: full again


def test_a_full_table_is_cleared_once(table: SharedBuckets, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(buckets, "SLOTS", 2)
    used = [table.bucket(name, "requests", 1.0, 1.0) for name in ("a", "b")]
    for bucket in used:
        assert bucket.take(1, 1, 5.0) == 0.0
        assert bucket.take(1, 1, 5.0) == 1.0
    third = table.bucket("c", "requests", 1.0, 1.0)
    assert third.take(1, 1, 5.0) == 0.0  # no place left: the table was cleared for it
    assert used[0].take(1, 1, 5.0) == 0.0  # and the others start full again


def _take_all(path: Path, tries: int, taken: multiprocessing.Queue) -> None:
    bucket = SharedBuckets(path).bucket("team-a", "requests", 1e-9, 300.0)
    taken.put(sum(bucket.take(1, 1, 7.0) == 0.0 for _ in range(tries)))


def test_processes_taking_at_once_never_take_more_than_the_burst(tmp_path: Path) -> None:
    path = tmp_path / buckets.BUCKETS_FILE
    SharedBuckets(path).close()
    context = multiprocessing.get_context("spawn")
    taken: multiprocessing.Queue = context.Queue()
    workers = [context.Process(target=_take_all, args=(path, 400, taken)) for _ in range(3)]
    for worker in workers:
        worker.start()
    counts = [taken.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert sum(counts) == 300, counts


def _hold_the_lock(path: Path, holding: multiprocessing.Event) -> None:
    table = SharedBuckets(path)
    fcntl.flock(table.fd, fcntl.LOCK_EX)  # as `SharedBucket.take` holds it
    holding.set()
    signal.pause()


def test_a_worker_killed_holding_the_lock_does_not_stall_the_others(table: SharedBuckets) -> None:
    context = multiprocessing.get_context("spawn")
    holding = context.Event()
    holder = context.Process(target=_hold_the_lock, args=(table.path, holding))
    holder.start()
    assert holding.wait(timeout=60)
    assert holder.pid is not None
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(timeout=60)
    assert table.bucket("team-a", "requests", 1.0, 1.0).take(1, 1, 5.0) == 0.0  # the kernel dropped its lock
