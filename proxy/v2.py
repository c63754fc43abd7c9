"""The Open Inference Protocol (KServe v2) at the proxy, with its binary tensor extension.

Every client that speaks it (`tritonclient.http`, KServe's clients, perf_analyzer's HTTP mode) can use the
proxy unchanged, behind the same API keys, limits, validation, deadlines, coalescing and metrics as `/predict`.
Every served model answers at its name (`/v2/models/{name}/...`). A request body is either JSON alone, or (binary
extension) a JSON header of `Inference-Header-Content-Length` bytes followed by the raw tensors, little-endian, in
the order of the inputs that declare `parameters.binary_data_size`. Binary tensors become numpy arrays without a
detour through Python lists; JSON tensors go through the same checks as `/predict`'s. Answers are JSON, or binary
for the outputs a client asks so (`binary_data_output`, or `binary_data` per output), as the protocol says.

Parsing here is pure (bytes in, arrays out, bytes back), so the handlers in `proxy.v2_routes` stay thin and the
hostile cases are tested without a server.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from proxy import json_arrays
from proxy.errors import BadRequest, NonFinite, NotFound, ProxyError, TooManyRows, WrongShape, WrongType
from proxy.json_arrays import Declined, Dense
from proxy.schema import ModelSchema, TensorSchema
from proxy.validation import Prediction, check_finite, check_variable_dims, flat_tensor, parse_json, tensor

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY = "application/octet-stream"


@dataclass(frozen=True)
class InferRequest:
    """A validated v2 request: the model's input arrays, and how the client wants its outputs."""

    prediction: Prediction
    request_id: str
    outputs: tuple[str, ...]
    binary: frozenset[str]


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": "nexus-proxy", "version": version, "extensions": ["binary_tensor_data"]}


def model_metadata(schema: ModelSchema) -> dict[str, Any]:
    """The model's metadata as Triton gives it: shapes with the batch dimension (-1) when the model batches."""
    batch = [-1] if schema.batched else []
    return {
        "name": schema.name,
        "versions": list(schema.versions),
        "platform": schema.platform,
        "inputs": [{**spec.describe(), "shape": batch + list(spec.shape)} for spec in schema.inputs],
        "outputs": [{**spec.describe(), "shape": batch + list(spec.shape)} for spec in schema.outputs],
    }


def model_config(schema: ModelSchema) -> dict[str, Any]:
    """The part of Triton's model configuration clients read (perf_analyzer: `max_batch_size`, the tensors)."""

    def tensors(specs: tuple[TensorSchema, ...]) -> list[dict[str, Any]]:
        return [{"name": s.name, "data_type": f"TYPE_{s.datatype}", "dims": list(s.shape)} for s in specs]

    return {
        "name": schema.name,
        "platform": schema.platform,
        "max_batch_size": schema.max_batch_size,
        "input": tensors(schema.inputs),
        "output": tensors(schema.outputs),
    }


def check_version(schema: ModelSchema, version: str | None) -> None:
    """Only the model's versions answer; another is the protocol's 404 (an unknown model is the state's)."""
    if version and version not in schema.versions:
        raise NotFound(f"model {schema.name!r} has no version {version!r}; versions {', '.join(schema.versions)}")


def parse_infer(body: bytes, header_length: str | None, schema: ModelSchema, max_dim: int) -> InferRequest:
    """A v2 inference body (JSON, or JSON header + binary tensors) -> validated arrays.

    Float inputs' JSON `data` is read by `proxy.json_arrays` first, without a Python float per number; when it
    is not sure, or the request is refused, the orjson reading runs and decides (and words any refusal)."""
    header, tensors = _split(body, header_length)
    doc = json_arrays.infer_header(header, schema, max_dim)
    if doc is not None:
        try:
            return _infer(doc, tensors, schema, max_dim)
        except (Declined, ProxyError):
            pass
    return _infer(parse_json(header), tensors, schema, max_dim)


