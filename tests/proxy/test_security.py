"""API keys (Bearer or X-API-Key, open endpoints configurable), tenants' rate limits on real predictions, and the
in-flight bound (429 + Retry-After)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nexusml.triton.server import TritonServer
from tests.proxy.conftest import ROW, MakeClient, holding_upstream, in_flight

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

KEYS = {"API_KEYS": "k-one,k-two"}


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({}, 401, id="no-key"),
        pytest.param({"Authorization": "Bearer nope"}, 401, id="wrong-bearer"),
        pytest.param({"X-API-Key": "k-on"}, 401, id="prefix-of-key"),
        pytest.param({"Authorization": "Basic k-one"}, 401, id="basic-scheme"),
        pytest.param({"Authorization": "Bearer k-one"}, 200, id="bearer"),
        pytest.param({"Authorization": "bearer k-two"}, 200, id="bearer-lowercase"),
        pytest.param({"X-API-Key": "k-two"}, 200, id="x-api-key"),
    ],
)
async def test_api_keys(proxy_client: MakeClient, triton: TritonServer, headers: dict[str, str], status: int) -> None:
    client = await proxy_client(triton.grpc_url, **KEYS)
    response = await client.post("/predict", json={"input": ROW}, headers=headers)
    assert response.status == status
    if status == 401:
        assert (await response.json())["error"]["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_open_endpoints_and_protected_ones(proxy_client: MakeClient, triton: TritonServer) -> None:
    client = await proxy_client(triton.grpc_url, **KEYS)
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.yaml"):
        assert (await client.get(path)).status == 200, path
    assert (await client.get("/v1/models")).status == 401
    assert (await client.get("/nope")).status == 401  # no route discovery without a key
    closed = await proxy_client(triton.grpc_url, **KEYS, OPEN_ENDPOINTS="/healthz")
    assert (await closed.get("/healthz")).status == 200
    assert (await closed.get("/metrics")).status == 401


async def test_keys_are_never_logged(
    proxy_client: MakeClient, triton: TritonServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = await proxy_client(triton.grpc_url, **KEYS)
    with caplog.at_level(logging.DEBUG):
        await client.post("/predict", json={"input": ROW}, headers={"Authorization": "Bearer k-one"})
        await client.post("/predict", json={"input": ROW}, headers={"X-API-Key": "guess-secret"})
    assert caplog.records
    assert "k-one" not in caplog.text and "guess-secret" not in caplog.text


async def test_over_the_in_flight_limit_answers_429_at_once(proxy_client: MakeClient, triton: TritonServer) -> None:
    """One request held in flight upstream fills MAX_IN_FLIGHT=1; the next gets 429 at once."""
    client = await proxy_client(triton.grpc_url, MAX_IN_FLIGHT="1", PROXY_COALESCE="0")
    release = await holding_upstream(client)
    held = asyncio.create_task(client.post("/predict", json={"input": ROW}))
    await in_flight(client, 1)
    rejected = await client.post("/predict", json={"input": ROW})
    assert rejected.status == 429
    assert (await rejected.json())["error"]["code"] == "overloaded"
    assert int(rejected.headers["Retry-After"]) >= 1
    release.set()
    assert (await held).status == 200
    assert (await client.post("/predict", json={"input": ROW})).status == 200


async def test_slow_uploads_hold_no_in_flight_slot(proxy_client: MakeClient, triton: TritonServer) -> None:
    """A slot is taken only once the body is read, so slow uploads cannot make everyone else 429."""
    client = await proxy_client(triton.grpc_url, MAX_IN_FLIGHT="1")
    release = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b'{"input": [1, 2, 3,'
        await release.wait()
        yield b" 4, 5]}"

    uploads = [
        asyncio.create_task(client.post("/predict", data=slow_body(), headers={"Content-Type": "application/json"}))
        for _ in range(3)
    ]
    await asyncio.sleep(0.2)  # the uploads have started (and hold nothing)
    assert (await client.post("/predict", json={"input": ROW})).status == 200
    release.set()  # the three bodies complete together for one slot: 429 for those that find it taken
    statuses = [(await upload).status for upload in uploads]
    assert 200 in statuses and set(statuses) <= {200, 429}, statuses


async def test_a_client_that_goes_away_frees_its_slot(proxy_client: MakeClient, triton: TritonServer) -> None:
    """A client that disconnects frees its slot at once, not at its deadline (handler cancellation on)."""
    client = await proxy_client(triton.grpc_url, MAX_IN_FLIGHT="1", PROXY_COALESCE="0")
    release = await holding_upstream(client)
    gone = asyncio.create_task(client.post("/predict", json={"input": ROW}))
    await in_flight(client, 1)
    gone.cancel()  # closes the connection
    await in_flight(client, 0)
    release.set()
    assert (await client.post("/predict", json={"input": ROW})).status == 200
    metrics = await (await client.get("/metrics")).text()
    assert 'route="/predict",status="499"' in metrics  # counted as "client closed", never sent


ROWS_LIMITED = """\
tenants:
  team-a:
    keys: [k-one]
    rate_limit: {rows_per_s: 0.001, rows_burst: 2}
  team-b:
    keys: [k-two]
"""


async def test_rows_are_charged_after_the_parse(proxy_client: MakeClient, triton: TritonServer, tmp_path: Path) -> None:
    """A prediction of 3 rows passes a rows bucket of 2 (rows are known only after the parse) and leaves it in
    debt: the tenant's next prediction is refused before its body, the other tenant's is served."""
    keys = tmp_path / "keys.yaml"
    keys.write_text(ROWS_LIMITED)
    client = await proxy_client(triton.grpc_url, API_KEYS_FILE=str(keys), PROXY_WORKERS="1")
    first = await client.post("/predict", json={"inputs": [ROW, ROW, ROW]}, headers={"X-API-Key": "k-one"})
    assert first.status == 200, await first.text()
    refused = await client.post("/predict", json={"input": ROW}, headers={"X-API-Key": "k-one"})
    body = await refused.json()
    assert (refused.status, body["error"]["code"]) == (429, "rate_limited"), body
    assert "over its rate limit of 0.001 rows/s" in body["error"]["message"]
    assert int(refused.headers["Retry-After"]) > 1
    assert (await client.post("/predict", json={"input": ROW}, headers={"X-API-Key": "k-two"})).status == 200
    metrics = await (await client.get("/metrics")).text()
    assert 'nexus_proxy_tenant_rows_total{tenant="team-a"} 3.0' in metrics
    assert 'nexus_proxy_tenant_rejected_total{cause="rate_rows",tenant="team-a"} 1.0' in metrics
    assert 'nexus_proxy_tenant_requests_total{tenant="team-b"} 1.0' in metrics
