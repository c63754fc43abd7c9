"""The fast float path (`proxy.json_arrays`) against the orjson path it stands in for, on the same bodies.

Each body runs through the public entry points twice: as they are, and with the fast reading switched off
(the orjson path alone). The outcomes must be equal: the same arrays to the bit (dtype, shape, bytes), or the
same error class and message. `fast` says whether the fast reading must take the body itself (the orjson
parser is made to fail when it must), so a fast path that declined everything would fail here too. The bodies
are small, so the fast path's size threshold is lifted for them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from proxy import json_arrays, v2, validation
from proxy.errors import ProxyError
from proxy.schema import ModelSchema, TensorSchema

MAX_DIM = 4
BENCH = [round((i % 7) * 0.25 - 0.75, 2) for i in range(24)]  # the benchmark's values
PRECISE = np.random.default_rng(7).standard_normal(24).tolist()  # 17 significant digits


def model(*inputs: TensorSchema, batch: int = 4) -> ModelSchema:
    return ModelSchema("m", ("1",), "python", batch, inputs, (TensorSchema("Y", "FP32", (2,)),))


IMAGE = model(TensorSchema("X", "FP32", (2, 3, 4)))
VARIABLE = model(TensorSchema("X", "FP32", (-1, 2)))
HALF = model(TensorSchema("X", "FP16", (3,)))
DOUBLE = model(TensorSchema("X", "FP64", (2, 2)), batch=0)
TWO = model(TensorSchema("A", "FP32", (2,)), TensorSchema("B", "FP64", (3,)))
INTEGER = model(TensorSchema("X", "INT32", (3,)))


@pytest.fixture(autouse=True)
def any_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(json_arrays, "MIN_BYTES", 0)


def nest(flat: list[Any], shape: tuple[int, ...]) -> Any:
    return np.array(flat, dtype=object).reshape(shape).tolist()


def js(value: Any) -> bytes:
    return json.dumps(value).encode()


def outcome(call: Callable[[], dict[str, np.ndarray]]) -> tuple[Any, ...]:
    try:
        arrays = call()
    except ProxyError as err:
        return "error", type(err).__name__, str(err)
    return "ok", {name: (a.dtype.str, a.shape, a.tobytes(), a.flags.writeable) for name, a in arrays.items()}


def _orjson_refused(_body: bytes) -> Any:
    raise AssertionError("the orjson path ran")


def both_ways(monkeypatch: pytest.MonkeyPatch, module: Any, off: str, call: Callable[[], Any], fast: bool) -> None:
    """`call` with the fast reading (`fast`: and nothing else), then with `module.off` answering None."""
    with monkeypatch.context() as patch:
        if fast:
            patch.setattr(module, "parse_json", _orjson_refused)
        quick = outcome(call)
    with monkeypatch.context() as patch:
        patch.setattr(json_arrays, off, lambda *args: None)
        slow = outcome(call)
    assert quick == slow
    if fast:
        assert quick[0] == "ok"


PREDICT = [
    pytest.param(IMAGE, js({"input": nest(BENCH, (2, 3, 4))}), True, id="bench-values"),
    pytest.param(IMAGE, js({"input": nest(PRECISE, (2, 3, 4))}), True, id="full-precision"),
    pytest.param(IMAGE, js({"inputs": [nest(PRECISE, (2, 3, 4))] * 3}), True, id="batch"),
    pytest.param(IMAGE, js({"input": nest(list(range(-12, 12)), (2, 3, 4))}), True, id="integers"),
    pytest.param(IMAGE, js({"input": nest([1, 2.5, -3, 0.1] * 6, (2, 3, 4))}), True, id="mixed-ints-floats"),
    pytest.param(IMAGE, js({"input": nest([9007199254740991, 1.5] * 12, (2, 3, 4))}), True, id="2^53-1"),
    pytest.param(VARIABLE, b'{"input": [[-0, -0.0], [1e-400, -1e-400]]}', True, id="signed-zeros"),
    pytest.param(VARIABLE, b'{"input": [[1E2, 1e+2], [1.5e-3, 25E-1]]}', True, id="exponents"),
    pytest.param(VARIABLE, b' \t\r\n{ "input" :\n[ [1 ,2 ]\t,[3,4] ] }\n ', True, id="whitespace"),
    pytest.param(VARIABLE, b'{"\\u0069nput": [[1, 2]]}', True, id="escaped-key"),
    pytest.param(VARIABLE, js({"input": [[1, 2]] * MAX_DIM}), True, id="variable-dim-at-max"),
    pytest.param(HALF, b'{"input": [65504, -65504, 0.1]}', True, id="fp16-max"),
    pytest.param(DOUBLE, b'{"input": [[1e15, -2.5e-300], [0.1, 3]]}', True, id="fp64-unbatched"),
    pytest.param(TWO, b'{"input": {"B": [1, 2, 3], "A": [0.5, 0.25]}}', True, id="named-inputs"),
    # hostile or unusual: the orjson path decides
    pytest.param(VARIABLE, b'{"input": [[1, 2, 3], [4]]}', False, id="ragged"),
    pytest.param(VARIABLE, b'{"input": [[1, 2], [3], [4, 5, 6]]}', False, id="ragged-same-count"),
    pytest.param(VARIABLE, b'{"input": [[1, 2], [3, [4]]]}', False, id="array-among-numbers"),
    pytest.param(VARIABLE, b'{"input": [[1, 2], [[3], [4]]]}', False, id="arrays-in-place-of-numbers"),
    pytest.param(HALF, b'{"input": [1, [], 2]}', False, id="empty-array-among-numbers"),
    pytest.param(HALF, b'{"input": [[1], [2], [3]]}', False, id="one-level-too-deep"),
    pytest.param(IMAGE, js({"input": BENCH}), False, id="flat-for-nested"),
    pytest.param(HALF, b'{"input": []}', False, id="empty"),
    pytest.param(HALF, b'{"input": [1, true, 0]}', False, id="boolean"),
    pytest.param(HALF, b'{"input": [true, false, true]}', False, id="booleans-only"),
    pytest.param(HALF, b'{"input": [1, null, 0]}', False, id="null"),
    pytest.param(HALF, b'{"input": [1, "2", 0]}', False, id="string"),
    pytest.param(HALF, b'{"input": [1, {}, 0]}', False, id="object"),
    pytest.param(HALF, b'{"input": [1, NaN, 0]}', False, id="nan"),
    pytest.param(HALF, b'{"input": [1, -Infinity, 0]}', False, id="infinity"),
    pytest.param(HALF, b'{"input": [1, 1e400, 0]}', False, id="overflows-double"),
    pytest.param(HALF, b'{"input": [1, 65520, 0]}', False, id="overflows-fp16"),
    pytest.param(VARIABLE, b'{"input": [[1, 3.5e38]]}', False, id="overflows-fp32"),
    pytest.param(VARIABLE, b'{"input": [[1, 3.4028234663852886e38]]}', False, id="fp32-max"),
    pytest.param(DOUBLE, b'{"input": [[1e300, 0], [0, 0]]}', False, id="float-beyond-2^53"),
    pytest.param(HALF, b'{"input": [9007199254740993, 1, 0]}', False, id="integer-beyond-2^53"),
    pytest.param(VARIABLE, b'{"input": [[1152921573326323713, 0]]}', False, id="integer-rounded-twice-for-fp32"),
    pytest.param(VARIABLE, b'{"input": [[9223372036854775808, -1]]}', False, id="uint64-with-negative"),
    pytest.param(HALF, b'{"input": [18446744073709551616, 1, 0]}', False, id="integer-beyond-64-bits"),
    pytest.param(HALF, b'{"input": [1, 2, 3], "input": [4, 5, 6]}', False, id="duplicate-key"),
    pytest.param(HALF, b'{"input": [1, 2, 3], "input": null}', False, id="duplicate-key-null"),
    pytest.param(TWO, b'{"input": {"A": [1, 2], "B": [1, 2, 3], "A": [3, 4]}}', False, id="duplicate-input"),
    pytest.param(TWO, b'{"input": {"A": [1, 2], "B": [1, 2, 3], "A": null}}', False, id="duplicate-input-null"),
    pytest.param(HALF, b'\xef\xbb\xbf{"input": [1, 2, 3]}', False, id="byte-order-mark"),
    pytest.param(HALF, b'{"input": [1, 2, 3]} x', False, id="trailing-garbage"),
    pytest.param(HALF, b'{"input": [1, 2, 3]}\x00', False, id="trailing-nul"),
    pytest.param(HALF, b'{"input": [1, 2, 3],}', False, id="trailing-comma"),
    pytest.param(HALF, b'\x0c{"input": [1, 2, 3]}', False, id="form-feed"),
    pytest.param(HALF, b'{"input": [1, 2, 3], "x\xff": 1}', False, id="invalid-utf8"),
    pytest.param(HALF, b'{"input": [1, 2, 3], "[": 1}', False, id="bracket-in-key"),
    pytest.param(HALF, b'{"input": [1, 2, 3], "inputs": null}', False, id="input-and-inputs"),
    pytest.param(HALF, b'{"input": [1, 2, 3], "extra": 1}', False, id="unknown-field"),
    pytest.param(HALF, js({"input": [1, 2, 3], "x": [[[[0]]]]}), False, id="unknown-field-with-arrays"),
    pytest.param(HALF, b'{"input": ' + b"[" * 1025 + b"]" * 1025 + b"}", False, id="too-deep"),
    pytest.param(HALF, js({"inputs": [[1, 2, 3]] * 5}), False, id="too-many-rows"),
    pytest.param(DOUBLE, js({"inputs": [[[1, 2], [3, 4]]]}), False, id="batch-for-unbatched-model"),
    pytest.param(VARIABLE, js({"input": [[1, 2]] * (MAX_DIM + 1)}), False, id="variable-dim-over-max"),
    pytest.param(TWO, js({"input": {"A": [1, 2]}}), False, id="named-input-missing"),
    pytest.param(TWO, js({"input": [1, 2]}), False, id="bare-list-for-two-inputs"),
    pytest.param(TWO, js({"inputs": [{"A": [1, 2], "B": [1, 2, 3]}]}), False, id="named-batch-rows"),
    pytest.param(INTEGER, js({"input": [1, 2, 3]}), False, id="integer-input"),
    pytest.param(HALF, b"[1, 2, 3]", False, id="not-an-object"),
    pytest.param(HALF, b"", False, id="empty-body"),
]


@pytest.mark.parametrize(("schema", "body", "fast"), PREDICT)
def test_predict_bodies_read_as_the_orjson_path_reads_them(
    monkeypatch: pytest.MonkeyPatch, schema: ModelSchema, body: bytes, fast: bool
) -> None:
    def call() -> dict[str, np.ndarray]:
        prediction = validation.predict_from_body(body, schema, MAX_DIM)
        return {**prediction.arrays, "rows": np.array([prediction.rows, prediction.batch])}

    both_ways(monkeypatch, validation, "predict_arrays", call, fast)


def entry(data: Any, shape: list[int], datatype: str = "FP32", name: str = "X", **extra: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data, **extra}


def infer(*entries: dict[str, Any], **extra: Any) -> bytes:
    return js({"inputs": list(entries), **extra})


INFER = [
    pytest.param(IMAGE, infer(entry(BENCH, [1, 2, 3, 4])), True, id="flat-bench-values"),
    pytest.param(IMAGE, infer(entry(PRECISE * 2, [2, 2, 3, 4])), True, id="flat-full-precision"),
    pytest.param(IMAGE, infer(entry([nest(PRECISE, (2, 3, 4))], [1, 2, 3, 4])), True, id="nested"),
    pytest.param(DOUBLE, infer(entry([1, -0, 2.5, 1e-400], [2, 2], "FP64")), True, id="unbatched"),
    pytest.param(VARIABLE, infer(entry([1, 2, 3, 4], [1, 2, 2])), True, id="variable-dim"),
    pytest.param(
        IMAGE,
        infer(
            entry(BENCH, [1, 2, 3, 4], parameters={"note": ["a", {"b": [1]}]}),
            id="request-1",
            outputs=[{"name": "Y", "parameters": {"binary_data": True}}],
            parameters={"binary_data_output": False, "any": [[1], []]},
        ),
        True,
        id="every-field",
    ),
    pytest.param(
        TWO,
        infer(entry([1, 2], [1, 2], name="A"), entry([1, 2, 3], [1, 3], "FP64", name="B")),
        True,
        id="two-inputs",
    ),
    # hostile or unusual: the orjson path decides
    pytest.param(IMAGE, infer(entry(BENCH[:-1], [1, 2, 3, 4])), False, id="too-few-values"),
    pytest.param(IMAGE, infer(entry(BENCH, [1, 2, 3, 5])), False, id="wrong-shape"),
    pytest.param(IMAGE, infer(entry(BENCH, [1, 2, 3, 4], "FP16")), False, id="wrong-datatype"),
    pytest.param(IMAGE, infer(entry([nest(PRECISE, (2, 3, 4))], [2, 2, 3, 4])), False, id="nested-rows-differ"),
    pytest.param(HALF, infer(entry([1, [2], 3], [1, 3], "FP16")), False, id="array-among-numbers"),
    pytest.param(HALF, infer(entry([[1], [2], [3]], [1, 3], "FP16")), False, id="nested-too-deep"),
    pytest.param(VARIABLE, infer(entry([[[1, 2], [3], [4, 5, 6]]], [1, 3, 2])), False, id="ragged-same-count"),
    pytest.param(HALF, infer(entry([1, True, 3], [1, 3], "FP16")), False, id="boolean"),
    pytest.param(HALF, infer(entry([1, 2, 70000], [1, 3], "FP16")), False, id="out-of-range"),
    pytest.param(VARIABLE, infer(entry([1, 2] * 5, [1, 5, 2])), False, id="variable-dim-over-max"),
    pytest.param(HALF, infer(entry([1, 2, 3], [1, 3], "FP16", id="x")) + b" ", True, id="entry-unknown-field"),
    pytest.param(
        HALF,
        b'{"inputs": [{"name": "X", "datatype": "FP16", "shape": [1, 3], "data": [1, 2, 3], "data": [4, 5, 6]}]}',
        False,
        id="duplicate-data",
    ),
    pytest.param(
        HALF,
        b'{"inputs": [{"name": "X", "datatype": "FP16", "shape": [1, 3], "data": [1, 2, 3]}], "inputs": []}',
        False,
        id="duplicate-inputs",
    ),
    pytest.param(
        HALF,
        b'{"inputs": [{"name": "X", "datatype": "FP16", "shape": [1, 3], "data": [1, 2, 3], "data": null}]}',
        False,
        id="duplicate-data-null",
    ),
    pytest.param(HALF, infer(entry([1, 2, 3], [1, 3], "FP16"), id="a[0]"), False, id="bracket-in-string"),
    pytest.param(
        HALF,
        b'{"inputs": [{"name": "X", "datatype":"FP16", "shape":[1, 3], "data": [1, [2], 3], "x\\u0000": 1, "x": []}]}',
        False,
        id="nul-in-key",
    ),
    pytest.param(HALF, infer(entry([1, 2, 3], [1, 3], "FP16"), entry([1, 2, 3], [1, 3], "FP16")), False, id="twice"),
    pytest.param(
        HALF, infer(entry([1, 2, 3], [1, 3], "FP16", parameters={"binary_data_size": 6})), False, id="data-and-binary"
    ),
    pytest.param(HALF, infer(entry([1, 2, 3], [1, 3], "FP16"), id=7), False, id="id-not-a-string"),
    pytest.param(HALF, b"\xef\xbb\xbf" + infer(entry([1, 2, 3], [1, 3], "FP16")), False, id="byte-order-mark"),
    pytest.param(HALF, infer(entry([1, 2, 3], [1, 3], "FP16")) + b" x", False, id="trailing-garbage"),
    pytest.param(INTEGER, infer(entry([1, 2, 3], [1, 3], "INT32")), False, id="integer-input"),
]


@pytest.mark.parametrize(("schema", "body", "fast"), INFER)
def test_infer_bodies_read_as_the_orjson_path_reads_them(
    monkeypatch: pytest.MonkeyPatch, schema: ModelSchema, body: bytes, fast: bool
) -> None:
    def call() -> dict[str, np.ndarray]:
        request = v2.parse_infer(body, None, schema, MAX_DIM)
        extra = json.dumps([request.request_id, request.outputs, sorted(request.binary), request.prediction.rows])
        return {**request.prediction.arrays, "rest": np.frombuffer(extra.encode(), dtype=np.uint8).copy()}

    both_ways(monkeypatch, v2, "infer_header", call, fast)


def test_a_binary_tensor_beside_json_data() -> None:
    """The binary extension's tensors still follow the header when the header's JSON data is read fast."""
    schema = model(TensorSchema("A", "FP32", (2,)), TensorSchema("B", "FP32", (3,)))
    binary = np.array([[7, 8, 9]], dtype="<f4").tobytes()
    header = infer(entry([1, 2], [1, 2], name="A"), {**entry(None, [1, 3], name="B"), "parameters": {}})
    header = header.replace(b'"data": null, ', b"").replace(b"{}", b'{"binary_data_size": 12}')
    assert json_arrays.infer_header(header, schema, MAX_DIM) is not None
    request = v2.parse_infer(header + binary, str(len(header)), schema, MAX_DIM)
    assert request.prediction.arrays["A"].tolist() == [[1, 2]]
    assert request.prediction.arrays["B"].tolist() == [[7, 8, 9]]


def literals(seed: int, count: int, max_exponent: int) -> list[bytes]:
    """Number literals in every JSON form: signs, up to 25 digits, fractions, exponents (e, E, +, -)."""
    rng = np.random.default_rng(seed)
    found = []
    for _ in range(count):
        digits = "".join(map(str, rng.integers(0, 10, int(rng.integers(1, 26))))).lstrip("0") or "0"
        text = ("-" if rng.random() < 0.5 else "") + digits[:1]
        if rng.random() < 0.7:
            text += "." + digits[1:] + "1"
        if rng.random() < 0.5:
            exponent = int(rng.integers(-320, max_exponent))
            text += "eE"[exponent % 2] + ("+" if exponent % 3 == 0 and exponent >= 0 else "") + str(exponent)
        found.append(text.encode())
    return found


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
@pytest.mark.parametrize(
    ("max_exponent", "fast"), [pytest.param(3, True, id="small"), pytest.param(310, False, id="any")]
)
@pytest.mark.parametrize("seed", range(3))
def test_random_literals_round_as_orjson_and_numpy_round_them(
    monkeypatch: pytest.MonkeyPatch, datatype: str, max_exponent: int, fast: bool, seed: int
) -> None:
    numbers = literals(seed, 200, max_exponent)
    schema = model(TensorSchema("X", datatype, (len(numbers),)))
    body = b'{"input": [' + b", ".join(numbers) + b"]}"

    def call() -> dict[str, np.ndarray]:
        return validation.predict_from_body(body, schema, MAX_DIM).arrays

    both_ways(monkeypatch, validation, "predict_arrays", call, fast)


@pytest.mark.parametrize(
    ("numbers", "read"), [pytest.param(5, False, id="small"), pytest.param(1000, True, id="large")]
)
def test_only_bodies_past_the_threshold_take_the_fast_path(
    monkeypatch: pytest.MonkeyPatch, numbers: int, read: bool
) -> None:
    monkeypatch.undo()
    schema = model(TensorSchema("X", "FP32", (numbers,)))
    predict = js({"input": PRECISE[:1] * numbers})
    infer_body = infer(entry(PRECISE[:1] * numbers, [1, numbers]))
    assert (json_arrays.predict_arrays(predict, schema, MAX_DIM) is not None) is read
    assert (json_arrays.infer_header(infer_body, schema, MAX_DIM) is not None) is read
