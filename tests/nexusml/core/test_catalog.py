"""The catalog: one metadata file as before, or a directory where one file's problem is that model's alone."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from nexusml.core import catalog
from nexusml.core.errors import MetadataError

EXAMPLE = Path(__file__).parents[3] / "examples" / "nexus_meta.example.json"


def meta(name: str, version: int = 1) -> dict[str, Any]:
    data = json.loads(EXAMPLE.read_text())
    data["name"] = name
    data["version"] = version
    return data


def write(directory: Path, filename: str, data: dict[str, Any] | str) -> Path:
    path = directory / filename
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_a_file_is_one_model(tmp_path: Path) -> None:
    path = write(tmp_path, ".nexus_meta.json", meta("alpha"))
    found = catalog.read(path)
    assert found.names == ["alpha"]
    assert found.sources == {"alpha": str(path)}
    assert not found.problems


def test_a_broken_file_raises_as_before(tmp_path: Path) -> None:
    path = write(tmp_path, ".nexus_meta.json", "{")
    with pytest.raises(MetadataError, match="not valid JSON"):
        catalog.read(path)


def test_a_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match="not found"):
        catalog.read(tmp_path / "absent.json")


def test_a_directory_serves_every_usable_file(tmp_path: Path) -> None:
    write(tmp_path, "a.json", meta("alpha"))
    write(tmp_path, "b.json", meta("beta", 3))
    broken = write(tmp_path, "c.json", {"name": "gamma"})
    write(tmp_path, ".d.json", meta("hidden"))  # an atomic writer's temporary
    write(tmp_path, "notes.txt", "not metadata")
    found = catalog.read(tmp_path)
    assert found.names == ["alpha", "beta"]
    assert found.models["beta"].version == 3
    assert list(found.problems) == [str(broken)]
    assert found.problems[str(broken)].startswith(f"{broken}: ")
    assert not found.held


def test_two_files_naming_one_model_are_both_refused(tmp_path: Path) -> None:
    first = write(tmp_path, "a.json", meta("alpha", 1))
    second = write(tmp_path, "b.json", meta("alpha", 2))
    write(tmp_path, "c.json", meta("beta"))
    found = catalog.read(tmp_path)
    assert found.names == ["beta"]
    assert found.held == {"alpha"}
    assert str(second) in found.problems[str(first)] and str(first) in found.problems[str(second)]


def test_an_empty_directory_is_an_empty_catalog(tmp_path: Path) -> None:
    found = catalog.read(tmp_path)
    assert found.names == [] and not found.problems


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda d: write(d, "b.json", meta("beta")), id="file-added"),
        pytest.param(lambda d: (d / "a.json").unlink(), id="file-removed"),
        pytest.param(lambda d: write(d, "a.json", meta("alpha", 22)), id="file-rewritten"),
        pytest.param(lambda d: (d / "a.json").chmod(0o600), id="mode-changed"),
    ],
)
def test_the_stamp_changes_with_any_file(tmp_path: Path, change: Any) -> None:
    path = write(tmp_path, "a.json", meta("alpha"))
    os.utime(path, ns=(0, 0))
    before = catalog.stamp(tmp_path)
    change(tmp_path)
    assert catalog.stamp(tmp_path) != before
