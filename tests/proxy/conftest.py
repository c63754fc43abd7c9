"""Fixtures for the proxy: settings -> app -> client, against the real Triton of `tests/conftest.py`.

`proxy_client(url, **env)` builds a proxy app on aiohttp's test server (same connection options as
production) for one upstream URL; `upstream_url` is parametrized so a test runs once per protocol.
`proxy_process(**env)` runs `nexus proxy` as a real process on a free port (the harness's `ProxyProcess`),
for signal and worker tests. `SCHEMAS`, `ROWS` and `write_meta` are the models of the tests that serve schemas
themselves, without Triton (`UNREACHABLE` as its address).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from nexusml.core.settings import load
from nexusml.testing.servers import ProxyProcess
from nexusml.triton.server import TritonServer
from proxy.app import create_app, server_options
from proxy.schema import ModelSchema, TensorSchema
from proxy.settings import ProxySettings
from proxy.state import STATE

UNREACHABLE = "http://127.0.0.1:9"  # discard: nothing answers, and nothing here needs an answer
EXAMPLE = Path(__file__).parents[2] / "examples" / "nexus_meta.example.json"
# Two models of different shapes; `loading` is named by its metadata but never gets a schema.
SCHEMAS = {
    "alpha": ModelSchema(
        "alpha",
        ("1",),
        "python",
        8,
        (TensorSchema("INPUT__0", "FP32", (5,)),),
        (TensorSchema("OUTPUT__0", "FP32", (2,)),),
    ),
    "beta": ModelSchema(
        "beta",
        ("3",),
        "python",
        8,
        (TensorSchema("INPUT__0", "FP32", (3,)),),
        (TensorSchema("OUTPUT__0", "FP32", (1,)),),
    ),
}
ROWS = {"alpha": [1, 2, 3, 4, 5], "beta": [1, 2, 3], "loading": [1, 2, 3, 4, 5], "gamma": [1, 2, 3, 4, 5], "held": [1]}


def write_meta(directory: Path, filename: str, name: str) -> Path:
    data = json.loads(EXAMPLE.read_text())
    data["name"] = name
    path = directory / filename
    path.write_text(json.dumps(data))
    return path


ROW = [1.0, 2.0, 3.0, 4.0, 5.0]
BODY = json.dumps({"input": [1, 2, 3, 4, 5]}).encode()

MakeClient = Callable[..., Awaitable[TestClient]]


def proxy_settings(url: str, **env: str) -> ProxySettings:
    return load(ProxySettings, {"MODEL_SERVER_URL": url, "MODEL_NAME": "demo_mlp", **env})


@pytest.fixture(params=["grpc", "http"])
def upstream_url(request: pytest.FixtureRequest, triton: TritonServer) -> str:
    return triton.grpc_url if request.param == "grpc" else triton.http_url


@pytest_asyncio.fixture
async def proxy_client() -> AsyncIterator[MakeClient]:
    clients: list[TestClient] = []

    async def make(url: str, **env: str) -> TestClient:
        settings = proxy_settings(url, **env)
        server = TestServer(create_app(settings))
        # TestServer passes runner options only through start_server, not its constructor, and always turns
        # handler cancellation on itself (so this tier cannot tell it was off: see the slow-backend scenario).
        options = server_options(settings)
        options.pop("handler_cancellation")
        await server.start_server(**options)
        client = TestClient(server)
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest_asyncio.fixture
async def client(proxy_client: MakeClient, triton: TritonServer) -> TestClient:
    """A proxy over gRPC (the default protocol) to the shared Triton, coalescing off (on is the default)."""
    return await proxy_client(triton.grpc_url, PROXY_COALESCE="0")


@pytest.fixture
def proxy_process(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    started: list[ProxyProcess] = []

    def make(**env: str) -> ProxyProcess:
        process = ProxyProcess(tmp_path / f"proxy-{len(started)}.log", **env)
        started.append(process)
        return process

    yield make
    for process in started:
        process.stop()


def error_code(body: Any) -> str:
    return body["error"]["code"]


def wait_for_both_workers(proxy: ProxyProcess, path: str = "/healthz") -> None:
    """Until both of a two-worker proxy's workers have answered `path` (each on a fresh connection).

    The harness's start waits for one worker's /readyz; the other may still be starting (each is a fresh
    interpreter), and the kernel hands connections only to listening sockets. Needs ACCESS_LOG=all.
    """
    for _ in range(400):
        status, _ = proxy.get(path)
        assert status == 200
        if answered_by(proxy, path) == {0, 1}:
            return
        time.sleep(0.02)
    raise AssertionError(f"only workers {answered_by(proxy, path)} answered {path}")


def answered_by(proxy: ProxyProcess, path: str) -> set[int]:
    """The workers whose access log shows a request for `path` (metrics no longer tell workers apart)."""
    lines = proxy.log_file.read_text(errors="replace").splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{") and line.endswith("}")]
    return {record["worker"] for record in records if record["path"] == path}


async def in_flight(client: TestClient, count: int) -> None:
    """Wait (bounded) until the proxy's in-flight gauge reads `count`."""
    for _ in range(500):
        metrics = await (await client.get("/metrics")).text()
        if f"\nnexus_proxy_in_flight {count:.1f}\n" in metrics:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the in-flight gauge never read {count}")


async def holding_upstream(client: TestClient) -> asyncio.Event:
    """Make every inference wait upstream until the returned event is set (the schema is read first)."""
    assert (await client.get("/readyz")).status == 200
    state = client.server.app[STATE]
    assert state.upstream is not None
    release, infer = asyncio.Event(), state.upstream.infer

    async def held(*args: Any, **kwargs: Any) -> Any:
        await release.wait()
        return await infer(*args, **kwargs)

    state.upstream.infer = held  # type: ignore[method-assign]
    return release
