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


def test_a_report_in_the_current_folder_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "standalone_bed", _started_bed)
    with pytest.raises(BedStarted):
        cli.main(["--scenario", "overload", "--out", "report.md"])


class BedStarted(Exception):
    """The arguments were taken: the run got as far as starting its bed."""


def _no_bed(workdir: Path) -> None:
    raise AssertionError("no bed may start for a report that cannot be written")


def _started_bed(workdir: Path) -> None:
    raise BedStarted
