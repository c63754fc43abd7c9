"""The control-plane stand-in writes metadata where a control plane would: a file, or `<directory>/<name>.json`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from nexusml.command import cli, demo
from nexusml.core import metadata
from nexusml.testing.models import stub_metadata

META = stub_metadata("wide", version=3, width=8)


def test_a_directory_gets_name_dot_json_and_no_temporary_left(tmp_path: Path) -> None:
    written = demo.write_metadata(META, tmp_path)
    assert written == tmp_path / "wide.json"
    assert metadata.load(written) == META
    assert [p.name for p in tmp_path.iterdir()] == ["wide.json"]


def test_a_file_path_is_written_as_it_always_was(tmp_path: Path) -> None:
    assert demo.write_metadata(META, tmp_path / ".nexus_meta.json") == tmp_path / ".nexus_meta.json"
    assert metadata.load(tmp_path / ".nexus_meta.json") == META


def test_publish_demo_names_the_file_of_its_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo, "publish", lambda spec, *args: dataclasses.replace(META, name=spec.name))
    env = {"NEXUS_META_PATH": str(tmp_path), "AWS_REGION": "us-east-1"}
    assert cli.main(["publish-demo", "--name", "second", "--workdir", str(tmp_path / "work")], env) == 0
    assert metadata.load(tmp_path / "second.json").name == "second"
    assert str(tmp_path / "second.json") in capsys.readouterr().out
