"""Request bodies -> numpy arrays, checked against the model's schema before anything reaches Triton.

Body forms (the choice is documented in `proxy/openapi.yaml`):
- `{"input": ROW}` -> `{"output": OUT}`: one row. ROW is the nested list of the model's only input, or an
  object naming every input (`{"input": {"INPUT__0": [...], "X": [...]}}`), which also works for one input.
- `{"inputs": [ROW, ...]}` -> `{"outputs": [OUT, ...]}`: up to `max_batch_size` rows, answered in order.
- OUT is the nested list of the model's only output, or an object naming every output when it has several.

Parsing is orjson's: it refuses nesting deeper than 1024 and `NaN`/`Infinity` literals, and is fast. Its
errors are told apart only here, on the error path, so each bad body gets its own stable code.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from proxy.errors import (
    EmptyBody,
    InvalidJson,
    InvalidUtf8,
    JsonTooDeep,
    MissingInput,
    NonFinite,
    NumberTooLarge,
    OutOfRange,
    TooManyRows,
    UnknownField,
    WrongBodyType,
    WrongShape,
    WrongType,
)
from proxy.schema import ModelSchema, TensorSchema

_NON_FINITE = ("NaN", "Infinity", "-Infinity", "+Infinity")
_NUMERIC_KINDS = frozenset("iuf")


@dataclass(frozen=True)
class Prediction:
    """A validated request: one array per model input, each with `rows` rows (when the model batches)."""

    arrays: dict[str, np.ndarray]
    rows: int
    batch: bool


def parse_json(body: bytes) -> Any:
    """Parse `body`, turning each way it can fail into its own 400 (or 422 for non-finite literals)."""
    if not body.strip():
        raise EmptyBody("the request body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise _classify(body, err) from None


def _classify(body: bytes, err: orjson.JSONDecodeError) -> Exception:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as bad:
        return InvalidUtf8(f"the body is not valid UTF-8 (byte {bad.start})")
    reason = str(err.msg)
    if "depth" in reason or "recursion" in reason:
        return JsonTooDeep("JSON nested deeper than 1024 levels")
    around = text[max(err.pos - 1, 0) : err.pos + 9]
    if any(token in around for token in _NON_FINITE):
        return NonFinite("NaN and Infinity are not JSON numbers; send finite values")
    if "infinity" in reason:
        return NumberTooLarge(f"a number at character {err.pos} does not fit a 64-bit float")
    return InvalidJson(f"not a valid JSON document: {reason} at character {err.pos}")


def to_prediction(doc: Any, schema: ModelSchema) -> Prediction:
    """Check a parsed body against `schema` and build the input arrays."""
    if not isinstance(doc, dict):
        raise WrongBodyType(f"the body must be a JSON object, not {_kind(doc)}")
    unknown = sorted(set(doc) - {"input", "inputs"})
    if unknown:
        raise UnknownField(f"unknown field(s) {', '.join(map(repr, unknown))}; expected 'input' or 'inputs'")
    if "input" in doc and "inputs" in doc:
        raise UnknownField("send either 'input' (one row) or 'inputs' (a batch), not both")
    if doc.get("input") is not None:
        return _single(doc["input"], schema)
    if doc.get("inputs") is not None:
        return _batch(doc["inputs"], schema)
    raise MissingInput("'input' is missing or null")


def _named(value: Any, schema: ModelSchema, where: str) -> dict[str, Any]:
    """A row as {input name: value}: a bare list for a one-input model, else an object naming each."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - {spec.name for spec in schema.inputs})
        if unknown:
            raise UnknownField(f"{where}: unknown input(s) {', '.join(map(repr, unknown))}")
        missing = [spec.name for spec in schema.inputs if value.get(spec.name) is None]
        if missing:
            raise MissingInput(f"{where}: input(s) {', '.join(missing)} missing or null")
        return value
    if len(schema.inputs) != 1:
        names = ", ".join(spec.name for spec in schema.inputs)
        raise WrongType(f"{where}: this model has several inputs; send an object naming {names}")
    if not isinstance(value, list):
        raise _not_a_list(value, where)
    return {schema.inputs[0].name: value}


def _single(value: Any, schema: ModelSchema) -> Prediction:
    named = _named(value, schema, "input")
    arrays = {}
    for spec in schema.inputs:
        array = _array(named[spec.name], spec, f"input {spec.name}", rows=None)
        arrays[spec.name] = array[np.newaxis] if schema.batched else array
    return Prediction(arrays, 1, batch=False)


def _batch(value: Any, schema: ModelSchema) -> Prediction:
    if not isinstance(value, list):
        raise WrongType(f"'inputs' must be a list of rows, not {_kind(value)}")
    if not schema.batched:
        raise TooManyRows(f"model {schema.name} does not batch; send one row as 'input'")
    rows = len(value)
    if rows == 0 or rows > schema.max_batch_size:
        raise TooManyRows(f"'inputs' has {rows} rows; model {schema.name} takes 1 to {schema.max_batch_size}")
    if len(schema.inputs) == 1 and all(isinstance(row, list) for row in value):
        spec = schema.inputs[0]
        return Prediction({spec.name: _array(value, spec, f"inputs ({spec.name})", rows)}, rows, batch=True)
    named = [_named(row, schema, f"inputs[{i}]") for i, row in enumerate(value)]
    arrays = {
        spec.name: _array([row[spec.name] for row in named], spec, f"inputs ({spec.name})", rows)
        for spec in schema.inputs
    }
    return Prediction(arrays, rows, batch=True)


