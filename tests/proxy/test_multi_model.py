"""Several models from one proxy, against a real Triton: three demo models of different shapes in one repository,
their metadata in one directory (as the control plane publishes them), each answering as it does in-process.

A model added while the proxy runs is synced into the repository and loaded through Triton's repository API here
(Triton runs in explicit model control; loading it on its own is the watcher's work, tested with the watcher). So is
a model loaded and unloaded within a memory budget: the decider is faked (`RealLoads`), Triton's answers are real."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from nexusml.command import demo
from nexusml.testing.models import DEMO_SPEC, PublishedModel, publish, sync_into
from nexusml.testing.servers import start_triton
from nexusml.triton.server import TritonServer
from proxy import model_loader, residency
from proxy.middleware import LOAD_WAIT_HEADER
from tests.proxy.conftest import MakeClient

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

# Three shapes: the demo's (5 -> 2), a wider one (8 -> 3), one with two outputs (3 -> 4 and 4).
WIDE = demo.DemoSpec(name="wide", width=8, outputs=3, hidden=32, layers=2, seed=1)
TWO_HEADS = demo.DemoSpec(name="two_heads", width=3, outputs=4, heads=2, hidden=32, layers=2, seed=2)
LATE = demo.DemoSpec(name="late", width=6, outputs=1, hidden=32, layers=2, seed=3)  # published while running
SPECS = {spec.name: spec for spec in (DEMO_SPEC, WIDE, TWO_HEADS)}


def rows(spec: demo.DemoSpec, count: int = 3) -> list[list[float]]:
    return np.random.default_rng(spec.seed + 7).normal(size=(count, spec.width)).astype(np.float32).tolist()


@pytest.fixture(scope="module")
def published(
    demo_model: PublishedModel, s3_client: Any, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, PublishedModel]:
    models = {DEMO_SPEC.name: demo_model}
    for spec in (WIDE, TWO_HEADS, LATE):
        models[spec.name] = publish(spec, s3_client, tmp_path_factory.mktemp(spec.name))
    return models


@pytest.fixture(scope="module")
def repository(
    published: dict[str, PublishedModel], s3_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The three models synced into one repository (`late` is not: it comes later)."""
    repository = tmp_path_factory.mktemp("multi") / "model_repository"
    for name in SPECS:
        sync_into(published[name].meta, s3_env, repository, NEXUS_META_PATH=str(published[name].meta_path))
    return repository


@pytest.fixture(scope="module")
def multi_triton(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    server = start_triton(repository, tmp_path_factory.mktemp("triton-multi"))
    yield server
    server.stop()


def catalog_dir(directory: Path, published: dict[str, PublishedModel], names: list[str]) -> Path:
    """A metadata directory holding `names`' files, as `<name>.json`, and one broken file."""
    directory.mkdir()
    for name in names:
        shutil.copyfile(published[name].meta_path, directory / f"{name}.json")
    (directory / "broken.json").write_text('{"name": "broken"}')
    return directory


async def proxy_on(proxy_client: MakeClient, triton: TritonServer, directory: Path, **env: str) -> TestClient:
    return await proxy_client(triton.grpc_url, MODEL_NAME="", NEXUS_META_PATH=str(directory), **env)


def assert_matches(answer: Any, spec: demo.DemoSpec, sent: list[list[float]]) -> None:
    """A batch answer of /predict equals the model run in-process."""
    expected = demo.reference_outputs(spec, sent)
    if spec.heads == 1:
        np.testing.assert_allclose(answer["outputs"], expected[0], rtol=1e-5, atol=1e-5)
        return
    for head in range(spec.heads):
        column = [row[f"OUTPUT__{head}"] for row in answer["outputs"]]
        np.testing.assert_allclose(column, expected[head], rtol=1e-5, atol=1e-5)


async def test_each_model_answers_at_its_routes(
    proxy_client: MakeClient, multi_triton: TritonServer, published: dict[str, PublishedModel], tmp_path: Path
) -> None:
    directory = catalog_dir(tmp_path / "meta", published, list(SPECS))
    client = await proxy_on(proxy_client, multi_triton, directory)
    for name, spec in SPECS.items():
        sent = rows(spec)
        response = await client.post(f"/models/{name}/predict", json={"inputs": sent})
        assert response.status == 200, await response.text()
        assert response.headers["X-Model-Name"] == name
        assert_matches(await response.json(), spec, sent)
        infer = {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [len(sent), spec.width], "data": sent}]}
        response = await client.post(f"/v2/models/{name}/infer", json=infer)
        assert response.status == 200, await response.text()
        outputs = {output["name"]: output for output in (await response.json())["outputs"]}
        for head, expected in enumerate(demo.reference_outputs(spec, sent)):
            got = np.reshape(outputs[f"OUTPUT__{head}"]["data"], outputs[f"OUTPUT__{head}"]["shape"])
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    several = await client.post("/predict", json={"input": rows(DEMO_SPEC, 1)[0]})
    assert several.status == 404
    message = (await several.json())["error"]
    assert message["code"] == "model_not_found" and "DEFAULT_MODEL" in message["message"]
    ready = await client.get("/readyz")
    assert ready.status == 200, await ready.text()
    assert (await ready.json())["models"] == {name: "ready" for name in sorted(SPECS)}
    for name in SPECS:
        assert (await client.get(f"/v2/models/{name}/ready")).status == 200


