"""Load for the scenarios: closed loop (N connections) or open loop (a fixed rate), every answer checked.

Two drivers, one verdict shape (`LoadStats`):

- `closed_loop` / `open_loop`: a Python client that records every answer as a `Sample` (status, error code,
  latency, whether `Retry-After` came with a 429/503, whether a 200's body equals the expected output, the
  `X-Model-Version` that answered), for the scenarios that judge a timeline (a kill, a signal, a swap). Its
  heap is frozen while it runs (`frozen_heap`) and each request reuses its workload's encoded body.
- `wrk_loop`: the bench's wrk (`benchmarks.loadgen.wrk_checked`) with the same checks in Lua, for the scenarios
  that saturate the stack (overload, soak, the hostile scenario's normal traffic). A Python client costs about
  as much CPU per request as the proxy itself; on the same cores it measured its own limits.

Loops are bounded both in requests and in time, target only the URL they are given (127.0.0.1 here), and every
request carries a client-side timeout so that a hang shows up as a failure (`code="hang"`) rather than a
stuck test.
"""

from __future__ import annotations

import asyncio
import gc
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson

from benchmarks import loadgen
from benchmarks.wrk_checked import CheckedSummary, histogram_max, histogram_percentile

REJECTIONS = (429, 503)


@dataclass(frozen=True, slots=True)
class Sample:
    started: float  # time.monotonic() when sent
    latency_s: float
    status: int  # 0: no HTTP answer (see code)
    code: str  # the error body's code, or refused / disconnected / hang for client-side failures
    retry_after: bool
    correct: bool | None  # for 200s: the body matched the expected output
    version: str = ""  # the answer's X-Model-Version header ("" when none came)


@dataclass(frozen=True)
class Workload:
    """What to send: single-row predictions chosen round-robin from `rows`, checked against `expected`.

    While a model update goes live, two versions answer the same rows with different outputs: with
    `expected_by_version` ({"1": outputs, "2": outputs}), a 200 is checked against the outputs of the version
    its `X-Model-Version` header names, and an answer from a version not listed is a wrong body.
    """

    url: str
    rows: list[list[float]]
    expected: list[list[float]]
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 30.0
    path: str = "/predict"
    expected_by_version: dict[str, list[list[float]]] = field(default_factory=dict)

    @cached_property
    def bodies(self) -> list[bytes]:
        """Each row's request body, encoded once (not once per request)."""
        return [orjson.dumps({"input": row}) for row in self.rows]

    @cached_property
    def request_headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", **self.headers}

    def expectation(self, version: str, row_index: int) -> list[float] | None:
        """The output `row_index` should get from `version`; None when that version is not expected at all."""
        if not self.expected_by_version:
            return self.expected[row_index]
        outputs = self.expected_by_version.get(version)
        return None if outputs is None else outputs[row_index]


def _close(got: Any, want: list[float]) -> bool:
    try:
        return bool(np.allclose(np.asarray(got, dtype=np.float64), want, rtol=1e-4, atol=1e-4))
    except (TypeError, ValueError):
        return False


async def request(session: aiohttp.ClientSession, work: Workload, index: int) -> Sample:
    """One prediction; never raises."""
    row_index = index % len(work.rows)
    started = time.monotonic()
    try:
        async with asyncio.timeout(work.timeout_s):
            async with session.post(
                work.url + work.path, data=work.bodies[row_index], headers=work.request_headers
            ) as response:
                raw = await response.read()
                status = response.status
                retry = "Retry-After" in response.headers
                version = response.headers.get("X-Model-Version", "")
    except TimeoutError:
        return Sample(started, time.monotonic() - started, 0, "hang", False, None)
    except aiohttp.ClientConnectorError:
        return Sample(started, time.monotonic() - started, 0, "refused", False, None)
    except (aiohttp.ClientError, OSError):
        return Sample(started, time.monotonic() - started, 0, "disconnected", False, None)
    latency = time.monotonic() - started
    code, correct = "", None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = None
    if status == 200:
        want = work.expectation(version, row_index)
        correct = want is not None and isinstance(doc, dict) and _close(doc.get("output"), want)
    elif isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        code = str(doc["error"].get("code", ""))
    else:
        code = "non_json_error"
    return Sample(started, latency, status, code, retry, correct, version)


