"""A control-plane stand-in: build the demo model, export it, upload it to S3, write `.nexus_meta.json`
(or, when the metadata path is a directory, `<directory>/<name>.json`).

The demo is an MLP over `width` features (5 by default, so the README's `[1, 2, 3, 4, 5]` fits) with
`heads` output tensors of `outputs` values each. Weights come from a fixed seed, so a test can rebuild the
same model in-process and compare its outputs with what Triton serves.
"""

from __future__ import annotations

import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nexusml.core import catalog
from nexusml.core.metadata import ARTIFACT_FILES, Artifact, BatchingHints, ModelMetadata, TensorSpec
from nexusml.sync import storage
from nexusml.sync.repository import disk_errors

MAX_EXPORT_BATCH = 4096


class DemoMLP(nn.Module):
    def __init__(self, width: int, outputs: int, heads: int, hidden: int, layers: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        size = width
        for _ in range(layers):
            blocks += [nn.Linear(size, hidden), nn.ReLU()]
            size = hidden
        self.body = nn.Sequential(*blocks)
        self.heads = nn.ModuleList(nn.Linear(size, outputs) for _ in range(heads))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.body(x)
        return tuple(head(features) for head in self.heads)


@dataclass(frozen=True)
class DemoSpec:
    """What to build; the defaults are the README's model."""

    name: str = "demo_mlp"
    version: int = 1
    width: int = 5
    outputs: int = 2
    heads: int = 1
    hidden: int = 1024
    layers: int = 3
    seed: int = 0
    format: str = "torchscript"
    packaging: str = "file"


def build(spec: DemoSpec) -> DemoMLP:
    torch.manual_seed(spec.seed)
    return DemoMLP(spec.width, spec.outputs, spec.heads, spec.hidden, spec.layers).eval()


def export(model: nn.Module, spec: DemoSpec, path: Path) -> None:
    example = torch.zeros(2, spec.width)
    if spec.format == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export, still supported
            torch.jit.save(torch.jit.trace(model, example), str(path))
    elif spec.format == "torch_export":
        batch = torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)
        program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}})
        torch.export.save(program, str(path))
    else:
        raise ValueError(f"unknown format {spec.format!r}")


def package(model_file: Path, dest: Path) -> None:
    """A gzip tar holding the model file at its root, for `packaging: tar`."""
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(model_file, arcname=model_file.name)


def metadata(spec: DemoSpec, uri: str, artifact: Path) -> ModelMetadata:
    return ModelMetadata(
        name=spec.name,
        version=spec.version,
        artifact=Artifact(
            uri=uri,
            sha256=storage.sha256_file(artifact),
            size=artifact.stat().st_size,
            format=spec.format,
            packaging=spec.packaging,
        ),
        inputs=(TensorSpec("INPUT__0", "FP32", (spec.width,)),),
        outputs=tuple(TensorSpec(f"OUTPUT__{i}", "FP32", (spec.outputs,)) for i in range(spec.heads)),
        batching=BatchingHints(),
    )


def publish(spec: DemoSpec, s3: Any, bucket: str, workdir: Path, endpoint: str | None = None) -> ModelMetadata:
    """Build, export and upload the demo model; returns the metadata the control plane would write."""
    workdir.mkdir(parents=True, exist_ok=True)
    model_file = workdir / ARTIFACT_FILES[spec.format]
    export(build(spec), spec, model_file)
    artifact = model_file
    if spec.packaging == "tar":
        artifact = workdir / f"{model_file.name}.tar.gz"
        package(model_file, artifact)
    location = storage.ObjectLocation(bucket, f"{spec.name}/{spec.version}/{artifact.name}")
    storage.upload(s3, location, artifact, endpoint)
    return metadata(spec, str(location), artifact)


def reference_outputs(spec: DemoSpec, rows: list[list[float]]) -> list[Any]:
    """The model run in-process, for comparison with served outputs."""
    with torch.inference_mode():
        outputs = build(spec)(torch.tensor(rows, dtype=torch.float32))
    return [o.numpy() for o in outputs]


def write_metadata(meta: ModelMetadata, meta_path: Path) -> Path:
    """Write `meta` where the control plane would: the file `meta_path`, or `<meta_path>/<name>.json` when it is a
    directory. In a directory a watcher may read at any moment, so it must see the whole file or none of it: a
    dot-named temporary (which readers skip) is renamed into place. Returns the file written."""
    if not catalog.is_directory(meta_path):
        with disk_errors(f"cannot write {meta_path}"):
            meta_path.write_text(meta.to_json())
        return meta_path
    target = meta_path / f"{meta.name}{catalog.SUFFIX}"
    temporary = target.with_name(f".{target.name}.tmp")
    with disk_errors(f"cannot write {target}"):
        temporary.write_text(meta.to_json())
        temporary.replace(target)
    return target
