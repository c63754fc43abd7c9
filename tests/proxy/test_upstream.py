"""Upstream failures: Triton stopped and restarted, a dead Python stub, deadlines, and the error mapping.

Stop/restart tests use their own tritonserver (same repository, own ports), never the shared one.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tritonclient.utils import InferenceServerException

from nexusml.testing.environment import TRITON_PORT_SETTINGS, port_settings
from nexusml.testing.servers import restart_triton, start_triton
from nexusml.triton.server import TritonServer
from proxy import health
from proxy.client import GrpcUpstream, from_triton_error
from proxy.errors import http_status
from tests.proxy.conftest import ROW, MakeClient, proxy_settings

pytestmark = pytest.mark.integration


class OwnTriton:
    """A private tritonserver that tests may stop and start again on the same ports."""

    def __init__(self, repository: Path, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.server = start_triton(repository, log_dir)

    def stop(self) -> None:
        self.server.stop()

    def restart(self) -> None:
        # A stopped TritonServer removes its backend folder, so a new one is made with the same settings.
        self.server = restart_triton(self.server, self.log_dir)


@pytest.fixture(scope="module")
def own_triton(demo_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnTriton]:
    own = OwnTriton(demo_repository, tmp_path_factory.mktemp("own-triton"))
    yield own
    own.stop()


@pytest.fixture
def uncached_readiness(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every /readyz asks Triton afresh, so a test sees a change at once rather than after the cache's second."""
    monkeypatch.setattr(health, "READY_CACHE_S", 0.0)


async def poll_ready(client: Any, expected: int, attempts: int = 100) -> Any:
    """GET /readyz until it answers `expected` (at most `attempts` tries, 50 ms apart); the last answer."""
    for _ in range(attempts):
        response = await client.get("/readyz")
        if response.status == expected:
            return response
        await asyncio.sleep(0.05)
    return response


async def poll_status(client: Any, expected: int, attempts: int = 300) -> int:
    status = 0
    for _ in range(attempts):
        status = (await client.post("/predict", json={"input": ROW})).status
        if status == expected:
            return status
        await asyncio.sleep(0.1)
    return status


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.usefixtures("uncached_readiness")
async def test_triton_stopped_mid_run_gives_503_then_recovers(
    proxy_client: MakeClient, own_triton: OwnTriton, protocol: str
) -> None:
    url = own_triton.server.grpc_url if protocol == "grpc" else own_triton.server.http_url
    # A long deadline: a 503 (not a 504) shows the proxy did not wait for it.
    client = await proxy_client(url, REQUEST_TIMEOUT_MS="60000")
    assert (await client.post("/predict", json={"input": ROW})).status == 200
    own_triton.stop()
    try:
        response = await client.post("/predict", json={"input": ROW})
        assert response.status == 503, await response.text()
        assert (await response.json())["error"]["code"] == "upstream_unavailable"
        assert int(response.headers["Retry-After"]) >= 1
        ready = await client.get("/readyz")
        assert ready.status == 503 and (await ready.json())["error"]["code"] == "not_ready"
        assert (await client.get("/healthz")).status == 200
    finally:
        own_triton.restart()
    assert await poll_status(client, 200) == 200
    assert (await poll_ready(client, 200)).status == 200


@pytest.mark.asyncio
async def test_proxy_started_before_triton_becomes_ready_later(
    proxy_client: MakeClient, demo_repository: Path, tmp_path: Path
) -> None:
    ports = port_settings(TRITON_PORT_SETTINGS)
    client = await proxy_client(f"grpc://127.0.0.1:{ports['TRITON_GRPC_PORT']}")
    response = await client.post("/predict", json={"input": ROW})
    assert response.status == 503 and (await response.json())["error"]["code"] == "not_ready"
    assert (await client.get("/healthz")).status == 200
    server = start_triton(demo_repository, tmp_path, **ports)
    try:
        assert await poll_status(client, 200) == 200
    finally:
        server.stop()


def _stub_pids(server: TritonServer) -> list[int]:
    assert server.process is not None
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == server.process.pid and b"triton_python_backend_stub" in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.asyncio
@pytest.mark.usefixtures("uncached_readiness")
async def test_dead_python_stub_turns_readiness_false(proxy_client: MakeClient, own_triton: OwnTriton) -> None:
    client = await proxy_client(own_triton.server.grpc_url)
    assert (await client.get("/readyz")).status == 200
    pids = _stub_pids(own_triton.server)
    assert pids, "no Python backend stub found under tritonserver"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    ready = await poll_ready(client, 503)
    assert ready.status == 503, await ready.text()
    assert (await ready.json())["error"]["code"] == "not_ready"


