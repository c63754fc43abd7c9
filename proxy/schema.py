"""The served model as Triton describes it: one source for names, dtypes, shapes and `max_batch_size`.

Read from Triton's model metadata and model config at start-up (gRPC and HTTP give the same documents,
except that protobuf's JSON renders int64 as strings), so the proxy validates exactly what Triton would
accept and never needs a second copy of the model's interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from proxy.errors import UpstreamError

# Triton datatype -> numpy dtype; BYTES travels as object arrays of bytes.
DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}


@dataclass(frozen=True)
class TensorSchema:
    """One input or output; `shape` excludes the batch dimension; -1 means any length."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> Any:
        return DTYPES[self.datatype]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelSchema:
    """What the proxy serves. `max_batch_size` 0 means the model takes no batch dimension."""

    name: str
    versions: tuple[str, ...]
    platform: str
    max_batch_size: int
    inputs: tuple[TensorSchema, ...]
    outputs: tuple[TensorSchema, ...]
    # From the model config: how many batches Triton runs at once, and the sizes its batcher runs at once.
    instance_count: int = 1
    preferred_batch_sizes: tuple[int, ...] = ()
    # Triton's queue timeout (`QUEUE_TIMEOUT_MS` at sync time); 0: none. A request's own `timeout` overrides
    # it in Triton, so the proxy sends the smaller of the two.
    queue_timeout_s: float = 0.0
    # Triton's priority levels (`priority_levels` of dynamic batching); 0: none, and requests carry no priority.
    priority_levels: int = 0

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    def input(self, name: str) -> TensorSchema | None:
        return next((spec for spec in self.inputs if spec.name == name), None)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": list(self.versions),
            "platform": self.platform,
            "max_batch_size": self.max_batch_size,
            "inputs": [spec.describe() for spec in self.inputs],
            "outputs": [spec.describe() for spec in self.outputs],
        }


def _tensors(entries: list[dict[str, Any]], batched: bool, kind: str) -> tuple[TensorSchema, ...]:
    tensors = []
    for entry in entries:
        shape = tuple(int(dim) for dim in entry.get("shape", ()))
        if batched:
            shape = shape[1:]
        datatype = str(entry["datatype"])
        if datatype not in DTYPES:
            raise UpstreamError(f"{kind} {entry['name']!r} has datatype {datatype}, which the proxy cannot serve")
        tensors.append(TensorSchema(str(entry["name"]), datatype, shape))
    return tuple(tensors)


def from_triton(metadata: dict[str, Any], config: dict[str, Any]) -> ModelSchema:
    """Build the schema from Triton's model metadata and model config (either protocol's JSON form)."""
    config = config.get("config", config)
    max_batch_size = int(config.get("max_batch_size", 0))
    batched = max_batch_size > 0
    groups = config.get("instance_group") or [{}]
    instances = sum(int(group.get("count", 1)) * max(1, len(group.get("gpus") or [])) for group in groups)
    batching = config.get("dynamic_batching") or {}
    preferred = batching.get("preferred_batch_size") or []
    queue_timeout_us = int((batching.get("default_queue_policy") or {}).get("default_timeout_microseconds", 0))
    return ModelSchema(
        name=str(metadata["name"]),
        versions=tuple(str(v) for v in metadata.get("versions", ())),
        platform=str(metadata.get("platform", "")),
        max_batch_size=max_batch_size,
        inputs=_tensors(metadata.get("inputs", []), batched, "input"),
        outputs=_tensors(metadata.get("outputs", []), batched, "output"),
        instance_count=max(1, instances),
        preferred_batch_sizes=tuple(sorted(int(size) for size in preferred)),
        queue_timeout_s=queue_timeout_us / 1e6,
        priority_levels=int(batching.get("priority_levels", 0)),
    )
