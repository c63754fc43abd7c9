"""Several models in one proxy, without Triton: which model a route reaches, the default, 404 and 503, what
/v1/models says, readiness, and models added and removed while the proxy runs.

The proxy's upstream is never reached: each test serves the schemas it needs itself and answers inferences with a
fake `send` per model, so only the routing and the bookkeeping are under test (tests/proxy/test_multi_model.py
runs the same against a real Triton)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient

from nexusml.core import catalog
from nexusml.core.catalog import Catalog
from proxy import model_loader
from proxy.health import READINESS, Readiness, check_ready
from proxy.model_loader import Loader
from proxy.schema import ModelSchema
from proxy.state import STATE, ModelState, ProxyState
from tests.proxy.conftest import ROWS, SCHEMAS, UNREACHABLE, MakeClient, proxy_settings, write_meta

pytestmark = pytest.mark.asyncio


def answering(model: ModelState, value: float) -> None:
    """Serve the model's schema, and answer its inferences with `value` everywhere (version "7")."""
    schema = SCHEMAS[model.name]
    model.serve(schema)
    width = schema.outputs[0].shape[0]

    async def send(arrays: dict[str, Any], rows: int, *args: Any, **kwargs: Any) -> tuple[dict[str, Any], str]:
        return {"OUTPUT__0": np.full((rows, width), value, np.float32)}, "7"

    model.send = send  # type: ignore[method-assign]


async def catalog_proxy(proxy_client: MakeClient, directory: Path, **env: str) -> TestClient:
    """A proxy on the metadata `directory` (or file), each model of SCHEMAS it names served (alpha answers 1, beta
    2); `env` may override any setting."""
    settings = {
        "MODEL_NAME": "",
        "NEXUS_META_PATH": str(directory),
        "PROXY_COALESCE": "0",
        "UPSTREAM_CONNECT_TIMEOUT_S": "0.05",
        "READY_PROBE": "0",
    }
    client = await proxy_client(UNREACHABLE, **(settings | env))
    state = client.server.app[STATE]
    for value, name in enumerate(SCHEMAS, start=1):
        if name in state.models:
            answering(state.models[name], value)
    return client


@pytest.fixture
def catalog_dir(tmp_path: Path) -> Path:
    """alpha, beta, a model Triton never gives (`loading`), a broken file, and two files naming `held`."""
    directory = tmp_path / "meta"
    directory.mkdir()
    write_meta(directory, "alpha.json", "alpha")
    write_meta(directory, "beta.json", "beta")
    write_meta(directory, "loading.json", "loading")
    (directory / "broken.json").write_text("{")
    write_meta(directory, "held-1.json", "held")
    write_meta(directory, "held-2.json", "held")
    return directory


@pytest.mark.parametrize(
    ("path", "env", "status", "answer"),
    [
        pytest.param("/models/alpha/predict", {}, 200, ("alpha", 1.0), id="named-alpha"),
        pytest.param("/models/beta/predict", {}, 200, ("beta", 2.0), id="named-beta"),
        pytest.param("/predict", {"DEFAULT_MODEL": "beta"}, 200, ("beta", 2.0), id="default-model"),
        pytest.param("/predict", {}, 404, ("model_not_found", "POST /models/{name}/predict"), id="several-no-default"),
        pytest.param(
            "/predict",
            {"DEFAULT_MODEL": "gamma"},
            404,
            ("model_not_found", "DEFAULT_MODEL=gamma"),
            id="default-unknown",
        ),
        pytest.param("/models/gamma/predict", {}, 404, ("model_not_found", "'gamma'"), id="unknown-model"),
        pytest.param("/models/held/predict", {}, 404, ("model_not_found", "'held'"), id="held-never-served"),
        pytest.param("/models/loading/predict", {}, 503, ("not_ready", "model loading"), id="known-not-loaded"),
    ],
)
async def test_which_model_answers(
    proxy_client: MakeClient, catalog_dir: Path, path: str, env: dict[str, str], status: int, answer: tuple[str, Any]
) -> None:
    client = await catalog_proxy(proxy_client, catalog_dir, **env)
    name = path.split("/")[2] if path.startswith("/models/") else env.get("DEFAULT_MODEL", "alpha")
    response = await client.post("/" + path.lstrip("/"), json={"input": ROWS[name]})
    body = await response.json()
    assert response.status == status, body
    if status == 200:
        assert response.headers["X-Model-Name"] == answer[0]
        assert response.headers["X-Model-Version"] == "7"
        assert body["output"] == [answer[1]] * SCHEMAS[answer[0]].outputs[0].shape[0]
    else:
        assert body["error"]["code"] == answer[0]
        assert answer[1] in body["error"]["message"], body


