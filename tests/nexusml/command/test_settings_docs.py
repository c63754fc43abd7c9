"""docs/settings.md is generated from the settings classes, each variable once, and current (the CI check)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nexusml.command import settings_docs
from nexusml.command.settings_docs import COMMANDS, DOC, SECTIONS, declarations, render, render_default, render_meaning
from nexusml.core.settings import LOG_LEVEL, META_PATH, MODEL_REPOSITORY, MODEL_SERVER_URL, EnvVar, env, variables
from nexusml.triton.settings import ADMIN_KEY
from tests.conftest import settings_classes


def _rows(text: str) -> dict[str, tuple[str, str]]:
    """`NAME` -> (default cell, read-by cell) of every row of the generated tables; a name listed twice fails."""
    found = re.findall(r"^\| (`[A-Z][A-Z0-9_]*`) \| (.*?) \| (.*?) \| .* \|$", text, re.MULTILINE)
    rows = {name: (default, readers) for name, default, readers in found}
    assert len(rows) == len(found), "a variable listed more than once"
    return rows


def test_doc_is_current() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), "docs/settings.md is out of date: run `make settings-docs`"
    assert settings_docs.main(["--check"]) == 0


def test_every_settings_class_has_a_section() -> None:
    documented = {cls for _, cls in SECTIONS}
    assert set(settings_classes()) <= documented, "a settings class without a section in settings_docs.SECTIONS"


@pytest.mark.parametrize("cls", settings_classes(), ids=lambda cls: cls.__name__)
def test_every_variable_is_documented_with_its_default(cls: type) -> None:
    rows = _rows(render())
    for spec, default in variables(cls):  # nested classes included: their rows must be there too
        assert rows[f"`{spec.name}`"][0] == render_default(spec, default), f"{cls.__name__}: {spec.name}"


@pytest.mark.parametrize(
    ("name", "readers"),
    [
        pytest.param("NEXUS_META_PATH", "every command", id="meta-path"),
        pytest.param("MODEL_REPOSITORY", "`sync`, `publish-demo`, `triton`, `watch`, `up`", id="repository"),
        pytest.param("TRITON_ADMIN_KEY", "`triton`, `watch`, `up`", id="admin-key"),
        pytest.param("MODEL_SERVER_URL", "`proxy`, `watch`, `up`", id="server-url"),
        pytest.param("LOG_LEVEL", "every command", id="log-level"),
        # Triton's max_batch_size only; the coalescer has COALESCE_*
        pytest.param("BATCH_SIZE", "`sync`, `publish-demo`, `watch`, `up`", id="batch-size"),
        pytest.param("TRITON_GRPC_PORT", "`triton`, `up`", id="bind-port"),
    ],
)
def test_each_variable_appears_once_with_its_readers(name: str, readers: str) -> None:
    text = render()
    assert text.count(f"| `{name}` |") == 1
    assert _rows(text)[f"`{name}`"][1] == readers


@pytest.mark.parametrize(
    ("setting", "classes"),
    [
        pytest.param(META_PATH, {"SyncSettings", "ProxySettings", "StackSettings", "TritonSettings"}, id="meta-path"),
        pytest.param(MODEL_REPOSITORY, {"SyncSettings", "TritonSettings"}, id="repository"),
        pytest.param(ADMIN_KEY, {"TritonSettings", "WatchSettings"}, id="admin-key"),
        pytest.param(MODEL_SERVER_URL, {"ProxySettings", "WatchSettings"}, id="server-url"),
        pytest.param(LOG_LEVEL, {"LogSettings", "ProxySettings"}, id="log-level"),
    ],
)
def test_shared_declarations_are_listed_as_shared(setting: Any, classes: set[str]) -> None:
    """One declaration bound by several classes: under the shared heading, with the doc it was declared with."""
    binding = {
        cls.__name__ for _, cls in SECTIONS if any(s is setting.var for s, _ in settings_docs.own_variables(cls))
    }
    assert binding == classes
    shared = render().split(f"## {settings_docs.SHARED}\n", 1)[1].split("\n## ", 1)[0]
    assert f"| `{setting.var.name}` |" in shared and setting.var.doc in shared


def test_a_variable_declared_twice_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    @dataclass(frozen=True)
    class FirstSettings:
        port: int = env("PORT", 8080, "one doc", int)

    @dataclass(frozen=True)
    class SecondSettings:
        port: int = env("PORT", 8080, "another doc", int)

    assert set(declarations())  # the real classes pass
    monkeypatch.setattr(settings_docs, "COMMANDS", (("a", (FirstSettings,)), ("b", (SecondSettings,))))
    with pytest.raises(ValueError, match="PORT is declared more than once"):
        declarations()


def test_a_former_name_is_documented_with_its_variable() -> None:
    row = next(line for line in render().splitlines() if line.startswith("| `MODEL_SERVER_URL` |"))
    assert "formerly `TRITON_URL`" in row
    assert "| `TRITON_URL` |" not in render()


def test_commands_are_the_clis() -> None:
    from nexusml.command.cli import parser

    commands = set(parser()._subparsers._group_actions[0].choices)  # argparse has no public API
    assert {name for name, _ in COMMANDS} == commands


@pytest.mark.parametrize(
    ("spec", "default", "rendered"),
    [
        pytest.param(EnvVar("MODEL_BUCKET", "bucket"), None, "unset", id="none-unset"),
        pytest.param(
            EnvVar("BATCH_SIZE", "max_batch_size (default: metadata hint, else 32)"),
            None,
            "metadata hint, else 32",
            id="none-doc-default",
        ),
        pytest.param(EnvVar("Q", "queued (default 8 x BATCH_SIZE)"), None, "8 x BATCH_SIZE", id="none-doc-default-2"),
        pytest.param(EnvVar("FLAG", "a flag"), True, "`true`", id="bool-true"),
        pytest.param(EnvVar("FLAG", "a flag"), False, "`false`", id="bool-false"),
        pytest.param(EnvVar("N", "a count"), 8, "8", id="int"),
        pytest.param(EnvVar("N", "a count"), 8 << 30, str(8 << 30), id="big-int-not-bytes"),
        pytest.param(EnvVar("MAX_ARTIFACT_BYTES", "cap"), 8 << 30, "8 GiB", id="bytes-gib"),
        pytest.param(EnvVar("MAX_BODY_BYTES", "cap"), 1 << 20, "1 MiB", id="bytes-mib"),
        pytest.param(EnvVar("MAX_BODY_BYTES", "cap"), (1 << 20) + 1, "1048577 B", id="bytes-inexact"),
        pytest.param(EnvVar("T", "seconds"), 5.0, "5", id="float-integral"),
        pytest.param(EnvVar("T", "seconds"), 2.5, "2.5", id="float"),
        pytest.param(EnvVar("KEYS", "keys"), (), "empty", id="tuple-empty"),
        pytest.param(EnvVar("PATHS", "paths"), ("/healthz", "/readyz"), "`/healthz`, `/readyz`", id="tuple"),
        pytest.param(EnvVar("NAME", "a name"), "", "empty", id="str-empty"),
        pytest.param(EnvVar("DEVICE", "device"), "auto", "`auto`", id="str"),
        pytest.param(EnvVar("META", "metadata"), Path(".nexus_meta.json"), "`.nexus_meta.json`", id="path"),
    ],
)
def test_default_rendering(spec: EnvVar, default: Any, rendered: str) -> None:
    assert render_default(spec, default) == rendered


@pytest.mark.parametrize(
    ("spec", "default", "meaning"),
    [
        pytest.param(EnvVar("N", "rows", int, minimum=1, maximum=4096), 32, "rows; 1-4096", id="range"),
        pytest.param(EnvVar("N", "rows", int, minimum=1), 32, "rows; >= 1", id="minimum"),
        pytest.param(EnvVar("T", "delay", float, maximum=0.5), 0.1, "delay; <= 0.5", id="maximum"),
        pytest.param(
            EnvVar("DEVICE", "where", choices=("auto", "cuda", "cpu")),
            "auto",
            "where; one of auto, cuda, cpu",
            id="choices",
        ),
        pytest.param(
            EnvVar("MAX_BODY_BYTES", "cap", int, minimum=64, maximum=1 << 30), 1 << 20, "cap; 64 B to 1 GiB", id="bytes"
        ),
        pytest.param(EnvVar("SIZES", "comma list", minimum=1), (4, 8), "comma list; each >= 1", id="tuple-each"),
        pytest.param(
            EnvVar("BATCH_SIZE", "max_batch_size (default: metadata hint, else 32)", int, minimum=1),
            None,
            "max_batch_size; >= 1",
            id="doc-default-moved-to-default-column",
        ),
    ],
)
def test_meaning_rendering(spec: EnvVar, default: Any, meaning: str) -> None:
    assert render_meaning(spec, default) == meaning


def test_check_and_rewrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "docs" / "settings.md"
    assert settings_docs.main(["--check", "--output", str(doc)]) == 1  # missing
    assert settings_docs.main(["--output", str(doc)]) == 0  # written
    assert doc.read_text() == render()
    doc.write_text(render().replace("| `PORT` |", "| `PORT` | 1 |", 1))
    assert settings_docs.main(["--check", "--output", str(doc)]) == 1  # stale
    assert "run `make settings-docs`" in capsys.readouterr().err
    assert "| `PORT` | 1 |" in doc.read_text()  # --check writes nothing
    assert settings_docs.main(["--output", str(doc)]) == 0
    assert doc.read_text() == render()
    assert settings_docs.main(["--check", "--output", str(doc)]) == 0
    assert [p.name for p in doc.parent.iterdir()] == ["settings.md"]  # no temp file left behind
