"""What a scenario returns: figures for the report and criteria with verdicts.

Criteria are split into functional ones (a wrong status, a lost request, a leftover file: asserted by the
tests) and timing ones (p99, recovery time: measured and reported, never asserted, because this machine
is shared and noisy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reliability.load import LoadStats


@dataclass
class Criterion:
    name: str
    passed: bool
    detail: str = ""
    timing: bool = False


@dataclass
class ScenarioResult:
    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    load: LoadStats | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    criteria: list[Criterion] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # CPU % the machine spent while the scenario ran (100 per core): {"ours", "others", "cores"}; set by the CLI.
    cpu: dict[str, int] = field(default_factory=dict)

    def check(self, name: str, passed: bool, detail: str = "", timing: bool = False) -> bool:
        self.criteria.append(Criterion(name, bool(passed), detail, timing))
        return bool(passed)

    @property
    def functional_failures(self) -> list[Criterion]:
        return [c for c in self.criteria if not c.timing and not c.passed]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.criteria)

    def explain(self) -> str:
        """Every criterion on one line each, for assertion messages and the console."""
        lines = [f"{self.name}:"]
        for c in self.criteria:
            mark = "ok  " if c.passed else "FAIL"
            lines.append(f"  {mark} {'[timing] ' if c.timing else ''}{c.name}: {c.detail}")
        return "\n".join(lines)
