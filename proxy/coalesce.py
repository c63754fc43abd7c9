"""Proxy-side coalescing that adapts instead of waiting: merge while the upstream is busy, send when it is not.

Each request still costs the proxy one upstream call (protobuf, HTTP/2 frames, a Triton request object)
unless it is merged with others, and Triton runs only as many batches at once as it has model instances.
So the coalescer keeps at most `slots` batches in flight (Triton's instance count by default): a request
that finds a free slot leaves at once, alone; while every slot is busy, arrivals queue here and leave
together as soon as one frees. At low load nothing waits; at high load batches grow by themselves, up to
`max_rows`. `max_wait_s` is only a cap: a request queued that long leaves even without a free slot, as
long as no more than `slots` such extra batches are in flight. One extra batch per slot keeps each
instance fed while the next batch travels to Triton; more would only move the queue into Triton's, which
serves in arrival order, where the fair order below could not reach it.

Only one batcher may wait. Triton's dynamic batcher holds a request up to its queue delay unless the
request alone is one of the model's preferred batch sizes, in which case it runs at once (the measurement
is in docs/decisions.md, "Batches are shaped to a preferred size"). So each batch is shaped to a preferred
size: as many whole requests as fit in the largest preferred size the queue can fill, and a batch smaller
than every preferred size is padded up to the next one by repeating its last row (the padding's outputs are
dropped). Without preferred sizes batches go as they are.

Only requests whose non-batch shapes and dtypes agree are merged. Members stay isolated from each other:
- each keeps its own deadline: `submit` gives up at the member's deadline (504) while the batch goes on for
  the others, a member that expired (or whose client went away) before its batch left is dropped from it,
  and the batch carries its latest member's deadline to Triton;
- when a merged batch fails for a reason that may be one member's (Triton rejected the request, or the model
  raised), each member is re-sent alone so only the bad one fails; failures of the whole upstream
  (unavailable, busy, deadline, forbidden) reach every member at once, since re-sending would only add load;
- every member is answered on every path, and a batch whose members have all gone is cancelled upstream.

Requests are some tenant's (`proxy.tenants.Tenant`), and a batch is filled in a fair order rather than
in arrival order, so a tenant's share of the model follows its weight whatever its connection count:
self-clocked fair queuing by rows, per shape and priority class. At each batch, every tenant's queued requests
(those still waiting: expired or abandoned ones are not counted against it) get virtual finish tags in arrival
order, starting from the later of the class's clock and the tag of the tenant's last request that left, each
`rows / weight` after the one before; the batch takes the smallest tags, and the clock advances to the largest
tag that left. A tenant that was idle starts at the clock, so its next request leaves with the next batch,
ahead of a flooding tenant's backlog; a tenant alone keeps arrival order and gets every batch (work
conserving). Priority classes come before tags (`level` 1 before 2 before 3), except that a request of a
lower class queued for `aging_s` goes ahead of the higher classes: a lower class waits about that long at most
behind a higher one. A batch the cap sends takes the requests that waited `max_wait_s` first (in the same fair
order among themselves). A shape's clocks start again when its queue empties: nobody is behind then.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from proxy.errors import DeadlineExceeded, UpstreamError, UpstreamForbidden, UpstreamRejected, UpstreamUnavailable
from proxy.stacked import Stacked, Tensor
from proxy.tenants import DEFAULT_TENANT, Tenant

Outputs = dict[str, np.ndarray]
ABANDON_GRACE_S = 0.1  # an abandoned batch is cancelled upstream only once it has run this long
Send = Callable[[dict[str, Tensor], int, float, int], Awaitable[tuple[Outputs, str]]]
"""`send(arrays, rows, deadline, level)`: one upstream call; `level` is the batch's priority level."""


@dataclass(slots=True)
class _Member:
    arrays: dict[str, np.ndarray]
    rows: int
    deadline: float
    queued_at: float
    future: asyncio.Future[tuple[Outputs, str]]
    tenant: Tenant
    seq: int  # arrival order, the last tie-breaker
    finish: float = 0.0  # virtual finish tag, computed for each batch (`_Queue.order`)


