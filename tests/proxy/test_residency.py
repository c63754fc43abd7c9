"""Model residency within a memory budget, the proxy's side (`proxy.residency`), without Triton or the watcher.

The decider of `nexus watch` is faked here by a small aiohttp app speaking its HTTP API (`FakeDecider`); Triton by
`FakeUpstream`, which gives the schemas of `tests/proxy/conftest.py` and answers every inference, so what is under
test is the proxy's part: which requests wait for a load, how many calls they make, what they answer."""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from tritonclient.utils import InferenceServerException

from nexusml.core.settings import RESIDENCY_HEADER
from proxy import model_loader, residency
from proxy.client import from_triton_error
from proxy.errors import ModelNotLoaded
from proxy.middleware import LOAD_WAIT_HEADER
from proxy.schema import ModelSchema, TensorSchema
from proxy.state import STATE
from tests.proxy.conftest import ROWS, SCHEMAS, UNREACHABLE, MakeClient, write_meta

pytestmark = pytest.mark.asyncio

Answer = tuple[int, dict[str, Any]]


def refusal(status: int, code: str, message: str) -> Answer:
    return status, {"error": {"code": code, "message": message}}


NO_ROOM = refusal(503, "no_room", "alpha (900 MiB) and beta (700 MiB) are busy")


