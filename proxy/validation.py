"""Request bodies -> numpy arrays, checked against the model's schema before anything reaches Triton.

Body forms (the choice is documented in `proxy/openapi.yaml`):
- `{"input": ROW}` -> `{"output": OUT}`: one row. ROW is the nested list of the model's only input, or an
  object naming every input (`{"input": {"INPUT__0": [...], "X": [...]}}`), which also works for one input.
- `{"inputs": [ROW, ...]}` -> `{"outputs": [OUT, ...]}`: up to `max_batch_size` rows, answered in order.
- OUT is the nested list of the model's only output, or an object naming every output when it has several.

Parsing is orjson's: it refuses nesting deeper than 1024 and `NaN`/`Infinity` literals, and is fast. Its
errors are told apart only here, on the error path, so each bad body gets its own stable code.

`predict_from_body` lets `proxy.json_arrays` read float inputs first (simdjson, straight into numpy, no Python
float per number); it only ever accepts, and any body it is not sure of comes here, so the rules and the
refusals below are the only ones.

Integer inputs are exact. orjson reads integer literals within 64 bits as Python ints and anything else as a
double, so an integer input takes integer literals as written, and a float only when it is integral and at
most 2^53 - 1 in magnitude (beyond, a double stands for many integers and the one meant cannot be known).
Bounds are checked on exact integers, never on a double rounded from the type's limit.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from proxy import json_arrays
from proxy.errors import (
    EmptyBody,
    InvalidJson,
    InvalidUtf8,
    JsonTooDeep,
    MissingInput,
    NonFinite,
    NonFiniteOutput,
    NumberTooLarge,
    OutOfRange,
    TooManyRows,
    UnknownField,
    WrongBodyType,
    WrongShape,
    WrongType,
)
from proxy.schema import ModelSchema, TensorSchema
from proxy.settings import DEFAULT_MAX_DYNAMIC_DIM

_NON_FINITE = ("NaN", "Infinity", "-Infinity", "+Infinity")
_NUMERIC_KINDS = frozenset("iuf")


@dataclass(frozen=True)
class Prediction:
    """A validated request: one array per model input, each with `rows` rows (when the model batches)."""

    arrays: dict[str, np.ndarray]
    rows: int
    batch: bool


def predict_from_body(body: bytes, schema: ModelSchema, max_dynamic_dim: int = DEFAULT_MAX_DYNAMIC_DIM) -> Prediction:
    """`to_prediction(parse_json(body), ...)`, with float inputs read by `proxy.json_arrays` first (no Python float
    per number) and this module's path taking every body that one is not sure of, so every refusal is its own."""
    fast = json_arrays.predict_arrays(body, schema, max_dynamic_dim)
    if fast is None:
        return to_prediction(parse_json(body), schema, max_dynamic_dim)
    arrays, rows = fast
    return Prediction(arrays, 1 if rows is None else rows, batch=rows is not None)


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


def to_prediction(doc: Any, schema: ModelSchema, max_dynamic_dim: int = DEFAULT_MAX_DYNAMIC_DIM) -> Prediction:
    """Check a parsed body against `schema` and build the input arrays; a -1 dimension takes 1 to
    `max_dynamic_dim` (`MAX_DYNAMIC_DIM`) elements."""
    if not isinstance(doc, dict):
        raise WrongBodyType(f"the body must be a JSON object, not {_kind(doc)}")
    unknown = sorted(set(doc) - {"input", "inputs"})
    if unknown:
        raise UnknownField(f"unknown field(s) {', '.join(map(repr, unknown))}; expected 'input' or 'inputs'")
    if "input" in doc and "inputs" in doc:
        raise UnknownField("send either 'input' (one row) or 'inputs' (a batch), not both")
    if doc.get("input") is not None:
        return _single(doc["input"], schema, max_dynamic_dim)
    if doc.get("inputs") is not None:
        return _batch(doc["inputs"], schema, max_dynamic_dim)
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


def _single(value: Any, schema: ModelSchema, max_dim: int) -> Prediction:
    named = _named(value, schema, "input")
    arrays = {}
    for spec in schema.inputs:
        array = tensor(named[spec.name], spec, f"input {spec.name}", None, max_dim)
        arrays[spec.name] = array[np.newaxis] if schema.batched else array
    return Prediction(arrays, 1, batch=False)