def _infer(doc: Any, tensors: memoryview, schema: ModelSchema, max_dim: int) -> InferRequest:
    if not isinstance(doc, dict):
        raise WrongType("the inference request must be a JSON object")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("'inputs' must be a non-empty list of tensors")
    by_name: dict[str, dict[str, Any]] = {}
    for entry in inputs:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise BadRequest("each input must be an object with a 'name'")
        if entry["name"] in by_name:
            raise BadRequest(f"input {entry['name']!r} appears twice")
        by_name[entry["name"]] = entry
    expected = {spec.name for spec in schema.inputs}
    if set(by_name) != expected:
        unknown, missing = sorted(set(by_name) - expected), sorted(expected - set(by_name))
        raise BadRequest(f"inputs must be exactly {sorted(expected)}; unknown {unknown}, missing {missing}")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for entry in inputs:  # binary tensors follow the header in the order of the inputs that declare them
        spec = next(s for s in schema.inputs if s.name == entry["name"])
        array, offset = _input(entry, spec, schema, tensors, offset, max_dim)
        arrays[spec.name] = array
    if offset != len(tensors):
        raise BadRequest(f"the body has {len(tensors) - offset} bytes after the last binary tensor")
    rows = {len(array) for array in arrays.values()} if schema.batched else {1}
    if len(rows) != 1:
        raise WrongShape(f"the inputs disagree on the batch size: {sorted(rows)}")
    outputs, binary = _requested(doc, schema)
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise BadRequest("'id' must be a string")
    return InferRequest(Prediction(arrays, rows.pop(), batch=True), request_id, outputs, binary)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        raise BadRequest(f"{HEADER_LENGTH} must be an integer, not {header_length[:40]!r}") from None
    if not 0 < length <= len(body):
        raise BadRequest(f"{HEADER_LENGTH} is {length}, but the body has {len(body)} bytes")
    view = memoryview(body)
    return bytes(view[:length]), view[length:]


def _input(
    entry: dict[str, Any], spec: TensorSchema, schema: ModelSchema, tensors: memoryview, offset: int, max_dim: int
) -> tuple[np.ndarray, int]:
    where = f"input {spec.name}"
    if entry.get("datatype") != spec.datatype:
        raise WrongType(f"{where}: datatype must be {spec.datatype}, not {entry.get('datatype')!r}")
    shape = entry.get("shape")
    if not isinstance(shape, list):
        raise WrongShape(f"{where}: 'shape' must be a list of non-negative integers")
    for dim in shape:  # plain loops: this runs on every request, and generators cost more than the checks
        if dim.__class__ is not int or dim < 0:  # JSON integers are exactly int; booleans are not dimensions
            raise WrongShape(f"{where}: 'shape' must be a list of non-negative integers")
    declared = tuple(shape)
    expected = ((-1,) if schema.batched else ()) + spec.shape
    matches = len(declared) == len(expected)
    if matches:
        for want, got in zip(expected, declared, strict=True):
            if want != -1 and want != got:
                matches = False
    if not matches:
        raise WrongShape(f"{where}: shape {list(declared)} does not match the model's {list(expected)}")
    rows = declared[0] if schema.batched else None
    if rows is not None and not 1 <= rows <= schema.max_batch_size:
        raise TooManyRows(f"{where}: a batch of {rows}; model {schema.name} takes 1 to {schema.max_batch_size}")
    parameters = entry.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest(f"{where}: 'parameters' must be an object")
    size = parameters.get("binary_data_size")
    if size is None:
        return _from_json(entry.get("data"), spec, declared, rows, max_dim, where), offset
    if "data" in entry:
        raise BadRequest(f"{where}: send either 'data' or binary_data_size, not both")
    return _from_bytes(size, tensors, offset, spec, declared, max_dim, where)


def _from_json(
    data: Any, spec: TensorSchema, shape: tuple[int, ...], rows: int | None, max_dim: int, where: str
) -> np.ndarray:
    """JSON `data`, flat (as tritonclient sends it) or nested, checked as `/predict` checks its rows."""
    if isinstance(data, Dense):
        return _from_dense(data, spec, shape, rows, max_dim, where)
    if not isinstance(data, list):
        raise WrongType(f"{where}: 'data' must be a list")
    if not data or isinstance(data[0], list):  # nested, as `/predict` takes it
        return tensor(data, spec, where, rows, max_dim)
    if len(data) != math.prod(shape):  # flat: as many values as the shape holds
        raise WrongShape(f"{where}: 'data' has {len(data)} values; shape {list(shape)} holds {math.prod(shape)}")
    if -1 in spec.shape:  # the batch dimension, when there is one, is bounded by max_batch_size instead
        check_variable_dims(shape, (shape[0], *spec.shape) if rows is not None else spec.shape, max_dim, where)
    return flat_tensor(data, spec, shape, where)


