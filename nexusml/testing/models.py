"""Models as the control plane would publish them, and synced as `nexus sync` would install them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexusml.command import demo
from nexusml.core.metadata import Artifact, ModelMetadata, TensorSpec
from nexusml.core.settings import load
from nexusml.sync.pipeline import sync
from nexusml.sync.settings import SyncSettings

TEST_BUCKET = "nexus-test"
# A small hidden layer keeps uploads and Triton start-up quick; the shape contract is the demo's.
DEMO_SPEC = demo.DemoSpec(hidden=64, layers=2)


@dataclass(frozen=True)
class PublishedModel:
    spec: demo.DemoSpec
    meta: ModelMetadata
    meta_path: Path


def stub_metadata(name: str, version: int = 1, width: int = 5) -> ModelMetadata:
    """Valid metadata with no object behind it, for the rules that never download (which model goes, what is
    swapped): `width` FP32 inputs, two FP32 outputs."""
    return ModelMetadata(
        name=name,
        version=version,
        artifact=Artifact(uri=f"s3://models/{name}/{version}/model.pt", sha256="0" * 64, size=1, format="torchscript"),
        inputs=(TensorSpec("INPUT__0", "FP32", (width,)),),
        outputs=(TensorSpec("OUTPUT__0", "FP32", (2,)),),
    )


def publish(spec: demo.DemoSpec, s3_client: Any, directory: Path, bucket: str = TEST_BUCKET) -> PublishedModel:
    """Export `spec`, upload it to `bucket`, write its `.nexus_meta.json` in `directory`."""
    meta = demo.publish(spec, s3_client, bucket, directory / "export")
    meta_path = directory / ".nexus_meta.json"
    meta_path.write_text(meta.to_json())
    return PublishedModel(spec, meta, meta_path)


def publish_into(spec: demo.DemoSpec, s3_client: Any, directory: Path, bucket: str = TEST_BUCKET) -> PublishedModel:
    """Export `spec`, upload it to `bucket`, write `<directory>/<name>.json` (atomically) as a control plane
    publishing a directory of models would; the export is kept beside the directory, not in it."""
    meta = demo.publish(spec, s3_client, bucket, directory.parent / f"export-{spec.name}-{spec.version}")
    return PublishedModel(spec, meta, demo.write_metadata(meta, directory))


def sync_into(meta: ModelMetadata, s3_env: dict[str, str], repository: Path, **settings: str) -> Path:
    """`meta` synced into `repository` in this process: CPU unless `settings` say, the sync's defaults else."""
    env = {"DEVICE": "cpu", **s3_env, "MODEL_REPOSITORY": str(repository), **settings}
    sync(meta, load(SyncSettings, env))
    return repository
