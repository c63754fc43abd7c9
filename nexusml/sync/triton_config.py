"""`config.pbtxt` generation: from data, through Triton's own protobuf, never by string templates.

`serving_config` decides the numbers (settings override the metadata's hints, which override defaults);
`model_config` turns metadata + those numbers into the dict form of `inference.ModelConfig`; `to_pbtxt`
checks it against the protobuf schema and prints Triton's text format.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from nexusml.core.errors import SettingsError
from nexusml.core.metadata import DEFAULT_PRECISION_TOLERANCE, ModelMetadata, TensorSpec
from nexusml.sync.settings import SyncSettings

DEFAULT_BATCH_SIZE = 32
DEFAULT_BATCH_TIMEOUT_MS = 50.0
QUEUE_SIZE_PER_BATCH = 8
# The proxy's priority classes (high, normal, low) are Triton's levels 1-3; a request without one is normal.
PRIORITY_LEVELS = 3
DEFAULT_PRIORITY_LEVEL = 2


@dataclass(frozen=True)
class ServingConfig:
    """The resolved batching and placement numbers for one model."""

    max_batch_size: int
    max_queue_delay_us: int
    preferred_batch_sizes: tuple[int, ...]
    max_queue_size: int
    queue_timeout_us: int
    kind: str
    instance_count: int
    torch_threads: int
    dynamic_batching: bool = True
    precision: str = "fp32"
    precision_tolerance: float = DEFAULT_PRECISION_TOLERANCE
    stage_log_interval_s: float = 0.0


def gpu_present() -> bool:
    """Cheap detection without importing torch: the NVIDIA driver's device node or its CLI."""
    return Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi") is not None


def _powers_of_two(limit: int, start: int = 4) -> tuple[int, ...]:
    sizes, size = [], start
    while size < limit:
        sizes.append(size)
        size *= 2
    return (*sizes, limit)


def serving_config(
    meta: ModelMetadata, settings: SyncSettings, gpu: bool | None = None, instances: int | None = None
) -> ServingConfig:
    """The numbers that serve `meta`; `instances` (the watcher's scaling) overrides the synced count, which is
    MIN_INSTANCE_COUNT when set (`SyncSettings.instance_range`), else INSTANCE_COUNT."""
    hints = meta.batching
    batch_size = settings.batch_size or hints.max_batch_size or DEFAULT_BATCH_SIZE
    delay_ms = next(
        v for v in (settings.batch_timeout_ms, hints.max_queue_delay_ms, DEFAULT_BATCH_TIMEOUT_MS) if v is not None
    )
    preferred = next(
        v
        for v in (settings.preferred_batch_sizes, hints.preferred_batch_sizes, _powers_of_two(batch_size))
        if v is not None
    )
    too_big = [size for size in preferred if size > batch_size]
    if too_big:
        raise SettingsError(f"preferred batch sizes {too_big} exceed max_batch_size {batch_size} (BATCH_SIZE)")
    detected = gpu_present() if gpu is None else gpu
    use_gpu = detected if settings.device == "auto" else settings.device == "cuda"
    allowed = meta.precision.allowed
    if settings.precision == "auto":
        precision = allowed[0] if use_gpu and allowed else "fp32"
    elif settings.precision == "fp32" or settings.precision in allowed:
        precision = settings.precision
    else:
        raise SettingsError(
            f"PRECISION={settings.precision}, but the metadata of {meta.name} allows "
            f"{', '.join(allowed) if allowed else 'no reduced precision'} ($.precision.allowed)"
        )
    return ServingConfig(
        max_batch_size=batch_size,
        max_queue_delay_us=round(delay_ms * 1000),
        preferred_batch_sizes=tuple(sorted(set(preferred))),
        max_queue_size=settings.max_queue_size or QUEUE_SIZE_PER_BATCH * batch_size,
        queue_timeout_us=round(settings.queue_timeout_ms * 1000),
        kind="KIND_GPU" if use_gpu else "KIND_CPU",
        instance_count=settings.instance_range[0] if instances is None else instances,
        torch_threads=settings.torch_threads,
        dynamic_batching=settings.dynamic_batching,
        precision=precision,
        precision_tolerance=meta.precision.effective_tolerance,
        stage_log_interval_s=settings.stage_log_interval_s,
    )


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "data_type": f"TYPE_{spec.dtype}", "dims": list(spec.shape)}