class FakeDecider:
    """The decider's API: a snapshot of `models` (each {"state", "bytes", "problem"}), loads that answer the
    queued `refusals` of their model first, then wait for `gate` and make it resident; with `key`, every call
    without it in the residency header is refused 401 first (the keys sent are in `keys`)."""

    def __init__(self, models: dict[str, dict[str, Any]]) -> None:
        self.models = models
        self.key: str | None = None
        self.keys: set[str | None] = set()
        self.loads: collections.Counter[str] = collections.Counter()
        self.refusals: dict[str, list[Answer]] = collections.defaultdict(list)
        self.heartbeats: list[dict[str, Any]] = []
        self.load_bodies: list[dict[str, Any]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.app = web.Application(middlewares=[self.check_key])
        self.app.router.add_post("/v1/residency", self.heartbeat)
        self.app.router.add_post("/v1/residency/{name}", self.load)

    @web.middleware
    async def check_key(self, request: web.Request, handler: Any) -> web.StreamResponse:
        sent = request.headers.get(RESIDENCY_HEADER)
        self.keys.add(sent)
        if self.key is not None and sent != self.key:
            return web.json_response({"error": {"code": "unauthorized", "message": "no valid key"}}, status=401)
        return await handler(request)

    def snapshot(self) -> dict[str, Any]:
        return {"budget_bytes": 4096, "used_bytes": 0, "models": self.models}

    async def heartbeat(self, request: web.Request) -> web.Response:
        self.heartbeats.append(await request.json())
        return web.json_response(self.snapshot())

    async def load(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.loads[name] += 1
        self.load_bodies.append(await request.json())
        if self.refusals[name]:
            status, body = self.refusals[name].pop(0)
            return web.json_response(body, status=status)
        await self.gate.wait()
        self.models[name] = {"state": "resident", "bytes": 1000, "problem": None}
        return web.json_response({"name": name, "state": "resident", "bytes": 1000, "loaded": True, "waited_s": 0.1})


class FakeUpstream:
    """Triton live, every schema of `schemas` (SCHEMAS) given (counted), every inference answered with 1.0;
    `not_loaded` inferences first raise what the client raises for a model Triton does not have loaded."""

    def __init__(self) -> None:
        self.shm = self
        self.schemas = dict(SCHEMAS)
        self.schema_reads: collections.Counter[str] = collections.Counter()
        self.not_loaded = 0

    async def live(self) -> bool:
        return True

    async def model_ready(self, name: str, version: str) -> bool:
        return name in self.schemas  # no candidate is being tried

    async def schema(self, name: str, version: str) -> ModelSchema:
        self.schema_reads[name] += 1
        return self.schemas[name]

    async def infer(self, schema: ModelSchema, version: str, arrays: dict[str, Any], *args: Any) -> Any:
        if self.not_loaded:
            self.not_loaded -= 1
            raise ModelNotLoaded(f"Triton does not have the model loaded: Request for unknown model: '{schema.name}'")
        rows = len(next(iter(arrays.values())))
        return {"OUTPUT__0": np.full((rows, schema.outputs[0].shape[0]), 1.0, np.float32)}, "7"

    async def open(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"active": False, "detail": "fake"}

    async def close(self) -> None:
        return None


@pytest_asyncio.fixture
async def decider() -> AsyncIterator[FakeDecider]:
    fake = FakeDecider(
        {
            "alpha": {"state": "not_resident", "bytes": None, "problem": None},
            "beta": {"state": "not_resident", "bytes": 2000, "problem": None},
        }
    )
    server = TestServer(fake.app)
    await server.start_server()
    fake.url = str(server.make_url("")).rstrip("/")  # type: ignore[attr-defined]
    yield fake
    await server.close()


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> FakeUpstream:
    fake = FakeUpstream()
    monkeypatch.setattr(model_loader, "connect", lambda settings: fake)
    monkeypatch.setattr(residency, "HEARTBEAT_S", 0.01)
    monkeypatch.setattr(model_loader, "SCHEMA_RETRY_S", 0.01)
    return fake


@pytest.fixture
def meta(tmp_path: Path) -> Path:
    directory = tmp_path / "meta"
    directory.mkdir()
    write_meta(directory, "alpha.json", "alpha")
    write_meta(directory, "beta.json", "beta")
    return directory


ProxyOn = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def proxy_on(decider: FakeDecider, proxy_client: MakeClient, upstream: FakeUpstream, meta: Path) -> ProxyOn:
    """A proxy of alpha and beta over the fake Triton; with the fake decider unless `RESIDENCY_URL` is given."""

    async def make(**env: str) -> TestClient:
        settings = {
            "MODEL_NAME": "",
            "NEXUS_META_PATH": str(meta),
            "PROXY_COALESCE": "0",
            "UPSTREAM_CONNECT_TIMEOUT_S": "0.5",
            "RESIDENCY_URL": decider.url,  # type: ignore[attr-defined]
        }
        return await proxy_client(UNREACHABLE, **(settings | env))

    return make


async def eventually(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


async def predict(client: TestClient, name: str, **headers: str) -> Any:
    return await client.post(f"/models/{name}/predict", json={"input": ROWS[name]}, headers=headers)


# --- waiting for a load ----------------------------------------------------------------------------------------
async def test_concurrent_requests_share_one_load(proxy_on: ProxyOn, decider: FakeDecider) -> None:
    client = await proxy_on()
    alpha = client.server.app[STATE].models["alpha"]
    decider.gate.clear()
    waiting = [asyncio.ensure_future(predict(client, "alpha")) for _ in range(5)]
    await eventually(lambda: alpha.in_flight == 5 and decider.loads["alpha"] == 1)
    decider.gate.set()
    answers = await asyncio.gather(*waiting)
    assert [answer.status for answer in answers] == [200] * 5
    assert all(int(answer.headers[LOAD_WAIT_HEADER]) >= 0 for answer in answers)
    assert decider.loads == {"alpha": 1}
    assert "alpha" in decider.load_bodies[0]["busy"]  # its own waiting requests: not to be unloaded for another
    assert 0 < decider.load_bodies[0]["deadline_s"] <= 10  # what the request that asked still waits (10 s at most)


async def test_the_header_only_on_requests_that_waited(proxy_on: ProxyOn, decider: FakeDecider) -> None:
    client = await proxy_on()
    first = await predict(client, "alpha")
    assert first.status == 200 and LOAD_WAIT_HEADER in first.headers
    second = await predict(client, "alpha")
    assert second.status == 200 and LOAD_WAIT_HEADER not in second.headers
    assert decider.loads == {"alpha": 1}
    assert (await (await client.get("/v1/models")).json())["models"][0]["state"] == "ready"


async def test_no_room_is_asked_again_until_it_loads(proxy_on: ProxyOn, decider: FakeDecider) -> None:
    client = await proxy_on()
    decider.refusals["alpha"] = [NO_ROOM, NO_ROOM]
    answer = await predict(client, "alpha")
    assert answer.status == 200, await answer.text()
    assert decider.loads == {"alpha": 3}
    assert LOAD_WAIT_HEADER in answer.headers


async def test_no_room_until_the_deadline_is_503_with_retry_after(proxy_on: ProxyOn, decider: FakeDecider) -> None:
    client = await proxy_on(RETRY_AFTER_S="3")
    decider.refusals["alpha"] = [NO_ROOM] * 1000
    answer = await predict(client, "alpha", **{"X-Request-Timeout-Ms": "500"})
    body = await answer.json()
    assert (answer.status, body["error"]["code"]) == (503, "no_room"), body
    assert "are busy" in body["error"]["message"]
    assert answer.headers["Retry-After"] == "3"
    assert LOAD_WAIT_HEADER in answer.headers
    assert decider.loads["alpha"] >= 2  # asked again within the deadline


@pytest.mark.parametrize(
    ("answer", "status", "code", "said"),
    [
        pytest.param(
            refusal(507, "over_memory_budget", "alpha needs 5.0 GiB; the budget is 4.0 GiB"),
            507,
            "over_memory_budget",
            "the budget is 4.0 GiB",
            id="over-budget-507",
        ),
        pytest.param(
            refusal(502, "model_load_failed", "failed to load 'alpha': out of memory"),
            502,
            "model_load_failed",
            "out of memory",
            id="load-failed-502",
        ),
        pytest.param(
            refusal(404, "model_not_found", "no model alpha in the repository"),
            503,
            "not_ready",
            "is not served: no model alpha in the repository",
            id="not-in-repository-503",
        ),
        pytest.param(
            refusal(504, "deadline_exceeded", "the caller's deadline passed before its turn"),
            504,
            "deadline_exceeded",
            "did not get to model alpha's load in time",
            id="dropped-504",
        ),
        pytest.param(
            refusal(500, "internal_error", "boom"), 502, "upstream_error", "answered 500", id="decider-error-502"
        ),
    ],
)
async def test_what_the_decider_refuses_with(
    proxy_on: ProxyOn, decider: FakeDecider, answer: Answer, status: int, code: str, said: str
) -> None:
    client = await proxy_on()
    decider.refusals["alpha"] = [answer]
    for path in ("/models/alpha/predict", "/v2/models/alpha/infer"):
        decider.refusals["alpha"] = [answer]
        body = {"input": ROWS["alpha"]} if path.endswith("predict") else infer_body("alpha")
        response = await client.post(path, json=body)
        error = (await response.json())["error"]
        assert response.status == status, error
        text = error if isinstance(error, str) else f"{error['code']}: {error['message']}"
        assert text.startswith(f"{code}: ") and said in text, text


async def test_a_request_that_joined_a_load_outlasting_its_call_asks_again(
    proxy_on: ProxyOn, decider: FakeDecider
) -> None:
    """The shared call lasts as long as the request that started it waits (its `deadline_s`, plus the connection);
    a request that joined it with more time left starts a call of its own when it ends, and gets the model."""
    client = await proxy_on()
    decider.gate.clear()
    short = asyncio.ensure_future(predict(client, "alpha", **{"X-Request-Timeout-Ms": "300"}))
    await eventually(lambda: decider.loads["alpha"] == 1)
    joined = asyncio.ensure_future(predict(client, "alpha"))
    answer = await short
    assert (answer.status, (await answer.json())["error"]["code"]) == (504, "deadline_exceeded")
    await eventually(lambda: decider.loads["alpha"] == 2)
    decider.gate.set()
    answer = await joined
    assert answer.status == 200, await answer.text()
    first, second = (body["deadline_s"] for body in decider.load_bodies)
    assert first <= 0.3 < second  # each call carries the deadline of the request that started it


@pytest.mark.parametrize(
    ("proxy_key", "decider_key", "status"),
    [
        pytest.param("k3y", "k3y", 200, id="same-key"),
        pytest.param(None, "k3y", 503, id="missing"),
        pytest.param("other", "k3y", 503, id="wrong"),
        pytest.param(None, None, 200, id="open"),
    ],
)
async def test_residency_key(
    proxy_on: ProxyOn, decider: FakeDecider, proxy_key: str | None, decider_key: str | None, status: int
) -> None:
    """RESIDENCY_KEY is sent on every call; a decider refusing it (401) is a 503 saying so, and not ready."""
    decider.key = decider_key
    client = await proxy_on(**({"RESIDENCY_KEY": proxy_key} if proxy_key else {}))
    response = await predict(client, "alpha")
    assert response.status == status, await response.text()
    ready = await client.get("/readyz")
    if status == 200:
        assert ready.status == 200
        assert decider.keys == {proxy_key}  # the heartbeats' and the load's
        return
    error = (await response.json())["error"]
    assert error["code"] == "upstream_unavailable"
    assert "RESIDENCY_KEY is missing or wrong" in error["message"]
    assert ready.status == 503 and "RESIDENCY_KEY is missing or wrong" in (await ready.json())["error"]["message"]


async def test_an_unreachable_decider_is_503_naming_it(proxy_on: ProxyOn) -> None:
    client = await proxy_on(RESIDENCY_URL="http://127.0.0.1:9")
    response = await predict(client, "alpha")
    error = (await response.json())["error"]
    assert (response.status, error["code"]) == (503, "upstream_unavailable")
    assert "RESIDENCY_URL=http://127.0.0.1:9" in error["message"]
    ready = await client.get("/readyz")
    assert ready.status == 503 and "RESIDENCY_URL=http://127.0.0.1:9" in (await ready.json())["error"]["message"]


def infer_body(name: str) -> dict[str, Any]:
    row = ROWS[name]
    return {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [1, len(row)], "data": row}]}


def binary_infer(name: str) -> tuple[bytes, dict[str, str]]:
    row = ROWS[name]
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT__0",
                    "datatype": "FP32",
                    "shape": [1, len(row)],
                    "parameters": {"binary_data_size": 4 * len(row)},
                }
            ]
        }
    ).encode()
    return header + np.asarray(row, np.float32).tobytes(), {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


@pytest.mark.parametrize("form", ["json", "binary", "versioned"])
async def test_v2_inference_waits_for_the_load(proxy_on: ProxyOn, decider: FakeDecider, form: str) -> None:
    client = await proxy_on()
    if form == "binary":
        body, headers = binary_infer("beta")
        response = await client.post("/v2/models/beta/infer", data=body, headers=headers)
    else:
        path = "/v2/models/beta/versions/3/infer" if form == "versioned" else "/v2/models/beta/infer"
        response = await client.post(path, json=infer_body("beta"))
    assert response.status == 200, await response.text()
    assert LOAD_WAIT_HEADER in response.headers
    assert decider.loads == {"beta": 1}


# A new version of alpha put live while it was not loaded: another version and interface.
ALPHA_2 = ModelSchema(
    "alpha", ("2",), "python", 8, (TensorSchema("INPUT__0", "FP32", (3,)),), (TensorSchema("OUTPUT__0", "FP32", (2,)),)
)


@pytest.mark.parametrize("route", ["predict", "v2-versioned"])
async def test_a_model_loaded_again_is_served_with_its_schema_read_again(
    proxy_on: ProxyOn, decider: FakeDecider, upstream: FakeUpstream, route: str
) -> None:
    client = await proxy_on()
    state = client.server.app[STATE]
    assert (await predict(client, "alpha")).status == 200
    decider.models["alpha"] = {"state": "not_resident", "bytes": 1000, "problem": None}
    await eventually(lambda: "alpha" not in state.residency.resident)  # type: ignore[union-attr]
    upstream.schemas["alpha"] = ALPHA_2
    if route == "predict":
        response = await client.post("/models/alpha/predict", json={"input": [1, 2, 3]})
    else:
        infer = {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
        response = await client.post("/v2/models/alpha/versions/2/infer", json=infer)
    assert response.status == 200, await response.text()
    assert decider.loads == {"alpha": 2} and state.models["alpha"].schema == ALPHA_2


async def test_a_version_the_model_lacks_is_404_once_its_schema_is_read(
    proxy_on: ProxyOn, decider: FakeDecider
) -> None:
    client = await proxy_on()
    response = await client.post("/v2/models/beta/versions/9/infer", json=infer_body("beta"))
    assert response.status == 404
    assert (await response.json())["error"].startswith("not_found: model 'beta' has no version '9'")


# --- evicted between heartbeats ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("not_loaded", "status"),
    [
        pytest.param(1, 200, id="loaded-again-once"),
        pytest.param(2, 503, id="not-twice"),
    ],
)
async def test_a_model_triton_lost_goes_through_the_load_once(
    proxy_on: ProxyOn, decider: FakeDecider, upstream: FakeUpstream, not_loaded: int, status: int
) -> None:
    client = await proxy_on()
    assert (await predict(client, "alpha")).status == 200
    upstream.not_loaded = not_loaded
    response = await predict(client, "alpha")
    assert response.status == status, await response.text()
    assert LOAD_WAIT_HEADER in response.headers
    assert decider.loads == {"alpha": 2}
    if status != 200:
        assert (await response.json())["error"]["code"] == "upstream_unavailable"


async def test_the_reload_holds_no_in_flight_place(
    proxy_on: ProxyOn, decider: FakeDecider, upstream: FakeUpstream
) -> None:
    """A request waiting for its model's load again gives back its MAX_IN_FLIGHT place meanwhile, as the first
    wait holds none: a request for a loaded model is not refused 429 for it."""
    client = await proxy_on(MAX_IN_FLIGHT="1")
    assert (await predict(client, "alpha")).status == 200
    assert (await predict(client, "beta")).status == 200
    decider.gate.clear()
    upstream.not_loaded = 1
    reloading = asyncio.ensure_future(predict(client, "alpha"))
    await eventually(lambda: decider.loads["alpha"] == 2)
    other = await predict(client, "beta")
    assert other.status == 200, await other.text()
    decider.gate.set()
    answer = await reloading
    assert answer.status == 200, await answer.text()


# --- what the proxy says -------------------------------------------------------------------------------------
async def test_v1_models_states_and_memory(
    proxy_on: ProxyOn, decider: FakeDecider, upstream: FakeUpstream, meta: Path
) -> None:
    write_meta(meta, "gamma.json", "gamma")
    write_meta(meta, "delta.json", "delta")
    decider.models.update(
        {
            "alpha": {"state": "resident", "bytes": 1500, "problem": None},
            "gamma": {"state": "loading", "bytes": None, "problem": None},
            "delta": {"state": "failed", "bytes": None, "problem": "model delta: stub died"},
        }
    )
    client = await proxy_on()
    state = client.server.app[STATE]
    await eventually(lambda: state.models["alpha"].schema is not None)

    async def described() -> dict[str, dict[str, Any]]:
        return {model["name"]: model for model in (await (await client.get("/v1/models")).json())["models"]}

    models = await described()
    assert {name: (m["state"], m["memory_bytes"], m["problem"]) for name, m in models.items()} == {
        "alpha": ("ready", 1500, None),
        "beta": ("not_resident", 2000, None),
        "gamma": ("loading", None, models["gamma"]["problem"]),
        "delta": ("failed", None, "model delta: stub died"),
    }
    assert upstream.schema_reads == {"alpha": 1}  # the others are not asked while they are not loaded
    ready = await (await client.get("/readyz")).json()
    assert ready["models"] == {"alpha": "ready", "beta": "not_resident", "delta": "failed", "gamma": "loading"}

    decider.models["alpha"] = {"state": "not_resident", "bytes": 1500, "problem": None}
    await eventually(lambda: "alpha" not in state.residency.resident)  # type: ignore[union-attr]
    alpha = (await described())["alpha"]
    assert (alpha["state"], alpha["memory_bytes"], alpha["problem"]) == ("not_resident", 1500, None)
    assert alpha["inputs"] == [{"name": "INPUT__0", "datatype": "FP32", "shape": [5]}]  # its schema is kept


async def test_ready_with_nothing_loaded_while_the_decider_answers(proxy_on: ProxyOn, decider: FakeDecider) -> None:
    client = await proxy_on()
    await eventually(lambda: client.server.app[STATE].residency.answered)  # type: ignore[union-attr]
    ready = await client.get("/readyz")
    assert ready.status == 200, await ready.text()
    assert (await ready.json())["models"] == {"alpha": "not_resident", "beta": "not_resident"}


async def test_the_heartbeat_says_busy_and_used(proxy_on: ProxyOn, decider: FakeDecider) -> None:
    client = await proxy_on()
    decider.gate.clear()
    waiting = asyncio.ensure_future(predict(client, "beta"))
    await eventually(lambda: any(beat["busy"] == ["beta"] and beat["used"] == ["beta"] for beat in decider.heartbeats))
    decider.gate.set()
    assert (await waiting).status == 200
    await eventually(lambda: decider.heartbeats[-1]["busy"] == [] and decider.heartbeats[-1]["used"] == [])


async def test_load_waits_are_counted(proxy_on: ProxyOn) -> None:
    client = await proxy_on()
    assert (await predict(client, "alpha")).status == 200
    assert (await predict(client, "alpha")).status == 200
    text = await (await client.get("/metrics")).text()
    assert 'nexus_model_load_waits_total{model="alpha"} 1.0' in text
    assert 'nexus_model_load_wait_seconds_count{model="alpha"} 1.0' in text


# --- without a budget ---------------------------------------------------------------------------------------------
async def test_without_residency_url_the_decider_is_never_asked(
    proxy_on: ProxyOn, decider: FakeDecider, upstream: FakeUpstream
) -> None:
    client = await proxy_on(RESIDENCY_URL="")
    state = client.server.app[STATE]
    assert state.residency is None
    await eventually(lambda: all(model.schema is not None for model in state.models.values()))
    response = await predict(client, "alpha")
    assert response.status == 200 and LOAD_WAIT_HEADER not in response.headers
    models = (await (await client.get("/v1/models")).json())["models"]
    assert [(m["state"], m["memory_bytes"]) for m in models] == [("ready", None), ("ready", None)]
    assert (decider.heartbeats, decider.loads) == ([], {})


@pytest.mark.parametrize(
    ("message", "status", "lost"),
    [
        pytest.param("Request for unknown model: 'alpha' is not found", "StatusCode.NOT_FOUND", True, id="grpc"),
        pytest.param("Request for unknown model: 'alpha' is not found", "400", True, id="http"),
        pytest.param(
            "Request for unknown model: 'alpha' version 1 is not at ready state",
            "StatusCode.UNAVAILABLE",
            True,
            id="grpc-unloading",
        ),
        pytest.param(
            "Request for unknown model: 'alpha' version 1 is not at ready state", "503", True, id="http-unloading"
        ),
        pytest.param(
            "Request for unknown model: 'alpha' has no available versions",
            "StatusCode.UNAVAILABLE",
            True,
            id="grpc-unloaded",
        ),
        pytest.param("Request for unknown model: 'alpha' has no available versions", "503", True, id="http-unloaded"),
        pytest.param("failed to connect to all addresses", "StatusCode.UNAVAILABLE", False, id="triton-down"),
        pytest.param("Stub process is not healthy", "StatusCode.INTERNAL", False, id="stub-died"),
    ],
)
async def test_only_an_unknown_model_is_loaded_again(message: str, status: str, lost: bool) -> None:
    """What the retry-once rule reads: Triton's "unknown model" (also while the model loads or unloads, answered
    UNAVAILABLE), still `upstream_unavailable` to a client."""
    err = from_triton_error(InferenceServerException(msg=message, status=status))
    assert isinstance(err, ModelNotLoaded) is lost
    assert not lost or err.code == "upstream_unavailable"