def _from_dense(
    data: Dense, spec: TensorSchema, shape: tuple[int, ...], rows: int | None, max_dim: int, where: str
) -> np.ndarray:
    """`_from_json`'s reading of numbers `proxy.json_arrays` read; `Declined` wherever that would refuse them."""
    if len(data.shape) > 1:  # nested
        return json_arrays.fit(data, spec, spec.shape if rows is None else (rows, *spec.shape), max_dim)
    if data.shape[0] != math.prod(shape):
        raise Declined
    if -1 in spec.shape:
        check_variable_dims(shape, (shape[0], *spec.shape) if rows is not None else spec.shape, max_dim, where)
    return json_arrays.typed(data, spec).reshape(shape)


def _from_bytes(
    size: Any, tensors: memoryview, offset: int, spec: TensorSchema, shape: tuple[int, ...], max_dim: int, where: str
) -> tuple[np.ndarray, int]:
    """Raw little-endian bytes -> an array, without a copy; their length must be exactly shape x item size."""
    if spec.datatype == "BYTES":
        raise WrongType(f"{where}: BYTES tensors are accepted as JSON only")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadRequest(f"{where}: binary_data_size must be a non-negative integer")
    dtype = np.dtype(spec.dtype).newbyteorder("<")
    if size != math.prod(shape) * dtype.itemsize:
        raise WrongShape(
            f"{where}: binary_data_size {size} does not match shape {list(shape)} x {dtype.itemsize} bytes "
            f"({spec.datatype})"
        )
    if offset + size > len(tensors):
        raise BadRequest(f"{where}: the body ends {offset + size - len(tensors)} bytes before its binary tensor does")
    array = np.frombuffer(tensors[offset : offset + size], dtype=dtype).reshape(shape)
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise NonFinite(f"{where}: NaN or Infinity in a binary tensor")
    if spec.datatype == "BOOL" and array.view(np.uint8).max(initial=0) > 1:
        raise WrongType(f"{where}: BOOL bytes must be 0 or 1")
    if -1 in spec.shape:  # the batch dimension, when there is one, is bounded by max_batch_size instead
        expected = (shape[0], *spec.shape) if len(shape) > len(spec.shape) else spec.shape
        check_variable_dims(shape, expected, max_dim, where)
    return array, offset + size


def _requested(doc: dict[str, Any], schema: ModelSchema) -> tuple[tuple[str, ...], frozenset[str]]:
    """Which outputs to answer (default: all) and which of them as binary data."""
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be an object")
    all_binary = parameters.get("binary_data_output") is True
    names = [spec.name for spec in schema.outputs]
    requested = doc.get("outputs")
    if requested is None:
        return tuple(names), frozenset(names) if all_binary else frozenset()
    if not isinstance(requested, list):
        raise BadRequest("'outputs' must be a list")
    chosen: list[str] = []
    binary: set[str] = set()
    for entry in requested:
        name = entry.get("name") if isinstance(entry, dict) else None
        if name not in names:
            raise BadRequest(f"unknown output {name!r}; the model has {names}")
        chosen.append(name)
        options = entry.get("parameters") or {}
        if not isinstance(options, dict):
            raise BadRequest(f"output {name!r}: 'parameters' must be an object")
        if options.get("binary_data", all_binary):
            binary.add(name)
    return tuple(chosen), frozenset(binary)


def infer_response(
    outputs: dict[str, np.ndarray], schema: ModelSchema, request: InferRequest, version: str
) -> tuple[bytes, int | None]:
    """The answer's body, and the JSON header's length when binary tensors follow it."""
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    in_json: list[str] = []
    for name in request.outputs:
        spec = next(s for s in schema.outputs if s.name == name)
        array = outputs[name]
        entry: dict[str, Any] = {"name": name, "datatype": spec.datatype, "shape": array.shape}
        if name in request.binary and spec.datatype != "BYTES":
            check_finite(array, name)
            data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = array.reshape(-1)
            in_json.append(name)
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": schema.name, "model_version": version, "outputs": entries}
    if request.request_id:
        doc["id"] = request.request_id
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY, default=_plain)
    # orjson writes NaN and Infinity as null; a header without "null" anywhere has none in its JSON outputs, so
    # only a header holding one (a NaN, or a name or id that says null) gets the look at every value.
    if in_json and b"null" in header:
        for name in in_json:
            check_finite(outputs[name], name)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [item.decode("utf-8", "replace") if isinstance(item, bytes) else item for item in value.tolist()]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"cannot serialise {type(value).__name__}")