def _warmups(meta: ModelMetadata, serving: ServingConfig) -> list[dict[str, Any]]:
    """Zero-filled warm-up requests at one row and at each preferred batch size, so first requests hit warm shapes.

    One row because the backend runs a lone request's row alone (the proxy's padding up to a preferred size is not
    run), so a model that cannot take a batch of one fails its load, not its first lone request. Variable dimensions
    (-1) have no single shape to warm, so such models are not warmed.
    """
    if any(-1 in spec.shape for spec in meta.inputs):
        return []
    return [
        {
            "name": f"batch_{size}",
            "batch_size": size,
            "inputs": {
                spec.name: {"data_type": f"TYPE_{spec.dtype}", "dims": list(spec.shape), "zero_data": True}
                for spec in meta.inputs
            },
        }
        for size in sorted({1, *serving.preferred_batch_sizes})
    ]


def model_config(meta: ModelMetadata, serving: ServingConfig) -> dict[str, Any]:
    """The `inference.ModelConfig` for `meta`, as a JSON-shaped dict."""
    generated = {
        "name": meta.name,
        "backend": "python",
        "max_batch_size": serving.max_batch_size,
        "version_policy": {"specific": {"versions": [meta.version]}},
        "input": [_tensor(spec) for spec in meta.inputs],
        "output": [_tensor(spec) for spec in meta.outputs],
        "dynamic_batching": {
            "max_queue_delay_microseconds": serving.max_queue_delay_us,
            "preferred_batch_size": list(serving.preferred_batch_sizes),
            "priority_levels": PRIORITY_LEVELS,
            "default_priority_level": DEFAULT_PRIORITY_LEVEL,
            "default_queue_policy": {
                "max_queue_size": serving.max_queue_size,
                "default_timeout_microseconds": serving.queue_timeout_us,
                "timeout_action": "REJECT",
                "allow_timeout_override": True,
            },
        },
        "instance_group": [{"kind": serving.kind, "count": serving.instance_count}],
        "parameters": {
            "ARTIFACT_FILE": {"string_value": meta.artifact.filename},
            "ARTIFACT_FORMAT": {"string_value": meta.artifact.format},
            "TORCH_THREADS": {"string_value": str(serving.torch_threads)},
            "PRECISION": {"string_value": serving.precision},
        },
        "model_warmup": _warmups(meta, serving),
    }
    if serving.stage_log_interval_s:
        generated["parameters"]["STAGE_LOG_INTERVAL_S"] = {"string_value": f"{serving.stage_log_interval_s:g}"}
    if serving.precision != "fp32":
        generated["parameters"]["PRECISION_TOLERANCE"] = {"string_value": f"{serving.precision_tolerance:g}"}
    if not serving.dynamic_batching:
        del generated["dynamic_batching"]
    elif serving.instance_count == 1:
        # With one instance, tritonserver 2.51's batcher holds requests 0.5-1 s under any queue policy, and
        # with priority levels too (measured: docs/decisions.md). The queue is then bounded by its only client,
        # the proxy: at most MAX_IN_FLIGHT requests per worker, each cancelled upstream at its deadline
        # (docs/api.md, "Queues and deadlines"), and priority is the proxy's alone.
        for held in ("default_queue_policy", "priority_levels", "default_priority_level"):
            del generated["dynamic_batching"][held]
    return generated


def to_pbtxt(config: dict[str, Any]) -> str:
    """Validate `config` against Triton's protobuf and print it in text format."""
    message = json_format.ParseDict(config, model_config_pb2.ModelConfig())
    return text_format.MessageToString(message)


def instance_count(config: dict[str, Any]) -> int:
    """The instances a model config (as `from_pbtxt` reads it) asks for, over its instance groups."""
    return sum(int(group.get("count", 1)) for group in config.get("instance_group", []))


def from_pbtxt(text: str) -> dict[str, Any]:
    """The inverse of `to_pbtxt`, for reading a generated file back (tests, the tuning sweep)."""
    message = text_format.Parse(text, model_config_pb2.ModelConfig())
    return json_format.MessageToDict(message, preserving_proto_field_name=True)
