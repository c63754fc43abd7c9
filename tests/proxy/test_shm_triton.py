"""Shared memory between the proxy and a real Triton: requests go through it, `off` and a refused registration
fall back to the message (said once), the restricted shared-memory API of `nexus triton` (TRITON_SHM_KEY), and a
region retired after a call without an answer (Triton refuses to unregister it while that request runs)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterator
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
from proxy import shm
from proxy.client import connect
from proxy.errors import DeadlineExceeded
from proxy.state import STATE
from tests.proxy.conftest import MakeClient, proxy_settings

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

KEY = "the-shm-key"
ROWS = np.random.default_rng(3).normal(size=(6, DEMO_SPEC.width)).round(3).tolist()

# A model that answers `2 * rows`; a request whose first value is positive is held, still running in Triton, while
# the file HOLD names exists (its client may have given up long before), then answered all the same.
HELD_MODEL = """
import json, os, time
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.hold = json.loads(args["model_config"])["parameters"]["HOLD"]["string_value"]

    def execute(self, requests):
        responses = []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, "INPUT__0").as_numpy()
            if rows[:, 0].max() > 0:
                open(self.hold + ".started", "w").close()
                end = time.monotonic() + 120
                while os.path.exists(self.hold) and time.monotonic() < end:
                    time.sleep(0.01)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT__0", rows * 2)]))
        return responses
"""
WIDTH = 4096  # a request's slot (inputs and outputs): 32 KiB, half of the smallest region
REGION_BYTES = 64 * 1024


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


@pytest.fixture(scope="module")
def held_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TritonServer, Path]]:
    """A Triton serving only `held` (two instances: one can be held while the other answers), and its hold file."""
    root = tmp_path_factory.mktemp("held-triton")
    hold = root / "hold"
    model = root / "repository" / "held"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(HELD_MODEL)
    (model / "config.pbtxt").write_text(
        f"""name: "held"
backend: "python"
max_batch_size: 4
input [{{ name: "INPUT__0" data_type: TYPE_FP32 dims: [{WIDTH}] }}]
output [{{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [{WIDTH}] }}]
dynamic_batching {{ default_queue_policy {{ allow_timeout_override: true timeout_action: REJECT }} }}
instance_group [{{ kind: KIND_CPU count: 2 }}]
parameters {{ key: "HOLD" value: {{ string_value: "{hold}" }} }}
"""
    )
    server = start_triton(root / "repository", root)
    yield server, hold
    server.stop()


async def until(condition: Callable[[], bool]) -> None:
    """Poll `condition` (bounded: a broken rule fails instead of hanging)."""
    for _ in range(1200):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the condition never held")


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_a_slot_without_an_answer_is_lifted_once_triton_lets_its_region_go(
    held_triton: tuple[TritonServer, Path],
    protocol: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(shm, "RETRY_S", 0.1)
    server, hold = held_triton
    url = server.grpc_url if protocol == "grpc" else server.http_url
    upstream = connect(proxy_settings(url, MODEL_NAME="held", UPSTREAM_SHARED_MEMORY_BYTES=str(REGION_BYTES)))
    loop = asyncio.get_running_loop()
    hold.touch()
    caplog.set_level(logging.INFO, logger="proxy")
    try:
        schema = await upstream.schema("held", "")
        await upstream.shm.open()
        memory = upstream.shm
        assert memory.active and memory.current is not None
        old_name, old_key = memory.region, memory.key

        # A request held in Triton, whose client gives up (its deadline passes while it runs): its slot, half the
        # region, is quarantined, and the region is retired: a new one is registered, the old one stays.
        held = np.full((1, WIDTH), 1.0, np.float32)
        call = asyncio.ensure_future(upstream.infer(schema, "", {"INPUT__0": held}, loop.time() + 2.0))
        await until(lambda: Path(f"{hold}.started").exists() or call.done())
        with pytest.raises(DeadlineExceeded):
            await call
        await until(lambda: memory.retiring is not None)
        assert memory.active and memory.region != old_name and memory.key != old_key
        await until(lambda: any("currently in use" in r.message for r in caplog.records))  # Triton's refusal
        assert memory.retiring is not None and triton_regions(server) == {old_name, memory.region}

        # Meanwhile requests go through the new region and get their own answers.
        rows = np.arange(-WIDTH, 0, dtype=np.float32).reshape(1, WIDTH)
        outputs, _ = await upstream.infer(schema, "", {"INPUT__0": rows}, loop.time() + 30)
        np.testing.assert_array_equal(outputs["OUTPUT__0"], rows * 2)

        # The held request ends (Triton writes its outputs into the old region): Triton lets the old name go.
        hold.unlink()
        await until(lambda: memory.retiring is None)
        assert triton_regions(server) == {memory.region} and not Path("/dev/shm", old_key[1:]).exists()
        outputs, _ = await upstream.infer(schema, "", {"INPUT__0": rows - 1}, loop.time() + 30)
        np.testing.assert_array_equal(outputs["OUTPUT__0"], (rows - 1) * 2)
        assert memory.current.allocator.free_bytes == REGION_BYTES and memory.quarantined_bytes == 0
    finally:
        hold.unlink(missing_ok=True)
        Path(f"{hold}.started").unlink(missing_ok=True)
        await upstream.close()
    assert triton_regions(server) == set()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_a_dead_workers_region_is_unregistered_and_removed(keyed_triton: TritonServer, protocol: str) -> None:
    """A worker killed outright: its object stays in /dev/shm, registered in Triton. The next worker to open shared
    memory (here over the restricted API, with its key) unregisters it and removes the object."""
    url = keyed_triton.grpc_url if protocol == "grpc" else keyed_triton.http_url
    settings = proxy_settings(url, TRITON_SHM_KEY=KEY)
    key = shm.new_key()
    dead = shm.Region(key, 1 << 16)  # as a worker makes it, lock included
    first = connect(settings)
    await first._register_shm(f"dead-{protocol}", key, 1 << 16)
    assert f"dead-{protocol}" in triton_regions(keyed_triton, KEY)
    # The worker is gone: its descriptor and mapping with it, and so the kernel drops its lock (the object stays).
    del dead.view
    dead._map.close()
    os.close(dead._fd)
    await first.client.close()

    upstream = connect(settings)
    try:
        await upstream.shm.open()
        assert upstream.shm.active
        names = triton_regions(keyed_triton, KEY)
        assert f"dead-{protocol}" not in names and upstream.shm.region in names
        assert not (shm.SHM_DIR / key[1:]).exists()
    finally:
        await upstream.close()
