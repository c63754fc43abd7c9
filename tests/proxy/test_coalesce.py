"""Proxy-side coalescing: unit behaviour with a fake upstream, and end to end against Triton."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from nexusml.command import demo
from nexusml.sync.triton_config import DEFAULT_PRIORITY_LEVEL, PRIORITY_LEVELS
from nexusml.testing.models import DEMO_SPEC
from nexusml.triton.server import TritonServer
from proxy.coalesce import ABANDON_GRACE_S, Coalescer, batch_plan
from proxy.errors import (
    DeadlineExceeded,
    UpstreamBusy,
    UpstreamError,
    UpstreamForbidden,
    UpstreamRejected,
    UpstreamUnavailable,
)
from proxy.stacked import Tensor
from proxy.tenants import LEVELS, Tenant
from tests.proxy.conftest import MakeClient


class FakeUpstream:
    """Doubles its input; records every call's rows and deadline; holds calls while `gate` is closed.

    `fail` is raised for every call; `poison` only for calls whose input holds that value (one bad row).
    """

    def __init__(self, fail: Exception | None = None, poison: float | None = None) -> None:
        self.calls: list[tuple[int, float]] = []
        self.values: list[list[float]] = []  # per call, the first column of each row sent
        self.levels: list[int] = []
        self.cancelled = 0
        self.fail = fail
        self.poison = poison
        self.gate = asyncio.Event()
        self.gate.set()

    async def send(self, arrays: dict[str, Tensor], rows: int, deadline: float, level: int = 0) -> tuple[Any, str]:
        assert len(arrays["IN"]) == rows
        arrays = {name: np.asarray(tensor) for name, tensor in arrays.items()}  # a merged batch comes stacked
        self.calls.append((rows, deadline))
        self.values.append(arrays["IN"][:, 0].tolist())
        self.levels.append(level)
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail is not None:
            raise self.fail
        if self.poison is not None and (arrays["IN"] == self.poison).any():
            raise UpstreamError("the model raised on a row")
        return {"OUT": arrays["IN"] * 2}, "7"


def rows(n: int, value: float) -> dict[str, np.ndarray]:
    return {"IN": np.full((n, 3), value, np.float32)}


def later(seconds: float) -> float:
    """A deadline `seconds` from now on the event loop's clock (the coalescer's)."""
    return asyncio.get_running_loop().time() + seconds


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_a_lone_request_leaves_at_once() -> None:
    fake = FakeUpstream()
    coalescer = Coalescer(fake.send, max_rows=8, slots=2, max_wait_s=3600)
    deadline = later(9)
    outputs, version = await asyncio.wait_for(coalescer.submit(rows(1, 4), 1, deadline), timeout=5)
    assert fake.calls == [(1, deadline)] and version == "7"
    np.testing.assert_array_equal(outputs["OUT"], np.full((1, 3), 8, np.float32))


@pytest.mark.asyncio
async def test_requests_queue_while_every_slot_is_busy_and_leave_together() -> None:
    fake = FakeUpstream()
    fake.gate.clear()
    coalescer = Coalescer(fake.send, max_rows=8, slots=1, max_wait_s=3600)
    first_deadline, deadlines = later(100), [later(100), later(50), later(200)]
    first = asyncio.ensure_future(coalescer.submit(rows(1, 0), 1, first_deadline))
    await settle()
    queued = [
        asyncio.ensure_future(coalescer.submit(rows(n, value), n, deadline))
        for (n, value), deadline in zip([(1, 1), (2, 2), (1, 3)], deadlines, strict=True)
    ]
    await settle()
    assert fake.calls == [(1, first_deadline)]  # the slot is busy: the others wait here, not in Triton's queue
    fake.gate.set()
    results = await asyncio.gather(first, *queued)
    # then one upstream call carrying the latest deadline (each member keeps its own in the proxy)
    assert fake.calls == [(1, first_deadline), (4, max(deadlines))]
    for (outputs, version), (n, value) in zip(results, [(1, 0), (1, 1), (2, 2), (1, 3)], strict=True):
        assert version == "7"
        np.testing.assert_array_equal(outputs["OUT"], np.full((n, 3), value * 2, np.float32))


@pytest.mark.parametrize(
    ("queued", "max_rows", "preferred", "plan"),
    [
        pytest.param([1], 32, (4, 8, 16, 32), (1, 4), id="lone-row-padded-to-smallest-preferred"),
        pytest.param([1] * 5, 32, (4, 8, 16, 32), (4, 4), id="rounded-down-to-a-preferred-size"),
        pytest.param([1] * 40, 32, (4, 8, 16, 32), (32, 32), id="capped-at-max-rows"),
        pytest.param([2, 3, 1], 32, (4, 8, 16, 32), (3, 8), id="less-padding-wins-ties-take-more"),
        pytest.param([3, 3, 3], 32, (4, 8, 16, 32), (2, 8), id="fewer-requests-when-less-padding"),
        pytest.param([40], 32, (4, 8), (1, 40), id="oversized-request-alone-unpadded"),
        pytest.param([1] * 5, 32, (), (5, 5), id="no-preferred-sizes-no-padding"),
        pytest.param([1] * 5, 3, (4, 8), (3, 3), id="preferred-above-max-rows-ignored"),
    ],
)
def test_batch_plan(queued: list[int], max_rows: int, preferred: tuple[int, ...], plan: tuple[int, int]) -> None:
    assert batch_plan(queued, max_rows, preferred) == plan


@pytest.mark.asyncio
async def test_batches_are_shaped_to_preferred_sizes_and_padding_is_dropped() -> None:
    fake = FakeUpstream()
    fake.gate.clear()
    padded: list[int] = []
    coalescer = Coalescer(fake.send, max_rows=8, slots=1, max_wait_s=3600, preferred=(4, 8), on_padding=padded.append)
    futures = [asyncio.ensure_future(coalescer.submit(rows(1, i), 1, later(10))) for i in range(6)]
    await settle()
    fake.gate.set()
    results = await asyncio.gather(*futures)
    assert [call[0] for call in fake.calls] == [4, 4, 4]  # 1 padded to 4, then 4 exactly, then 1 padded to 4
    assert padded == [3, 3]
    assert [float(outputs["OUT"][0, 0]) for outputs, _ in results] == [2.0 * i for i in range(6)]
    assert all(len(outputs["OUT"]) == 1 for outputs, _ in results)


@pytest.mark.asyncio
async def test_the_cap_sends_a_request_without_a_free_slot() -> None:
    fake = FakeUpstream()
    fake.gate.clear()
    coalescer = Coalescer(fake.send, max_rows=8, slots=1, max_wait_s=0.05)
    futures = [asyncio.ensure_future(coalescer.submit(rows(1, i), 1, later(10))) for i in range(2)]
    await settle()
    assert len(fake.calls) == 1
    await asyncio.sleep(0.2)
    assert len(fake.calls) == 2  # the second left after max_wait_s although the first still holds the slot
    fake.gate.set()
    await asyncio.gather(*futures)


@pytest.mark.asyncio
async def test_the_cap_sends_at_most_one_extra_batch_per_slot() -> None:
    """Beyond that the queue would move into Triton's, which the fair order cannot reach."""
    fake = FakeUpstream()
    fake.gate.clear()
    coalescer = Coalescer(fake.send, max_rows=1, slots=1, max_wait_s=0.01)
    futures = [asyncio.ensure_future(coalescer.submit(rows(1, i), 1, later(10))) for i in range(4)]
    await asyncio.sleep(0.1)
    assert len(fake.calls) == 2  # one in the slot, one extra; the other two wait here for a release
    fake.gate.set()
    await asyncio.gather(*futures)
    assert len(fake.calls) == 4


