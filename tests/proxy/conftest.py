"""Fixtures for the proxy: settings -> app -> client, against the real Triton of `tests/conftest.py`.

`proxy_client(url, **env)` builds a proxy app on aiohttp's test server (same connection options as
production) for one upstream URL; `upstream_url` is parametrized so a test runs once per protocol.
`ProxyProcess` runs `python -m proxy` as a real process on a free port, for signal and worker tests.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from nexusml.core.settings import load
from nexusml.sync.triton import TritonServer
from proxy.app import create_app, server_options
from proxy.settings import ProxySettings
from tests.conftest import base_environment, free_port

ROOT = Path(__file__).resolve().parents[2]
ROW = [1.0, 2.0, 3.0, 4.0, 5.0]

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
        # TestServer passes runner options only through start_server, not its constructor.
        await server.start_server(**server_options(settings))
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


class ProxyProcess:
    """`python -m proxy` on a free port; stopped (SIGKILL as a last resort) when the test ends."""

    def __init__(self, log_file: Path, **env: str) -> None:
        self.port = free_port()
        self.env = {**base_environment(), "PORT": str(self.port), "HOST": "127.0.0.1", **env}
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_for: str = "/readyz", timeout_s: float = 60) -> ProxyProcess:
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "proxy"], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"proxy exited with {self.process.returncode}: {self.log()}")
            if self.get(wait_for)[0] == 200:
                return self
            time.sleep(0.1)
        raise AssertionError(f"proxy not answering {wait_for}: {self.log()}")

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()
        except OSError:
            return 0, b""

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")[-4000:]

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout_s: float = 60) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


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
