"""Proxy-side coalescing: unit behaviour with a fake upstream, and end to end against Triton."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from nexusml import demo
from nexusml.sync.triton import TritonServer
from nexusml.testing.models import DEMO_SPEC
from proxy.coalesce import Coalescer
from proxy.errors import UpstreamUnavailable
from tests.proxy.conftest import MakeClient


class FakeUpstream:
    """Doubles its input; records every call's rows and deadline."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[int, float]] = []
        self.fail = fail

    async def send(self, arrays: dict[str, np.ndarray], rows: int, deadline: float) -> tuple[Any, str]:
        self.calls.append((rows, deadline))
        await asyncio.sleep(0)
        if self.fail:
            raise UpstreamUnavailable("down")
        return {"OUT": arrays["IN"] * 2}, "7"


def rows(n: int, value: float) -> dict[str, np.ndarray]:
    return {"IN": np.full((n, 3), value, np.float32)}


@pytest.mark.asyncio
async def test_concurrent_requests_are_merged_and_split_back() -> None:
    fake = FakeUpstream()
    coalescer = Coalescer(fake.send, max_rows=8, delay_s=0.05)
    results = await asyncio.gather(
        coalescer.submit(rows(1, 1), 1, 100.0),
        coalescer.submit(rows(2, 2), 2, 50.0),
        coalescer.submit(rows(1, 3), 1, 200.0),
    )
    assert fake.calls == [(4, 50.0)]  # one upstream call, the earliest deadline
    for (outputs, version), (n, value) in zip(results, [(1, 1), (2, 2), (1, 3)], strict=True):
        assert version == "7"
        np.testing.assert_array_equal(outputs["OUT"], np.full((n, 3), value * 2, np.float32))


@pytest.mark.asyncio
async def test_a_full_batch_is_sent_without_waiting() -> None:
    fake = FakeUpstream()
    coalescer = Coalescer(fake.send, max_rows=4, delay_s=3600)
    results = await asyncio.gather(*(coalescer.submit(rows(1, i), 1, 1.0) for i in range(8)))
    assert [call[0] for call in fake.calls] == [4, 4]
    assert [float(outputs["OUT"][0, 0]) for outputs, _ in results] == [2.0 * i for i in range(8)]


@pytest.mark.asyncio
async def test_different_shapes_are_not_merged_and_failures_reach_every_member() -> None:
    fake = FakeUpstream(fail=True)
    coalescer = Coalescer(fake.send, max_rows=8, delay_s=0.01)
    results = await asyncio.gather(
        coalescer.submit({"IN": np.zeros((1, 3), np.float32)}, 1, 1.0),
        coalescer.submit({"IN": np.zeros((1, 4), np.float32)}, 1, 1.0),
        coalescer.submit({"IN": np.zeros((1, 3), np.float32)}, 1, 1.0),
        return_exceptions=True,
    )
    assert sorted(call[0] for call in fake.calls) == [1, 2]
    assert all(isinstance(result, UpstreamUnavailable) for result in results)
    await coalescer.close()


@pytest.mark.integration
@pytest.mark.asyncio
async def test_coalescing_end_to_end_matches_the_model(proxy_client: MakeClient, triton: TritonServer) -> None:
    client = await proxy_client(triton.grpc_url, PROXY_COALESCE="1", BATCH_SIZE="16", BATCH_TIMEOUT_MS="20")
    requests = np.random.default_rng(3).normal(size=(24, 5)).astype(np.float32).tolist()
    responses = await asyncio.gather(*(client.post("/predict", json={"input": row}) for row in requests))
    outputs = [(await response.json())["output"] for response in responses]
    assert all(response.status == 200 for response in responses)
    np.testing.assert_allclose(outputs, demo.reference_outputs(DEMO_SPEC, requests)[0], rtol=1e-5, atol=1e-5)
    metrics = await (await client.get("/metrics")).text()
    count = next(line for line in metrics.splitlines() if line.startswith("nexus_proxy_upstream_batch_rows_count"))
    assert float(count.split()[-1]) < len(requests)  # fewer upstream calls than requests