@pytest.mark.asyncio
async def test_different_shapes_are_not_merged_and_failures_reach_every_member() -> None:
    fake = FakeUpstream(fail=UpstreamUnavailable("down"))
    fake.gate.clear()
    coalescer = Coalescer(fake.send, max_rows=8, slots=1, max_wait_s=3600)
    futures = [
        asyncio.ensure_future(coalescer.submit({"IN": np.zeros((1, width), np.float32)}, 1, later(10)))
        for width in (3, 3, 4, 3)
    ]
    await settle()
    fake.gate.set()
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert [call[0] for call in fake.calls] == [1, 2, 1]  # the 3-wide ones merged, the 4-wide one alone
    assert all(isinstance(result, UpstreamUnavailable) for result in results)
    await coalescer.close()


@pytest.mark.integration
@pytest.mark.asyncio
async def test_coalescing_end_to_end_matches_the_model(proxy_client: MakeClient, triton: TritonServer) -> None:
    client = await proxy_client(triton.grpc_url, PROXY_COALESCE="1", COALESCE_MAX_ROWS="16")
    requests = np.random.default_rng(3).normal(size=(24, 5)).astype(np.float32).tolist()
    responses = await asyncio.gather(*(client.post("/predict", json={"input": row}) for row in requests))
    outputs = [(await response.json())["output"] for response in responses]
    assert all(response.status == 200 for response in responses)
    np.testing.assert_allclose(outputs, demo.reference_outputs(DEMO_SPEC, requests)[0], rtol=1e-5, atol=1e-5)
    metrics = await (await client.get("/metrics")).text()
    count = next(line for line in metrics.splitlines() if line.startswith("nexus_proxy_upstream_batch_rows_count"))
    assert float(count.split()[-1]) < len(requests)  # fewer upstream calls than requests