async def test_predict_answers_for_the_default_model(
    proxy_client: MakeClient, multi_triton: TritonServer, published: dict[str, PublishedModel], tmp_path: Path
) -> None:
    directory = catalog_dir(tmp_path / "meta", published, list(SPECS))
    client = await proxy_on(proxy_client, multi_triton, directory, DEFAULT_MODEL=WIDE.name)
    sent = rows(WIDE)
    response = await client.post("/predict", json={"inputs": sent})
    assert response.status == 200, await response.text()
    assert response.headers["X-Model-Name"] == WIDE.name
    assert_matches(await response.json(), WIDE, sent)
    assert (await (await client.get("/readyz")).json())["model"] == WIDE.name


async def test_a_broken_file_fails_only_itself(
    proxy_client: MakeClient, multi_triton: TritonServer, published: dict[str, PublishedModel], tmp_path: Path
) -> None:
    directory = catalog_dir(tmp_path / "meta", published, [DEMO_SPEC.name, WIDE.name])
    client = await proxy_on(proxy_client, multi_triton, directory)
    body = await (await client.get("/v1/models")).json()
    assert [(m["name"], m["state"], m["problem"]) for m in body["models"]] == [
        (DEMO_SPEC.name, "ready", None),
        (WIDE.name, "ready", None),
    ]
    assert len(body["problems"]) == 1 and "broken.json" in body["problems"][0]
    assert (await client.get("/readyz")).status == 200
    sent = rows(WIDE)
    answer = await client.post(f"/models/{WIDE.name}/predict", json={"inputs": sent})
    assert_matches(await answer.json(), WIDE, sent)


async def test_a_half_written_file_keeps_its_model(
    proxy_client: MakeClient,
    multi_triton: TritonServer,
    published: dict[str, PublishedModel],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default model's file rewritten in place, half-way: the model keeps answering, the pod stays ready, and
    the file's cause is shown; once the file is gone the model is."""
    monkeypatch.setattr(model_loader, "SCHEMA_REFRESH_S", 0.1)
    directory = catalog_dir(tmp_path / "meta", published, [DEMO_SPEC.name, WIDE.name])
    client = await proxy_on(proxy_client, multi_triton, directory, DEFAULT_MODEL=WIDE.name)
    assert (await client.get("/readyz")).status == 200
    wide = directory / f"{WIDE.name}.json"
    wide.write_text(wide.read_text()[:40])
    for _ in range(300):
        body = await (await client.get("/v1/models")).json()
        if any(f"{WIDE.name}.json" in line for line in body["problems"]):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"/v1/models never showed the half-written file: {body}")
    assert [m["name"] for m in body["models"]] == [DEMO_SPEC.name, WIDE.name], body
    sent = rows(WIDE)
    answer = await client.post("/predict", json={"inputs": sent})
    assert answer.status == 200, await answer.text()
    assert_matches(await answer.json(), WIDE, sent)
    assert (await client.get("/readyz")).status == 200

    wide.unlink()
    await until(client, lambda models: WIDE.name not in models)
    gone = await client.post("/predict", json={"inputs": sent})
    assert (gone.status, (await gone.json())["error"]["code"]) == (404, "model_not_found")
    assert (await client.get("/readyz")).status == 200  # the other model still answers


