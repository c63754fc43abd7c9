"""What each loaded model costs in memory, as its Python-backend stubs report it, and the budget's units.

Each stub (one process per instance) writes its own figures every second into a directory of the shared `/dev/shm`
(`report_dir`): its proportional set size (PSS: pages it shares with other stubs, torch's libraries above all,
divided among them, so the stubs' PSS add up to what they cost the machine together) and, on a GPU, the device
memory torch holds for it. A stub measures itself because Triton's processes live in another container than the
watcher that decides residency; `/dev/shm` is the one place the two already share (the proxy's tensor regions).
The backend (`nexusml.backend.model`) cannot import this module (nothing of this project is installed in Triton's
image), so it names the directory by the same rule: `tests/nexusml/core/test_memory.py` holds the two equal.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

REPORT_ROOT = Path("/dev/shm/nexus-memory")
_UNITS = {
    "": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*$", re.IGNORECASE)


def parse_bytes(raw: str) -> int:
    """`1500MiB`, `8GiB`, `2G`, `512M`, `1.5GiB`, `1048576` -> bytes (K/M/G/T powers of 1000, Ki/Mi/Gi/Ti of 1024)."""
    match = _SIZE.match(raw)
    if match is None:
        raise ValueError("expected bytes, optionally with a unit: 1500MiB, 8GiB, 2G, 1048576")
    number, unit = match.groups()
    value = int(float(number) * _UNITS[(unit or "").lower()])
    if value <= 0:
        raise ValueError("must be more than 0 bytes")
    return value


def mib(count: float) -> str:
    """Bytes as MiB for messages: `1234.5 MiB`."""
    return f"{count / 2**20:.1f} MiB"


def report_dir(repository: Path, root: Path = REPORT_ROOT) -> Path:
    """Where the stubs serving `repository` write their reports: one directory per repository, so two Tritons on
    one host (tests, a second deployment) never mix their figures. Triton and the watcher must mount the repository
    at the same path (every deployment of this project does). `root` is a directory of its own, so a deployment can
    share a small tmpfs for the reports alone between Triton and the watcher (not the proxy's tensor regions)."""
    return root / hashlib.sha256(str(repository.resolve()).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Memory:
    """Host and device bytes. A budget bounds each kind on its own (`within`): on a GPU the device's memory is the
    scarce one, while every stub also holds host memory (torch, the weights' copy) that the host must have."""

    host: int = 0
    device: int = 0

    def __add__(self, other: Memory) -> Memory:
        return Memory(self.host + other.host, self.device + other.device)

    def __sub__(self, other: Memory) -> Memory:
        return Memory(self.host - other.host, self.device - other.device)

    def __mul__(self, factor: int) -> Memory:
        return Memory(self.host * factor, self.device * factor)

    def within(self, budget: int) -> bool:
        return self.host <= budget and self.device <= budget

    @property
    def peak(self) -> int:
        """The larger kind: what is compared with the budget."""
        return max(self.host, self.device)

    def __str__(self) -> str:
        return mib(self.host) + (f" host, {mib(self.device)} device" if self.device else "")


@dataclass(frozen=True)
class Report:
    """One stub's figures, as it last wrote them."""

    model: str
    version: str
    instance: str
    pid: int
    host_bytes: int  # PSS
    private_bytes: int  # the pages no other process maps: what ending the stub gives back
    device_bytes: int  # torch's reserved device memory; 0 on CPU
    written: float  # time.time() of the write

    @property
    def memory(self) -> Memory:
        return Memory(self.host_bytes, self.device_bytes)


def read_reports(directory: Path) -> dict[str, list[Report]]:
    """Every stub's last report, by model. A file being replaced, or not a report, is skipped (the stubs rewrite
    theirs every second)."""
    found: dict[str, list[Report]] = {}
    with contextlib.suppress(OSError):
        for path in sorted(directory.glob("*.json")):
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
                raw = json.loads(path.read_text())
                report = Report(
                    model=str(raw["model"]),
                    version=str(raw["version"]),
                    instance=str(raw["instance"]),
                    pid=int(raw["pid"]),
                    host_bytes=int(raw["host_bytes"]),
                    private_bytes=int(raw.get("private_bytes", raw["host_bytes"])),
                    device_bytes=int(raw.get("device_bytes", 0)),
                    written=float(raw["written"]),
                )
                found.setdefault(report.model, []).append(report)
    return found
