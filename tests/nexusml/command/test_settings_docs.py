"""README.md's settings tables are generated from the settings classes, and current (the CI check)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from nexusml.command import settings_docs
from nexusml.command.settings_docs import BEGIN, END, PROCESSES, block_of, render_default, render_meaning, tables
from nexusml.core.settings import EnvVar, variables
from tests.conftest import settings_classes

README = Path(__file__).resolve().parents[3] / "README.md"


def _rows(block: str) -> set[tuple[str, str]]:
    """(`NAME`, default cell) of every row of the generated tables."""
    found = re.findall(r"^\| (`[A-Z][A-Z0-9_]*`) \| (.*?) \| .* \|$", block, re.MULTILINE)
    return set(found)


def test_readme_tables_are_current() -> None:
    block = block_of(README.read_text(encoding="utf-8"))
    assert block is not None, f"README.md has no {BEGIN} ... {END} markers"
    assert block == tables(), "README.md's settings tables are out of date: run `make settings-docs`"
    assert settings_docs.main(["--check", "--readme", str(README)]) == 0


def test_every_settings_class_has_a_table() -> None:
    documented = {cls for _, _, cls in PROCESSES}
    assert set(settings_classes()) <= documented, "a settings class without a table in settings_docs.PROCESSES"


@pytest.mark.parametrize("cls", settings_classes(), ids=lambda cls: cls.__name__)
def test_every_variable_is_documented_with_its_default(cls: type) -> None:
    rows = _rows(tables())
    for spec, default in variables(cls):  # nested classes included: their tables must be there too
        assert (f"`{spec.name}`", render_default(spec, default)) in rows, f"{cls.__name__}: {spec.name}"


def test_shared_variables_appear_in_each_process_table() -> None:
    text = tables()
    assert text.count("| `BATCH_SIZE` |") == 1  # Triton's max_batch_size only; the coalescer has COALESCE_*
    assert text.count("| `NEXUS_META_PATH` |") == 3  # sync, proxy, `nexus up`
    assert text.count("| `MODEL_REPOSITORY` |") == 2  # sync, triton


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
    readme = tmp_path / "README.md"
    readme.write_text(f"# T\n\n## Settings\n\nprose above\n\n{BEGIN}\n| stale |\n{END}\n\nprose below\n")
    assert settings_docs.main(["--check", "--readme", str(readme)]) == 1
    assert "run `make settings-docs`" in capsys.readouterr().err
    assert settings_docs.main(["--readme", str(readme)]) == 0
    text = readme.read_text()
    assert block_of(text) == tables()
    assert text.startswith("# T\n\n## Settings\n\nprose above\n\n") and text.endswith(f"{END}\n\nprose below\n")
    assert settings_docs.main(["--check", "--readme", str(readme)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]  # no temp file left behind


def test_check_without_markers_fails(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# T\n\n## Settings\n\n| `PORT` | 8080 | hand-written |\n")
    assert settings_docs.main(["--check", "--readme", str(readme)]) == 1
    assert settings_docs.main(["--readme", str(readme)]) == 1
    assert "hand-written" in readme.read_text()
