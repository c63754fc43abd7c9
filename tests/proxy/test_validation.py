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

from proxy import validation
from proxy.app import OPENAPI_PATH
from proxy.errors import NonFiniteOutput, OutOfRange, ProxyError, WrongShape, http_status
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
        body({"input": [3e38] * 5}),
        JSON,
        False,
        502,
        "non_finite_output",
        id="model-answers-nan",
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
        pytest.param({"input": {"A": [1, 2], "B": []}}, "wrong_shape", id="variable-dim-empty"),
        pytest.param({"inputs": [{"A": [1, 2], "B": []}]}, "wrong_shape", id="variable-dim-empty-in-batch"),
        pytest.param({"input": {"A": [1, 2], "B": [1] * 8193}}, "wrong_shape", id="variable-dim-over-default-max"),
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


def _integers(datatype: str) -> ModelSchema:
    return ModelSchema(
        "i", ("1",), "python", 4, (TensorSchema("N", datatype, (-1,)),), (TensorSchema("Y", "FP32", (1,)),)
    )


@pytest.mark.parametrize(
    ("datatype", "raw", "message"),
    [
        pytest.param("INT64", b"[0, 9223372036854775807.0]", "outside", id="int64-max-written-as-float"),
        pytest.param("UINT64", b"[0, 1.8446744073709552e19]", "outside", id="uint64-max-written-as-float"),
        pytest.param("UINT64", b"[0, 18446744073709551616]", "outside", id="uint64-max-plus-one"),
        pytest.param("INT64", b"[0, 9223372036854775808]", "outside", id="int64-max-plus-one"),
        pytest.param("INT64", b"[0, -9223372036854775809]", "not an exact integer", id="int64-min-minus-one"),
        pytest.param("INT64", b"[0, 9007199254740993.0]", "not an exact integer", id="float-beyond-2-pow-53"),
        pytest.param("INT64", b"[0, 1e300]", "outside", id="huge-float"),
        pytest.param("INT32", b"[0, 2147483648]", "outside", id="int32-max-plus-one"),
        pytest.param("INT32", b"[0, 1.5]", "not an integer", id="fraction"),
        pytest.param("UINT8", b"[0, -1]", "outside", id="negative-for-unsigned"),
        pytest.param("UINT64", b"[0, -1, 18446744073709551615]", "outside", id="negative-beside-uint64-max"),
    ],
)
def test_integer_inputs_refuse_what_they_cannot_hold_exactly(datatype: str, raw: bytes, message: str) -> None:
    with pytest.raises(OutOfRange, match=message) as caught:
        to_prediction({"input": orjson.loads(raw)}, _integers(datatype))
    assert caught.value.code == "out_of_range" and http_status(caught.value) == 422
    assert str(caught.value).startswith("input N, element [1]: ")


@pytest.mark.parametrize(
    ("datatype", "raw", "expected"),
    [
        pytest.param(
            "INT64",
            b"[9223372036854775807, -9223372036854775808]",
            [9223372036854775807, -9223372036854775808],
            id="int64-limits",
        ),
        pytest.param("UINT64", b"[18446744073709551615, 0]", [18446744073709551615, 0], id="uint64-limits"),
        pytest.param("INT64", b"[9007199254740993, 1.0]", [9007199254740993, 1], id="big-literal-beside-a-float"),
        pytest.param(
            "UINT64", b"[18446744073709551615, 2.0]", [18446744073709551615, 2], id="uint64-max-beside-a-float"
        ),
        pytest.param("INT64", b"[9007199254740991.0, -2e3]", [9007199254740991, -2000], id="safe-floats"),
    ],
)
def test_integer_inputs_are_exact(datatype: str, raw: bytes, expected: list[int]) -> None:
    array = to_prediction({"input": orjson.loads(raw)}, _integers(datatype)).arrays["N"]
    assert array.dtype == np.dtype(_integers(datatype).inputs[0].dtype)
    assert array.tolist() == [expected]


def test_the_batch_index_is_named() -> None:
    with pytest.raises(OutOfRange, match=r"^inputs \(N\), element \[1\]\[2\]: 4.5 is not an integer"):
        to_prediction({"inputs": [[1, 2, 3], [4, 5, 4.5]]}, _integers("INT16"))


def test_variable_dimension_bounds_come_from_the_setting() -> None:
    schema = _integers("INT32")
    assert to_prediction({"input": [7] * 4}, schema, max_dynamic_dim=4).arrays["N"].shape == (1, 4)
    assert to_prediction({"input": [7]}, schema, max_dynamic_dim=4).arrays["N"].shape == (1, 1)
    with pytest.raises(WrongShape, match="MAX_DYNAMIC_DIM=4") as caught:
        to_prediction({"input": [7] * 5}, schema, max_dynamic_dim=4)
    assert caught.value.code == "wrong_shape" and http_status(caught.value) == 422