async def test_a_file_added_while_running_becomes_a_model(
    proxy_client: MakeClient,
    multi_triton: TritonServer,
    published: dict[str, PublishedModel],
    s3_env: dict[str, str],
    repository: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(model_loader, "SCHEMA_REFRESH_S", 0.1)
    directory = catalog_dir(tmp_path / "meta", published, [DEMO_SPEC.name])
    client = await proxy_on(proxy_client, multi_triton, directory)
    assert (await client.get("/readyz")).status == 200

    shutil.copyfile(published[LATE.name].meta_path, directory / f"{LATE.name}.json")
    states = await until(client, lambda models: models.get(LATE.name) is not None)
    assert states[LATE.name]["state"] == "loading"  # named by its metadata, not in Triton yet
    waiting = await client.post(f"/models/{LATE.name}/predict", json={"inputs": rows(LATE)})
    assert waiting.status == 503
    assert f"model {LATE.name}" in (await waiting.json())["error"]["message"]
    assert (await client.get("/readyz")).status == 200  # no default model: any ready model will do

    meta = published[LATE.name]
    sync_into(meta.meta, s3_env, repository, NEXUS_META_PATH=str(meta.meta_path))
    triton = grpcclient.InferenceServerClient(multi_triton.grpc_url.removeprefix("grpc://"))
    await asyncio.to_thread(triton.load_model, LATE.name)
    states = await until(client, lambda models: models[LATE.name]["state"] == "ready")
    assert states[LATE.name]["inputs"] == [{"name": "INPUT__0", "datatype": "FP32", "shape": [LATE.width]}]
    sent = rows(LATE)
    answer = await client.post(f"/models/{LATE.name}/predict", json={"inputs": sent})
    assert answer.status == 200, await answer.text()
    assert_matches(await answer.json(), LATE, sent)

    (directory / f"{LATE.name}.json").unlink()
    await until(client, lambda models: LATE.name not in models)
    gone = await client.post(f"/models/{LATE.name}/predict", json={"inputs": sent})
    assert (gone.status, (await gone.json())["error"]["code"]) == (404, "model_not_found")


async def until(client: TestClient, condition: Any) -> dict[str, Any]:
    """GET /v1/models until `condition(models by name)` holds (bounded); the models then."""
    for _ in range(300):
        body = await (await client.get("/v1/models")).json()
        models = {model["name"]: model for model in body["models"]}
        if condition(models):
            return models
        await asyncio.sleep(0.1)
    raise AssertionError(f"/v1/models never showed the change: {body}")


class RealLoads:
    """The residency decider's API over the real Triton: a load is Triton's `load_model`; `unload` takes a model out
    of Triton without telling anyone (as when it is unloaded between two of a proxy's heartbeats)."""

    def __init__(self, triton: TritonServer) -> None:
        self.triton = grpcclient.InferenceServerClient(triton.grpc_url.removeprefix("grpc://"))
        self.states = {name: "resident" for name in SPECS}
        self.loads: list[str] = []
        self.app = web.Application()
        self.app.router.add_post("/v1/residency", self.heartbeat)
        self.app.router.add_post("/v1/residency/{name}", self.load)

    async def heartbeat(self, request: web.Request) -> web.Response:
        models = {name: {"state": state, "bytes": 1, "problem": None} for name, state in self.states.items()}
        return web.json_response({"budget_bytes": 10, "used_bytes": 1, "models": models})

    async def load(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.loads.append(name)
        await asyncio.to_thread(self.triton.load_model, name)
        self.states[name] = "resident"
        return web.json_response({"name": name, "state": "resident", "bytes": 1, "loaded": True, "waited_s": 0.0})

    async def unload(self, name: str, told: bool, settled: bool = True) -> None:
        """Unload `name`; with `settled`, until Triton says it is not ready, else at once: Triton answers the call
        and then unloads (a Python stub takes a while to end), answering "not at ready state" meanwhile."""
        await asyncio.to_thread(self.triton.unload_model, name, unload_dependents=False)
        for _ in range(200 if settled else 0):
            if not await asyncio.to_thread(self.triton.is_model_ready, name):
                break
            await asyncio.sleep(0.05)
        if told:
            self.states[name] = "not_resident"


@pytest.mark.parametrize(
    ("protocol", "version"),
    [
        pytest.param("grpc", "", id="grpc-newest"),
        pytest.param("grpc", "1", id="grpc-pinned"),
        pytest.param("http", "1", id="http-pinned"),
    ],
)
async def test_a_model_not_loaded_is_loaded_by_its_request(
    proxy_client: MakeClient,
    multi_triton: TritonServer,
    published: dict[str, PublishedModel],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    protocol: str,
    version: str,
) -> None:
    """A model the decider unloaded is loaded by the next request for it, which waits and is answered; one Triton
    unloaded behind the proxy's back (the heartbeat still says loaded) answers "unknown model", and the request goes
    through the load again, once: "has no available versions" (NOT_FOUND) for the newest version, "version 1 is
    not at ready state" (UNAVAILABLE, 503) for a pinned one, while the unload is in progress and after it. The
    deadline is long: a Python stub's load takes seconds on a busy machine."""
    monkeypatch.setattr(residency, "HEARTBEAT_S", 0.05)
    decider = RealLoads(multi_triton)
    server = TestServer(decider.app)
    await server.start_server()
    directory = catalog_dir(tmp_path / "meta", published, list(SPECS))
    url = multi_triton.grpc_url if protocol == "grpc" else multi_triton.http_url
    client = await proxy_client(
        url,
        MODEL_NAME="",
        NEXUS_META_PATH=str(directory),
        RESIDENCY_URL=str(server.make_url("")).rstrip("/"),
        REQUEST_TIMEOUT_MS="120000",
        MODEL_VERSION=version,
    )
    sent = rows(WIDE)
    try:
        await decider.unload(WIDE.name, told=True)
        await until(client, lambda models: models[WIDE.name]["state"] == "not_resident")
        answer = await client.post(f"/models/{WIDE.name}/predict", json={"inputs": sent})
        assert answer.status == 200, await answer.text()
        assert_matches(await answer.json(), WIDE, sent)
        assert LOAD_WAIT_HEADER in answer.headers and decider.loads == [WIDE.name]

        await decider.unload(WIDE.name, told=False)
        answer = await client.post(f"/models/{WIDE.name}/predict", json={"inputs": sent})
        assert answer.status == 200, await answer.text()
        assert_matches(await answer.json(), WIDE, sent)
        assert LOAD_WAIT_HEADER in answer.headers and decider.loads == [WIDE.name] * 2

        await decider.unload(WIDE.name, told=False, settled=False)  # sent while Triton unloads it
        answer = await client.post(f"/models/{WIDE.name}/predict", json={"inputs": sent})
        assert answer.status == 200, await answer.text()
        assert_matches(await answer.json(), WIDE, sent)
        assert LOAD_WAIT_HEADER in answer.headers and decider.loads == [WIDE.name] * 3
    finally:
        await client.close()
        await server.close()
        await asyncio.to_thread(decider.triton.load_model, WIDE.name)  # as the other tests of this Triton expect
