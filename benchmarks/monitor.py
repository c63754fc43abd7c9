"""What each process spent while a load generator ran: CPU per process (psutil) and GPU utilisation (NVML).

CPU % is CPU time over wall time x 100, so 100 % is one core and the machine's capacity is nproc x 100.
Server and proxy trees (a process and its descendants, e.g. tritonserver and its Python-backend stubs) are
read before and after the run; the load generator is a waited child, so its exact CPU time comes from
`getrusage(RUSAGE_CHILDREN)`. NVML is reached through ctypes (`libnvidia-ml.so.1`, shipped with the driver),
so no Python package is needed and a machine without a GPU simply reports none.
"""

from __future__ import annotations

import ctypes
import os
import resource
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import psutil

SATURATED = 0.85  # a share of capacity at or above this counts as saturated


@dataclass
class ProcessCpu:
    role: str
    name: str
    pid: int
    cpu_pct: float
    cores: int  # how many cores this process can use at most (1 for GIL-bound Python / one torch thread)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _label(proc: psutil.Process) -> str:
    try:
        cmd = proc.cmdline()
    except (psutil.Error, OSError):
        cmd = []
    if not cmd:
        try:
            return proc.name()
        except psutil.Error:
            return "?"
    exe = os.path.basename(cmd[0])
    if exe.startswith("python") and len(cmd) > 2 and cmd[1] == "-m":
        return f"python -m {cmd[2]}"
    if exe.startswith("python") and len(cmd) > 1 and "multiprocessing" in " ".join(cmd):
        return "python worker"
    return exe


def _cores(label: str, nproc: int) -> int:
    """One core for Python processes (the GIL; model stubs run one torch thread), all cores otherwise."""
    if label.startswith("python") or "stub" in label or label == "locust":
        return 1
    return nproc


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _cpu_seconds(proc: psutil.Process) -> float | None:
    try:
        times = proc.cpu_times()
        return times.user + times.system
    except psutil.Error:
        return None


class CpuWindow:
    """CPU per process of the given roles ({role: root pid}) between `start()` and `stop()`."""

    def __init__(self, roles: dict[str, int]) -> None:
        self.roles = roles
        self.nproc = os.cpu_count() or 1
        self._before: dict[int, tuple[str, psutil.Process, float]] = {}
        self._children_before = 0.0
        self._t0 = 0.0
        self._system_before = 0.0
        self._machine_pct = 0.0

    def start(self) -> None:
        self._before = {}
        for role, pid in self.roles.items():
            for proc in _tree(pid):
                seconds = _cpu_seconds(proc)
                if seconds is not None:
                    self._before[proc.pid] = (role, proc, seconds)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._children_before = usage.ru_utime + usage.ru_stime
        self._system_before = _busy_seconds()
        self._t0 = time.monotonic()

    def machine_busy_pct(self) -> float:
        """The whole machine's busy CPU % (every process, ours or not) since `start()`; call after `stop()`."""
        return self._machine_pct

    def stop(self, loadgen_name: str | None = None, loadgen_cores: int | None = None) -> list[ProcessCpu]:
        wall = max(time.monotonic() - self._t0, 1e-6)
        self._machine_pct = 100 * (_busy_seconds() - self._system_before) / wall
        found: list[ProcessCpu] = []
        seen: set[int] = set()
        for role, pid in self.roles.items():
            for proc in _tree(pid):
                if proc.pid in seen:
                    continue
                seen.add(proc.pid)
                seconds = _cpu_seconds(proc)
                if seconds is None:
                    continue
                start = self._before.get(proc.pid, (role, proc, 0.0))[2]
                label = _label(proc)
                found.append(
                    ProcessCpu(role, label, proc.pid, 100 * (seconds - start) / wall, _cores(label, self.nproc))
                )
        if loadgen_name is not None:
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            spent = usage.ru_utime + usage.ru_stime - self._children_before
            cores = loadgen_cores or _cores(loadgen_name, self.nproc)
            found.append(ProcessCpu("loadgen", loadgen_name, 0, 100 * spent / wall, cores))
        return found


