"""The Open Inference Protocol at the proxy, driven by the real clients (tritonclient.http sync and aio,
perf_analyzer) against a real proxy process, answers compared with Triton's own; and hostile binary bodies."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio

from nexusml.testing.environment import perf_analyzer_env, perf_analyzer_path
from nexusml.testing.servers import ProxyProcess, triton_infer
from nexusml.triton.server import TritonServer
from tests.proxy.conftest import MakeClient, holding_upstream, in_flight

pytestmark = pytest.mark.integration

ROWS = np.random.default_rng(11).normal(size=(3, 5)).astype(np.float32)


@pytest.fixture(scope="module")
def proxy(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    process = ProxyProcess(
        tmp_path_factory.mktemp("v2") / "proxy.log", MODEL_SERVER_URL=triton.grpc_url, MODEL_NAME="demo_mlp"
    ).start()
    yield process
    process.stop()


def address(proxy: ProxyProcess) -> str:
    return proxy.url.removeprefix("http://")


def test_metadata_and_health_through_tritonclient(proxy: ProxyProcess) -> None:
    client = httpclient.InferenceServerClient(address(proxy))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("demo_mlp")
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    metadata = client.get_model_metadata("demo_mlp")
    assert metadata["inputs"] == [{"name": "INPUT__0", "datatype": "FP32", "shape": [-1, 5]}]
    assert client.get_model_config("demo_mlp")["max_batch_size"] > 0
    assert client.is_model_ready("demo_mlp", "1") and not client.is_model_ready("other")


@pytest.mark.parametrize(
    ("binary_in", "binary_out"),
    [
        pytest.param(False, False, id="json"),
        pytest.param(True, True, id="binary"),
        pytest.param(True, False, id="binary-in-json-out"),
        pytest.param(False, True, id="json-in-binary-out"),
    ],
)
def test_sync_client_answers_as_triton_does(
    proxy: ProxyProcess, triton: TritonServer, binary_in: bool, binary_out: bool
) -> None:
    tensor = httpclient.InferInput("INPUT__0", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS, binary_data=binary_in)
    output = httpclient.InferRequestedOutput("OUTPUT__0", binary_data=binary_out)
    result = httpclient.InferenceServerClient(address(proxy)).infer("demo_mlp", [tensor], outputs=[output])
    expected = triton_infer(triton, "demo_mlp", ROWS).as_numpy("OUTPUT__0")
    np.testing.assert_allclose(result.as_numpy("OUTPUT__0"), expected, rtol=1e-5, atol=1e-6)
    assert result.get_response()["model_version"] == "1"


@pytest.mark.asyncio
@pytest.mark.parametrize("binary", [pytest.param(False, id="json"), pytest.param(True, id="binary")])
async def test_aio_client_answers_as_triton_does(proxy: ProxyProcess, triton: TritonServer, binary: bool) -> None:
    client = httpaio.InferenceServerClient(address(proxy))
    tensor = httpaio.InferInput("INPUT__0", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS, binary_data=binary)
    output = httpaio.InferRequestedOutput("OUTPUT__0", binary_data=binary)
    try:
        result = await client.infer("demo_mlp", [tensor], outputs=[output])
    finally:
        await client.close()
    expected = triton_infer(triton, "demo_mlp", ROWS).as_numpy("OUTPUT__0")
    np.testing.assert_allclose(result.as_numpy("OUTPUT__0"), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.asyncio
async def test_v2_and_predict_requests_merge_into_the_same_batches(
    proxy_client: MakeClient, triton: TritonServer
) -> None:
    """While every upstream slot is held, v2 (JSON and binary) and /predict requests queue and leave together."""
    client = await proxy_client(triton.grpc_url, COALESCE_MAX_WAIT_MS="60000")
    release = await holding_upstream(client)
    rows = np.random.default_rng(5).normal(size=(8, 5)).astype(np.float32)
    header = {"inputs": [{"name": "INPUT__0", "shape": [1, 5], "datatype": "FP32"}]}

    def v2_json(row: np.ndarray) -> Any:
        body = {"inputs": [{**header["inputs"][0], "data": row.tolist()}]}
        return client.post("/v2/models/demo_mlp/infer", json=body)

    def v2_binary(row: np.ndarray) -> Any:
        tensor = {**header["inputs"][0], "parameters": {"binary_data_size": 20}}
        body, headers = binary_body({"inputs": [tensor]}, row.astype("<f4").tobytes())
        return client.post("/v2/models/demo_mlp/infer", data=body, headers=headers)

    def predict(row: np.ndarray) -> Any:
        return client.post("/predict", json={"input": row.tolist()})

    blockers = [asyncio.create_task(predict(row)) for row in rows[:2]]  # one per slot (two model instances)
    await in_flight(client, 2)
    calls = [v2_json, v2_binary, predict]
    queued = [asyncio.create_task(calls[i % 3](row)) for i, row in enumerate(rows[2:])]
    await in_flight(client, len(rows))
    release.set()
    responses = await asyncio.gather(*blockers, *queued)
    assert [response.status for response in responses] == [200] * len(rows)
    outputs = []
    for response, call in zip(responses, [predict, predict, *[calls[i % 3] for i in range(6)]], strict=True):
        if call is predict:
            outputs.append((await response.json())["output"])
        else:  # binary in, JSON out: the protocol answers JSON unless binary outputs are asked for
            outputs.append((await response.json())["outputs"][0]["data"])
    expected = triton_infer(triton, "demo_mlp", rows).as_numpy("OUTPUT__0")
    np.testing.assert_allclose(np.array(outputs, dtype=np.float32), expected, rtol=1e-5, atol=1e-6)
    metrics = await (await client.get("/metrics")).text()
    calls_made = next(line for line in metrics.splitlines() if line.startswith("nexus_proxy_upstream_batch_rows_count"))
    assert float(calls_made.split()[-1]) <= 2 + 2 + 1  # the readiness probe, the two blockers, then the six merged


def test_perf_analyzer_runs_against_the_proxy(proxy: ProxyProcess) -> None:
    tool = perf_analyzer_path()
    assert tool is not None, "perf_analyzer comes with tritonclient[all]"
    argv = [tool, "-m", "demo_mlp", "-u", address(proxy), "-i", "http", "--concurrency-range", "2"]
    result = subprocess.run(
        # Stability check off (as benchmarks.loadgen does): on 2 shared cores windows differ widely.
        [*argv, "--measurement-interval", "500", "--stability-percentage", "100000", "--max-trials", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        env=perf_analyzer_env(dict(os.environ)),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Throughput:" in result.stdout


def post(proxy: ProxyProcess, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def binary_body(header: dict, tensor: bytes, header_length: int | None = None) -> tuple[bytes, dict[str, str]]:
    encoded = json.dumps(header).encode()
    length = len(encoded) if header_length is None else header_length
    return encoded + tensor, {
        "Inference-Header-Content-Length": str(length),
        "Content-Type": "application/octet-stream",
    }


def one_input(size: int = 20, shape: list[int] | None = None, datatype: str = "FP32") -> dict:
    tensor = {"name": "INPUT__0", "shape": shape or [1, 5], "datatype": datatype}
    return {"inputs": [{**tensor, "parameters": {"binary_data_size": size}}]}


FIVE = struct.pack("<5f", 1, 2, 3, 4, 5)


@pytest.mark.parametrize(
    ("header", "tensor", "header_length", "status"),
    [
        pytest.param(one_input(), FIVE, None, 200, id="valid"),
        pytest.param(one_input(24), FIVE + b"\0" * 4, None, 400, id="size-lies-about-shape"),
        pytest.param(one_input(), FIVE[:12], None, 400, id="truncated-tensor"),
        pytest.param(one_input(), FIVE + b"extra", None, 400, id="bytes-after-the-last-tensor"),
        pytest.param(one_input(), FIVE, 100_000, 400, id="header-length-past-the-end"),
        pytest.param(one_input(), FIVE, 7, 400, id="header-length-cuts-the-json"),
        pytest.param(one_input(40, datatype="FP64"), FIVE * 2, None, 400, id="wrong-datatype"),
        pytest.param(one_input(40, shape=[1, 10]), FIVE * 2, None, 400, id="wrong-shape"),
        pytest.param(one_input(0, shape=[0, 5]), b"", None, 400, id="zero-rows"),
        pytest.param(one_input(20 * 40, shape=[40, 5]), FIVE * 40, None, 400, id="over-max-batch-size"),
        pytest.param(one_input(), struct.pack("<5f", 1, 2, float("nan"), 4, 5), None, 400, id="nan-in-binary"),
        pytest.param(one_input(-1), FIVE, None, 400, id="negative-size"),
        pytest.param(
            {"inputs": [{"name": "INPUT__0", "shape": [1, 5], "datatype": "FP32"}]},
            b"",
            None,
            400,
            id="json-without-data",
        ),
        pytest.param({"inputs": []}, b"", None, 400, id="no-inputs"),
        pytest.param(
            {"inputs": [{"name": "OTHER", "shape": [1, 5], "datatype": "FP32", "data": [1] * 5}]},
            b"",
            None,
            400,
            id="unknown-input",
        ),
    ],
)
def test_hostile_binary_bodies_get_4xx_never_5xx(
    proxy: ProxyProcess, header: dict, tensor: bytes, header_length: int | None, status: int
) -> None:
    body, headers = binary_body(header, tensor, header_length)
    got, answer = post(proxy, "/v2/models/demo_mlp/infer", body, headers)
    assert got == status, answer
    if status != 200:
        assert isinstance(json.loads(answer)["error"], str)  # the protocol's error form


@pytest.mark.parametrize(
    ("path", "status"),
    [
        pytest.param("/v2/models/other/infer", 404, id="unknown-model"),
        pytest.param("/v2/models/demo_mlp/versions/9/infer", 404, id="unknown-version"),
        pytest.param("/v2/models/demo_mlp/versions/1/infer", 200, id="served-version"),
    ],
)
def test_only_the_served_model_answers(proxy: ProxyProcess, path: str, status: int) -> None:
    body = json.dumps({"inputs": [{"name": "INPUT__0", "shape": [1, 5], "datatype": "FP32", "data": [1] * 5}]})
    got, answer = post(proxy, path, body.encode(), {"Content-Type": "application/json"})
    assert got == status, answer


def test_v2_routes_need_the_api_key(triton: TritonServer, tmp_path: Path) -> None:
    process = ProxyProcess(
        tmp_path / "proxy.log", MODEL_SERVER_URL=triton.grpc_url, MODEL_NAME="demo_mlp", API_KEYS="k-one"
    ).start(wait_for="/healthz")
    try:
        body = json.dumps({"inputs": [{"name": "INPUT__0", "shape": [1, 5], "datatype": "FP32", "data": [1] * 5}]})
        assert post(process, "/v2/models/demo_mlp/infer", body.encode(), {})[0] == 401
        assert post(process, "/v2/models/demo_mlp/infer", body.encode(), {"X-API-Key": "k-one"})[0] == 200
    finally:
        process.stop()


@pytest.mark.parametrize(
    ("length", "accepted"),
    [
        pytest.param(3, True, id="within-max-dynamic-dim"),
        pytest.param(5, False, id="over-max-dynamic-dim"),
        pytest.param(0, False, id="empty-variable-dimension"),
    ],
)
def test_binary_variable_dimensions_follow_max_dynamic_dim(length: int, accepted: bool) -> None:
    """The same bound as JSON inputs (the shared check in proxy.validation), on a model with a -1 dimension."""
    from proxy import v2
    from proxy.errors import WrongShape
    from proxy.schema import ModelSchema, TensorSchema

    schema = ModelSchema("m", ("1",), "python", 8, (TensorSchema("X", "FP32", (-1,)),), ())
    tensor = {"name": "X", "shape": [1, length], "datatype": "FP32", "parameters": {"binary_data_size": 4 * length}}
    body, headers = binary_body({"inputs": [tensor]}, struct.pack(f"<{length}f", *range(length)))
    if accepted:
        assert v2.parse_infer(body, headers["Inference-Header-Content-Length"], schema, 4).prediction.rows == 1
    else:
        with pytest.raises(WrongShape, match="MAX_DYNAMIC_DIM=4"):
            v2.parse_infer(body, headers["Inference-Header-Content-Length"], schema, 4)
