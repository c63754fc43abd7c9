"""Versions a control plane might publish while a model is served: good ones, and three kinds of broken.

Read by `tests/nexusml/updates/test_watch.py` (the watcher against real S3 and Triton) and by the reliability bed's
model-update scenario (the same versions published under load).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from nexusml.core.metadata import ModelMetadata, TensorSpec
from nexusml.testing.artifacts import put
from nexusml.testing.models import DEMO_SPEC, TEST_BUCKET, PublishedModel, publish


def good(version: int, s3_client: Any, directory: Path, bucket: str = TEST_BUCKET) -> PublishedModel:
    """The demo model at `version`, with weights of its own (seeded by the version), so answers tell it apart."""
    spec = dataclasses.replace(DEMO_SPEC, version=version, seed=version)
    return publish(spec, s3_client, directory / f"v{version}", bucket)


def missing(base: ModelMetadata, version: int) -> ModelMetadata:
    """The download fails: the metadata names an object that is not there."""
    artifact = dataclasses.replace(base.artifact, uri=f"{base.artifact.uri}.missing-{version}")
    return dataclasses.replace(base, version=version, artifact=artifact)


def corrupt(base: ModelMetadata, version: int) -> ModelMetadata:
    """The verification fails: the object is there, its sha256 is not the metadata's."""
    artifact = dataclasses.replace(base.artifact, sha256="0" * 64)
    return dataclasses.replace(base, version=version, artifact=artifact)


def unloadable(base: ModelMetadata, version: int, s3_client: Any, bucket: str = TEST_BUCKET) -> ModelMetadata:
    """The load fails: the artifact verifies (its checksum is right) but is not a model."""
    uri, sha, size = put(s3_client, f"{base.name}/{version}/model.pt", b"not a TorchScript archive\n" * 64, bucket)
    artifact = dataclasses.replace(base.artifact, uri=uri, sha256=sha, size=size)
    return dataclasses.replace(base, version=version, artifact=artifact)


def wrong_shape(version: int, s3_client: Any, directory: Path, bucket: str = TEST_BUCKET) -> ModelMetadata:
    """The smoke test fails: the model loads and answers 3 values per row where its metadata declares 2."""
    spec = dataclasses.replace(DEMO_SPEC, version=version, outputs=DEMO_SPEC.outputs + 1)
    published = publish(spec, s3_client, directory / f"v{version}-wrong-shape", bucket)
    declared = tuple(TensorSpec(t.name, t.dtype, (DEMO_SPEC.outputs,)) for t in published.meta.outputs)
    return dataclasses.replace(published.meta, outputs=declared)
