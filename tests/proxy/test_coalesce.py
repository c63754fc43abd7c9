"""Proxy-side coalescing: unit behaviour with a fake upstream, and end to end against Triton."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from nexusml import demo
from nexusml.sync.triton import TritonServer
from nexusml.testing.models import DEMO_SPEC
from proxy.coalesce import Coalescer, batch_plan
from proxy.errors import UpstreamUnavailable
from tests.proxy.conftest import MakeClient


class FakeUpstream:
    """Doubles its input; records every call's rows and deadline; holds calls while `gate` is closed."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[int, float]] = []
        self.fail = fail
        self.gate = asyncio.Event()
        self.gate.set()

    async def send(self, arrays: dict[str, np.ndarray], rows: int, deadline: float) -> tuple[Any, str]:
        assert len(arrays["IN"]) == rows
        self.calls.append((rows, deadline))
        await self.gate.wait()
        if self.fail:
            raise UpstreamUnavailable("down")
        return {"OUT": arrays["IN"] * 2}, "7"


def rows(n: int, value: float) -> dict[str, np.ndarray]:
    return {"IN": np.full((n, 3), value, np.float32)}


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_a_lone_request_leaves_at_once() -> None:
    fake = FakeUpstream()
    coalescer = Coalescer(fake.send, max_rows=8, slots=2, max_wait_s=3600)
    outputs, version = await asyncio.wait_for(coalescer.submit(rows(1, 4), 1, 9.0), timeout=5)
    assert fake.calls == [(1, 9.0)] and version == "7"
    np.testing.assert_array_equal(outputs["OUT"], np.full((1, 3), 8, np.float32))


@pytest.mark.asyncio
async def test_requests_queue_while_every_slot_is_busy_and_leave_together() -> None:
    fake = FakeUpstream()
    fake.gate.clear()
    coalescer = Coalescer(fake.send, max_rows=8, slots=1, max_wait_s=3600)
    first = asyncio.ensure_future(coalescer.submit(rows(1, 0), 1, 100.0))
    await settle()
    queued = [
        asyncio.ensure_future(coalescer.submit(rows(n, value), n, deadline))
        for n, value, deadline in [(1, 1, 100.0), (2, 2, 50.0), (1, 3, 200.0)]
    ]
    await settle()
    assert fake.calls == [(1, 100.0)]  # the slot is busy: the others wait here, not in Triton's queue
    fake.gate.set()
    results = await asyncio.gather(first, *queued)
    assert fake.calls == [(1, 100.0), (4, 50.0)]  # then one upstream call, the earliest deadline
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
    futures = [asyncio.ensure_future(coalescer.submit(rows(1, i), 1, 1.0)) for i in range(6)]
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
    futures = [asyncio.ensure_future(coalescer.submit(rows(1, i), 1, 1.0)) for i in range(2)]
    await settle()
    assert len(fake.calls) == 1
    await asyncio.sleep(0.2)
    assert len(fake.calls) == 2  # the second left after max_wait_s although the first still holds the slot
    fake.gate.set()
    await asyncio.gather(*futures)


@pytest.mark.asyncio
async def test_different_shapes_are_not_merged_and_failures_reach_every_member() -> None:
    fake = FakeUpstream(fail=True)
    fake.gate.clear()
    coalescer = Coalescer(fake.send, max_rows=8, slots=1, max_wait_s=3600)
    futures = [
        asyncio.ensure_future(coalescer.submit({"IN": np.zeros((1, width), np.float32)}, 1, 1.0))
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
    async def broken(arrays: dict[str, np.ndarray], rows: int, deadline: float) -> tuple[Any, str]:
        return {"OUT": 5}, "7"  # not an array: splitting the answer fails

    coalescer = Coalescer(broken, max_rows=8, slots=1, max_wait_s=3600)
    results = await asyncio.wait_for(
        asyncio.gather(*(coalescer.submit(rows(1, i), 1, 1.0) for i in range(3)), return_exceptions=True), timeout=5
    )
    assert all(isinstance(result, TypeError) for result in results)