@dataclass
class _Queue:
    """The requests waiting for one shape, in arrival order, and that shape's fair-queuing clocks."""

    members: list[_Member]
    clocks: dict[int, float]  # per priority level: the largest finish tag that has left
    served: dict[tuple[int, str], float]  # per (level, tenant name): the tag of its last request that left

    def live(self) -> list[_Member]:
        """The members still waiting; expired or abandoned ones are dropped here, never sent."""
        if any(member.future.done() for member in self.members):
            self.members = [member for member in self.members if not member.future.done()]
        return self.members

    def oldest(self) -> float | None:
        """When its longest-waiting live member arrived."""
        live = self.live()
        return live[0].queued_at if live else None

    def order(self, aged_before: float, overdue_before: float | None) -> list[_Member]:
        """The live members in the order batches take them (see the module's docstring)."""
        live = self.live()
        tags: dict[tuple[int, str], float] = {}
        for member in live:
            tenant = member.tenant
            flow = (tenant.level, tenant.name)
            start = tags.get(flow)
            if start is None:
                start = max(self.clocks.get(tenant.level, 0.0), self.served.get(flow, 0.0))
            member.finish = tags[flow] = start + member.rows / tenant.weight
        if len(tags) == 1 and overdue_before is None:
            return live  # one tenant, one class: arrival order is the fair order
        top = min(level for level, _ in tags)

        def rank(member: _Member) -> tuple[bool, int, float, int]:
            overdue = overdue_before is not None and member.queued_at <= overdue_before
            level = member.tenant.level
            if level > top and member.queued_at <= aged_before:
                level = 0
            return (not overdue, level, member.finish, member.seq)

        return sorted(live, key=rank)

    def left(self, members: list[_Member]) -> None:
        """`members` were sent: take them out, and advance the clocks and their tenants' tags."""
        gone = {id(member) for member in members}
        self.members = [member for member in self.members if id(member) not in gone]
        for member in members:
            level = member.tenant.level
            flow = (level, member.tenant.name)
            self.served[flow] = max(self.served.get(flow, 0.0), member.finish)
            self.clocks[level] = max(self.clocks.get(level, 0.0), member.finish)


def batch_plan(queued: Sequence[int], max_rows: int, preferred: Sequence[int]) -> tuple[int, int]:
    """How many of the `queued` requests (row counts, oldest first) to send now, and as how many rows.

    Whole requests only, at most `max_rows` (a lone larger request goes alone). With preferred sizes the
    rows are padded up to the next one; of "every request that fits" and "the longest run of requests within
    the largest preferred size below that", the one needing less padding wins (ties: more requests).
    """
    totals = list(itertools.accumulate(queued))
    fits = max(1, bisect.bisect_right(totals, max_rows))
    usable = [size for size in preferred if size <= max_rows]
    if not usable:
        return fits, totals[fits - 1]

    def padded(count: int) -> int:
        index = bisect.bisect_left(usable, totals[count - 1])
        return usable[index] if index < len(usable) else totals[count - 1]

    best = (fits, padded(fits))
    below = bisect.bisect_right(usable, totals[fits - 1])
    if below:
        fewer = bisect.bisect_right(totals, usable[below - 1])
        if 0 < fewer < fits:
            shorter = (fewer, padded(fewer))
            if shorter[1] - totals[fewer - 1] < best[1] - totals[fits - 1]:
                best = shorter
    return best