@pytest.mark.parametrize(
    "value", [pytest.param(np.nan, id="nan"), pytest.param(np.inf, id="inf"), pytest.param(-np.inf, id="minus-inf")]
)
@pytest.mark.parametrize("batch", [pytest.param(False, id="single"), pytest.param(True, id="batch")])
def test_non_finite_outputs_are_the_models_fault(value: float, batch: bool) -> None:
    doc = {"inputs": [{"A": [1, 2], "B": [1]}]} if batch else {"input": {"A": [1, 2], "B": [1]}}
    prediction = to_prediction(doc, TWO_IN_TWO_OUT)
    outputs = {"X": np.array([[value]], np.float32), "Y": np.array([[1, 2]], np.int64)}
    with pytest.raises(NonFiniteOutput, match=r"output X$") as caught:
        response_body(outputs, TWO_IN_TWO_OUT, prediction)
    assert (http_status(caught.value), caught.value.code) == (502, "non_finite_output")


def test_null_in_names_and_strings_is_not_mistaken_for_a_non_finite_output() -> None:
    schema = ModelSchema(
        "n",
        ("1",),
        "python",
        0,
        (TensorSchema("A", "FP32", (1,)),),
        (TensorSchema("null_score", "FP32", (1,)), TensorSchema("label", "BYTES", (1,))),
    )
    prediction = to_prediction({"input": [1]}, schema)
    outputs = {"null_score": np.array([0.5], np.float32), "label": np.array([b"null"], np.object_)}
    assert orjson.loads(response_body(outputs, schema, prediction)) == {
        "output": {"null_score": [0.5], "label": ["null"]}
    }


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


def _one_input(datatype: str, shape: tuple[int, ...]) -> ModelSchema:
    return ModelSchema(
        "m", ("1",), "python", 8, (TensorSchema("X", datatype, shape),), (TensorSchema("Y", "FP32", (1,)),)
    )


def _reading(raw: bytes, schema: ModelSchema) -> tuple[str, Any]:
    try:
        prediction = to_prediction(parse_json(raw), schema, max_dynamic_dim=8)
    except ProxyError as err:
        return type(err).__name__, str(err)
    array = prediction.arrays["X"]
    return str(array.dtype), (array.shape, array.tobytes())


@pytest.mark.parametrize(
    ("datatype", "shape", "raw"),
    [
        pytest.param("FP32", (5,), b'{"input": [1, 2, 3, 4, 5]}', id="ints"),
        pytest.param("FP32", (3,), b'{"input": [0.1, -2.5e-3, 1e10]}', id="floats"),
        pytest.param("FP32", (3,), b'{"input": [1, 0.1, -0]}', id="mixed-and-minus-zero"),
        pytest.param("FP32", (2,), b'{"input": [16777217, 9007199254740993]}', id="ints-that-round"),
        pytest.param("FP32", (2,), b'{"input": [9007199254740992, -9007199254740992]}', id="ints-at-2-53"),
        pytest.param("FP32", (2,), b'{"input": [3.5e38, 1]}', id="float-over-fp32"),
        pytest.param("FP32", (2,), b'{"input": [340282356779733661637539395458142568448, 1]}', id="int-over-fp32"),
        pytest.param("FP16", (2,), b'{"input": [70000, 1]}', id="int-over-fp16"),
        pytest.param("FP16", (2,), b'{"input": [65504, 0.1]}', id="fp16-at-its-limit"),
        pytest.param("FP64", (2,), b'{"input": [1e308, 123456789012345678]}', id="fp64"),
        pytest.param("FP32", (2,), b'{"input": [true, 1]}', id="boolean"),
        pytest.param("FP32", (2,), b'{"input": [null, 1]}', id="null"),
        pytest.param("FP32", (2,), b'{"input": ["1", 1]}', id="string"),
        pytest.param("FP32", (2,), b'{"input": [[1], 1]}', id="nested"),
        pytest.param("FP32", (2,), b'{"input": [1, 2, 3]}', id="too-long"),
        pytest.param("FP32", (-1,), b'{"input": [1, 2, 3]}', id="variable"),
        pytest.param("FP32", (-1,), b'{"input": [1, 2, 3, 4, 5, 6, 7, 8, 9]}', id="variable-over-max-dim"),
        pytest.param("FP32", (-1,), b'{"input": []}', id="variable-empty"),
        pytest.param("FP32", (2,), b'{"inputs": [[1, 2], [3.5, 4]]}', id="batch"),
        pytest.param("FP32", (2,), b'{"inputs": [[1, 2], [3]]}', id="batch-ragged"),
        pytest.param("FP32", (2,), b'{"inputs": [[1, 2], 3]}', id="batch-not-a-row"),
        pytest.param("FP32", (2,), b'{"inputs": []}', id="batch-empty"),
        pytest.param("INT32", (2,), b'{"input": [1, 2]}', id="integer-input-not-taken"),
    ],
)
def test_short_float_rows_read_as_the_general_path_reads_them(
    datatype: str, shape: tuple[int, ...], raw: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The short-row path (`_small_floats`) gives the general path's array, or leaves the refusal to it."""
    schema = _one_input(datatype, shape)
    fast = _reading(raw, schema)
    monkeypatch.setattr(validation, "_SMALL_ROW", 0)  # every row is "long": the general path only
    assert fast == _reading(raw, schema)


def test_a_short_float_row_skips_the_general_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def general(*_: Any) -> None:
        raise AssertionError("the general path ran")

    monkeypatch.setattr(validation, "_array", general)
    prediction = to_prediction(parse_json(b'{"input": [1, 2.5, 3, 4, 5]}'), _one_input("FP32", (5,)))
    assert prediction.arrays["X"].tolist() == [[1.0, 2.5, 3.0, 4.0, 5.0]]
