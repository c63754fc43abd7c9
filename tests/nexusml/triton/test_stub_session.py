"""nexusml/triton/stub_session.sh, sourced (BASH_ENV) by a real bash as Triton's Python backend runs it:
`bash -c " exec <triton_python_backend_stub> ..."`, with a stand-in stub that reports where it runs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from nexusml.triton.server import STUB_SESSION, TritonDistribution, environment

AUTOGROUPS = Path("/proc/sys/kernel/sched_autogroup_enabled")
CAP_SYS_ADMIN = 21  # exempt from the kernel's rate limit on autogroup nice changes (one per 100 ms machine-wide)


def _capable(bit: int) -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


REPORT = """#!/bin/bash
read -r _ _ _ _ _ session _ </proc/$$/stat
echo "$$ $session ${NEXUS_STUB_SESSION:-unset} $(cat /proc/self/autogroup 2>/dev/null)"
"""


def _launch(tmp_path: Path, name: str, **popen: object) -> tuple[int, list[str]]:
    """Start `name` (the stand-in) as Triton's stub launcher does; its pid and what it printed."""
    stub = tmp_path / name
    stub.write_text(REPORT)
    stub.chmod(0o755)
    env = {**os.environ, "BASH_ENV": str(STUB_SESSION)}
    env.pop("NEXUS_STUB_SESSION", None)
    process = subprocess.Popen(
        ["bash", "-c", f" exec {stub} model.py shm 1048576"], env=env, stdout=subprocess.PIPE, text=True, **popen
    )
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    return process.pid, out.split()


def test_a_stub_starts_in_a_session_of_its_own_at_the_lowest_weight(tmp_path: Path) -> None:
    pid, (reported, session, marker, *autogroup) = _launch(tmp_path, "triton_python_backend_stub")
    assert int(reported) == pid  # the process Triton started and waits on: setsid did not fork
    assert marker == "unset"  # the script's guard is not left in the stub's environment
    if AUTOGROUPS.exists() and AUTOGROUPS.read_text().strip() == "1" and shutil.which("setsid"):
        assert int(session) == pid
        if _capable(CAP_SYS_ADMIN):  # otherwise the kernel's rate limit may refuse it: the model file retries
            assert autogroup[-1] == "19"
    else:  # nothing to do, or nothing to do it with: the model file does it itself
        assert int(session) == os.getsid(0)


def test_nexus_triton_has_every_stub_launch_source_it() -> None:
    assert environment(TritonDistribution.find(), {})["BASH_ENV"] == str(STUB_SESSION)


@pytest.mark.parametrize(
    ("name", "popen"),
    [
        pytest.param("another_program", {}, id="not-a-stub"),
        pytest.param("triton_python_backend_stub", {"process_group": 0}, id="bash-leads-its-process-group"),
    ],
)
def test_anything_else_runs_where_it_was_started(tmp_path: Path, name: str, popen: dict[str, object]) -> None:
    """A process group leader is left alone: setsid(1) would fork it, and Triton would see its stub exit."""
    pid, (reported, session, marker, *_) = _launch(tmp_path, name, **popen)
    assert (int(reported), int(session), marker) == (pid, os.getsid(0), "unset")