@pytest.mark.parametrize(
    ("source", "env", "status", "answer"),
    [
        pytest.param("directory", {}, 404, "POST /models/{name}/predict, or set DEFAULT_MODEL", id="directory"),
        pytest.param("directory", {"DEFAULT_MODEL": "alpha"}, 200, "alpha", id="directory-default-model"),
        pytest.param("file", {}, 200, "alpha", id="file"),
        pytest.param("missing", {"MODEL_NAME": "alpha"}, 200, "alpha", id="model-name"),
    ],
)
async def test_predict_with_one_model(
    proxy_client: MakeClient, tmp_path: Path, source: str, env: dict[str, str], status: int, answer: str
) -> None:
    """One model served: `/predict` is it for a file or MODEL_NAME, but not for a directory, where "the only
    model" would change as files come and go (another model's answers, or 404 once a second file appears)."""
    directory = tmp_path / "meta"
    directory.mkdir()
    file = write_meta(directory, "alpha.json", "alpha")
    path = {"directory": directory, "file": file, "missing": tmp_path / "none.json"}[source]
    client = await catalog_proxy(proxy_client, path, **env)
    response = await client.post("/predict", json={"input": ROWS["alpha"]})
    body = await response.json()
    assert response.status == status, body
    if status == 200:
        assert response.headers["X-Model-Name"] == answer
    else:
        assert body["error"]["code"] == "model_not_found" and answer in body["error"]["message"], body


