"""Token buckets for tenants' rate limits: one process's own, or one shared by every worker of the proxy.

A tenant's rate limit is for the whole proxy. With `PROXY_WORKERS` > 1 the kernel spreads connections over the
workers, and a tenant with one keep-alive connection reaches only one of them: a bucket per worker holding
1/worker-count of the rate gave such a tenant that fraction of its limit (measured in docs/decisions.md). So with
several workers every bucket lives in one file that all of them map (`SharedBuckets`, in the workers' private
directory), read and written under an exclusive `flock`. The kernel drops a lock whose holder dies, so a killed
worker cannot stall the others; what is done under it is a few loads and stores, with two system calls per look
at a bucket (a prediction of a tenant with both limits looks up to three times: rows, requests, then its rows).

Workers find a bucket without talking to each other: by a 64-bit digest of the tenant's name, the limit's kind
and its figures, probed linearly in a table of `SLOTS`. A limit whose figures change (a keys file reloaded) is
another digest: a fresh, full bucket, as a single worker's new bucket is (figures changed back find their old
bucket, refilled since). The workers reload a keys file at their own polls, so for up to one poll a tenant whose
limit changed may draw on both buckets. Once every slot is taken, a new limit takes the place of a bucket that has
refilled to its burst (no different from a fresh one); only while more than `SLOTS` limits are all below their
burst does one evict another, which then starts full again (one WARNING per worker). Times are the event loop's
clock, CLOCK_MONOTONIC in every worker, so one worker's refill means the same to the others.

Tokens may go below zero (`charge`): a prediction's rows are known only once its body is parsed, after it was let
in, and the debt is paid back by the refill before the tenant's next prediction passes.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import math
import mmap
import os
import struct
from pathlib import Path
from typing import Protocol

log = logging.getLogger("proxy")

BUCKETS_FILE = "rate-buckets"  # in the directory `proxy.server.serve` makes for its workers
SLOTS = 4096
# digest (0: free), tokens, time of the last refill (-inf: never, so full), tokens a second, burst
_SLOT = struct.Struct("<Qdddd")


class Bucket(Protocol):
    """What `proxy.tenants` asks of a bucket, local or shared."""

    @property
    def limit(self) -> float:
        """Tokens a second, as configured (the figure a refusal names)."""
        ...

    def take(self, level: float, amount: float, now: float) -> float | None:
        """Take `amount` tokens if the bucket, refilled to `now`, holds at least `level`: then None; else nothing is
        taken and the answer is the seconds until it holds `level`."""
        ...

    def charge(self, amount: float, now: float) -> None:
        """Take `amount` tokens whatever the bucket holds (it may go into debt)."""
        ...


def _refilled(tokens: float, stamp: float, per_s: float, burst: float, now: float) -> tuple[float, float]:
    """Tokens refill lazily from `stamp` up to `burst`; a `now` before `stamp` (another worker's clock, read a moment
    earlier) refills nothing."""
    if now > stamp:
        return min(burst, tokens + (now - stamp) * per_s), now
    return tokens, stamp


def _take(
    tokens: float, stamp: float, per_s: float, burst: float, level: float, amount: float, now: float
) -> tuple[float, float, float | None]:
    """One look at a bucket: (tokens, stamp) after it, and the wait (None: taken)."""
    tokens, stamp = _refilled(tokens, stamp, per_s, burst, now)
    if tokens < level:
        return tokens, stamp, (level - tokens) / per_s
    return tokens - amount, stamp, None


class TokenBucket:
    """A bucket of one process: `per_s` tokens a second up to `burst`; starts full."""

    __slots__ = ("burst", "limit", "stamp", "tokens")

    def __init__(self, per_s: float, burst: float) -> None:
        self.limit = per_s
        self.burst = burst
        self.tokens = burst
        self.stamp = -math.inf

    def take(self, level: float, amount: float, now: float) -> float | None:
        self.tokens, self.stamp, wait = _take(self.tokens, self.stamp, self.limit, self.burst, level, amount, now)
        return wait

    def charge(self, amount: float, now: float) -> None:
        self.take(-math.inf, amount, now)


class SharedBuckets:
    """The table of buckets every worker maps: `path` is created (zeroed) if missing, else used as it is."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        size = SLOTS * _SLOT.size
        if os.fstat(self.fd).st_size < size:
            os.ftruncate(self.fd, size)
        self.map = mmap.mmap(self.fd, size)
        self.warned = False

    def bucket(self, name: str, kind: str, per_s: float, burst: float) -> SharedBucket:
        """Tenant `name`'s bucket for `kind` ("requests", "rows"), the same one in every worker."""
        key = f"{name}\0{kind}\0{per_s!r}\0{burst!r}".encode()
        digest = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") or 1  # 0 marks a free slot
        return SharedBucket(self, digest, per_s, burst)

    def offset(self, bucket: SharedBucket, now: float) -> tuple[int, bool]:
        """Where `bucket` is (found, or claimed full), under the lock, and whether it evicted a bucket below its
        burst; `bucket.slot` is remembered as a hint."""
        if self._digest_at(bucket.slot) == bucket.digest:
            return bucket.slot * _SLOT.size, False
        home = bucket.digest % SLOTS
        for step in range(SLOTS):
            slot = (home + step) % SLOTS
            found = self._digest_at(slot)
            if found == bucket.digest:
                bucket.slot = slot
                return slot * _SLOT.size, False
            if found == 0:
                return self._claim(bucket, slot), False
        # Every slot taken (so no probe stops early at a free one, and reusing a slot breaks no chain).
        for step in range(SLOTS):
            slot = (home + step) % SLOTS
            _, tokens, stamp, per_s, burst = _SLOT.unpack_from(self.map, slot * _SLOT.size)
            if _refilled(tokens, stamp, per_s, burst, now)[0] >= burst:
                return self._claim(bucket, slot), False
        return self._claim(bucket, home), True

    def _claim(self, bucket: SharedBucket, slot: int) -> int:
        bucket.slot = slot
        _SLOT.pack_into(self.map, slot * _SLOT.size, bucket.digest, bucket.burst, -math.inf, bucket.limit, bucket.burst)
        return slot * _SLOT.size

    def _digest_at(self, slot: int) -> int:
        return int(_SLOT.unpack_from(self.map, slot * _SLOT.size)[0])

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


class SharedBucket:
    """One bucket in a `SharedBuckets` table; each look is one locked read and write."""

    __slots__ = ("burst", "digest", "limit", "slot", "table")

    def __init__(self, table: SharedBuckets, digest: int, per_s: float, burst: float) -> None:
        self.table = table
        self.digest = digest
        self.limit = per_s
        self.burst = burst
        self.slot = digest % SLOTS

    def take(self, level: float, amount: float, now: float) -> float | None:
        table = self.table
        fcntl.flock(table.fd, fcntl.LOCK_EX)
        try:
            offset, evicted = table.offset(self, now)
            _, tokens, stamp, _, _ = _SLOT.unpack_from(table.map, offset)
            tokens, stamp, wait = _take(tokens, stamp, self.limit, self.burst, level, amount, now)
            _SLOT.pack_into(table.map, offset, self.digest, tokens, stamp, self.limit, self.burst)
        finally:
            fcntl.flock(table.fd, fcntl.LOCK_UN)
        if evicted and not table.warned:  # logged outside the lock: a blocked stderr must not stall the workers
            table.warned = True
            log.warning("rate limits: more than %d in use at once; some buckets start full again when evicted", SLOTS)
        return wait

    def charge(self, amount: float, now: float) -> None:
        self.take(-math.inf, amount, now)