async def send_one(work: Workload, index: int = 0) -> Sample:
    """One request on a connection of its own (a scenario's trigger, beside the load)."""
    async with _session(1) as session:
        return await request(session, work, index)


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep the collector's full passes off the objects that exist before the load (`gc.freeze`).

    The generator's process holds a large heap (torch for the reference outputs, the bed's clients): a
    generation-2 collection over it measured 160-240 ms here, every few seconds under load. During one the
    generator sends nothing, then sends the arrivals it missed at once: a burst that real clients never make,
    which past the proxy's MAX_IN_FLIGHT is answered 429 and counted against the system under test. Frozen,
    the existing objects are no longer scanned; what the load creates still is (cycles are still collected).
    Both loops run with it.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _session(limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit))


async def closed_loop(
    work: Workload,
    concurrency: int,
    duration_s: float,
    max_requests: int = 1_000_000,
    stop: asyncio.Event | None = None,
) -> list[Sample]:
    """`concurrency` clients, each sending its next request when the last one is answered."""
    with frozen_heap():
        return await _closed_loop(work, concurrency, duration_s, max_requests, stop)


async def _closed_loop(
    work: Workload, concurrency: int, duration_s: float, max_requests: int, stop: asyncio.Event | None
) -> list[Sample]:
    samples: list[Sample] = []
    end = time.monotonic() + duration_s
    counter = iter(range(max_requests))

    async def client(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < end and not (stop is not None and stop.is_set()):
            index = next(counter, None)
            if index is None:
                return
            sample = await request(session, work, index)
            samples.append(sample)
            if sample.status == 0 and sample.code == "refused":
                await asyncio.sleep(0.01)  # nothing listening: do not spin

    async with _session(concurrency) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return samples


def while_running(action: Callable[[], None], work: Workload, concurrency: int, bound_s: float) -> list[Sample]:
    """A closed loop of `concurrency` clients while `action` runs in a thread of its own (a scenario's fault:
    a signal, a kill, a restart); the load stops when the action returns or raises, or after `bound_s`."""

    async def drive() -> list[Sample]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def act() -> None:
            try:
                action()
            finally:
                loop.call_soon_threadsafe(stop.set)

        thread = threading.Thread(target=act)
        thread.start()
        samples = await closed_loop(work, concurrency, bound_s, stop=stop)
        await asyncio.to_thread(thread.join)
        return samples

    return asyncio.run(drive())


async def open_loop(
    work: Workload,
    rate: float,
    duration_s: float,
    max_outstanding: int = 1024,
    stop: asyncio.Event | None = None,
) -> list[Sample]:
    """Requests sent at `rate` per second whatever the answers (the way real traffic arrives).

    When `max_outstanding` requests are already waiting, an arrival is skipped and counted as
    `code="client_saturated"` (status -1), so an overloaded generator is visible in the figures. Setting
    `stop` ends the arrivals before `duration_s` (for scenarios whose phases have no length known up front);
    the requests already sent are still awaited.
    """
    with frozen_heap():
        return await _open_loop(work, rate, duration_s, max_outstanding, stop)


async def _open_loop(
    work: Workload, rate: float, duration_s: float, max_outstanding: int, stop: asyncio.Event | None
) -> list[Sample]:
    samples: list[Sample] = []
    tasks: set[asyncio.Task[None]] = set()
    interval = 1.0 / rate
    started = time.monotonic()
    total = max(1, int(rate * duration_s))

    async def send(session: aiohttp.ClientSession, index: int) -> None:
        samples.append(await request(session, work, index))

    async with _session(max_outstanding) as session:
        for index in range(total):
            delay = started + index * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if stop is not None and stop.is_set():
                break
            if len(tasks) >= max_outstanding:
                samples.append(Sample(time.monotonic(), 0.0, -1, "client_saturated", False, None))
                continue
            task = asyncio.create_task(send(session, index))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
    return samples


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


@dataclass
class LoadStats:
    sent: int
    by_status: dict[str, int]
    by_code: dict[str, int]
    wrong_bodies: int
    rejections_without_retry_after: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    rejection_p99_ms: float
    accepted_p99_ms: float
    accepted_max_ms: float
    duration_s: float
    rate_per_s: float

    def statuses(self) -> set[int]:
        return {int(s) for s in self.by_status}

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def summarize(samples: list[Sample]) -> LoadStats:
    answered = [s for s in samples if s.status >= 0]
    latencies = [s.latency_s * 1000 for s in answered]
    rejected = [s.latency_s * 1000 for s in answered if s.status in REJECTIONS]
    accepted = [s.latency_s * 1000 for s in answered if s.status == 200]
    if answered:
        first = min(s.started for s in answered)
        last = max(s.started + s.latency_s for s in answered)
        duration = max(last - first, 1e-9)
    else:
        duration = 0.0
    return LoadStats(
        sent=len(answered),
        by_status=dict(sorted(Counter(str(s.status) for s in samples).items())),
        by_code=dict(sorted(Counter(s.code for s in samples if s.code).items())),
        wrong_bodies=sum(1 for s in answered if s.status == 200 and not s.correct),
        rejections_without_retry_after=sum(1 for s in answered if s.status in REJECTIONS and not s.retry_after),
        p50_ms=round(percentile(latencies, 50), 2),
        p99_ms=round(percentile(latencies, 99), 2),
        max_ms=round(max(latencies, default=0.0), 2),
        rejection_p99_ms=round(percentile(rejected, 99), 2),
        accepted_p99_ms=round(percentile(accepted, 99), 2),
        accepted_max_ms=round(max(accepted, default=0.0), 2),
        duration_s=round(duration, 2),
        rate_per_s=round(len(answered) / duration, 1) if duration else 0.0,
    )


# --------------------------------------------------------------------------------------- wrk, checked


def wrk_loop(
    work: Workload, connections: int, duration_s: float, workdir: Path, tag: str, rate: float = 0.0
) -> tuple[LoadStats, CheckedSummary]:
    """The same requests and checks as `closed_loop` / `open_loop`, sent by wrk (`benchmarks.loadgen.wrk_checked`,
    the bench's generator): a closed loop of `connections`, or an open loop at `rate` per second with up to
    `connections` outstanding. For the scenarios that saturate the stack: a Python client costs about as much
    CPU per request as the proxy does, and on shared cores it would measure itself. Answers are judged as the
    Python generator judges them (one `LoadStats`); no per-request timeline (no `Sample`s), and one version's
    outputs only."""
    if work.expected_by_version:
        raise ValueError("wrk checks one version's outputs; use open_loop for a model update")
    bodies = [orjson.dumps({"input": row}).decode() for row in work.rows]
    summary = loadgen.wrk_checked(
        work.url + work.path,
        bodies,
        work.expected,
        connections,
        duration_s,
        workdir,
        tag,
        rate=rate,
        headers=work.headers,
        timeout_s=work.timeout_s,
    )
    return checked_stats(summary), summary


def checked_stats(summary: CheckedSummary) -> LoadStats:
    """A checking wrk run's summary as the Python generator's `summarize` would have put it. wrk's socket
    errors are status 0 with the same codes: connect -> refused, read/write -> disconnected, timeout -> hang;
    arrivals the paced loop skipped are status -1, `client_saturated`, as the open loop's (not sent, not
    counted in `sent`)."""
    errors = summary.errors
    failures = {
        "refused": errors.get("connect", 0),
        "disconnected": errors.get("read", 0) + errors.get("write", 0),
        "hang": errors.get("timeout", 0),
    }
    by_status = dict(summary.statuses)
    if sum(failures.values()):
        by_status["0"] = sum(failures.values())
    sent = sum(by_status.values())
    skipped = {"client_saturated": summary.behind_schedule} if summary.behind_schedule else {}
    if skipped:
        by_status["-1"] = summary.behind_schedule
    by_code = {**summary.codes, **{code: n for code, n in failures.items() if n}, **skipped}
    everything = summary.latencies()
    accepted = summary.latencies("accepted")
    duration = summary.duration_s
    return LoadStats(
        sent=sent,
        by_status=dict(sorted(by_status.items())),
        by_code=dict(sorted(by_code.items())),
        wrong_bodies=summary.wrong_bodies,
        rejections_without_retry_after=summary.without_retry_after,
        p50_ms=round(histogram_percentile(everything, 50), 2),
        p99_ms=round(histogram_percentile(everything, 99), 2),
        max_ms=round(histogram_max(everything), 2),
        rejection_p99_ms=round(histogram_percentile(summary.latencies("rejected"), 99), 2),
        accepted_p99_ms=round(histogram_percentile(accepted, 99), 2),
        accepted_max_ms=round(histogram_max(accepted), 2),
        duration_s=round(duration, 2),
        rate_per_s=round(sent / duration, 1) if duration else 0.0,
    )
