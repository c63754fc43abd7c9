"""Proxy-side coalescing: concurrent requests merged into one upstream inference, answers split back.

Triton's dynamic batcher already merges requests, but each request still costs the proxy one upstream
call (protobuf, HTTP/2 frames, a Triton request object). Merging here trades up to `BATCH_TIMEOUT_MS` of
waiting for fewer upstream calls. A batch is sent when it holds `BATCH_SIZE` rows (capped by the model's
`max_batch_size`) or when the oldest member has waited `BATCH_TIMEOUT_MS`. Only requests whose non-batch
shapes agree are merged; a batch's deadline is its earliest member's; a failure reaches every member.
Measured on the 2-core reference machine at 64 connections it about doubles the proxy's throughput, so it
is on by default; a lone request pays up to `BATCH_TIMEOUT_MS` (2 ms by default) of extra latency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

Outputs = dict[str, np.ndarray]
Send = Callable[[dict[str, np.ndarray], int, float], Awaitable[tuple[Outputs, str]]]


@dataclass
class _Member:
    arrays: dict[str, np.ndarray]
    rows: int
    deadline: float
    future: asyncio.Future[tuple[Outputs, str]]


@dataclass
class _Batch:
    members: list[_Member] = field(default_factory=list)
    rows: int = 0
    timer: asyncio.TimerHandle | None = None


class Coalescer:
    """Merges requests for one model; `send(arrays, rows, deadline)` does the upstream call."""

    def __init__(self, send: Send, max_rows: int, delay_s: float) -> None:
        self.send = send
        self.max_rows = max_rows
        self.delay_s = delay_s
        self.open: dict[tuple, _Batch] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def submit(self, arrays: dict[str, np.ndarray], rows: int, deadline: float) -> tuple[Outputs, str]:
        loop = asyncio.get_running_loop()
        if rows >= self.max_rows:
            return await self.send(arrays, rows, deadline)
        key = tuple((name, array.shape[1:], array.dtype.str) for name, array in arrays.items())
        batch = self.open.get(key)
        if batch is not None and batch.rows + rows > self.max_rows:
            self._flush(key)
            batch = None
        if batch is None:
            batch = self.open[key] = _Batch()
            batch.timer = loop.call_later(self.delay_s, self._flush, key)
        member = _Member(arrays, rows, deadline, loop.create_future())
        batch.members.append(member)
        batch.rows += rows
        if batch.rows >= self.max_rows:
            self._flush(key)
        return await member.future

    def _flush(self, key: tuple) -> None:
        batch = self.open.pop(key, None)
        if batch is None:
            return
        if batch.timer is not None:
            batch.timer.cancel()
        task = asyncio.get_running_loop().create_task(self._run(batch.members, batch.rows))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, members: list[_Member], rows: int) -> None:
        live = [m for m in members if not m.future.done()]
        if not live:
            return
        try:
            if len(live) == 1:
                result = await self.send(live[0].arrays, live[0].rows, live[0].deadline)
                if not live[0].future.done():
                    live[0].future.set_result(result)
                return
            names = list(live[0].arrays)
            merged = {name: np.concatenate([m.arrays[name] for m in live]) for name in names}
            outputs, version = await self.send(merged, sum(m.rows for m in live), min(m.deadline for m in live))
        except Exception as err:
            for member in live:
                if not member.future.done():
                    member.future.set_exception(err)
            return
        start = 0
        for member in live:
            stop = start + member.rows
            if not member.future.done():
                member.future.set_result(({name: out[start:stop] for name, out in outputs.items()}, version))
            start = stop

    async def close(self) -> None:
        """Send what is still waiting, then wait for every upstream call to end."""
        for key in list(self.open):
            self._flush(key)
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
