"""The API end to end, over both upstream protocols, against the real Triton serving `demo_mlp`."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from nexusml.command import demo
from nexusml.testing.models import DEMO_SPEC, PublishedModel
from nexusml.testing.servers import start_triton
from nexusml.triton.server import TritonServer
from proxy.app import OPENAPI_PATH
from tests.proxy.conftest import ROW, MakeClient

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


async def test_single_row_matches_the_model_in_process(proxy_client: MakeClient, upstream_url: str) -> None:
    client = await proxy_client(upstream_url)
    response = await client.post("/predict", json={"input": ROW})
    assert response.status == 200, await response.text()
    body = await response.json()
    expected = demo.reference_outputs(DEMO_SPEC, [ROW])[0][0]
    np.testing.assert_allclose(body["output"], expected, rtol=1e-5, atol=1e-5)
    assert response.headers["X-Model-Name"] == "demo_mlp"
    assert response.headers["X-Model-Version"] == "1"
    assert response.headers["X-Request-Id"]


async def test_batch_matches_the_model_in_process(proxy_client: MakeClient, upstream_url: str) -> None:
    client = await proxy_client(upstream_url)
    rows = np.random.default_rng(1).normal(size=(7, 5)).astype(np.float32).tolist()
    response = await client.post("/predict", json={"inputs": rows})
    assert response.status == 200, await response.text()
    body = await response.json()
    np.testing.assert_allclose(body["outputs"], demo.reference_outputs(DEMO_SPEC, rows)[0], rtol=1e-5, atol=1e-5)


async def test_named_input_form(proxy_client: MakeClient, upstream_url: str) -> None:
    client = await proxy_client(upstream_url)
    single = await client.post("/predict", json={"input": {"INPUT__0": ROW}})
    batch = await client.post("/predict", json={"inputs": [{"INPUT__0": ROW}, {"INPUT__0": ROW}]})
    assert single.status == 200 and batch.status == 200
    one = (await single.json())["output"]
    np.testing.assert_allclose((await batch.json())["outputs"], [one, one], rtol=1e-5, atol=1e-5)


async def test_health_ready_models_metrics(proxy_client: MakeClient, upstream_url: str) -> None:
    client = await proxy_client(upstream_url)
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200, await ready.text()
    assert (await ready.json())["model"] == "demo_mlp"
    models = (await (await client.get("/v1/models")).json())["models"]
    assert models == [
        {
            "name": "demo_mlp",
            "versions": ["1"],
            "platform": "python",
            "max_batch_size": 32,
            "inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [5]}],
            "outputs": [{"name": "OUTPUT__0", "datatype": "FP32", "shape": [2]}],
            "state": "ready",
            "served_version": "1",
            "trying_version": None,
            "problem": None,
            "memory_bytes": None,
        }
    ]
    await client.post("/predict", json={"inputs": [ROW, ROW, ROW]})
    text = await (await client.get("/metrics")).text()
    assert 'nexus_proxy_requests_total{model="demo_mlp",route="/predict",status="200"} 1.0' in text
    assert "nexus_proxy_request_duration_seconds_bucket" in text
    assert 'nexus_proxy_upstream_batch_rows_bucket{le="4.0",model="demo_mlp"} 1.0' in text
    assert "nexus_proxy_in_flight" in text


async def test_openapi_document_is_served(client) -> None:
    response = await client.get("/openapi.yaml")
    assert response.status == 200
    assert yaml.safe_load(await response.read()) == yaml.safe_load(OPENAPI_PATH.read_bytes())


async def test_request_id_is_echoed(client) -> None:
    response = await client.post("/predict", json={"input": ROW}, headers={"X-Request-Id": "abc-123"})
    assert response.headers["X-Request-Id"] == "abc-123"
    odd = await client.post("/predict", json={"input": ROW}, headers={"X-Request-Id": "x" * 500})
    assert odd.headers["X-Request-Id"] != "x" * 500


# --- which model: MODEL_NAME, else the metadata file, else Triton's index (refused when restricted) -------
# The deployments' flags (compose, Helm): the repository index needs an admin key the proxy does not hold.
RESTRICTED_FLAGS = (
    "--http-restricted-api=model-repository,logging,trace:nexus-admin-key=test-key",
    "--grpc-restricted-protocol=model-repository,logging,trace:nexus-admin-key=test-key",
)


@pytest.fixture(scope="module")
def restricted_triton(demo_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    server = start_triton(demo_repository, tmp_path_factory.mktemp("triton-restricted"), RESTRICTED_FLAGS)
    yield server
    server.stop()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize(
    ("restricted", "name_source", "ready"),
    [
        pytest.param(True, "metadata", True, id="restricted-metadata-file"),
        pytest.param(True, "MODEL_NAME", True, id="restricted-model-name"),
        pytest.param(True, "nothing", False, id="restricted-nothing-never-ready"),
        pytest.param(False, "nothing", True, id="open-index"),
        pytest.param(False, "broken-metadata", False, id="open-broken-metadata-file"),
    ],
)
async def test_which_model_to_serve(
    proxy_client: MakeClient,
    request: pytest.FixtureRequest,
    demo_model: PublishedModel,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    protocol: str,
    restricted: bool,
    name_source: str,
    ready: bool,
) -> None:
    server: TritonServer = request.getfixturevalue("restricted_triton" if restricted else "triton")
    env = {"MODEL_NAME": "", "NEXUS_META_PATH": str(tmp_path / "absent.json")}
    if name_source == "metadata":
        env["NEXUS_META_PATH"] = str(demo_model.meta_path)
    elif name_source == "broken-metadata":  # present but not valid: a configuration error, not a fallback
        (tmp_path / "broken.json").write_text("{")
        env["NEXUS_META_PATH"] = str(tmp_path / "broken.json")
    elif name_source == "MODEL_NAME":
        env["MODEL_NAME"] = "demo_mlp"
    with caplog.at_level(logging.WARNING, logger="proxy"):
        client = await proxy_client(server.grpc_url if protocol == "grpc" else server.http_url, **env)
        response = await client.get("/readyz")
        body = await response.json()
    if ready:
        assert response.status == 200, body
        assert body["model"] == "demo_mlp"
        assert (await client.post("/predict", json={"input": ROW})).status == 200
        return
    assert response.status == 503
    assert body["error"]["code"] == "not_ready"
    message = body["error"]["message"]
    causes = ["MODEL_NAME is empty", "NEXUS_META_PATH", "restricted"]
    if name_source == "broken-metadata":
        causes = ["broken.json", "not valid JSON"]
    for cause in causes:
        assert cause in message, message
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].getMessage().startswith(message), errors  # one line says why
