"""The .nexus_meta.json contract: the example is valid; each bad field is named in the error."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from nexusml.core import metadata
from nexusml.core.errors import MetadataError

EXAMPLE = Path(__file__).parents[3] / "examples" / "nexus_meta.example.json"


def example() -> dict[str, Any]:
    return json.loads(EXAMPLE.read_text())


def test_example_file_is_valid() -> None:
    meta = metadata.load(EXAMPLE)
    assert meta.name == "demo_mlp"
    assert meta.version == 1
    assert meta.artifact.filename == "model.pt"
    assert meta.inputs[0].shape == (5,)
    assert meta.batching.preferred_batch_sizes == (4, 8, 16, 32)


def test_round_trip() -> None:
    meta = metadata.load(EXAMPLE)
    assert metadata.parse(meta.to_dict()) == meta


@pytest.mark.parametrize(
    "precision",
    [
        pytest.param({"allowed": ["bf16"]}, id="allowed-only"),
        pytest.param({"allowed": ["fp16", "bf16"], "tolerance": 0.05}, id="with-tolerance"),
    ],
)
def test_precision_round_trip(precision: dict[str, Any]) -> None:
    meta = metadata.parse({**example(), "precision": precision})
    assert meta.precision.allowed == tuple(precision["allowed"])
    assert meta.to_dict()["precision"] == precision
    assert metadata.parse(meta.to_dict()) == meta


def test_optional_fields_default() -> None:
    data = example()
    del data["batching"], data["artifact"]["packaging"], data["schema_version"]
    meta = metadata.parse(data)
    assert meta.artifact.packaging == "file"
    assert meta.batching.max_batch_size is None
    assert meta.precision.allowed == ()
    assert meta.precision.effective_tolerance == metadata.DEFAULT_PRECISION_TOLERANCE
    assert "precision" not in meta.to_dict()


def _set(path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(example())
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is _DELETE:
        del node[last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return data


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        pytest.param("name", _DELETE, "name", id="name-missing"),
        pytest.param("name", "../escape", "$.name", id="name-path"),
        pytest.param("name", "", "$.name", id="name-empty"),
        pytest.param("version", "1", "$.version", id="version-string"),
        pytest.param("version", 0, "$.version", id="version-zero"),
        pytest.param("version", 1.5, "$.version", id="version-float"),
        pytest.param("artifact.uri", "http://example.com/x", "$.artifact.uri", id="uri-scheme"),
        pytest.param("artifact.sha256", "abc", "$.artifact.sha256", id="sha-short"),
        pytest.param("artifact.sha256", "A" * 64, "$.artifact.sha256", id="sha-upper"),
        pytest.param("artifact.size", 0, "$.artifact.size", id="size-zero"),
        pytest.param("artifact.size", _DELETE, "size", id="size-missing"),
        pytest.param("artifact.format", "pickle", "$.artifact.format", id="format-pickle"),
        pytest.param("artifact.packaging", "zip", "$.artifact.packaging", id="packaging-zip"),
        pytest.param("inputs", [], "$.inputs", id="inputs-empty"),
        pytest.param("inputs.0.dtype", "FLOAT", "$.inputs[0].dtype", id="dtype-unknown"),
        pytest.param("inputs.0.shape", [0], "$.inputs[0].shape[0]", id="shape-zero"),
        pytest.param("inputs.0.shape", [], "$.inputs[0].shape", id="shape-empty"),
        pytest.param("outputs.0.name", "has space", "$.outputs[0].name", id="tensor-name"),
        pytest.param("outputs.0.name", "INPUT__0", "unique", id="tensor-name-repeated"),
        pytest.param("batching.max_batch_size", 0, "$.batching.max_batch_size", id="batch-zero"),
        pytest.param("batching.preferred_batch_sizes", [64], "preferred_batch_sizes", id="preferred-too-big"),
        pytest.param("precision", {"allowed": ["int8"]}, "$.precision.allowed[0]", id="precision-unknown"),
        pytest.param("precision", {"allowed": []}, "$.precision.allowed", id="precision-empty"),
        pytest.param("precision", {"allowed": ["fp16"], "tolerance": 0}, "$.precision.tolerance", id="tolerance-zero"),
        pytest.param("surprise", 1, "surprise", id="unknown-field"),
    ],
)
def test_bad_field_is_named(path: str, value: Any, named: str) -> None:
    with pytest.raises(MetadataError) as caught:
        metadata.parse(_set(path, value))
    assert named in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(None, "not found", id="missing-file"),
        pytest.param("{", "not valid JSON", id="truncated"),
        pytest.param("[]", "is not of type 'object'", id="not-an-object"),
    ],
)
def test_bad_file(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / ".nexus_meta.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(MetadataError, match=message):
        metadata.load(path)