def _batch(value: Any, schema: ModelSchema, max_dim: int) -> Prediction:
    if not isinstance(value, list):
        raise WrongType(f"'inputs' must be a list of rows, not {_kind(value)}")
    if not schema.batched:
        raise TooManyRows(f"model {schema.name} does not batch; send one row as 'input'")
    rows = len(value)
    if rows == 0 or rows > schema.max_batch_size:
        raise TooManyRows(f"'inputs' has {rows} rows; model {schema.name} takes 1 to {schema.max_batch_size}")
    if len(schema.inputs) == 1 and all(isinstance(row, list) for row in value):
        spec = schema.inputs[0]
        return Prediction({spec.name: tensor(value, spec, f"inputs ({spec.name})", rows, max_dim)}, rows, batch=True)
    named = [_named(row, schema, f"inputs[{i}]") for i, row in enumerate(value)]
    arrays = {
        spec.name: tensor([row[spec.name] for row in named], spec, f"inputs ({spec.name})", rows, max_dim)
        for spec in schema.inputs
    }
    return Prediction(arrays, rows, batch=True)


def tensor(value: Any, spec: TensorSchema, where: str, rows: int | None, max_dim: int) -> np.ndarray:
    """Nested lists -> an array of `spec`'s dtype and shape ((rows, *shape) when `rows` is given)."""
    if not isinstance(value, list):
        raise _not_a_list(value, where)
    if spec.datatype in json_arrays.FLOAT_MAX and len(spec.shape) == 1:
        small = _small_floats(value, spec, rows, max_dim)
        if small is not None:
            return small
    expected = spec.shape if rows is None else (rows, *spec.shape)
    raw = _array(value, spec, where, f"ragged nesting; expected shape {_shape(expected)}")
    if raw.ndim != len(expected) or any(want not in (-1, got) for want, got in zip(expected, raw.shape, strict=True)):
        raise WrongShape(f"{where}: got shape {_shape(raw.shape)}, expected {_shape(expected)}")
    if -1 in spec.shape:
        check_variable_dims(raw.shape, expected, max_dim, where)
    return _typed(raw, value, raw.ndim, spec, where)


# Rows of a float input at most this long are checked number by number in Python, which for a few numbers is
# several times cheaper than numpy's reading, checking and converting (`benchmarks.request_cost`).
_SMALL_ROW = 256


def _small_floats(value: list[Any], spec: TensorSchema, rows: int | None, max_dim: int) -> np.ndarray | None:
    """A short row (or `rows` of them) of a one-dimensional float input, or None when not sure.

    Only ever accepts: plain ints within 2^53 - 1 and floats within the type's range, in lists of the right lengths;
    anything else (booleans, nulls, nesting, a number out of range, a wrong length) returns None, and the general
    path decides, with its own message. What it accepts it converts as that path would: numpy reads the same
    numbers as doubles, exactly, since every such int is one, and rounds them once to the type.
    """
    want = spec.shape[0]
    limit = json_arrays.FLOAT_MAX[spec.datatype]
    if rows is not None and len(value) != rows:
        return None
    lines = [value] if rows is None else value
    length = len(lines[0]) if lines and lines[0].__class__ is list else -1
    if not (1 <= length <= _SMALL_ROW and (want == length or (want == -1 and length <= max_dim))):
        return None
    for line in lines:
        if line.__class__ is not list or len(line) != length:
            return None
        for number in line:
            kind = number.__class__
            if kind is float:
                if not -limit <= number <= limit:
                    return None
            elif kind is not int or not -_SAFE_INT <= number <= _SAFE_INT or not -limit <= number <= limit:
                return None
    return np.array(value, dtype=spec.dtype)


def flat_tensor(values: list[Any], spec: TensorSchema, shape: tuple[int, ...], where: str) -> np.ndarray:
    """A flat list of scalars, as many as `shape` holds (the Open Inference Protocol's `data`, as tritonclient
    sends it) -> an array of `spec`'s dtype and `shape`, with `tensor`'s checks and errors, without building the
    nested lists. The caller has checked `shape` (against the model's, and the count of `values`)."""
    not_flat = "'data' must be flat, or nested as the shape says"
    raw = _array(values, spec, where, not_flat)
    if raw.ndim != 1:
        raise WrongShape(f"{where}: {not_flat}")
    return _typed(raw.reshape(shape), values, 1, spec, where)


def _array(value: list[Any], spec: TensorSchema, where: str, ragged: str) -> np.ndarray:
    """numpy's reading of JSON lists, refused when ragged or holding anything but scalars of one kind."""
    try:
        raw = np.array(value)
    except (ValueError, TypeError):
        raise WrongShape(f"{where}: {ragged}") from None
    if raw.dtype.kind == "O":
        raise WrongType(f"{where}: only {_element(spec)} allowed (found null, object or mixed types)")
    return raw


def _typed(raw: np.ndarray, value: list[Any], depth: int, spec: TensorSchema, where: str) -> np.ndarray:
    """`raw` (numpy's reading of `value`, lists `depth` deep) checked against `spec`'s datatype, converted to it."""
    kind = raw.dtype.kind
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
    if _has_bool(value, depth):
        raise WrongType(f"{where}: only numbers allowed (found booleans)")
    return _convert(raw, value, spec, where)


