"""Float tensors from JSON bytes straight into numpy, without a Python float per number.

orjson turns every number of a body into a Python float, and numpy then walks the nested lists: for a
3x224x224 FP32 request that is most of the proxy's CPU time. simdjson parses into its own tape instead, and
copies a nested array's numbers into one buffer of doubles (`Array.as_buffer`), which numpy reads as it is.

This path only ever accepts. It reads the common forms of float inputs (FP16, FP32, FP64) and answers None
whenever it is not sure it would give exactly what the orjson path (`proxy.validation`) gives: simdjson failing
or accepting what orjson refuses (a UTF-8 byte order mark), duplicate keys (simdjson's lookup keeps the first,
orjson the last), ragged or odd nesting, booleans, nulls or strings among the numbers, a value beyond the
type's range, any value beyond 2^53 in magnitude (were it an integer literal, numpy would hold it as an integer
or an object and round it once, straight to the type; a double cannot tell it was one). The caller then runs
the orjson path, so every refusal, and its message, is that path's by construction.

Why the result is the same: both parsers round a decimal literal to the nearest double, and an integer
literal within 2^53 is exactly one double, so numpy's reading of orjson's numbers and simdjson's doubles agree
(`-0` is the integer 0 in both). Shape: every array above the numbers is walked (there are few), so each level
is known to be regular. The last level is not walked (that would make the Python objects this module avoids):
instead, the body must hold exactly as many `[` bytes as arrays were seen, so none hides among the numbers.
A string or key holding a `[` makes that count differ, and the orjson path takes the body.

Bodies under `MIN_BYTES` go to the orjson path at once: there its fixed cost is smaller (measured on the
2-core VM: 5 numbers 17 us with orjson, 30 us here; the two meet near 250 numbers, about 2 KB).

A fresh `simdjson.Parser` per body: it costs no more than reusing one (measured), and a shared one cannot
parse again while any proxy of its last document lives, nor be used from two threads.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import simdjson

from proxy.schema import DTYPES, ModelSchema, TensorSchema

MIN_BYTES = 2048  # smaller bodies: the orjson path is cheaper (see above)
_FLOATS = frozenset({"FP16", "FP32", "FP64"})
_BOM = b"\xef\xbb\xbf"
# Every integer up to this magnitude is exactly one double; beyond, orjson's int and simdjson's double may differ.
_EXACT = float(2**53)
# The largest finite value of each float datatype (`proxy.validation` reads short rows against it too).
FLOAT_MAX = {name: float(np.finfo(DTYPES[name]).max) for name in _FLOATS}
# What simdjson raises for a document or a conversion it refuses (UnicodeDecodeError is a ValueError).
_SIMDJSON_ERRORS = (ValueError, TypeError, KeyError, IndexError, RuntimeError)


class Declined(Exception):
    """The fast reading is not sure; the orjson path decides. Never leaves `proxy.v2`/`proxy.validation`."""


@dataclass(frozen=True)
class Dense:
    """A JSON array of numbers read as doubles: its values in order, and the shape of its (regular) nesting."""

    values: np.ndarray
    shape: tuple[int, ...]


def predict_arrays(body: bytes, schema: ModelSchema, max_dim: int) -> tuple[dict[str, np.ndarray], int | None] | None:
    """`POST /predict`'s body -> (the input arrays, the rows of the `inputs` form or None for `input`), as
    `validation.to_prediction(parse_json(body), ...)` gives them; None when not sure (the caller runs that)."""
    if len(body) < MIN_BYTES or not all(spec.datatype in _FLOATS and spec.shape for spec in schema.inputs):
        return None
    doc = _parse(body)
    if not isinstance(doc, simdjson.Object) or len(doc) != 1:
        return None
    try:
        key = next(iter(doc))
        value = doc[key]
        if key == "inputs":
            return _batch(body, value, schema, max_dim)
        if key == "input":
            return _single(body, value, schema, max_dim)
    except (Declined, *_SIMDJSON_ERRORS):
        return None
    return None


def _single(body: bytes, value: Any, schema: ModelSchema, max_dim: int) -> tuple[dict[str, np.ndarray], None]:
    if isinstance(value, simdjson.Array) and len(schema.inputs) == 1:
        trees = {schema.inputs[0].name: value}
    elif isinstance(value, simdjson.Object):
        names = list(value)
        if len(names) != len(set(names)) or set(names) != {spec.name for spec in schema.inputs}:
            raise Declined
        trees = {name: value[name] for name in names}
    else:
        raise Declined
    arrays: dict[str, np.ndarray] = {}
    seen = 0
    for spec in schema.inputs:
        dense, count = dense_array(trees[spec.name], _within(spec.shape, max_dim))
        array = fit(dense, spec, spec.shape, max_dim)
        arrays[spec.name] = array[np.newaxis] if schema.batched else array
        seen += count
    _check_brackets(body, seen)
    return arrays, None


def _batch(body: bytes, value: Any, schema: ModelSchema, max_dim: int) -> tuple[dict[str, np.ndarray], int]:
    if not isinstance(value, simdjson.Array) or not schema.batched or len(schema.inputs) != 1:
        raise Declined
    rows = len(value)
    if not 1 <= rows <= schema.max_batch_size:
        raise Declined
    spec = schema.inputs[0]
    dense, count = dense_array(value, (rows, *_within(spec.shape, max_dim)))
    array = fit(dense, spec, (rows, *spec.shape), max_dim)
    _check_brackets(body, count)
    return {spec.name: array}, rows


def infer_header(header: bytes, schema: ModelSchema, max_dim: int) -> dict[str, Any] | None:
    """An Open Inference Protocol JSON header as orjson reads it, except that each input's `data` is a `Dense`.
    None when not sure (any input not a float, duplicate keys, `data` not a regular array of numbers, ...)."""
    if len(header) < MIN_BYTES or not all(spec.datatype in _FLOATS for spec in schema.inputs):
        return None
    doc = _parse(header)
    if not isinstance(doc, simdjson.Object):
        return None
    try:
        result, seen = _fields(doc, lambda key, value: _inputs(value, schema, max_dim) if key == "inputs" else None)
        _check_brackets(header, seen)
    except (Declined, *_SIMDJSON_ERRORS):
        return None
    return result


def _inputs(value: Any, schema: ModelSchema, max_dim: int) -> tuple[list[Any], int]:
    if not isinstance(value, simdjson.Array):
        raise Declined
    entries: list[Any] = []
    seen = 1
    for entry in value:
        if not isinstance(entry, simdjson.Object):
            raise Declined
        spec = schema.input(entry.get("name"))
        if spec is None:
            raise Declined
        within = ((schema.max_batch_size,) if schema.batched else ()) + _within(spec.shape, max_dim)
        fields, count = _fields(
            entry, lambda key, data, within=within: dense_array(data, within) if key == "data" else None
        )
        entries.append(fields)
        seen += count
    return entries, seen


def _fields(obj: Any, special: Callable[[str, Any], tuple[Any, int] | None]) -> tuple[dict[str, Any], int]:
    """`obj` (unique keys only) as orjson reads it, with the values `special(key, value)` answers for (a pair:
    the value, arrays seen in it) in place; and the count of arrays in all of it."""
    keys = list(obj)
    # simdjson looks a key up as a C string: one holding a NUL would find another key's value.
    if len(keys) != len(set(keys)) or any("\0" in key for key in keys):
        raise Declined
    result: dict[str, Any] = {}
    seen = 0
    for key in keys:
        value = obj[key]
        read = special(key, value)
        if read is None:
            plain = value.as_dict() if isinstance(value, simdjson.Object) else value
            plain = plain.as_list() if isinstance(plain, simdjson.Array) else plain
            read = plain, _count_lists(plain)
        result[key], count = read
        seen += count
    return result, seen


def dense_array(top: Any, within: tuple[int, ...]) -> tuple[Dense, int]:
    """A simdjson array, regular at most `len(within)` deep, as a `Dense`; and the count of arrays walked in it.
    A level with arrays below it may hold at most `within[level]` (any more is refused later anyway): a body
    of many tiny arrays costs no walk through them all."""
    if not isinstance(top, simdjson.Array) or not within:
        raise Declined
    level = [top]
    shape: list[int] = []
    while True:
        length = len(level[0])
        if length == 0 or any(len(array) != length for array in level):
            raise Declined
        shape.append(length)
        if len(shape) == len(within) or not isinstance(level[0][0], simdjson.Array):
            break
        if length > within[len(shape) - 1]:
            raise Declined
        below = [item for array in level for item in array]
        if not all(isinstance(item, simdjson.Array) for item in below):
            raise Declined
        level = below
    values = np.frombuffer(top.as_buffer(of_type="d"), dtype=np.float64)
    if values.size != math.prod(shape):
        raise Declined
    return Dense(values, tuple(shape)), _arrays_in(shape)


def fit(dense: Dense, spec: TensorSchema, expected: tuple[int, ...], max_dim: int) -> np.ndarray:
    """`dense` as `validation.tensor` reads nested lists against `expected` (-1: 1 to `max_dim` elements), or
    `Declined` where that would refuse them or not be exact."""
    if len(dense.shape) != len(expected):
        raise Declined
    for want, got in zip(expected, dense.shape, strict=True):
        if want != got and (want != -1 or not 1 <= got <= max_dim):
            raise Declined
    return typed(dense, spec).reshape(dense.shape)


def typed(dense: Dense, spec: TensorSchema) -> np.ndarray:
    """The values as `spec`'s float dtype, as `validation._convert` converts them; `Declined` if out of range."""
    if spec.datatype not in _FLOATS:
        raise Declined
    values = dense.values
    high = max(float(values.max()), -float(values.min()))
    if not high < _EXACT or high > FLOAT_MAX[spec.datatype]:
        raise Declined
    return values.astype(spec.dtype)


def _parse(body: bytes) -> Any:
    if body.startswith(_BOM):  # simdjson skips it, orjson refuses it
        return None
    try:
        return simdjson.Parser().parse(body)
    except _SIMDJSON_ERRORS:
        return None


def _within(shape: tuple[int, ...], max_dim: int) -> tuple[int, ...]:
    return tuple(max_dim if dim == -1 else dim for dim in shape)


def _arrays_in(shape: list[int]) -> int:
    """Arrays in a regular nesting of `shape`: one, then one per element of every level but the last."""
    return sum(math.prod(shape[:level]) for level in range(len(shape)))


def _count_lists(value: Any) -> int:
    count = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            count += 1
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return count


def _check_brackets(body: bytes, seen: int) -> None:
    """Every array in the body was walked: a `[` outside a string opens one, so more `[` bytes than arrays seen
    means an array among the numbers (or a `[` in a string: rare, and the orjson path takes it)."""
    if np.count_nonzero(np.frombuffer(body, dtype=np.uint8) == ord("[")) != seen:
        raise Declined