@pytest.mark.asyncio
async def test_a_failure_after_the_upstream_call_still_answers_every_member() -> None:
    async def broken(arrays: dict[str, np.ndarray], rows: int, deadline: float, level: int) -> tuple[Any, str]:
        return {"OUT": 5}, "7"  # not an array: splitting the answer fails

    coalescer = Coalescer(broken, max_rows=8, slots=1, max_wait_s=3600)
    results = await asyncio.wait_for(
        asyncio.gather(*(coalescer.submit(rows(1, i), 1, later(10)) for i in range(3)), return_exceptions=True),
        timeout=5,
    )
    assert all(isinstance(result, TypeError) for result in results)


@pytest.mark.asyncio
async def test_a_short_deadline_fails_only_its_own_request() -> None:
    """One request with `X-Request-Timeout-Ms: 1` must not turn its whole merged batch into 504s."""
    fake = FakeUpstream()
    fake.gate.clear()
    coalescer = Coalescer(fake.send, max_rows=8, slots=1, max_wait_s=3600)
    busy = asyncio.ensure_future(coalescer.submit(rows(1, 9), 1, later(10)))
    await settle()
    queued = [asyncio.ensure_future(coalescer.submit(rows(1, i), 1, later(10))) for i in range(3)]
    hasty = asyncio.ensure_future(coalescer.submit(rows(1, 7), 1, later(0.02)))
    with pytest.raises(DeadlineExceeded):
        await asyncio.wait_for(hasty, timeout=5)  # answered at its own deadline while the slot is still busy
    fake.gate.set()
    results = await asyncio.gather(busy, *queued)
    assert [float(outputs["OUT"][0, 0]) for outputs, _ in results] == [18.0, 0.0, 2.0, 4.0]
    assert [call[0] for call in fake.calls] == [1, 3]  # the expired request was dropped before its batch left


@pytest.mark.asyncio
async def test_a_member_expiring_in_flight_leaves_the_batch_to_the_others() -> None:
    first, merged = asyncio.Event(), asyncio.Event()
    calls: list[int] = []

    async def send(arrays: dict[str, Tensor], rows: int, deadline: float, level: int) -> tuple[Any, str]:
        calls.append(rows)
        await (merged if rows > 1 else first).wait()
        return {"OUT": np.asarray(arrays["IN"]) * 2}, "7"

    coalescer = Coalescer(send, max_rows=8, slots=1, max_wait_s=3600)
    alone = asyncio.ensure_future(coalescer.submit(rows(1, 1), 1, later(10)))
    await settle()
    patient = asyncio.ensure_future(coalescer.submit(rows(1, 2), 1, later(10)))
    hasty = asyncio.ensure_future(coalescer.submit(rows(1, 3), 1, later(0.05)))
    await settle()
    first.set()  # the first call returns; the two queued leave together and are held upstream
    await alone
    with pytest.raises(DeadlineExceeded):
        await asyncio.wait_for(hasty, timeout=5)
    merged.set()
    outputs, _ = await asyncio.wait_for(patient, timeout=5)
    assert float(outputs["OUT"][0, 0]) == 4.0 and calls == [1, 2]


