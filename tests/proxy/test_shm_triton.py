"""Shared memory between the proxy and a real Triton: requests go through it, `off` and a refused registration
fall back to the message (said once), and the restricted shared-memory API of `nexus triton` (TRITON_SHM_KEY)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from aiohttp.test_utils import TestClient

from nexusml.command import demo
from nexusml.core.settings import SHM_HEADER
from nexusml.testing.models import DEMO_SPEC
from nexusml.testing.servers import start_triton
from nexusml.triton.server import TritonServer
from proxy.state import STATE
from tests.proxy.conftest import MakeClient

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

KEY = "the-shm-key"
ROWS = np.random.default_rng(3).normal(size=(6, DEMO_SPEC.width)).round(3).tolist()


@pytest.fixture(scope="module")
def keyed_triton(demo_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """A Triton whose shared-memory API wants TRITON_SHM_KEY (and whose repository API its admin key)."""
    server = start_triton(
        demo_repository, tmp_path_factory.mktemp("keyed-triton"), TRITON_SHM_KEY=KEY, TRITON_ADMIN_KEY="admin"
    )
    yield server
    server.stop()


def triton_regions(server: TritonServer, key: str | None = None) -> set[str]:
    """The names of the system shared-memory regions Triton has registered."""
    client = httpclient.InferenceServerClient(f"{server.settings.host}:{server.settings.http_port}")
    try:
        status = client.get_system_shared_memory_status(headers={SHM_HEADER: key} if key else None)
    finally:
        client.close()
    return {region["name"] for region in status}


async def ready(client: TestClient) -> dict[str, Any]:
    """/v1/models once the proxy is ready (the region is registered as the model becomes ready)."""
    assert (await client.get("/readyz")).status == 200
    response = await client.get("/v1/models")
    assert response.status == 200
    return (await response.json())["shared_memory"]


async def assert_answers(client: TestClient) -> None:
    response = await client.post("/predict", json={"inputs": ROWS})
    assert response.status == 200, await response.text()
    expected = demo.reference_outputs(DEMO_SPEC, ROWS)[0]
    np.testing.assert_allclose((await response.json())["outputs"], expected, rtol=1e-5, atol=1e-5)


def count_leases(client: TestClient) -> list[bool]:
    """Record, per upstream request, whether it took a shared-memory slot."""
    upstream = client.server.app[STATE].upstream
    assert upstream is not None
    taken: list[bool] = []
    lease = upstream.shm.lease

    def counted(*args: Any) -> Any:
        got = lease(*args)
        taken.append(got is not None)
        return got

    upstream.shm.lease = counted  # type: ignore[method-assign]
    return taken


async def test_requests_go_through_shared_memory(
    proxy_client: MakeClient, upstream_url: str, triton: TritonServer
) -> None:
    client = await proxy_client(upstream_url)
    shared = await ready(client)
    upstream = client.server.app[STATE].upstream
    assert upstream is not None
    assert shared["active"] is True and upstream.shm.region in shared["detail"]
    assert upstream.shm.region in triton_regions(triton)
    taken = count_leases(client)
    await assert_answers(client)
    assert taken and all(taken)
    key = Path("/dev/shm", upstream.shm.key[1:])
    await client.close()
    assert upstream.shm.region not in triton_regions(triton) and not key.exists()


async def test_off_sends_tensors_in_the_message(
    proxy_client: MakeClient, triton: TritonServer, caplog: pytest.LogCaptureFixture
) -> None:
    before = triton_regions(triton)
    with caplog.at_level(logging.INFO, logger="proxy"):
        client = await proxy_client(triton.grpc_url, UPSTREAM_SHARED_MEMORY="off")
        assert await ready(client) == {"active": False, "detail": "off (UPSTREAM_SHARED_MEMORY=off)"}
    taken = count_leases(client)
    await assert_answers(client)
    assert taken == [False] and triton_regions(triton) == before
    said = [r.message for r in caplog.records if r.message.startswith("shared memory:")]
    assert said == ["shared memory: tensors go to Triton in the message: UPSTREAM_SHARED_MEMORY=off"]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_the_shared_memory_api_wants_its_key(
    proxy_client: MakeClient, keyed_triton: TritonServer, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = keyed_triton.grpc_url if protocol == "grpc" else keyed_triton.http_url
    with caplog.at_level(logging.INFO, logger="proxy"):
        refused = await proxy_client(url, TRITON_SHM_KEY="wrong", PROXY_COALESCE="0")
        shared = await ready(refused)
        await assert_answers(refused)
        await assert_answers(refused)
    assert shared["active"] is False and "refused TRITON_SHM_KEY" in shared["detail"]
    said = [r.message for r in caplog.records if r.message.startswith("shared memory:")]
    assert said == [f"shared memory: tensors go to Triton in the message: {shared['detail']}"]
    with pytest.raises(Exception, match="restricted"):
        triton_regions(keyed_triton)  # without the key, not even the status

    allowed = await proxy_client(url, TRITON_SHM_KEY=KEY, PROXY_COALESCE="0")
    assert (await ready(allowed))["active"] is True
    taken = count_leases(allowed)
    await assert_answers(allowed)
    assert taken == [True]
    upstream = allowed.server.app[STATE].upstream
    assert upstream is not None and upstream.shm.region in triton_regions(keyed_triton, KEY)
