"""Token buckets for tenants' rate limits: one process's own, or one shared by every worker of the proxy.

A tenant's rate limit is for the whole proxy. With `PROXY_WORKERS` > 1 the kernel spreads connections over the
workers, and a tenant with one keep-alive connection reaches only one of them: a bucket per worker holding
1/worker-count of the rate gave such a tenant that fraction of its limit (measured in docs/decisions.md). So with
several workers every bucket lives in one file that all of them map (`SharedBuckets`, in the workers' private
directory), read and written under an exclusive `flock`. The kernel drops a lock whose holder dies, so a killed
worker cannot stall the others; what is done under it is a few loads and stores, two system calls per limited
request.

Workers find a bucket without talking to each other: by a 64-bit digest of the tenant's name, the limit's kind
and its figures, probed linearly in a table of `SLOTS`. A limit whose figures change (a keys file reloaded) is a
new digest, so it starts full, as a single worker's new bucket does. A table that fills up (`SLOTS` different
limits over the proxy's life) is cleared once, with a WARNING: every bucket starts full again. Times are the
event loop's clock, which is CLOCK_MONOTONIC in every worker, so one worker's refill means the same to the others.

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
_SLOT = struct.Struct("<Qdd")  # digest (0: free), tokens, time of the last refill (-inf: never, so full)


class Bucket(Protocol):
    """What `proxy.tenants` asks of a bucket, local or shared."""

    @property
    def limit(self) -> float:
        """Tokens a second, as configured (the figure a refusal names)."""
        ...

    def take(self, level: float, amount: float, now: float) -> float:
        """Take `amount` tokens if the bucket, refilled to `now`, holds at least `level`: then 0.0; else nothing is
        taken and the answer is the seconds until it holds `level`."""
        ...

    def charge(self, amount: float, now: float) -> None:
        """Take `amount` tokens whatever the bucket holds (it may go into debt)."""
        ...


def _take(
    tokens: float, stamp: float, per_s: float, burst: float, level: float, amount: float, now: float
) -> tuple[float, float, float]:
    """One look at a bucket: (tokens, stamp) after it, and the wait (0.0: taken). Tokens refill lazily from `stamp`
    up to `burst`; a `now` before `stamp` (another worker's clock read a moment later) refills nothing."""
    if now > stamp:
        tokens, stamp = min(burst, tokens + (now - stamp) * per_s), now
    if tokens < level:
        return tokens, stamp, (level - tokens) / per_s
    return tokens - amount, stamp, 0.0


class TokenBucket:
    """A bucket of one process: `per_s` tokens a second up to `burst`; starts full."""

    __slots__ = ("burst", "limit", "stamp", "tokens")

    def __init__(self, per_s: float, burst: float) -> None:
        self.limit = per_s
        self.burst = burst
        self.tokens = burst
        self.stamp = -math.inf

    def take(self, level: float, amount: float, now: float) -> float:
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

    def bucket(self, name: str, kind: str, per_s: float, burst: float) -> SharedBucket:
        """Tenant `name`'s bucket for `kind` ("requests", "rows"), the same one in every worker."""
        key = f"{name}\0{kind}\0{per_s!r}\0{burst!r}".encode()
        digest = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") | 1  # 0 marks a free slot
        return SharedBucket(self, digest, per_s, burst)

    def offset(self, bucket: SharedBucket) -> int:
        """Where `bucket` is (found, or claimed full), under the lock; `bucket.slot` is remembered as a hint."""
        if self._digest_at(bucket.slot) == bucket.digest:
            return bucket.slot * _SLOT.size
        home = bucket.digest % SLOTS
        for step in range(SLOTS):
            slot = (home + step) % SLOTS
            found = self._digest_at(slot)
            if found == bucket.digest:
                bucket.slot = slot
                return slot * _SLOT.size
            if found == 0:
                return self._claim(bucket, slot)
        log.warning("rate-limit buckets: all %d places used; every bucket starts full again", SLOTS)
        self.map[:] = bytes(len(self.map))
        return self._claim(bucket, home)

    def _claim(self, bucket: SharedBucket, slot: int) -> int:
        bucket.slot = slot
        _SLOT.pack_into(self.map, slot * _SLOT.size, bucket.digest, bucket.burst, -math.inf)
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

    def take(self, level: float, amount: float, now: float) -> float:
        table = self.table
        fcntl.flock(table.fd, fcntl.LOCK_EX)
        try:
            offset = table.offset(self)
            _, tokens, stamp = _SLOT.unpack_from(table.map, offset)
            tokens, stamp, wait = _take(tokens, stamp, self.limit, self.burst, level, amount, now)
            _SLOT.pack_into(table.map, offset, self.digest, tokens, stamp)
        finally:
            fcntl.flock(table.fd, fcntl.LOCK_UN)
        return wait

    def charge(self, amount: float, now: float) -> None:
        self.take(-math.inf, amount, now)
