"""`python -m reliability`'s arguments: a report it could not write is refused before any scenario starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability import cli


@pytest.mark.parametrize(
    ("out", "message"),
    [
        pytest.param(".", "is a folder; name the report file", id="folder"),
        pytest.param("missing/report.md", "does not exist", id="missing-folder"),
    ],
)
def test_an_unwritable_report_is_refused_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], out: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "standalone_bed", _no_bed)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--scenario", "overload", "--out", out])
    assert exit_info.value.code == 2
    assert f"--out {out}: " in (err := capsys.readouterr().err)
    assert message in err


def _no_bed(workdir: Path) -> None:
    raise AssertionError("no bed may start for a report that cannot be written")
