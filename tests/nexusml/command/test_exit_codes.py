"""The command layer's one table of exit codes (`nexusml.command.cli.EXIT_CODES`), and docs/errors.md's copy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nexusml.command.cli import EXIT_CODES, exit_code, main
from nexusml.core.errors import AccessDenied, NexusError, ServerError, SettingsError

ERRORS_DOC = Path(__file__).resolve().parents[3] / "docs" / "errors.md"


def test_codes_are_distinct() -> None:
    assert len(set(EXIT_CODES.values())) == len(EXIT_CODES)
    assert 0 not in EXIT_CODES.values()


@pytest.mark.parametrize(
    ("error", "code"),
    [
        pytest.param(NexusError("x"), 1, id="generic"),
        pytest.param(SettingsError("x"), 2, id="settings"),
        pytest.param(AccessDenied("x"), 5, id="access"),
        pytest.param(ServerError("x"), 10, id="server"),
        pytest.param(type("Unlisted", (ServerError,), {})("x"), 10, id="nearest-ancestor"),
    ],
)
def test_exit_code_of(error: NexusError, code: int) -> None:
    assert exit_code(error) == code


def test_main_exits_with_the_tables_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["proxy"], {"PORT": "0"}) == EXIT_CODES[SettingsError]
    assert "nexus proxy: error: " in capsys.readouterr().err


def test_docs_table_is_the_code_table() -> None:
    text = ERRORS_DOC.read_text(encoding="utf-8")
    block = re.search(r"<!-- exit-codes\b[^>]*-->(.*?)<!-- /exit-codes -->", text, re.S)
    assert block, "docs/errors.md has no exit-codes block"
    documented = re.findall(r"^\|\s*(\d+)\s*\|\s*`([a-z0-9_]+)`\s*\|", block.group(1), re.M)
    assert {(int(exit), code) for exit, code in documented} == {(v, cls.code) for cls, v in EXIT_CODES.items()}
