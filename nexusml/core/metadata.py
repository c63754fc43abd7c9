"""`.nexus_meta.json`: parsed and validated once into a typed, immutable `ModelMetadata`.

The contract is the JSON Schema in `nexusml/core/schemas/nexus_meta.schema.json`; a violation is reported as
one line naming the field (`$.artifact.sha256: ...`). Everything downstream takes `ModelMetadata`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from nexusml.core.errors import MetadataError

ARTIFACT_FILES = {"torchscript": "model.pt", "torch_export": "model.pt2"}
# A reduced-precision forward may differ from fp32's by this fraction of an output's largest magnitude, unless
# the metadata says otherwise. Measured on CPU with seeded normal inputs: the demo MLP 0.6 % in bf16, 0.4 % in fp16;
# ResNet-50 (random weights) 0.55 % and 0.48 %.
DEFAULT_PRECISION_TOLERANCE = 0.01


@cache
def schema() -> dict[str, Any]:
    text = resources.files("nexusml.core").joinpath("schemas/nexus_meta.schema.json").read_text()
    return json.loads(text)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Artifact:
    uri: str
    sha256: str
    size: int
    format: str
    packaging: str = "file"

    @property
    def filename(self) -> str:
        """The model file's name inside the version folder."""
        return ARTIFACT_FILES[self.format]


@dataclass(frozen=True)
class BatchingHints:
    max_batch_size: int | None = None
    max_queue_delay_ms: float | None = None
    preferred_batch_sizes: tuple[int, ...] | None = None


@dataclass(frozen=True)
class PrecisionHints:
    """Reduced precisions the control plane allows, and how far their outputs may drift from fp32's."""

    allowed: tuple[str, ...] = ()
    tolerance: float | None = None

    @property
    def effective_tolerance(self) -> float:
        return DEFAULT_PRECISION_TOLERANCE if self.tolerance is None else self.tolerance


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    version: int
    artifact: Artifact
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batching: BatchingHints = field(default_factory=BatchingHints)
    precision: PrecisionHints = field(default_factory=PrecisionHints)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, as the control plane writes it."""
        data = asdict(self)
        data = {"schema_version": 1, **data}
        data["batching"] = {k: v for k, v in data["batching"].items() if v is not None}
        if not data["batching"]:
            del data["batching"]
        data["precision"] = {k: v for k, v in data["precision"].items() if v is not None}
        if not self.precision.allowed:
            del data["precision"]
        return json.loads(json.dumps(data))  # tuples -> lists

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def parse(data: Any) -> ModelMetadata:
    """Validate decoded JSON against the schema and build the typed object."""
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.path), list(map(str, e.path))))
    if errors:
        error = jsonschema.exceptions.best_match(errors)
        raise MetadataError(f"{error.json_path}: {error.message}")
    names = [t["name"] for t in data["inputs"] + data["outputs"]]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise MetadataError(f"$.inputs/$.outputs: tensor names must be unique, repeated: {', '.join(duplicates)}")

    def tensors(items: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in items)

    hints = data.get("batching", {})
    preferred = hints.get("preferred_batch_sizes")
    batching = BatchingHints(
        max_batch_size=hints.get("max_batch_size"),
        max_queue_delay_ms=hints.get("max_queue_delay_ms"),
        preferred_batch_sizes=tuple(preferred) if preferred is not None else None,
    )
    precision = data.get("precision")
    if batching.max_batch_size and preferred and max(preferred) > batching.max_batch_size:
        raise MetadataError("$.batching.preferred_batch_sizes: values must not exceed max_batch_size")
    return ModelMetadata(
        name=data["name"],
        version=data["version"],
        artifact=Artifact(**data["artifact"]),
        inputs=tensors(data["inputs"]),
        outputs=tensors(data["outputs"]),
        batching=batching,
        precision=PrecisionHints(tuple(precision["allowed"]), precision.get("tolerance"))
        if precision
        else PrecisionHints(),
    )


def load(path: Path) -> ModelMetadata:
    """Read and validate a metadata file; every failure is a `MetadataError` naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise MetadataError(f"{path}: metadata file not found") from err
    except (OSError, UnicodeDecodeError) as err:
        raise MetadataError(f"{path}: cannot read metadata ({err})") from err
    return loads(text, str(path))


def loads(text: str, source: str) -> ModelMetadata:
    """Validate metadata text read from `source` (a path, an S3 location: named in every error)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise MetadataError(f"{source}: not valid JSON ({err})") from err
    try:
        return parse(data)
    except MetadataError as err:
        raise MetadataError(f"{source}: {err}") from err
