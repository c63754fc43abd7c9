"""The v2 body's JSON tensors and answers without a server: flat `data` (as tritonclient sends it) is read as the
same nested rows `/predict` takes would be, with the same refusals; non-finite outputs refused in both forms."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from proxy import v2
from proxy.errors import NonFiniteOutput, ProxyError
from proxy.schema import ModelSchema, TensorSchema


def model(datatype: str, shape: tuple[int, ...], batch: int = 8) -> ModelSchema:
    return ModelSchema(
        "m", ("1",), "python", batch, (TensorSchema("X", datatype, shape),), (TensorSchema("Y", "FP32", (2,)),)
    )


def v2_body(datatype: str, shape: list[int], data: Any) -> bytes:
    return orjson.dumps({"inputs": [{"name": "X", "datatype": datatype, "shape": shape, "data": data}]})


def nested(flat: list[Any], shape: list[int]) -> Any:
    return np.array(flat, dtype=object).reshape(shape).tolist() if flat else flat


def outcome(schema: ModelSchema, body: bytes) -> tuple[str, Any]:
    try:
        array = v2.parse_infer(body, None, schema, 4).prediction.arrays["X"]
    except ProxyError as err:
        return "error", (err.code, str(err))
    return "ok", (array.dtype, array.shape, array.tolist())


@pytest.mark.parametrize(
    ("datatype", "shape", "flat"),
    [
        pytest.param("FP32", (3,), [1.0, 2, -3.5, 4.0, 5, 6], id="fp32"),
        pytest.param("FP32", (3,), [1.0, 2, 3e39, 4.0, 5, 6], id="fp32-overflow"),
        pytest.param("FP32", (3,), [1.0, True, 3, 4, 5, 6], id="boolean-among-numbers"),
        pytest.param("FP32", (3,), [1.0, None, 3, 4, 5, 6], id="null"),
        pytest.param("FP32", (3,), [1.0, "2", 3, 4, 5, 6], id="string-among-numbers"),
        pytest.param("FP32", (3,), ["a", "b", "c", "d", "e", "f"], id="strings"),
        pytest.param("INT32", (3,), [1, 2, 3, 4, 5, 2**31], id="int32-out-of-range"),
        pytest.param("INT32", (3,), [1, 2.0, 3, 4, 5.5, 6], id="fraction-in-integers"),
        pytest.param("INT64", (3,), [1, 2**63 - 1, 3, 4.0, 5, 6], id="int64-exact-mixed"),
        pytest.param("UINT8", (3,), [1, 2, 3, 4, 5, -1], id="uint8-negative"),
        pytest.param("BOOL", (3,), [True, False, True, True, False, False], id="bool"),
        pytest.param("BOOL", (3,), [True, False, 1, True, False, False], id="number-among-booleans"),
        pytest.param("BYTES", (3,), ["a", "b", "c", "d", "e", "f"], id="bytes"),
        pytest.param("BYTES", (3,), ["a", "b", 3, "d", "e", "f"], id="number-among-strings"),
        pytest.param("FP32", (-1,), [1.0, 2, 3, 4, 5, 6], id="variable-dimension"),
    ],
)
def test_flat_data_reads_as_its_nested_form(datatype: str, shape: tuple[int, ...], flat: list[Any]) -> None:
    schema = model(datatype, shape)
    declared = [2, 3]
    assert outcome(schema, v2_body(datatype, declared, flat)) == outcome(
        schema, v2_body(datatype, declared, nested(flat, declared))
    )


@pytest.mark.parametrize(
    ("data", "code"),
    [
        pytest.param([1.0, [2.0], 3.0], "wrong_shape", id="list-among-scalars"),
        pytest.param([1.0, 2.0], "wrong_shape", id="too-few-values"),
        pytest.param([{"a": 1}, 2.0, 3.0], "wrong_type", id="object"),
    ],
)
def test_malformed_flat_data_is_refused(data: list[Any], code: str) -> None:
    kind, (got, _) = outcome(model("FP32", (3,)), v2_body("FP32", [1, 3], data))
    assert (kind, got) == ("error", code)


@pytest.mark.parametrize(("length", "accepted"), [(3, True), (5, False)])
def test_flat_variable_dimensions_follow_max_dynamic_dim(length: int, accepted: bool) -> None:
    kind, _ = outcome(model("FP32", (-1,)), v2_body("FP32", [1, length], [1.0] * length))
    assert kind == ("ok" if accepted else "error")


def test_flat_integer_errors_name_the_nested_element() -> None:
    _, (code, message) = outcome(model("INT32", (3,)), v2_body("INT32", [2, 3], [1, 2, 3, 4, 5, 2**31]))
    assert code == "out_of_range" and "element [1][2]" in message


def request(schema: ModelSchema, binary: bool, request_id: str = "") -> v2.InferRequest:
    names = tuple(spec.name for spec in schema.outputs)
    prediction = v2.Prediction({}, 1, batch=True)
    return v2.InferRequest(prediction, request_id, names, frozenset(names) if binary else frozenset())


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_outputs_are_refused_in_both_forms(binary: bool, value: float) -> None:
    schema = model("FP32", (3,))
    with pytest.raises(NonFiniteOutput):
        v2.infer_response({"Y": np.array([[1.0, value]], np.float32)}, schema, request(schema, binary), "1")


def test_null_in_an_id_is_not_mistaken_for_a_non_finite_output() -> None:
    schema = model("FP32", (3,))
    body, length = v2.infer_response(
        {"Y": np.array([[1.0, 2.0]], np.float32)}, schema, request(schema, False, "null"), "1"
    )
    assert length is None and orjson.loads(body)["outputs"][0] == {
        "name": "Y",
        "datatype": "FP32",
        "shape": [1, 2],
        "data": [1.0, 2.0],
    }


@pytest.mark.parametrize(
    ("shape", "data"),
    [
        pytest.param([2, 3], [[1, 2, 3]], id="fewer-rows-than-declared"),
        pytest.param([1, 3], [[1, 2, 3], [4, 5, 6]], id="more-rows-than-declared"),
    ],
)
def test_nested_rows_must_be_as_many_as_the_shape_declares(shape: list[int], data: Any) -> None:
    """Short rows of a float input take a quicker reading; the declared batch size still binds it."""
    kind, (code, message) = outcome(model("FP32", (3,)), v2_body("FP32", shape, data))
    assert (kind, code) == ("error", "wrong_shape"), message