@pytest.mark.parametrize(
    ("error", "resent"),
    [
        pytest.param(UpstreamError("the model raised"), True, id="model-error-resent-singly"),
        pytest.param(UpstreamRejected("Triton rejected the request"), True, id="rejected-resent-singly"),
        pytest.param(UpstreamUnavailable("down"), False, id="unavailable-reaches-all"),
        pytest.param(UpstreamBusy("queue full"), False, id="busy-reaches-all"),
        pytest.param(DeadlineExceeded("late"), False, id="deadline-reaches-all"),
        pytest.param(UpstreamForbidden("restricted"), False, id="forbidden-reaches-all"),
    ],
)
@pytest.mark.asyncio
async def test_a_failed_batch_is_resent_singly_only_when_one_member_may_be_at_fault(
    error: Exception, resent: bool
) -> None:
    fake = FakeUpstream(fail=error)
    fake.gate.clear()
    coalescer = Coalescer(fake.send, max_rows=8, slots=1, max_wait_s=3600)
    futures = [asyncio.ensure_future(coalescer.submit(rows(1, i), 1, later(10))) for i in range(4)]
    await settle()
    fake.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), timeout=5)
    assert all(result is error for result in results)
    # one row alone, then three merged; re-sent: each of the three alone
    assert [call[0] for call in fake.calls] == ([1, 3, 1, 1, 1] if resent else [1, 3])


@pytest.mark.asyncio
async def test_one_bad_row_fails_only_its_own_request() -> None:
    """A row that passes validation but breaks the model fails alone, not everyone merged with it."""
    fake = FakeUpstream(poison=-1.0)
    fake.gate.clear()
    coalescer = Coalescer(fake.send, max_rows=8, slots=1, max_wait_s=3600)
    busy = asyncio.ensure_future(coalescer.submit(rows(1, 5), 1, later(10)))
    await settle()
    merged = [asyncio.ensure_future(coalescer.submit(rows(1, value), 1, later(10))) for value in (1, -1, 2)]
    await settle()
    fake.gate.set()
    results = await asyncio.wait_for(asyncio.gather(busy, *merged, return_exceptions=True), timeout=5)
    assert isinstance(results[2], UpstreamError)
    assert [float(r[0]["OUT"][0, 0]) for i, r in enumerate(results) if i != 2] == [10.0, 2.0, 4.0]
    assert coalescer.busy == 0


@pytest.mark.asyncio
async def test_an_abandoned_batch_that_answers_within_the_grace_is_not_cancelled() -> None:
    """Cancelling a call about to answer frees nothing, and that race crashes tritonserver 2.51."""
    fake = FakeUpstream()
    fake.gate.clear()
    coalescer = Coalescer(fake.send, max_rows=8, slots=1, max_wait_s=3600)
    waiting = asyncio.ensure_future(coalescer.submit(rows(1, 0), 1, later(10)))
    await settle()
    waiting.cancel()
    fake.gate.set()  # the answer comes back within the grace
    await asyncio.sleep(ABANDON_GRACE_S + 0.05)
    assert fake.cancelled == 0 and coalescer.busy == 0


@pytest.mark.asyncio
async def test_a_batch_nobody_waits_for_is_cancelled_upstream() -> None:
    fake = FakeUpstream()
    fake.gate.clear()
    coalescer = Coalescer(fake.send, max_rows=8, slots=1, max_wait_s=3600)
    waiting = asyncio.ensure_future(coalescer.submit(rows(1, 0), 1, later(10)))
    await settle()
    waiting.cancel()  # the client went away (aiohttp cancels its handler)
    await settle()
    assert fake.cancelled == 0  # not before it has run ABANDON_GRACE_S
    await asyncio.sleep(ABANDON_GRACE_S + 0.05)
    assert fake.cancelled == 1 and coalescer.busy == 0
    fake.gate.set()
    outputs, _ = await asyncio.wait_for(coalescer.submit(rows(1, 3), 1, later(10)), timeout=5)
    assert float(outputs["OUT"][0, 0]) == 6.0  # the slot is free again


# --- fair queuing across tenants ---------------------------------------------------------------------------
FLOOD, LIGHT = Tenant("flood"), Tenant("light")


async def backlog(coalescer: Coalescer, plan: list[tuple[Tenant, float]]) -> list[asyncio.Future[Any]]:
    """Submit one 1-row request per (tenant, value), in order, while the fake holds its first call."""
    futures = []
    for tenant, value in plan:
        futures.append(asyncio.ensure_future(coalescer.submit(rows(1, value), 1, later(10), tenant)))
        await settle()
    return futures


