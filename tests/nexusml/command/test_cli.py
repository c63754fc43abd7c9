"""`nexus`: options folded into the environment, so each setting still has one source."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from nexusml.command import cli, demo
from nexusml.core import logs
from nexusml.core.errors import IntegrityError
from nexusml.core.metadata import ModelMetadata
from nexusml.sync import pipeline
from nexusml.sync.pipeline import SyncResult
from nexusml.sync.settings import SyncSettings
from nexusml.testing.models import stub_metadata


@pytest.mark.parametrize(
    ("argv", "environ", "level"),
    [
        pytest.param([], {}, "INFO", id="default"),
        pytest.param([], {"LOG_LEVEL": "debug"}, "DEBUG", id="environment"),
        pytest.param(["--log-level", "WARNING"], {}, "WARNING", id="option"),
        pytest.param(["--log-level", "error"], {"LOG_LEVEL": "debug"}, "ERROR", id="option-wins"),
    ],
)
def test_log_level_has_one_source(
    argv: list[str], environ: dict[str, str], level: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--log-level` becomes LOG_LEVEL: the command logs at it, and so do the processes it starts (the proxy's
    workers, `nexus up`'s children), which read LOG_LEVEL from the environment they are handed."""
    seen: dict[str, Any] = {}

    def handler(args: argparse.Namespace, env: Mapping[str, str]) -> int:
        seen["env"] = dict(env)
        return 0

    monkeypatch.setattr(cli, "_sync", handler)
    monkeypatch.setattr(logs, "configure", lambda level, log_format, **kwargs: seen.update(level=level))
    assert cli.main([*argv, "sync"], environ) == 0
    assert seen["level"] == level
    assert seen["env"].get("LOG_LEVEL", "info").upper() == level


def test_a_bad_log_level_is_a_settings_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "_sync", lambda args, env: pytest.fail("the command ran"))
    assert cli.main(["sync"], {"LOG_LEVEL": "loud"}) == 2
    assert "LOG_LEVEL='loud'" in capsys.readouterr().err


def _directory_of(tmp_path: Path, *names: str) -> Path:
    directory = tmp_path / "meta"
    directory.mkdir()
    for name in names:
        demo.write_metadata(stub_metadata(name), directory)
    return directory


@pytest.mark.parametrize(
    ("failing", "code"),
    [
        pytest.param({"b"}, 0, id="one-model-fails-the-others-serve"),
        pytest.param({"a", "b"}, 7, id="every-model-fails-its-exit-code"),
    ],
)
def test_sync_of_a_directory_exits_by_what_is_left_to_serve(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    failing: set[str],
    code: int,
) -> None:
    directory = _directory_of(tmp_path, "a", "b")
    (directory / "broken.json").write_text("{")

    def sync(meta: ModelMetadata, settings: SyncSettings, progress: bool = False) -> SyncResult:
        if meta.name in failing:
            raise IntegrityError(f"{meta.artifact.uri}: sha256 mismatch")
        (settings.repository / meta.name / "1").mkdir(parents=True)
        (settings.repository / meta.name / "config.pbtxt").write_text("")
        return SyncResult(settings.repository / meta.name / "1", True, True, [])

    monkeypatch.setattr(pipeline, "sync", sync)
    env = {"NEXUS_META_PATH": str(directory), "MODEL_REPOSITORY": str(tmp_path / "repo"), "DEVICE": "cpu"}
    assert cli.main(["sync"], env) == code
    err = capsys.readouterr().err.splitlines()
    assert sum("broken.json" in line for line in err) == 1
    for name in failing:
        assert sum(f"model {name} not synced (integrity)" in line for line in err) == 1