def _array(value: Any, spec: TensorSchema, where: str, rows: int | None) -> np.ndarray:
    """Nested lists -> an array of `spec`'s dtype and shape ((rows, *shape) when `rows` is given)."""
    if not isinstance(value, list):
        raise _not_a_list(value, where)
    expected = spec.shape if rows is None else (rows, *spec.shape)
    try:
        raw = np.array(value)
    except (ValueError, TypeError):
        raise WrongShape(f"{where}: ragged nesting; expected shape {_shape(expected)}") from None
    kind = raw.dtype.kind
    if kind == "O":
        raise WrongType(f"{where}: only {_element(spec)} allowed (found null, object or mixed types)")
    if raw.ndim != len(expected) or any(want not in (-1, got) for want, got in zip(expected, raw.shape, strict=True)):
        raise WrongShape(f"{where}: got shape {_shape(raw.shape)}, expected {_shape(expected)}")
    if spec.datatype == "BOOL":
        if kind != "b":
            raise WrongType(f"{where}: only booleans allowed")
        return raw
    if spec.datatype == "BYTES":
        if kind != "U":
            raise WrongType(f"{where}: only strings allowed")
        return np.vectorize(str.encode, otypes=[np.object_])(raw) if raw.size else raw.astype(np.object_)
    if kind not in _NUMERIC_KINDS:
        raise WrongType(f"{where}: only numbers allowed (found {'booleans' if kind == 'b' else 'strings'})")
    if _has_bool(value, raw.ndim):
        raise WrongType(f"{where}: only numbers allowed (found booleans)")
    return _convert(raw, spec, where)


_FLOAT_MAX = {np.dtype(t): float(np.finfo(t).max) for t in (np.float16, np.float32, np.float64)}


def _convert(raw: np.ndarray, spec: TensorSchema, where: str) -> np.ndarray:
    dtype = np.dtype(spec.dtype)
    if dtype.kind == "f":
        # JSON has no inf or NaN, so a value is out of range exactly when it is beyond the type's largest.
        if raw.size and (raw.max() > _FLOAT_MAX[dtype] or raw.min() < -_FLOAT_MAX[dtype]):
            raise OutOfRange(f"{where}: a value overflows {spec.datatype}")
        return raw.astype(dtype)
    if raw.size == 0:
        return raw.astype(dtype)
    if raw.dtype.kind == "f" and not np.array_equal(raw, np.trunc(raw)):
        raise OutOfRange(f"{where}: {spec.datatype} takes integers only")
    info = np.iinfo(dtype)
    low, high = raw.min(), raw.max()
    if low < info.min or high > info.max:
        raise OutOfRange(f"{where}: values must lie in [{info.min}, {info.max}] for {spec.datatype}")
    return raw.astype(dtype)


def _has_bool(value: list[Any], depth: int) -> bool:
    """numpy folds True into 1 in mixed lists, so booleans among numbers are found by looking."""
    flat: Any = value
    for _ in range(depth - 1):
        flat = itertools.chain.from_iterable(flat)
    return any(item.__class__ is bool for item in flat)


def _not_a_list(value: Any, where: str) -> Exception:
    """A bare number is a list of the wrong depth; anything else is the wrong type."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return WrongShape(f"{where}: expected a list, not a number (one level of nesting too few)")
    return WrongType(f"{where}: expected a list, not {_kind(value)}")


def _element(spec: TensorSchema) -> str:
    return {"BOOL": "booleans", "BYTES": "strings"}.get(spec.datatype, "numbers")


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join("*" if dim == -1 else str(dim) for dim in shape) + "]"


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def response_body(outputs: dict[str, np.ndarray], schema: ModelSchema, prediction: Prediction) -> bytes:
    """Triton's outputs -> the JSON answer for `prediction`'s form (see the module docstring)."""
    if prediction.batch:
        if len(schema.outputs) == 1:
            body: Any = {"outputs": outputs[schema.outputs[0].name]}
        else:
            body = {
                "outputs": [
                    {spec.name: outputs[spec.name][row] for spec in schema.outputs} for row in range(prediction.rows)
                ]
            }
    else:
        first = {spec.name: _first(outputs[spec.name], schema) for spec in schema.outputs}
        body = {"output": first[schema.outputs[0].name] if len(first) == 1 else first}
    try:
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:
        return orjson.dumps(body, default=_plain)


def _first(array: np.ndarray, schema: ModelSchema) -> np.ndarray:
    return array[0] if schema.batched else array


def _plain(value: Any) -> Any:
    """Arrays orjson cannot write natively (BYTES, non-contiguous) as plain lists."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "O":
            return [_plain(item) for item in value] if value.ndim else _plain(value.item())
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"cannot serialise {type(value).__name__}")
