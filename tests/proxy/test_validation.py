"""Bad input never reaches Triton, never crashes the proxy, and gets its own status and stable code.

The table runs through the real app (gRPC upstream to the shared Triton), checking status and code and
that the proxy still answers a good request afterwards. Unit tests cover forms the demo model cannot:
several inputs and outputs, integer and boolean datatypes, models without a batch dimension.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import orjson
import pytest
import yaml

from proxy.app import OPENAPI_PATH
from proxy.errors import ProxyError
from proxy.schema import ModelSchema, TensorSchema
from proxy.validation import parse_json, response_body, to_prediction
from tests.proxy.conftest import ROW

JSON = {"Content-Type": "application/json"}
BIG = b'{"input": [' + b"1.0, " * 300_000 + b"1.0]}"  # ~1.5 MB, over the 1 MiB default


def body(value: Any) -> bytes:
    return orjson.dumps(value)


# id, method, path, body, headers, chunked, status, code
CASES = [
    pytest.param("POST", "/predict", b"", JSON, False, 400, "empty_body", id="empty-body"),
    pytest.param("POST", "/predict", b"   \n", JSON, False, 400, "empty_body", id="blank-body"),
    pytest.param("POST", "/predict", b"hello", JSON, False, 400, "invalid_json", id="not-json"),
    pytest.param("POST", "/predict", b'{"input": [1, 2', JSON, False, 400, "invalid_json", id="truncated"),
    pytest.param("POST", "/predict", b'{"input": [1,2,3,4,5]} x', JSON, False, 400, "invalid_json", id="trailing"),
    pytest.param(
        "POST",
        "/predict",
        body({"input": ROW}),
        {"Content-Type": "text/plain"},
        False,
        415,
        "unsupported_media_type",
        id="content-type-text",
    ),
    pytest.param(
        "POST",
        "/predict",
        body({"input": ROW}),
        {"Content-Type": "application/x-www-form-urlencoded"},
        False,
        415,
        "unsupported_media_type",
        id="content-type-form",
    ),
    pytest.param(
        "POST", "/predict", body({"input": ROW}), {}, False, 415, "unsupported_media_type", id="no-content-type"
    ),
    pytest.param(
        "POST",
        "/predict",
        body({"input": ROW}),
        {"Content-Type": "application/json; charset=latin-1"},
        False,
        415,
        "unsupported_media_type",
        id="charset-latin1",
    ),
    pytest.param("POST", "/predict", body([ROW]), JSON, False, 422, "wrong_body_type", id="top-level-list"),
    pytest.param("POST", "/predict", b"5", JSON, False, 422, "wrong_body_type", id="top-level-number"),
    pytest.param("POST", "/predict", b'"x"', JSON, False, 422, "wrong_body_type", id="top-level-string"),
    pytest.param("POST", "/predict", b"null", JSON, False, 422, "wrong_body_type", id="top-level-null"),
    pytest.param("POST", "/predict", body({}), JSON, False, 422, "missing_input", id="missing-input"),
    pytest.param("POST", "/predict", body({"input": None}), JSON, False, 422, "missing_input", id="null-input"),
    pytest.param("POST", "/predict", body({"inputs": None}), JSON, False, 422, "missing_input", id="null-inputs"),
    pytest.param(
        "POST", "/predict", body({"input": {"OTHER": ROW}}), JSON, False, 422, "unknown_field", id="unknown-input-name"
    ),
    pytest.param("POST", "/predict", body({"input": {}}), JSON, False, 422, "missing_input", id="named-input-missing"),
    pytest.param(
        "POST", "/predict", body({"input": ROW, "extra": 1}), JSON, False, 422, "unknown_field", id="unknown-field"
    ),
    pytest.param(
        "POST",
        "/predict",
        body({"input": ROW, "inputs": [ROW]}),
        JSON,
        False,
        422,
        "unknown_field",
        id="input-and-inputs",
    ),
    pytest.param(
        "POST", "/predict", body({"input": ["1", "2", "3", "4", "5"]}), JSON, False, 422, "wrong_type", id="strings"
    ),
    pytest.param("POST", "/predict", body({"input": "1,2,3,4,5"}), JSON, False, 422, "wrong_type", id="string-input"),
    pytest.param("POST", "/predict", body({"input": [True] * 5}), JSON, False, 422, "wrong_type", id="booleans"),
    pytest.param(
        "POST", "/predict", body({"input": [1, 2, 3, 4, True]}), JSON, False, 422, "wrong_type", id="mixed-boolean"
    ),
    pytest.param(
        "POST", "/predict", body({"input": [1, 2, 3, 4, None]}), JSON, False, 422, "wrong_type", id="null-element"
    ),
    pytest.param(
        "POST", "/predict", body({"input": [1, 2, 3, 4, {}]}), JSON, False, 422, "wrong_type", id="object-element"
    ),
    pytest.param("POST", "/predict", body({"input": [ROW]}), JSON, False, 422, "wrong_shape", id="too-deep-by-one"),
    pytest.param("POST", "/predict", body({"input": [[ROW]]}), JSON, False, 422, "wrong_shape", id="too-deep-by-two"),
    pytest.param("POST", "/predict", body({"input": 5}), JSON, False, 422, "wrong_shape", id="scalar-input"),
    pytest.param("POST", "/predict", body({"inputs": ROW}), JSON, False, 422, "wrong_shape", id="batch-too-shallow"),
    pytest.param("POST", "/predict", body({"input": [1, 2, 3, 4]}), JSON, False, 422, "wrong_shape", id="too-short"),
    pytest.param("POST", "/predict", body({"input": [*ROW, 6]}), JSON, False, 422, "wrong_shape", id="too-long"),
    pytest.param("POST", "/predict", body({"input": []}), JSON, False, 422, "wrong_shape", id="empty-list"),
    pytest.param(
        "POST", "/predict", body({"inputs": [ROW, ROW[:4]]}), JSON, False, 422, "wrong_shape", id="ragged-batch"
    ),
    pytest.param(
        "POST", "/predict", body({"input": [1, [2], 3, 4, 5]}), JSON, False, 422, "wrong_shape", id="ragged-row"
    ),
    pytest.param("POST", "/predict", body({"inputs": []}), JSON, False, 422, "batch_size", id="empty-batch"),
    pytest.param("POST", "/predict", body({"inputs": [ROW] * 33}), JSON, False, 422, "batch_size", id="batch-over-max"),
    pytest.param("POST", "/predict", b'{"input": [1, 2, 3, 4, NaN]}', JSON, False, 422, "non_finite", id="nan"),
    pytest.param(
        "POST", "/predict", b'{"input": [1, 2, 3, 4, Infinity]}', JSON, False, 422, "non_finite", id="infinity"
    ),
    pytest.param(
        "POST", "/predict", b'{"input": [1, 2, 3, 4, -Infinity]}', JSON, False, 422, "non_finite", id="minus-infinity"
    ),
    pytest.param(
        "POST", "/predict", b'{"input": [1, 2, 3, 4, 1e39]}', JSON, False, 422, "out_of_range", id="overflows-fp32"
    ),
    pytest.param(
        "POST",
        "/predict",
        b'{"input": [1, 2, 3, 4, -3.5e38]}',
        JSON,
        False,
        422,
        "out_of_range",
        id="overflows-fp32-neg",
    ),
    pytest.param(
        "POST",
        "/predict",
        b'{"input": [1, 2, 3, 4, ' + b"9" * 5000 + b"]}",
        JSON,
        False,
        400,
        "number_too_large",
        id="5000-digit-integer",
    ),
    pytest.param(
        "POST", "/predict", b'{"input": [1, 2, 3, 4, 1e400]}', JSON, False, 400, "number_too_large", id="1e400"
    ),
    pytest.param(
        "POST", "/predict", b"[" * 100_000 + b"]" * 100_000, JSON, False, 400, "json_too_deep", id="nested-100000-deep"
    ),
    pytest.param(
        "POST",
        "/predict",
        b'{"input": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        JSON,
        False,
        400,
        "json_too_deep",
        id="nested-in-input",
    ),
    pytest.param("POST", "/predict", BIG, JSON, False, 413, "payload_too_large", id="over-size-limit"),
    pytest.param("POST", "/predict", BIG, JSON, True, 413, "payload_too_large", id="over-size-limit-chunked"),
    pytest.param(
        "POST",
        "/predict",
        body({"input": ROW}),
        {**JSON, "Content-Encoding": "gzip"},
        False,
        415,
        "unsupported_encoding",
        id="content-encoding-gzip",
    ),
    pytest.param(
        "POST",
        "/predict",
        body({"input": ROW}),
        {**JSON, "Content-Encoding": "br"},
        False,
        415,
        "unsupported_encoding",
        id="content-encoding-br",
    ),
    pytest.param("POST", "/predict", b'{"input": "\xff\xfe"}', JSON, False, 400, "invalid_utf8", id="invalid-utf8"),
    pytest.param("POST", "/predict", b'\xef\xbb\xbf{"input": [1]}', JSON, False, 400, "invalid_json", id="utf8-bom"),
    pytest.param(
        "POST",
        "/predict",
        body({"input": ROW}),
        {**JSON, "X-Request-Timeout-Ms": "soon"},
        False,
        400,
        "bad_request",
        id="bad-timeout-header",
    ),
    pytest.param("GET", "/predict", b"", {}, False, 405, "method_not_allowed", id="get-predict"),
    pytest.param("PUT", "/predict", body({"input": ROW}), JSON, False, 405, "method_not_allowed", id="put-predict"),
    pytest.param("GET", "/nope", b"", {}, False, 404, "not_found", id="unknown-path"),
]


async def _chunks(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.integration
@pytest.mark.asyncio
@pytest.mark.parametrize(("method", "path", "data", "headers", "chunked", "status", "code"), CASES)
async def test_bad_input_is_refused_and_the_proxy_keeps_serving(
    client: Any, method: str, path: str, data: bytes, headers: dict[str, str], chunked: bool, status: int, code: str
) -> None:
    payload: Any = _chunks(data) if chunked else data
    response = await client.request(method, path, data=payload, headers=headers, skip_auto_headers={"Content-Type"})
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    error = (await response.json())["error"]
    assert error["code"] == code
    assert error["message"]
    if status == 405:
        assert "POST" in response.headers["Allow"]
    good = await client.post("/predict", json={"input": ROW})
    assert good.status == 200, await good.text()


def test_every_code_in_the_table_is_documented() -> None:
    document = yaml.safe_load(OPENAPI_PATH.read_text())
    documented = set(document["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"])
    assert {case.values[-1] for case in CASES} <= documented
    every = {cls.code for cls in _subclasses(ProxyError)} | {ProxyError.code}
    assert every <= documented, every - documented


def _subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


# --- unit tests on schemas the demo model does not have -----------------------------------------------
TWO_IN_TWO_OUT = ModelSchema(
    name="m",
    versions=("3",),
    platform="python",
    max_batch_size=4,
    inputs=(TensorSchema("A", "FP32", (2,)), TensorSchema("B", "INT8", (-1,))),
    outputs=(TensorSchema("X", "FP32", (1,)), TensorSchema("Y", "INT64", (2,))),
)
UNBATCHED = ModelSchema(
    "u", ("1",), "python", 0, (TensorSchema("FLAGS", "BOOL", (2, 2)),), (TensorSchema("Z", "FP64", ()),)
)


def test_named_inputs_and_outputs() -> None:
    single = to_prediction({"input": {"A": [1, 2], "B": [3, 4, 5]}}, TWO_IN_TWO_OUT)
    assert single.arrays["A"].shape == (1, 2) and single.arrays["A"].dtype == np.float32
    assert single.arrays["B"].tolist() == [[3, 4, 5]] and single.arrays["B"].dtype == np.int8
    outputs = {"X": np.array([[0.5]], np.float32), "Y": np.array([[1, 2]], np.int64)}
    assert orjson.loads(response_body(outputs, TWO_IN_TWO_OUT, single)) == {"output": {"X": [0.5], "Y": [1, 2]}}
    batch = to_prediction({"inputs": [{"A": [1, 2], "B": [1]}, {"A": [3, 4], "B": [2]}]}, TWO_IN_TWO_OUT)
    outputs = {"X": np.array([[0.5], [1.5]], np.float32), "Y": np.array([[1, 2], [3, 4]], np.int64)}
    assert orjson.loads(response_body(outputs, TWO_IN_TWO_OUT, batch)) == {
        "outputs": [{"X": [0.5], "Y": [1, 2]}, {"X": [1.5], "Y": [3, 4]}]
    }


@pytest.mark.parametrize(
    ("doc", "code"),
    [
        pytest.param({"input": [1, 2]}, "wrong_type", id="bare-list-for-two-inputs"),
        pytest.param({"input": {"A": [1, 2]}}, "missing_input", id="one-of-two-missing"),
        pytest.param({"input": {"A": [1, 2], "B": [300]}}, "out_of_range", id="int8-overflow"),
        pytest.param({"input": {"A": [1, 2], "B": [1.5]}}, "out_of_range", id="fraction-for-int"),
        pytest.param({"input": {"A": [1, 2], "B": [[1]]}}, "wrong_shape", id="variable-dim-wrong-depth"),
        pytest.param({"inputs": [{"A": [1, 2], "B": [1]}] * 5}, "batch_size", id="over-max-batch"),
    ],
)
def test_two_input_model_refusals(doc: Any, code: str) -> None:
    with pytest.raises(ProxyError) as caught:
        to_prediction(doc, TWO_IN_TWO_OUT)
    assert caught.value.code == code


def test_integral_floats_fit_integer_inputs() -> None:
    prediction = to_prediction({"input": {"A": [1, 2], "B": [1.0, -128, 127]}}, TWO_IN_TWO_OUT)
    assert prediction.arrays["B"].tolist() == [[1, -128, 127]]


def test_unbatched_boolean_model() -> None:
    prediction = to_prediction({"input": [[True, False], [False, True]]}, UNBATCHED)
    assert prediction.arrays["FLAGS"].shape == (2, 2) and prediction.arrays["FLAGS"].dtype == np.bool_
    assert orjson.loads(response_body({"Z": np.array(0.25)}, UNBATCHED, prediction)) == {"output": 0.25}
    for doc, code in [
        ({"input": [[1, 0], [0, 1]]}, "wrong_type"),
        ({"inputs": [[[True, False], [False, True]]]}, "batch_size"),
    ]:
        with pytest.raises(ProxyError) as caught:
            to_prediction(doc, UNBATCHED)
        assert caught.value.code == code


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        pytest.param(b"", "empty_body", id="empty"),
        pytest.param(b"{", "invalid_json", id="open-brace"),
        pytest.param(b"\xff", "invalid_utf8", id="bad-utf8"),
        pytest.param(b"[NaN]", "non_finite", id="nan"),
        pytest.param(b"[1e999]", "number_too_large", id="1e999"),
        pytest.param(b"[" * 2000, "json_too_deep", id="deep"),
    ],
)
def test_parse_errors(raw: bytes, code: str) -> None:
    with pytest.raises(ProxyError) as caught:
        parse_json(raw)
    assert caught.value.code == code
