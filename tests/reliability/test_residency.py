"""Which model each Python-backend stub serves, read from its command line, and what it costs (no Triton: child
processes of this test named as Triton names its stubs)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nexusml.testing.polling import wait_until
from reliability import residency

IDLE = "import time\ntime.sleep(60)\n"


@pytest.fixture
def stubs(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Three children of this process run as `triton_python_backend_stub <repository>/<model>/1/model.py`: two
    instances of model `a`, one of `b`; and one child of another name, which is no stub."""
    stub = tmp_path / residency.STUB
    stub.symlink_to(sys.executable)
    children = []
    for model in ("a", "a", "b"):
        script = tmp_path / "repository" / model / "1" / "model.py"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(IDLE)
        children.append(subprocess.Popen([str(stub), str(script)]))
    children.append(subprocess.Popen([sys.executable, "-c", IDLE]))
    yield children
    for child in children:
        child.kill()
        child.wait()


def test_stubs_are_counted_per_model(stubs: list[subprocess.Popen[bytes]]) -> None:
    # Only models a and b are ours: a session's Triton, started by this process, has stubs of its own.
    def ours() -> dict[str, residency.Resident]:
        return {name: m for name, m in residency.resident(os.getpid()).items() if name in ("a", "b")}

    # A child's command line is its own once it has exec'd.
    assert wait_until(lambda: sum(len(m.stubs) for m in ours().values()) == 3, 10)
    found = ours()
    assert [len(found["a"].stubs), len(found["b"].stubs)] == [2, 1]
    assert {s.pid for m in found.values() for s in m.stubs} == {c.pid for c in stubs[:3]}
    a = found["a"]
    assert a.pss_mb == pytest.approx(sum(s.pss_mb for s in a.stubs))
    assert 0 < a.uss_mb <= a.pss_mb <= a.rss_mb


@pytest.mark.parametrize(
    ("pss", "expected"),
    [
        pytest.param([256.0, 256.0], 4.0, id="two-models-of-256-mb"),
        pytest.param([100.0, 412.0], 4.0, id="the-mean-decides"),
        pytest.param([], None, id="none-resident"),
    ],
)
def test_models_per_gib(pss: list[float], expected: float | None) -> None:
    models = {str(i): residency.Resident(str(i), (residency.Stub(i, str(i), mb, mb, mb),)) for i, mb in enumerate(pss)}
    assert residency.models_per_gib(models) == expected


MIB = 2**20


@pytest.mark.parametrize(
    ("sizes", "fit", "expected"),
    [
        pytest.param([100 * MIB] * 6, 4, 450 * MIB, id="equal-sizes-halfway-between-4-and-5"),
        pytest.param([150 * MIB] * 4 + [190 * MIB, 180 * MIB], 4, (670 + 780) * MIB // 2, id="any-4-fit-no-5"),
        pytest.param([10 * MIB] * 5 + [500 * MIB], 2, 510 * MIB + 5 * MIB, id="sizes-far-apart"),
    ],
)
def test_budget_for(sizes: list[int], fit: int, expected: int) -> None:
    budget = residency.budget_for(sizes, fit)
    assert budget == expected
    assert sum(sorted(sizes)[-fit:]) <= budget  # the `fit` largest always fit


def test_budget_for_fewer_models_than_it_would_hold() -> None:
    with pytest.raises(ValueError, match="holds them all"):
        residency.budget_for([MIB, MIB], 2)


def test_sampler_reads_the_stubs_while_started(stubs: list[subprocess.Popen[bytes]]) -> None:
    assert wait_until(lambda: {"a", "b"} <= set(residency.resident(os.getpid())), 10)
    with residency.Sampler(os.getpid(), interval_s=0.05, reported=lambda: 42) as sampler:
        assert wait_until(lambda: len(sampler.readings) >= 3, 10)
    count = len(sampler.readings)
    time.sleep(0.2)
    assert len(sampler.readings) == count  # stopped on leaving
    reading = sampler.readings[-1]
    assert reading.models["a"] > 0 and reading.models["b"] > 0
    assert reading.stubs_bytes == sum(reading.models.values())
    assert reading.reported_bytes == 42
    peak = residency.peak(sampler.readings)
    assert peak is not None and peak.stubs_bytes == max(r.stubs_bytes for r in sampler.readings)