def _busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle, summed over cores."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def by_role(processes: list[ProcessCpu]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for proc in processes:
        totals[proc.role] = totals.get(proc.role, 0.0) + proc.cpu_pct
    return {role: round(value, 1) for role, value in totals.items()}


def bottleneck(processes: list[ProcessCpu], nproc: int, gpu_util: float | None = None) -> str:
    """Which process limited the figure, from the CPU (and GPU) each spent. A heuristic, stated as such:

    1. the GPU, when it was busy >= 85 % of the time;
    2. else a process that can use one core (Python: GIL; model stub: one torch thread) and used >= 85 % of it;
    3. else the machine, when all cores together were >= 85 % busy (the largest consumer is named);
    4. else no CPU saturated: the time goes to waiting (queueing and batching delays, IPC hand-offs between
       processes, or too little concurrency to keep the server busy).
    """
    if gpu_util is not None and gpu_util >= SATURATED * 100:
        return f"GPU ({gpu_util:.0f}% busy)"
    single = [p for p in processes if p.cores == 1 and p.cpu_pct >= SATURATED * 100]
    total = sum(p.cpu_pct for p in processes)
    if single:
        top = max(single, key=lambda p: p.cpu_pct)
        text = f"{top.role} ({top.name}) at {top.cpu_pct:.0f}% of its one core"
        if total >= SATURATED * nproc * 100:
            text += f"; machine {total:.0f}/{nproc * 100}%"
        return text
    if total >= SATURATED * nproc * 100:
        top = max(processes, key=lambda p: p.cpu_pct)
        return f"machine CPU ({total:.0f}/{nproc * 100}%), largest {top.role} ({top.name}) {top.cpu_pct:.0f}%"
    return f"no CPU saturated ({total:.0f}/{nproc * 100}%): waiting (queue, IPC, or too few requests in flight)"


# ----------------------------------------------------------------------------------------------- NVML


class _Utilization(ctypes.Structure):
    _fields_ = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]


class Nvml:
    """GPU utilisation through the driver's NVML library; `available` is False without a GPU."""

    def __init__(self) -> None:
        self.handles: list[ctypes.c_void_p] = []
        self.names: list[str] = []
        try:
            self.lib = ctypes.CDLL("libnvidia-ml.so.1")
            if self.lib.nvmlInit_v2() != 0:
                return
            count = ctypes.c_uint()
            if self.lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
                return
            for index in range(count.value):
                handle = ctypes.c_void_p()
                if self.lib.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) == 0:
                    self.handles.append(handle)
                    name = ctypes.create_string_buffer(96)
                    self.lib.nvmlDeviceGetName(handle, name, 96)
                    self.names.append(name.value.decode(errors="replace"))
        except (OSError, AttributeError):
            self.handles = []

    @property
    def available(self) -> bool:
        return bool(self.handles)

    def utilization(self) -> float | None:
        """Mean GPU-busy % over the devices right now (NVML's own ~1/6 s to 1 s sample)."""
        values = []
        for handle in self.handles:
            util = _Utilization()
            if self.lib.nvmlDeviceGetUtilizationRates(handle, ctypes.byref(util)) == 0:
                values.append(util.gpu)
        return sum(values) / len(values) if values else None


class GpuSampler:
    """Samples NVML every `interval_s` in a thread; `stop()` returns the mean and peak utilisation."""

    def __init__(self, nvml: Nvml, interval_s: float = 0.2) -> None:
        self.nvml = nvml
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.nvml.available:
            return
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            value = self.nvml.utilization()
            if value is not None:
                self.samples.append(value)

    def stop(self) -> tuple[float | None, float | None]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.samples:
            return None, None
        return sum(self.samples) / len(self.samples), max(self.samples)