@pytest.mark.asyncio
async def test_a_light_tenant_leaves_with_the_next_batch_ahead_of_a_floods_backlog() -> None:
    fake = FakeUpstream()
    fake.gate.clear()
    coalescer = Coalescer(fake.send, max_rows=2, slots=1, max_wait_s=3600)
    futures = await backlog(coalescer, [(FLOOD, 1)] * 9 + [(LIGHT, 2)])
    fake.gate.set()
    await asyncio.gather(*futures)
    assert fake.values[0] == [1] and 2 in fake.values[1]  # in arrival order it would have left in the 5th call


@pytest.mark.asyncio
async def test_a_tenant_alone_keeps_arrival_order() -> None:
    fake = FakeUpstream()
    fake.gate.clear()
    coalescer = Coalescer(fake.send, max_rows=3, slots=1, max_wait_s=3600)
    futures = await backlog(coalescer, [(FLOOD, value) for value in range(7)])
    fake.gate.set()
    await asyncio.gather(*futures)
    assert fake.values == [[0], [1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize(
    ("weights", "per_batch"),
    [
        pytest.param((1, 1), (2, 2), id="equal-weights-equal-rows"),
        pytest.param((3, 1), (3, 1), id="three-to-one"),
    ],
)
@pytest.mark.asyncio
async def test_saturating_tenants_share_rows_by_weight(weights: tuple[int, int], per_batch: tuple[int, int]) -> None:
    heavy, light = Tenant("a", weight=weights[0]), Tenant("b", weight=weights[1])
    fake = FakeUpstream()
    fake.gate.clear()
    coalescer = Coalescer(fake.send, max_rows=4, slots=1, max_wait_s=3600)
    futures = await backlog(coalescer, [(heavy, 1)] * 40 + [(light, 2)] * 40)
    fake.gate.set()
    await asyncio.gather(*futures)
    both = [call for call in fake.values[1:] if 1 in call and 2 in call]
    assert len(both) >= 8
    assert all((call.count(1), call.count(2)) == per_batch for call in both[:8])


@pytest.mark.asyncio
async def test_a_higher_class_leaves_first_and_the_batch_carries_its_level() -> None:
    urgent = Tenant("urgent", priority="high")
    fake = FakeUpstream()
    fake.gate.clear()
    coalescer = Coalescer(fake.send, max_rows=2, slots=1, max_wait_s=3600)
    futures = await backlog(coalescer, [(FLOOD, 1)] * 5 + [(urgent, 3)])
    fake.gate.set()
    await asyncio.gather(*futures)
    assert fake.values[1] == [3, 1] and fake.levels[:2] == [2, 1]


@pytest.mark.asyncio
async def test_a_lower_class_waits_at_most_the_aging_bound() -> None:
    """Without aging a steady higher-class backlog would hold the low request for as long as it lasts."""
    urgent, background = Tenant("urgent", priority="high"), Tenant("background", priority="low")
    fake = FakeUpstream()
    fake.gate.clear()
    coalescer = Coalescer(fake.send, max_rows=1, slots=1, max_wait_s=3600, aging_s=0.05)
    futures = await backlog(coalescer, [(urgent, 1), (background, 9)] + [(urgent, 1)] * 5)
    await asyncio.sleep(0.1)  # the low request is now older than the aging bound
    fake.gate.set()
    await asyncio.gather(*futures)
    assert fake.values[1] == [9]


@pytest.mark.asyncio
async def test_queue_waits_are_reported_per_tenant() -> None:
    waits: list[tuple[str, float]] = []
    fake = FakeUpstream()
    fake.gate.clear()
    coalescer = Coalescer(
        fake.send, max_rows=4, slots=1, max_wait_s=3600, on_wait=lambda t, s: waits.append((t.name, s))
    )
    futures = await backlog(coalescer, [(FLOOD, 1), (LIGHT, 2)])
    fake.gate.set()
    await asyncio.gather(*futures)
    assert [name for name, _ in waits] == ["flood", "light"] and all(seconds >= 0 for _, seconds in waits)


def test_the_priority_classes_are_the_levels_the_sync_writes() -> None:
    """A batch's level goes to Triton as its priority: the generated config must have every class's level."""
    assert sorted(LEVELS.values()) == list(range(1, PRIORITY_LEVELS + 1))
    assert LEVELS[Tenant("any").priority] == DEFAULT_PRIORITY_LEVEL


@pytest.mark.asyncio
async def test_aging_never_reorders_one_class() -> None:
    """An aged backlog of the only class keeps the fair order: a light tenant still leaves next."""
    fake = FakeUpstream()
    fake.gate.clear()
    coalescer = Coalescer(fake.send, max_rows=2, slots=1, max_wait_s=3600, aging_s=0.05)
    futures = await backlog(coalescer, [(FLOOD, 1)] * 9)
    await asyncio.sleep(0.1)  # the flood's backlog is now older than the aging bound
    futures += await backlog(coalescer, [(LIGHT, 2)])
    fake.gate.set()
    await asyncio.gather(*futures)
    assert 2 in fake.values[1]


@pytest.mark.asyncio
async def test_a_higher_class_leaving_does_not_push_a_lower_class_newcomer_back() -> None:
    """Each class has its own clock: a flood of urgent requests does not advance the normal class's."""
    urgent = Tenant("urgent", priority="high")
    fake = FakeUpstream()
    fake.gate.clear()
    coalescer = Coalescer(fake.send, max_rows=2, slots=1, max_wait_s=3600, aging_s=3600)
    futures = await backlog(coalescer, [(FLOOD, 1)] * 9 + [(urgent, 3)] * 6)
    fake.gate.set()
    while sum(call.count(3) for call in fake.values) < 6:  # the urgent ones leave first
        await asyncio.sleep(0)
    fake.gate.clear()
    await settle()
    sent = len(fake.values)
    futures += await backlog(coalescer, [(LIGHT, 2)])
    fake.gate.set()
    await asyncio.gather(*futures)
    assert 2 in fake.values[sent] or 2 in fake.values[sent + 1]


@pytest.mark.asyncio
async def test_requests_that_expired_in_the_queue_do_not_count_against_their_tenant() -> None:
    fake = FakeUpstream()
    fake.gate.clear()
    coalescer = Coalescer(fake.send, max_rows=2, slots=1, max_wait_s=3600)
    busy = asyncio.ensure_future(coalescer.submit(rows(1, 0), 1, later(10), LIGHT))
    await settle()
    expiring = [asyncio.ensure_future(coalescer.submit(rows(1, 1), 1, later(0.05), FLOOD)) for _ in range(20)]
    results = await asyncio.gather(*expiring, return_exceptions=True)
    assert all(isinstance(result, DeadlineExceeded) for result in results)
    futures = await backlog(coalescer, [(LIGHT, 2)] * 6 + [(FLOOD, 3)])
    fake.gate.set()
    await asyncio.gather(busy, *futures)
    assert 3 in fake.values[1]  # the flood had nothing live queued: it starts at the clock, next to the light one


@pytest.mark.asyncio
async def test_an_abandoned_request_does_not_start_the_cap_early() -> None:
    fake = FakeUpstream()
    fake.gate.clear()
    coalescer = Coalescer(fake.send, max_rows=4, slots=1, max_wait_s=0.2)
    busy = asyncio.ensure_future(coalescer.submit(rows(1, 0), 1, later(10)))
    abandoned = asyncio.ensure_future(coalescer.submit(rows(1, 1), 1, later(10)))
    await settle()
    abandoned.cancel()
    await asyncio.sleep(0.15)
    live = asyncio.ensure_future(coalescer.submit(rows(1, 2), 1, later(10)))
    await asyncio.sleep(0.1)  # the abandoned one's cap has passed; the live one's has not
    assert len(fake.calls) == 1
    fake.gate.set()
    await asyncio.gather(busy, live)


@pytest.mark.asyncio
async def test_the_cap_sends_the_requests_that_waited_first() -> None:
    """A batch the cap sends takes the overdue requests, even when the fair order would put others first."""
    fake = FakeUpstream()
    fake.gate.clear()
    coalescer = Coalescer(fake.send, max_rows=1, slots=1, max_wait_s=0.1)
    futures = await backlog(coalescer, [(FLOOD, 0), (FLOOD, 1)])
    await asyncio.sleep(0.05)
    heavy = Tenant("heavy", weight=4)
    futures += await backlog(coalescer, [(heavy, 2)])  # ahead of the flood's in the fair order, not overdue yet
    await asyncio.sleep(0.07)  # the flood's second request is now overdue
    assert fake.values[:2] == [[0], [1]]
    fake.gate.set()
    await asyncio.gather(*futures)
