"""The naive baseline answers like the proxy's one-row `/predict`: the model's output for a good row, 400
`bad_request` for anything else."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio
import torch
from aiohttp.test_utils import TestClient, TestServer

from benchmarks import naive_server


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(5, 2).eval()


@pytest_asyncio.fixture
async def client() -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(naive_server.create_app(model(), torch.device("cpu"), shape=(5,)))) as client:
        yield client


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"input": [1, 2, 3, 4, 5]}', id="ints"),
        pytest.param(b'{"input": [0.5, -1.25, 3.0, 4.0, 5.5]}', id="floats"),
    ],
)
@pytest.mark.asyncio
async def test_predict_answers_the_models_output(client, body):
    response = await client.post("/predict", data=body)
    assert response.status == 200
    row = torch.tensor([naive_server.orjson.loads(body)["input"]], dtype=torch.float32)
    with torch.inference_mode():
        expected = model()(row)[0].tolist()
    assert (await response.json())["output"] == pytest.approx(expected)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"[1, 2, 3, 4, 5]", id="not-an-object"),
        pytest.param(b'{"inputs": [1, 2, 3, 4, 5]}', id="no-input"),
        pytest.param(b'{"input": [1, 2, 3]}', id="short-row"),
        pytest.param(b'{"input": [[1, 2, 3, 4, 5]]}', id="extra-dimension"),
        pytest.param(b'{"input": 1}', id="scalar"),
        pytest.param(b'{"input": [1, 2, [3], 4, 5]}', id="ragged"),
        pytest.param(b'{"input": [1, 2, null, 4, 5]}', id="null"),
        pytest.param(b'{"input": [1, 2, {"a": 1}, 4, 5]}', id="object-value"),
    ],
)
@pytest.mark.asyncio
async def test_predict_refuses_what_is_not_a_row(client, body):
    response = await client.post("/predict", data=body)
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "bad_request"


@pytest.mark.asyncio
async def test_healthz(client):
    response = await client.get("/healthz")
    assert response.status == 200 and (await response.json()) == {"status": "ok"}


@pytest.mark.parametrize(
    ("shape", "body", "expected"),
    [
        pytest.param(None, b'{"input": [[1, 2], [3, 4]]}', (2, 2), id="any-shape"),
        pytest.param((2, 2), b'{"input": [[1, 2], [3, 4]]}', (2, 2), id="declared-shape"),
    ],
)
def test_read_row_is_fp32_of_the_rows_shape(shape, body, expected):
    array = naive_server.read_row(body, shape)
    assert array.dtype == np.float32 and array.shape == expected


def test_arguments_read_the_input_shape():
    args = naive_server.arguments("", ["--model-file", "m.pt", "--input-shape", "3,224,224"])
    assert args.input_shape == (3, 224, 224)
    assert naive_server.arguments("", ["--model-file", "m.pt"]).input_shape is None