@pytest.mark.asyncio
async def test_deadline_passed_gives_504(client: Any) -> None:
    response = await client.post("/predict", json={"input": ROW}, headers={"X-Request-Timeout-Ms": "0.001"})
    assert response.status == 504
    assert (await response.json())["error"]["code"] == "deadline_exceeded"
    assert (await client.post("/predict", json={"input": ROW})).status == 200


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("deadline_s", "queue_bound"),
    [
        pytest.param(5.0, True, id="queue-timeout-sooner"),
        pytest.param(0.5, False, id="deadline-sooner"),
    ],
)
async def test_remaining_deadline_is_sent_to_triton(
    triton: TritonServer, monkeypatch: pytest.MonkeyPatch, deadline_s: float, queue_bound: bool
) -> None:
    """The gRPC deadline carries what is left; Triton's own request timeout (which overrides the model's queue
    policy) the smaller of that and the model's QUEUE_TIMEOUT_MS: a 10 s deadline must not override a 2 s queue
    timeout."""
    upstream = GrpcUpstream(proxy_settings(triton.grpc_url))
    seen: dict[str, Any] = {}
    stub = upstream.client._client_stub
    real = stub.ModelInfer

    async def spy(request: Any, timeout: float) -> Any:
        seen.update(client_timeout=timeout, timeout=request.parameters["timeout"].int64_param)
        return await real(request=request, timeout=timeout)

    monkeypatch.setattr(stub, "ModelInfer", spy)
    import numpy as np

    schema = await upstream.schema("demo_mlp", "")
    assert schema.queue_timeout_s == 2.0  # the sync's QUEUE_TIMEOUT_MS default, read from the model config
    loop = asyncio.get_running_loop()
    arrays = {"INPUT__0": np.ones((1, 5), np.float32)}
    outputs, version = await upstream.infer(schema, "", arrays, loop.time() + deadline_s)
    await upstream.close()
    assert outputs["OUTPUT__0"].shape == (1, 2) and version == "1"
    assert 0 < seen["client_timeout"] <= deadline_s
    expected = 2_000_000 if queue_bound else seen["client_timeout"] * 1_000_000
    assert seen["timeout"] == pytest.approx(expected, abs=1)


@pytest.mark.parametrize(
    ("message", "status", "code", "answered"),
    [
        pytest.param(
            "Exceeds maximum queue size", "StatusCode.UNAVAILABLE", "upstream_busy", 429, id="grpc-queue-full"
        ),
        pytest.param("Exceeds maximum queue size", "503", "upstream_busy", 429, id="http-queue-full"),
        pytest.param("Request timeout expired", "StatusCode.UNAVAILABLE", "deadline_exceeded", 504, id="queue-timeout"),
        pytest.param("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED", "deadline_exceeded", 504, id="grpc-deadline"),
        pytest.param(
            "failed to connect to all addresses",
            "StatusCode.UNAVAILABLE",
            "upstream_unavailable",
            503,
            id="grpc-unreachable",
        ),
        pytest.param(
            "Request for unknown model: 'x' is not found",
            "StatusCode.NOT_FOUND",
            "upstream_unavailable",
            503,
            id="model-gone",
        ),
        pytest.param(
            "unexpected shape for input", "StatusCode.INVALID_ARGUMENT", "upstream_rejected", 400, id="grpc-invalid"
        ),
        pytest.param("unexpected shape for input", "400", "upstream_rejected", 400, id="http-invalid"),
        pytest.param("Stub process is not healthy", "StatusCode.INTERNAL", "upstream_error", 502, id="grpc-internal"),
        pytest.param("boom", "500", "upstream_error", 502, id="http-500"),
        pytest.param("boom", None, "upstream_error", 502, id="no-status"),
    ],
)
def test_triton_error_mapping(message: str, status: str | None, code: str, answered: int) -> None:
    err = from_triton_error(InferenceServerException(msg=message, status=status))
    assert (err.code, http_status(err)) == (code, answered)
