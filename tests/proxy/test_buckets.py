"""Rate-limit buckets: the local one, and the table every worker of a proxy shares (real processes, one file)."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
from collections.abc import Callable
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path

import pytest

from proxy import buckets
from proxy.buckets import Bucket, SharedBuckets, TokenBucket


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
def test_a_bucket_starts_full_refuses_with_the_wait_and_refills(
    table: SharedBuckets, make: Callable[[SharedBuckets], Bucket]
) -> None:
    bucket = make(table)
    assert [bucket.take(1, 1, 10.0) for _ in range(3)] == [None, None, None]
    assert bucket.take(1, 1, 10.0) == 0.5  # empty: one token at 2 a second; nothing taken
    assert bucket.take(1, 1, 10.25) == 0.25
    assert bucket.take(1, 1, 10.5) is None
    bucket.charge(4, 10.5)  # into debt
    assert bucket.take(0, 0, 10.5) == 2.0
    assert bucket.take(1, 1, 9.0) == 2.5  # a clock read before the last look refills nothing
    assert bucket.limit == 2.0


def test_workers_find_the_same_bucket_and_a_changed_limit_a_fresh_one(tmp_path: Path) -> None:
    path = tmp_path / buckets.BUCKETS_FILE
    one, two = SharedBuckets(path), SharedBuckets(path)
    first = one.bucket("team-a", "requests", 1.0, 2.0)
    assert first.take(1, 1, 5.0) is None
    assert two.bucket("team-a", "requests", 1.0, 2.0).take(1, 1, 5.0) is None
    assert first.take(1, 1, 5.0) == 1.0  # both tokens gone, whichever worker took them
    assert two.bucket("team-a", "rows", 1.0, 2.0).take(1, 1, 5.0) is None  # another kind, another bucket
    assert two.bucket("team-b", "requests", 1.0, 2.0).take(1, 1, 5.0) is None  # another tenant
    assert two.bucket("team-a", "requests", 1.0, 3.0).take(3, 3, 5.0) is None  # new figures: full again


def test_a_full_table_reuses_a_refilled_bucket_before_it_evicts(
    table: SharedBuckets, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(buckets, "SLOTS", 2)

    def take(name: str, now: float) -> float | None:
        return table.bucket(name, "requests", 1.0, 1.0).take(1, 1, now)

    assert take("a", 5.0) is None
    assert take("b", 5.0) is None  # the table is full
    assert take("c", 10.0) is None  # a and b have refilled: one of them makes room
    assert take("d", 10.0) is None  # and the other
    assert caplog.text == ""
    assert take("e", 10.0) is None  # c and d are empty: one is evicted
    assert take("f", 10.0) is None
    assert caplog.text.count("more than 2 in use at once") == 1  # one warning per worker


def _take_all(path: Path, tries: int, start: Barrier, taken: multiprocessing.Queue) -> None:
    bucket = SharedBuckets(path).bucket("team-a", "requests", 1e-9, 30_000.0)
    start.wait()
    taken.put(sum(bucket.take(1, 1, 7.0) is None for _ in range(tries)))


def test_processes_taking_at_once_never_take_more_than_the_burst(tmp_path: Path) -> None:
    path = tmp_path / buckets.BUCKETS_FILE
    SharedBuckets(path).close()
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(3)
    taken: multiprocessing.Queue = context.Queue()
    workers = [context.Process(target=_take_all, args=(path, 20_000, start, taken)) for _ in range(3)]
    for worker in workers:
        worker.start()
    counts = [taken.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert sum(counts) == 30_000, counts


def _hold_the_lock(path: Path, holding: Event) -> None:
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
    with pytest.raises(BlockingIOError):  # held by the other process
        fcntl.flock(table.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert holder.pid is not None
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(timeout=60)
    fcntl.flock(table.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the kernel dropped the dead worker's lock
    fcntl.flock(table.fd, fcntl.LOCK_UN)
    assert table.bucket("team-a", "requests", 1.0, 1.0).take(1, 1, 5.0) is None
