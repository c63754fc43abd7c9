"""`nexus`: options folded into the environment, so each setting still has one source."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import pytest

from nexusml.command import cli
from nexusml.core import logs


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
