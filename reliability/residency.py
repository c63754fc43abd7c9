"""Which models Triton holds in memory, and what each costs: its Python-backend stub processes.

Triton runs every instance of a Python-backend model in a `triton_python_backend_stub` process of its own (a
child of tritonserver), which imports torch and holds the model's weights: a model is resident while it has
stubs, and its memory is theirs. The stub's command line names the model's `model.py` in the repository
(`<repository>/<model>/<version>/model.py`), hence the model.

Memory is counted as PSS (proportional set size): the pages the stubs share (torch's libraries, mapped from the
same files) are divided among the processes that map them, so the PSS of every stub adds up to what they cost
the machine together. USS counts only the pages no other process maps (what unloading the model gives back);
RSS counts each shared page once per stub.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import psutil

from reliability import procinfo

STUB = "triton_python_backend_stub"


@dataclass(frozen=True)
class Stub:
    pid: int
    model: str
    pss_mb: float
    rss_mb: float
    uss_mb: float  # its pages no other process maps: what stopping it gives back


@dataclass(frozen=True)
class Resident:
    """One model's stubs, one per instance."""

    model: str
    stubs: tuple[Stub, ...]

    @property
    def pss_mb(self) -> float:
        return sum(s.pss_mb for s in self.stubs)

    @property
    def rss_mb(self) -> float:
        return sum(s.rss_mb for s in self.stubs)

    @property
    def uss_mb(self) -> float:
        return sum(s.uss_mb for s in self.stubs)

    def describe(self) -> str:
        return (
            f"{len(self.stubs)} stub(s), PSS {self.pss_mb:.1f} MB, USS {self.uss_mb:.1f} MB, RSS {self.rss_mb:.1f} MB"
        )


def _stub(process: psutil.Process) -> Stub | None:
    """The stub `process` as a `Stub`; None for another child, or one that is gone or unreadable."""
    with contextlib.suppress(psutil.Error):
        argv = process.cmdline()
        if not argv or Path(argv[0]).name != STUB or len(argv) < 2:
            return None
        memory = process.memory_full_info()
        mb = 2**20
        return Stub(process.pid, Path(argv[1]).parents[1].name, memory.pss / mb, memory.rss / mb, memory.uss / mb)
    return None


def resident(triton_pid: int) -> dict[str, Resident]:
    """Every model with a stub under tritonserver `triton_pid`, by name, with its stubs' memory."""
    by_model: dict[str, list[Stub]] = {}
    for child in procinfo.children(triton_pid):
        stub = _stub(child)
        if stub is not None:
            by_model.setdefault(stub.model, []).append(stub)
    return {name: Resident(name, tuple(stubs)) for name, stubs in sorted(by_model.items())}


def models_per_gib(models: dict[str, Resident]) -> float | None:
    """How many models of the mean PSS seen fit in one GiB; None when no model is resident."""
    if not models:
        return None
    mean = sum(m.pss_mb for m in models.values()) / len(models)
    return round(1024 / mean, 2) if mean else None
