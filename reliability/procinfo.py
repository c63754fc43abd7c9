"""Resource figures of a server process (memory, file descriptors, sockets), read through psutil."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Usage:
    rss_mb: float
    fds: int
    connections: int

    def as_dict(self) -> dict[str, float]:
        return {"rss_mb": round(self.rss_mb, 1), "fds": self.fds, "connections": self.connections}


def usage(pid: int) -> Usage:
    """Resident memory, open descriptors and TCP sockets of `pid` (children not included)."""
    process = psutil.Process(pid)
    return Usage(
        rss_mb=process.memory_info().rss / 2**20,
        fds=process.num_fds(),
        connections=len(process.net_connections(kind="tcp")),
    )


def children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def reap(processes: list[psutil.Process], timeout_s: float = 10.0) -> None:
    """Make sure processes we started (e.g. Python stubs orphaned by a SIGKILLed Triton) are gone."""
    _, alive = psutil.wait_procs(processes, timeout=timeout_s)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=timeout_s)