@pytest.mark.parametrize(
    ("method", "path", "status", "answer"),
    [
        pytest.param("GET", "/v2/models/beta", 200, "beta", id="metadata"),
        pytest.param("GET", "/v2/models/beta/config", 200, "beta", id="config"),
        pytest.param("POST", "/v2/models/beta/infer", 200, "beta", id="infer"),
        pytest.param("POST", "/v2/models/beta/versions/3/infer", 200, "beta", id="infer-version"),
        pytest.param("POST", "/v2/models/gamma/infer", 404, "model_not_found: unknown model 'gamma'", id="unknown"),
        pytest.param("GET", "/v2/models/gamma/ready", 404, "model_not_found", id="unknown-ready"),
        pytest.param(
            "POST", "/v2/models/beta/versions/9/infer", 404, "not_found: model 'beta' has no version", id="version"
        ),
        pytest.param("GET", "/v2/models/loading", 503, "not_ready: model loading", id="loading"),
    ],
)
async def test_v2_routes_per_model(
    proxy_client: MakeClient, catalog_dir: Path, method: str, path: str, status: int, answer: str
) -> None:
    client = await catalog_proxy(proxy_client, catalog_dir)
    infer = {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
    response = await client.request(method, path, json=infer if method == "POST" else None)
    body = await response.json()
    assert response.status == status, body
    if status == 200:
        assert body.get("name", body.get("model_name")) == answer
    else:
        assert body["error"].startswith(answer), body  # the protocol's shape: {"error": "<code>: <message>"}


async def test_v1_models_shows_every_model_and_every_problem(proxy_client: MakeClient, catalog_dir: Path) -> None:
    client = await catalog_proxy(proxy_client, catalog_dir)
    body = await (await client.get("/v1/models")).json()
    models = {model["name"]: model for model in body["models"]}
    assert sorted(models) == ["alpha", "beta", "loading"]
    assert {name: (m["state"], m["problem"]) for name, m in models.items() if name != "loading"} == {
        "alpha": ("ready", None),
        "beta": ("ready", None),
    }
    assert models["beta"]["inputs"] == [{"name": "INPUT__0", "datatype": "FP32", "shape": [3]}]
    assert models["loading"]["state"] == "loading"
    assert models["loading"]["problem"].startswith("model loading: ")
    assert "inputs" not in models["loading"]
    assert len(body["problems"]) == 3  # broken.json, and both files naming `held`
    assert any("broken.json" in line for line in body["problems"])
    assert sum("model held" in line for line in body["problems"]) == 2
    assert "shared_memory" in body


async def test_requests_are_counted_per_model(proxy_client: MakeClient, catalog_dir: Path) -> None:
    client = await catalog_proxy(proxy_client, catalog_dir)
    for name in ("alpha", "beta", "beta"):
        assert (await client.post(f"/models/{name}/predict", json={"input": ROWS[name]})).status == 200
    assert (await client.post("/models/nobody/predict", json={"input": ROWS["alpha"]})).status == 404
    text = await (await client.get("/metrics")).text()
    route = 'route="/models/{name}/predict"'
    assert f'nexus_proxy_requests_total{{model="alpha",{route},status="200"}} 1.0' in text
    assert f'nexus_proxy_requests_total{{model="beta",{route},status="200"}} 2.0' in text
    assert f'nexus_proxy_requests_total{{model="",{route},status="404"}} 1.0' in text  # a client's name: no label
    assert 'model="nobody"' not in text


# --- readiness -------------------------------------------------------------------------------------------
class LiveUpstream:
    """Triton live, every model ready in it (the proxy's own view of a model is what is under test)."""

    async def live(self) -> bool:
        return True

    async def model_ready(self, name: str, version: str) -> bool:
        return True


@pytest.mark.parametrize(
    ("names", "loaded", "default", "ready", "decided_by"),
    [
        pytest.param(["alpha"], ["alpha"], "", True, "alpha", id="one-model-ready"),
        pytest.param(["alpha"], [], "", False, "model alpha", id="one-model-loading"),
        pytest.param(["alpha", "beta"], ["beta"], "", True, "beta", id="several-one-ready"),
        pytest.param(["alpha", "beta"], [], "", False, "none of the 2 models", id="several-none-ready"),
        pytest.param(["alpha", "beta"], ["alpha"], "beta", True, "alpha", id="default-loading-other-ready"),
        pytest.param(["alpha", "beta"], ["beta"], "beta", True, "beta", id="default-ready-other-broken"),
        pytest.param(["alpha", "beta"], ["alpha", "beta"], "beta", True, "beta", id="default-asked-first"),
        pytest.param(["alpha", "beta"], [], "beta", False, "none of the 2 models", id="default-none-ready"),
        pytest.param(["alpha"], ["alpha"], "gamma", True, "alpha", id="default-not-served"),
        pytest.param([], [], "", False, "which models to serve", id="no-model-known"),
    ],
)
async def test_readiness(names: list[str], loaded: list[str], default: str, ready: bool, decided_by: str) -> None:
    state = ProxyState(proxy_settings(UNREACHABLE, MODEL_NAME="", DEFAULT_MODEL=default, READY_PROBE="0"))
    state.upstream = LiveUpstream()  # type: ignore[assignment]
    for name in names:
        model = state.add_model(name)
        if name in loaded:
            model.serve(SCHEMAS[name])
    error, model = await check_ready(state)
    if ready:
        assert error is None and model is not None and model.name == decided_by
    else:
        assert error is not None and error.code == "not_ready" and decided_by in str(error), error


# --- the catalog followed --------------------------------------------------------------------------------
async def eventually(condition: Callable[[], Awaitable[bool]]) -> None:
    for _ in range(400):
        if await condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


async def test_files_added_and_removed_while_running(
    proxy_client: MakeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new file is a new model (loading until Triton has it); a removed file's model answers 404 from then on,
    while a request of it already in flight is answered."""
    monkeypatch.setattr(model_loader, "SCHEMA_REFRESH_S", 0.02)
    directory = tmp_path / "meta"
    directory.mkdir()
    write_meta(directory, "alpha.json", "alpha")
    client = await catalog_proxy(proxy_client, directory)
    state = client.server.app[STATE]
    alpha = state.models["alpha"]
    release = asyncio.Event()
    answer = alpha.send

    async def held(*args: Any, **kwargs: Any) -> Any:
        await release.wait()
        return await answer(*args, **kwargs)

    alpha.send = held  # type: ignore[method-assign]
    in_flight = asyncio.ensure_future(client.post("/models/alpha/predict", json={"input": ROWS["alpha"]}))
    await eventually(lambda: _true(alpha.in_flight == 1))

    write_meta(directory, "beta.json", "beta")
    await eventually(lambda: _true("beta" in state.models))
    models = (await (await client.get("/v1/models")).json())["models"]
    assert [(m["name"], m["state"]) for m in models] == [("alpha", "ready"), ("beta", "loading")]

    (directory / "alpha.json").unlink()
    await eventually(lambda: _true("alpha" not in state.models))
    gone = await client.post("/models/alpha/predict", json={"input": ROWS["alpha"]})
    assert (gone.status, (await gone.json())["error"]["code"]) == (404, "model_not_found")
    release.set()
    finished = await in_flight
    assert finished.status == 200 and finished.headers["X-Model-Name"] == "alpha"
    loading = await client.post("/models/beta/predict", json={"input": ROWS["beta"]})
    assert loading.status == 503 and "model beta" in (await loading.json())["error"]["message"]


async def test_a_removed_model_leaves_no_readiness_behind(
    proxy_client: MakeClient, catalog_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_loader, "SCHEMA_REFRESH_S", 0.02)
    client = await catalog_proxy(proxy_client, catalog_dir)
    state, readiness = client.server.app[STATE], client.server.app[READINESS]
    assert (await client.get("/v2/models/alpha/ready")).status == 503  # Triton does not answer here
    assert "alpha" in readiness.checked
    (catalog_dir / "alpha.json").unlink()
    await eventually(lambda: _true("alpha" not in state.models))
    assert sorted(readiness.checked) == []


async def test_forgetting_a_model_drops_the_answer_it_decided() -> None:
    state = ProxyState(proxy_settings(UNREACHABLE, MODEL_NAME=""))
    alpha, beta = state.add_model("alpha"), state.add_model("beta")
    readiness = Readiness({"": (0.0, None, alpha), "alpha": (0.0, None, alpha), "beta": (0.0, None, beta)})
    readiness.forget("alpha")
    assert readiness.checked == {"beta": (0.0, None, beta)}
    readiness.checked[""] = (0.0, None, beta)
    readiness.forget("alpha")
    assert sorted(readiness.checked) == ["", "beta"]


# --- which served models a read of the directory removes ------------------------------------------------------
class SilentUpstream:
    """A Triton that never gives a schema: its models stay loading (only the set of models is under test)."""

    async def schema(self, name: str, version: str) -> ModelSchema:
        await asyncio.Event().wait()
        raise AssertionError("never answered")


@pytest_asyncio.fixture
async def directory_loader(tmp_path: Path) -> AsyncIterator[tuple[Loader, Path]]:
    """A loader that has read a directory of alpha.json and beta.json (both served)."""
    directory = tmp_path / "meta"
    directory.mkdir()
    write_meta(directory, "alpha.json", "alpha")
    write_meta(directory, "beta.json", "beta")
    state = ProxyState(proxy_settings(UNREACHABLE, MODEL_NAME="", NEXUS_META_PATH=str(directory)))
    state.upstream = SilentUpstream()  # type: ignore[assignment]
    loader = Loader(state, Readiness())
    await loader.discover()
    assert sorted(state.models) == ["alpha", "beta"]
    yield loader, directory
    await loader.close()


def read_again(loader: Loader, directory: Path) -> list[str]:
    """The models served after the loader reads `directory` (again, whatever its stamp says)."""
    loader.stamp = None
    loader.follow_catalog(directory)
    return sorted(loader.state.models)


def half_written(path: Path) -> None:
    path.write_text('{"name": "alpha", "vers')


def unreadable(path: Path) -> None:
    path.unlink()
    path.mkdir()  # listed as a metadata file; reading it fails


def renamed_file(path: Path) -> None:
    path.rename(path.with_name("zeta.json"))


def renamed_model(path: Path) -> None:
    write_meta(path.parent, path.name, "gamma")


def both_broken(path: Path) -> None:
    for file in path.parent.iterdir():
        file.write_text("{")


def emptied(path: Path) -> None:
    for file in path.parent.iterdir():
        file.unlink()


def removed_beside_broken(path: Path) -> None:
    path.unlink()
    path.with_name("beta.json").write_text("{")


@pytest.mark.parametrize(
    ("change", "served"),
    [
        pytest.param(half_written, ["alpha", "beta"], id="half-written"),
        pytest.param(unreadable, ["alpha", "beta"], id="read-error"),
        pytest.param(Path.unlink, ["beta"], id="file-removed"),
        pytest.param(removed_beside_broken, ["beta"], id="file-removed-another-broken"),
        pytest.param(renamed_file, ["alpha", "beta"], id="file-renamed"),
        pytest.param(renamed_model, ["beta", "gamma"], id="file-names-another-model"),
        pytest.param(both_broken, ["alpha", "beta"], id="every-file-broken"),
        pytest.param(emptied, ["alpha", "beta"], id="nothing-listed"),
    ],
)
async def test_a_model_is_removed_only_when_its_file_is_gone(
    directory_loader: tuple[Loader, Path], change: Callable[[Path], None], served: list[str]
) -> None:
    """As the sync and the watcher decide it: an unusable file keeps its model served (a half-written file must
    not make it 404, nor take the pod out of service), and a listing that names nothing keeps every model."""
    loader, directory = directory_loader
    change(directory / "alpha.json")
    assert read_again(loader, directory) == served


async def test_a_kept_model_goes_with_its_file(
    directory_loader: tuple[Loader, Path], caplog: pytest.LogCaptureFixture
) -> None:
    loader, directory = directory_loader
    renamed_file(directory / "alpha.json")
    assert read_again(loader, directory) == ["alpha", "beta"]
    half_written(directory / "zeta.json")
    assert read_again(loader, directory) == ["alpha", "beta"]  # its file now: zeta.json
    (directory / "zeta.json").unlink()
    assert read_again(loader, directory) == ["beta"]
    emptied(directory / "beta.json")
    with caplog.at_level("WARNING", logger="proxy"):
        assert read_again(loader, directory) == ["beta"]
        assert read_again(loader, directory) == ["beta"]
    assert sum("names no model while beta are served" in r.getMessage() for r in caplog.records) == 1
    write_meta(directory, "alpha.json", "alpha")
    assert read_again(loader, directory) == ["alpha"]


@pytest.mark.parametrize(
    ("found", "remembered", "gone"),
    [
        pytest.param(Catalog(held=frozenset({"beta"})), {"alpha": "a.json"}, ["alpha"], id="file-gone"),
        pytest.param(Catalog(problems={"/m/a.json": "broken"}), {"alpha": "a.json"}, [], id="file-broken"),
        pytest.param(Catalog(problems={"/m/b.json": "broken"}), {"alpha": "a.json"}, ["alpha"], id="another-broken"),
        pytest.param(Catalog(problems={"/m/b.json": "broken"}), {}, [], id="not-remembered-some-broken"),
        pytest.param(Catalog(held=frozenset({"beta"})), {}, ["alpha"], id="not-remembered-none-broken"),
        pytest.param(Catalog(), {"alpha": "a.json"}, [], id="nothing-listed"),
        pytest.param(Catalog(held=frozenset({"alpha"})), {"alpha": "a.json"}, [], id="held"),
    ],
)
async def test_departed(found: Catalog, remembered: dict[str, str], gone: list[str]) -> None:
    assert catalog.departed(found, ["alpha"], remembered) == gone


# --- shared memory ----------------------------------------------------------------------------------------------
class OpeningUpstream:
    """Gives every schema at once; its shared-memory registration waits for `release`."""

    def __init__(self) -> None:
        self.started, self.release, self.opened = asyncio.Event(), asyncio.Event(), False
        self.shm = self

    async def schema(self, name: str, version: str) -> ModelSchema:
        return SCHEMAS[name]

    async def open(self) -> None:
        self.started.set()
        await self.release.wait()
        self.opened = True


async def test_shared_memory_opens_though_the_first_model_ready_is_removed() -> None:
    state = ProxyState(proxy_settings(UNREACHABLE, MODEL_NAME="", PROXY_COALESCE="0"))
    upstream = state.upstream = OpeningUpstream()  # type: ignore[assignment]
    loader = Loader(state, Readiness())
    loader.add("alpha")
    await upstream.started.wait()
    loader.remove("alpha")
    await asyncio.sleep(0)
    upstream.release.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert upstream.opened
    await loader.close()


async def _true(value: bool) -> bool:
    return value