class Coalescer:
    """Merges requests for one model; `send(arrays, rows, deadline, level)` does the upstream call."""

    def __init__(
        self,
        send: Send,
        max_rows: int,
        slots: int,
        max_wait_s: float,
        preferred: Sequence[int] = (),
        on_padding: Callable[[int], None] = lambda rows: None,
        aging_s: float = 1.0,  # PRIORITY_MAX_WAIT_MS
        on_wait: Callable[[Tenant, float], None] = lambda tenant, seconds: None,
    ) -> None:
        self.send = send
        self.on_padding = on_padding
        self.on_wait = on_wait
        self.max_rows = max_rows
        self.slots = slots
        self.max_wait_s = max_wait_s
        self.aging_s = aging_s
        self.preferred = tuple(sorted(set(preferred)))
        self.queues: dict[tuple, _Queue] = {}
        self.arrivals = itertools.count()
        self.busy = 0
        self.timer: asyncio.TimerHandle | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def reconfigure(self, max_rows: int, slots: int, preferred: Sequence[int]) -> None:
        """New limits (a new model version's config) for the batches still to leave; those in flight keep theirs."""
        self.max_rows = max_rows
        self.slots = slots
        self.preferred = tuple(sorted(set(preferred)))

    async def submit(
        self, arrays: dict[str, np.ndarray], rows: int, deadline: float, tenant: Tenant = DEFAULT_TENANT
    ) -> tuple[Outputs, str]:
        """The member's outputs; `DeadlineExceeded` at its own `deadline` (event-loop clock) whatever its batch does."""
        loop = asyncio.get_running_loop()
        key = tuple((name, array.shape[1:], array.dtype.str) for name, array in arrays.items())
        member = _Member(arrays, rows, deadline, loop.time(), loop.create_future(), tenant, next(self.arrivals))
        queue = self.queues.get(key)
        if queue is None:
            queue = self.queues[key] = _Queue([], {}, {})
        queue.members.append(member)
        self._pump()
        try:
            async with asyncio.timeout_at(deadline):
                return await member.future  # cancelled with it on timeout or when the client goes away
        except TimeoutError:
            raise DeadlineExceeded("the deadline passed while the request was queued or in a merged batch") from None

    def _oldest(self) -> tuple[float, tuple] | None:
        """(arrival, shape) of the longest-waiting live request; shapes left with none are forgotten."""
        heads = []
        for key, queue in list(self.queues.items()):
            arrived = queue.oldest()
            if arrived is None:
                del self.queues[key]
            else:
                heads.append((arrived, key))
        return min(heads) if heads else None

    def _pump(self) -> None:
        """Start batches while slots are free; arm the cap's timer for whatever stays queued, unless the extra
        batches are all out already (a release pumps again)."""
        while self.busy < self.slots and (oldest := self._oldest()) is not None:
            self._launch(oldest[1])
        if self.timer is None and self.busy < 2 * self.slots and (oldest := self._oldest()) is not None:
            self.timer = asyncio.get_running_loop().call_at(oldest[0] + self.max_wait_s, self._overdue)

    def _overdue(self) -> None:
        """The cap: requests queued for `max_wait_s` leave without waiting for a slot, up to `slots` extra batches."""
        self.timer = None
        now = asyncio.get_running_loop().time()
        while (
            self.busy < 2 * self.slots and (oldest := self._oldest()) is not None and oldest[0] <= now - self.max_wait_s
        ):
            self._launch(oldest[1], overdue_before=now - self.max_wait_s)
        self._pump()

    def _launch(self, key: tuple, overdue_before: float | None = None) -> None:
        """Send the next batch of shape `key`: its live requests in the fair order, as many as `batch_plan`
        takes; a batch the cap sends takes those queued since `overdue_before` first."""
        queue = self.queues[key]
        now = asyncio.get_running_loop().time()
        order = queue.order(now - self.aging_s, overdue_before)  # not empty: `_oldest` found `key` live
        count, rows = batch_plan([member.rows for member in order], self.max_rows, self.preferred)
        members = order[:count]
        queue.left(members)
        if not queue.members:
            del self.queues[key]
        for member in members:
            self.on_wait(member.tenant, now - member.queued_at)
        self.busy += 1
        task = asyncio.get_running_loop().create_task(self._run(members, rows))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

        started = asyncio.get_running_loop().time()

        def abandoned(_: asyncio.Future[tuple[Outputs, str]]) -> None:
            if not task.done() and all(member.future.done() for member in members):
                # Nobody waits for this batch any more: Triton drops it too (call cancelled), once it has run
                # ABANDON_GRACE_S. A shorter call is let finish: cancelling it frees nothing, and a cancellation
                # racing its answer crashes tritonserver 2.51 (docs/decisions.md).
                asyncio.get_running_loop().call_at(started + ABANDON_GRACE_S, task.cancel)

        for member in members:
            member.future.add_done_callback(abandoned)

    def _release(self) -> None:
        self.busy -= 1
        self._pump()

    async def _run(self, members: list[_Member], rows: int) -> None:
        """One slot's upstream work. The slot is freed as soon as the answer is back, before any member is
        answered: resolving a member schedules its handler, and the next batch should not queue behind those
        handlers on the event loop while a model instance idles."""
        released = False
        try:
            outputs, version = await self._send(members, rows)
            released = True
            self._release()
            self._answer(members, outputs, version)
        except Exception as err:
            if len(members) > 1 and isolatable(err):
                await asyncio.gather(*(self._alone(member) for member in members))
            else:
                _fail(members, err)
        finally:
            _fail(members, UpstreamUnavailable("the upstream call was cancelled"))  # only if cancelled mid-way
            if not released:
                self._release()

    async def _alone(self, member: _Member) -> None:
        """Re-send one member of a failed batch by itself; its own answer or error, and nobody else's."""
        if member.future.done():
            return
        try:
            rows = batch_plan([member.rows], self.max_rows, self.preferred)[1]
            self._answer([member], *(await self._send([member], rows)))
        except Exception as err:
            _fail([member], err)

    async def _send(self, members: list[_Member], rows: int) -> tuple[Outputs, str]:
        real = sum(member.rows for member in members)
        merged: dict[str, Tensor]
        if len(members) == 1 and rows == real:
            merged = dict(members[0].arrays)
        else:
            merged = {name: Stacked(tuple(m.arrays[name] for m in members), rows - real) for name in members[0].arrays}
        if rows > real:
            self.on_padding(rows - real)
        level = min(member.tenant.level for member in members)
        return await self.send(merged, max(rows, real), max(member.deadline for member in members), level)

    @staticmethod
    def _answer(members: list[_Member], outputs: Outputs, version: str) -> None:
        start = 0
        for member in members:
            stop = start + member.rows
            if not member.future.done():
                member.future.set_result(({name: out[start:stop] for name, out in outputs.items()}, version))
            start = stop

    async def close(self) -> None:
        """Send what is still queued, then wait for every upstream call to end."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        while (oldest := self._oldest()) is not None:
            self._launch(oldest[1])
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)


def isolatable(err: BaseException) -> bool:
    """Could this failure be one member's fault? Triton rejecting the request, or the model raising, yes;
    the whole upstream being unavailable, busy, forbidden or out of time, no."""
    return isinstance(err, UpstreamRejected | UpstreamError) and not isinstance(err, UpstreamForbidden)


def _fail(members: list[_Member], err: BaseException) -> None:
    for member in members:
        if not member.future.done():
            member.future.set_exception(err)