def check_variable_dims(got: tuple[int, ...], expected: tuple[int, ...], max_dim: int, where: str) -> None:
    """A -1 dimension matches any length, so without bounds an empty list reaches the model (which may fail
    on it) and one long list costs the model as much as the body limit allows; both are refused here."""
    for length, want in zip(got, expected, strict=True):
        if want == -1 and not 1 <= length <= max_dim:
            raise WrongShape(
                f"{where}: got shape {_shape(got)}; a variable (*) dimension takes 1 to MAX_DYNAMIC_DIM={max_dim}"
                " elements"
            )


_FLOAT_MAX = {np.dtype(t): float(np.finfo(t).max) for t in (np.float16, np.float32, np.float64)}
# Every integer up to this magnitude is exactly one double (JavaScript's Number.MAX_SAFE_INTEGER).
_SAFE_INT = 2**53 - 1


def _convert(raw: np.ndarray, value: list[Any], spec: TensorSchema, where: str) -> np.ndarray:
    """`raw` (numpy's reading of `value`, a nested or flat list of the same numbers in order) as `spec`'s dtype."""
    dtype = np.dtype(spec.dtype)
    if dtype.kind == "f":
        # JSON has no inf or NaN, so a value is out of range exactly when it is beyond the type's largest.
        limit = _FLOAT_MAX[dtype]
        if raw.size and (raw.max() > limit or raw.min() < -limit):
            index = _first_index((raw > limit) | (raw < -limit))
            raise OutOfRange(f"{where}{_at(index)}: {raw[index].item()!r} overflows {spec.datatype}")
        return raw.astype(dtype)
    if raw.size == 0:
        return raw.astype(dtype)
    info = np.iinfo(dtype)
    low, high = raw.min(), raw.max()
    if raw.dtype.kind == "f":
        # Integral doubles within +-(2^53 - 1) are exact, and so is every integer literal numpy turned into one.
        exact = low >= -_SAFE_INT and high <= _SAFE_INT and np.array_equal(raw, np.trunc(raw))
        fits = exact and info.min <= low and high <= info.max
    else:
        fits = info.min <= int(low) and int(high) <= info.max
    if fits:
        return raw.astype(dtype)
    return _exact_integers(value, raw.shape, spec, where)


def _exact_integers(value: list[Any], shape: tuple[int, ...], spec: TensorSchema, where: str) -> np.ndarray:
    """The slow path, element by element on the parsed numbers: names the first value that does not fit, or
    converts exactly a rare list that does (integer literals beyond 2^53 mixed with integral floats, which
    numpy would have rounded to doubles)."""
    items = np.array(value, dtype=object).reshape(shape)  # a flat `value` too: errors name the element by index
    info = np.iinfo(spec.dtype)
    for index, item in np.ndenumerate(items):
        if item.__class__ is float and not item.is_integer():
            raise OutOfRange(f"{where}{_at(index)}: {item!r} is not an integer; {spec.datatype} takes integers only")
        number = int(item)
        if not info.min <= number <= info.max:
            raise OutOfRange(f"{where}{_at(index)}: {item!r} is outside [{info.min}, {info.max}] for {spec.datatype}")
        if item.__class__ is float and abs(number) > _SAFE_INT:
            raise OutOfRange(
                f"{where}{_at(index)}: {item!r} is a float beyond 2^53 - 1, so not an exact integer;"
                " send it as an integer literal"
            )
    return items.astype(spec.dtype)


def _first_index(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape))


def _at(index: tuple[int, ...]) -> str:
    return f", element {''.join(f'[{i}]' for i in index)}" if index else ""


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
        text = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:
        text = orjson.dumps(body, default=_plain)
    # orjson writes NaN and Infinity as null, which would pass for an answer. Numbers are never null otherwise,
    # so only a body holding one gets the look at every output; the one-byte search (memchr) goes first, since
    # the answer's own keys hold no "n".
    if b"n" in text and b"null" in text:
        _check_finite(outputs, schema)
    return text


def _check_finite(outputs: dict[str, np.ndarray], schema: ModelSchema) -> None:
    for spec in schema.outputs:
        check_finite(outputs[spec.name], spec.name)


def check_finite(array: np.ndarray, name: str) -> None:
    """An output JSON cannot carry (NaN, Infinity) is the model's fault: `NonFiniteOutput`, on every route."""
    if array.dtype.kind in "fc" and not np.isfinite(array).all():
        raise NonFiniteOutput(f"the model returned NaN or Infinity in output {name}")


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
