"""`python -m nexusml.core.exec_guard`: set up in the child, then become the command (or say why not)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

GUARD = [sys.executable, "-m", "nexusml.core.exec_guard"]


@pytest.mark.parametrize(
    ("options", "command", "code", "output"),
    [
        pytest.param([], ["echo", "hello"], 0, "hello", id="becomes-the-command"),
        pytest.param(["--parent", "{pid}"], ["echo", "guarded"], 0, "guarded", id="with-its-parent"),
        pytest.param(["--parent", "1"], ["echo", "never"], 1, "", id="parent-already-gone"),
        pytest.param([], ["no-such-command-anywhere"], 127, "cannot start no-such-command-anywhere", id="not-found"),
    ],
)
def test_exec_guard(options: list[str], command: list[str], code: int, output: str) -> None:
    argv = [*GUARD, *(o.replace("{pid}", str(os.getpid())) for o in options), "--", *command]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == code, result.stderr
    assert output in result.stdout + result.stderr


def test_a_file_size_limit_fails_writes_instead_of_killing(tmp_path: Path) -> None:
    target = tmp_path / "big"
    write = f"open({str(target)!r}, 'wb').write(b'x' * 100000)"
    result = subprocess.run(
        [*GUARD, "--max-file-bytes", "4096", "--", sys.executable, "-c", write], capture_output=True, text=True
    )
    assert result.returncode == 1 and "File too large" in result.stderr
    assert target.stat().st_size <= 4096
