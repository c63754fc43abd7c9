"""Traffic across many models under a memory budget: a schedule of arrivals sent open loop (the hot models, each at
a rate of its own) and one request at a time with pauses between (the cold ones), each answer with the
`Nexus-Load-Wait-Ms` header the proxy adds to a request that waited for its model's load.

The header is read through an aiohttp trace hook rather than a second request function: `reliability.load.request`
sends and checks every request as in every other scenario, and the hook, run inside the request's own task, hands
the header to that task alone (a context variable), so concurrent requests never mix their waits.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections import Counter
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from types import SimpleNamespace

import aiohttp

from reliability.load import Sample, Workload, frozen_heap, request

LOAD_WAIT_HEADER = "Nexus-Load-Wait-Ms"

# The waits the current task's request was answered with (the header's values); set per request by `send`.
_WAITS: ContextVar[list[int] | None] = ContextVar("nexus_load_waits", default=None)


@dataclass(frozen=True, slots=True)
class Answer:
    """One request to one model, as `reliability.load` judged it, and how long it waited for its model's load."""

    model: str
    sample: Sample
    load_wait_ms: int | None  # the proxy's Nexus-Load-Wait-Ms: None when the model was resident


@dataclass(frozen=True, slots=True)
class Arrival:
    at: float  # seconds after the schedule starts
    model: str


async def _record_wait(
    _session: aiohttp.ClientSession, _context: SimpleNamespace, params: aiohttp.TraceRequestEndParams
) -> None:
    waits = _WAITS.get()
    raw = params.response.headers.get(LOAD_WAIT_HEADER)
    if waits is not None and raw is not None:
        with contextlib.suppress(ValueError):
            waits.append(int(raw))


def traced_session(limit: int) -> aiohttp.ClientSession:
    """A client session of `limit` connections whose answers' load waits reach `send`."""
    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(_record_wait)
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit)
    return aiohttp.ClientSession(connector=connector, trace_configs=[trace])


async def send(session: aiohttp.ClientSession, model: str, work: Workload, index: int) -> Answer:
    """One prediction on a `traced_session`; never raises."""
    waits: list[int] = []
    _WAITS.set(waits)
    sample = await request(session, work, index)
    return Answer(model, sample, waits[-1] if waits else None)


def steady_arrivals(rates: dict[str, float], duration_s: float) -> list[Arrival]:
    """Each model's requests evenly spaced at its rate (per second) for `duration_s`."""
    return [
        Arrival(index / rate, model)
        for model, rate in rates.items()
        if rate > 0
        for index in range(max(1, int(rate * duration_s)))
    ]


def smooth_round_robin(weights: dict[str, float], count: int) -> list[str]:
    """`count` picks, each model as often as its weight asks, spread out (nginx's smooth weighted round robin)."""
    total = sum(weights.values())
    current = dict.fromkeys(weights, 0.0)
    picks = []
    for _ in range(count):
        for model, weight in weights.items():
            current[model] += weight
        chosen = max(current, key=lambda m: current[m])
        current[chosen] -= total
        picks.append(chosen)
    return picks


def visiting_order(weights: dict[str, float], count: int) -> list[str]:
    """`count` models to visit: every one once first (in the order given), then each by its weight."""
    return [*weights, *smooth_round_robin(weights, max(0, count - len(weights)))][:count]


async def one_at_a_time(
    works: dict[str, Workload], order: Iterable[str], pause_s: float, duration_s: float, at_least: int = 0
) -> list[Answer]:
    """One request at a time to the models of `order`, the first after `pause_s` and each next one `pause_s` after
    the last one's answer, until `duration_s` has passed and at least `at_least` were sent (a closed loop of one
    client who pauses between requests)."""
    answers: list[Answer] = []
    end = time.monotonic() + duration_s
    sent: Counter[str] = Counter()
    async with traced_session(1) as session:
        for model in order:
            await asyncio.sleep(pause_s)
            if time.monotonic() >= end and len(answers) >= at_least:
                break
            answers.append(await send(session, model, works[model], sent[model]))
            sent[model] += 1
    return answers


async def scheduled(works: dict[str, Workload], arrivals: Iterable[Arrival], max_outstanding: int) -> list[Answer]:
    """Send every arrival at its time whatever the answers (open loop), on one traced session.

    When `max_outstanding` requests are already waiting, an arrival is skipped and counted as
    `code="client_saturated"` (status -1), as `reliability.load.open_loop` counts it."""
    with frozen_heap():
        answers: list[Answer] = []
        tasks: set[asyncio.Task[None]] = set()
        sent: Counter[str] = Counter()

        async def one(session: aiohttp.ClientSession, arrival: Arrival, index: int) -> None:
            answers.append(await send(session, arrival.model, works[arrival.model], index))

        async with traced_session(max_outstanding) as session:
            started = time.monotonic()
            for arrival in sorted(arrivals, key=lambda a: a.at):
                delay = started + arrival.at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if len(tasks) >= max_outstanding:
                    skipped = Sample(time.monotonic(), 0.0, -1, "client_saturated", False, None)
                    answers.append(Answer(arrival.model, skipped, None))
                    continue
                task = asyncio.create_task(one(session, arrival, sent[arrival.model]))
                sent[arrival.model] += 1
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        return answers


def merge(spans: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """(start, end) spans with the overlapping ones merged, sorted: what `within` reads."""
    merged: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def within(at: float, windows: list[tuple[float, float]]) -> bool:
    """Whether `at` falls inside one of `windows` (merged spans, `merge`)."""
    index = bisect.bisect_right(windows, (at, float("inf"))) - 1
    return index >= 0 and windows[index][0] <= at < windows[index][1]
