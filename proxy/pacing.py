"""Pacing: how many predictions a worker works on at once, shared among tenants by weight.

A worker whose CPU is the bottleneck serves its event loop first come first served: every request being worked
on (parsed, merged, answered) takes its turns there, so a light tenant's request waits behind all of a flood's,
whatever the fair queue in the coalescer does later. What makes the loop long is the number of requests in
transit, not the number of connections. So at most `MAX_ACTIVE` predictions are worked on at once; beyond it a
tenant above its weighted share waits here, its body read but not yet parsed (no CPU while it waits), and the
places that free go to the waiting tenant furthest below its share (priority class first). A tenant below its
share always gets a place at once, so a light tenant never waits behind a flood here. A flood's closed-loop
clients then keep at most its share in transit, and the rest of its requests wait, costing no CPU, until their turn.

Shares are max-min fair: `MAX_ACTIVE * weight / the weights of the tenants holding or waiting for a place`, and
places a tenant does not use go to the others (the limit applies only while the worker is full). A tenant alone
(no other asked within PRESENCE_S) is not limited at all, so one team's traffic is served exactly as without
tenants. Waits end at the request's deadline (504 `deadline_exceeded`), as a wait in the coalescer does. The
measurements behind MAX_ACTIVE's default are in docs/decisions.md.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from proxy.errors import DeadlineExceeded
from proxy.tenants import Tenant, weighted_share

# How long a tenant's last request keeps it counted as present: while another is, a tenant is held to MAX_ACTIVE.
PRESENCE_S = 1.0


@dataclass(slots=True)
class _Waiting:
    """One tenant's place count and its requests waiting for a place, first come first served."""

    weight: float
    level: int
    held: int = 0
    queue: deque[asyncio.Future[None]] = field(default_factory=deque)


class Pacer:
    """The places of one worker; `acquire` before a prediction's body is parsed, `release` once its outputs are in
    (its answer is encoded after that, outside the limit: at most one answer per finished prediction)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.tenants: dict[str, _Waiting] = {}  # those holding or waiting for a place
        self.seen: dict[str, float] = {}  # when each tenant last asked for a place (event-loop clock)
        self._timer: asyncio.TimerHandle | None = None

    def _entry(self, tenant: Tenant) -> _Waiting:
        entry = self.tenants.get(tenant.name)
        if entry is None:
            entry = self.tenants[tenant.name] = _Waiting(tenant.weight, tenant.level)
        else:  # a keys file reloaded meanwhile: the latest weight and class count
            entry.weight, entry.level = tenant.weight, tenant.level
        return entry

    def _below_share(self, entry: _Waiting) -> bool:
        return entry.held < weighted_share(self.limit, entry.weight, (e.weight for e in self.tenants.values()))

    def _alone(self, name: str, now: float) -> bool:
        """No other tenant holds or waits for a place, nor asked for one within PRESENCE_S: a light tenant between
        two requests still counts, or a flood would take every place in each of its gaps and the next light request
        would wait behind it."""
        if len(self.tenants) > 1:
            return False
        for other, when in list(self.seen.items()):
            if other != name:
                if when > now - PRESENCE_S:
                    return False
                del self.seen[other]
        return True

    def _may_start(self, entry: _Waiting, name: str, now: float) -> bool:
        return self.active < self.limit or self._alone(name, now) or self._below_share(entry)

    async def acquire(self, tenant: Tenant, deadline: float) -> float:
        """Take a place for `tenant`'s prediction, waiting for one at most until `deadline` (event-loop clock);
        returns the seconds waited (0.0 without a wait, the common case: no await at all)."""
        entry = self._entry(tenant)
        loop = asyncio.get_running_loop()
        now = self.seen[tenant.name] = loop.time()
        if not entry.queue and self._may_start(entry, tenant.name, now):
            entry.held += 1
            self.active += 1
            return 0.0
        future: asyncio.Future[None] = loop.create_future()
        entry.queue.append(future)
        self._wake_when_presence_ends()
        try:
            async with asyncio.timeout_at(deadline):
                await future
        except BaseException as err:
            if future.done() and not future.cancelled():  # given a place as the wait ended: pass it on
                self.release(tenant)
            else:
                if future in entry.queue:  # else `_wake` dropped it, cancelled
                    entry.queue.remove(future)
                self._forget(tenant.name, entry)
                self._wake()  # one tenant fewer may raise the others' shares
            if isinstance(err, TimeoutError):
                raise DeadlineExceeded("the deadline passed while the request waited for its tenant's turn") from None
            raise
        return loop.time() - now

    def release(self, tenant: Tenant) -> None:
        """Give back a place; it goes to the waiting tenant furthest below its share, if one may start."""
        entry = self.tenants[tenant.name]
        entry.held -= 1
        self.active -= 1
        self._forget(tenant.name, entry)
        self._wake()

    def _wake_when_presence_ends(self) -> None:
        """Waiters held back only by another tenant's presence start when it ends, even if no place frees then."""
        if self._timer is not None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        ends = [when + PRESENCE_S for when in self.seen.values() if when + PRESENCE_S > now]
        if ends:  # (a presence by places held ends with a release, which wakes them anyway)
            self._timer = loop.call_at(min(ends), self._presence_ended)

    def _presence_ended(self) -> None:
        self._timer = None
        self._wake()
        if any(entry.queue for entry in self.tenants.values()):
            self._wake_when_presence_ends()

    def _forget(self, name: str, entry: _Waiting) -> None:
        if not entry.held and not entry.queue:
            del self.tenants[name]

    def _wake(self) -> None:
        now = asyncio.get_running_loop().time()
        while True:
            waiting = [e for name, e in self.tenants.items() if e.queue and self._may_start(e, name, now)]
            if not waiting:
                return
            entry = min(waiting, key=lambda e: (e.level, e.held / e.weight))
            future = entry.queue.popleft()
            if future.cancelled():  # its task was cancelled and has not run its handler yet
                continue
            entry.held += 1
            self.active += 1
            future.set_result(None)
