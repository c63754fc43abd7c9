"""Which models Triton holds in memory, and what each costs: its Python-backend stub processes.

Triton runs every instance of a Python-backend model in a `triton_python_backend_stub` process of its own (a
child of tritonserver), which imports torch and holds the model's weights: a model is resident while it has
stubs, and its memory is theirs. The stub's command line names the model's `model.py` in the repository
(`<repository>/<model>/<version>/model.py`), hence the model.

Memory is counted as PSS (proportional set size): the pages the stubs share (torch's libraries, mapped from the
same files) are divided among the processes that map them, so the PSS of every stub adds up to what they cost
the machine together. USS counts only the pages no other process maps (what unloading the model gives back);
RSS counts each shared page once per stub.

Under a memory budget (MODEL_MEMORY_BUDGET) the decider in `nexus watch` keeps the loaded models' memory within it by
its own figures (the stubs' reports); `Sampler` checks it from outside, reading the stubs' PSS here through psutil
every half second while the load runs, and `budget_for` picks a budget that holds a given number of the models.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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


def budget_for(sizes: list[int], fit: int) -> int:
    """A budget (bytes) that holds any `fit` of the models of `sizes` (bytes each) and no `fit` + 1 of them: halfway
    between the `fit` largest together and the `fit` + 1 smallest together. When even the `fit` + 1 smallest weigh no
    more than the `fit` largest (sizes far apart), the `fit` largest plus half the smallest: then some `fit` + 1 small
    ones fit too."""
    if len(sizes) <= fit:
        raise ValueError(f"{len(sizes)} models: a budget for {fit} of them holds them all")
    largest = sum(sorted(sizes, reverse=True)[:fit])
    smallest = sum(sorted(sizes)[: fit + 1])
    return (largest + smallest) // 2 if smallest > largest else largest + min(sizes) // 2


@dataclass(frozen=True)
class Reading:
    at: float  # time.monotonic()
    stubs_bytes: int  # every stub's PSS together
    models: dict[str, int]  # each resident model's PSS
    reported_bytes: int | None  # what `Sampler`'s `reported` said at the same time (the decider's own figure)


@dataclass
class Sampler:
    """Every stub under tritonserver `triton_pid`, read every `interval_s` in a thread of its own while started
    (`with`), with the figure `reported` answers beside it (None: none)."""

    triton_pid: int
    interval_s: float = 0.5
    reported: Callable[[], int | None] | None = None
    readings: list[Reading] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def read(self) -> Reading:
        models = resident(self.triton_pid)
        sizes = {name: round(model.pss_mb * 2**20) for name, model in models.items()}
        reported = self.reported() if self.reported is not None else None
        return Reading(time.monotonic(), sum(sizes.values()), sizes, reported)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.readings.append(self.read())
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def __enter__(self) -> Sampler:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def peak(readings: list[Reading]) -> Reading | None:
    """The reading with the most stub memory."""
    return max(readings, key=lambda r: r.stubs_bytes, default=None)
