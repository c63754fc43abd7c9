"""Soak: a steady 70% of measured capacity for minutes (10 by default in the long form).

Pass criteria: error rate under 0.1%; no growth in memory, file descriptors or connections (sampled every few
seconds; growth judged from the end of warm-up to the end). The test's short form runs seconds and asserts only
the functional part (no error, no wrong body, descriptors and connections back to where they were).

The load is wrk with every answer checked (`reliability.load.wrk_loop`): the capacity as a closed loop of 32
connections, then the long form's open loop at `load_fraction` of it (up to 512 outstanding), or the short
form's 8 connections. Run by a Python client on the same cores, the soak measured that client falling behind.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from benchmarks.wrk_checked import CheckedSummary
from reliability import procinfo
from reliability.bed import Bed, demo_workload
from reliability.load import LoadStats, Workload, wrk_loop
from reliability.result import ScenarioResult


@dataclass(frozen=True)
class Config:
    minutes: float = 0.1
    capacity_s: float = 2.0
    load_fraction: float = 0.7
    sample_every_s: float = 1.0
    open_loop: bool = False  # short form: 8 closed-loop clients (under every limit, so any error is a bug)

    @classmethod
    def long(cls, minutes: float) -> Config:
        return cls(minutes=minutes, capacity_s=5.0, sample_every_s=10.0, open_loop=True)


@dataclass
class Soaked:
    """The load's verdicts and the proxy's usage sampled along it."""

    stats: LoadStats
    summary: CheckedSummary
    usage: list[procinfo.Usage]
    final: procinfo.Usage

    @property
    def errors(self) -> int:
        return self.stats.sent - self.stats.by_status.get("200", 0)

    @property
    def error_rate(self) -> float:
        return self.errors / self.stats.sent if self.stats.sent else 1.0

    @property
    def first(self) -> procinfo.Usage:
        return self.usage[0] if self.usage else self.final

    @property
    def warm(self) -> procinfo.Usage:
        """The usage at the end of warm-up: a tenth of the way in (the first sample after the start)."""
        return self.usage[min(len(self.usage) - 1, max(1, len(self.usage) // 10))] if self.usage else self.final

    @property
    def growth_pct(self) -> float:
        return (self.final.rss_mb - self.warm.rss_mb) / self.warm.rss_mb * 100


def run(bed: Bed, config: Config = Config()) -> ScenarioResult:
    result = ScenarioResult("soak", settings=config.__dict__.copy())
    log_dir = bed.path("soak")
    proxy = bed.proxy(log_dir, MODEL_SERVER_URL=bed.shared_triton().grpc_url)
    assert proxy.process is not None
    work = demo_workload(proxy.url, timeout_s=30)
    capacity, _ = wrk_loop(work, 32, config.capacity_s if config.open_loop else 0.5, log_dir, "capacity")
    rate = max(config.load_fraction * capacity.rate_per_s, 5.0)
    soaked = _drive(config, work, rate, proxy.process.pid, log_dir)
    result.load = soaked.stats
    result.figures.update(
        capacity_per_s=capacity.rate_per_s,
        offered_per_s=round(rate, 1),
        achieved_per_s=soaked.stats.rate_per_s,
        generator_skipped=soaked.summary.behind_schedule,
        error_rate_pct=round(soaked.error_rate * 100, 4),
        memory_start=soaked.first.as_dict(),
        memory_after_warmup=soaked.warm.as_dict(),
        memory_end=soaked.final.as_dict(),
        memory_growth_after_warmup_pct=round(soaked.growth_pct, 1),
        rss_mb_series=[round(u.rss_mb, 1) for u in soaked.usage][:: max(1, len(soaked.usage) // 20)],
    )
    _judge(result, soaked)
    return result


def _drive(config: Config, work: Workload, rate: float, pid: int, log_dir: Path) -> Soaked:
    """wrk for `minutes`, the proxy's usage sampled every `sample_every_s` meanwhile, and once after."""
    seconds = config.minutes * 60
    usage: list[procinfo.Usage] = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        if config.open_loop:
            load = pool.submit(wrk_loop, work, 512, seconds, log_dir, "soak", rate)
        else:
            load = pool.submit(wrk_loop, work, 8, seconds, log_dir, "soak")
        while not load.done():
            usage.append(procinfo.usage(pid))
            wait([load], timeout=config.sample_every_s)
        stats, summary = load.result()
    time.sleep(1.0)
    return Soaked(stats, summary, usage, procinfo.usage(pid))


def _judge(result: ScenarioResult, soaked: Soaked) -> None:
    stats, first, final, warm = soaked.stats, soaked.first, soaked.final, soaked.warm
    result.check("no error answers", soaked.errors == 0, f"{stats.by_status} {stats.by_code}")
    result.check("no 200 with a wrong body", stats.wrong_bodies == 0, f"{stats.wrong_bodies}")
    result.check(
        "descriptors and connections back to their start",
        final.fds <= first.fds + 2 and final.connections <= first.connections + 2,
        f"fds {first.fds} -> {final.fds}, connections {first.connections} -> {final.connections}",
    )
    result.check("error rate < 0.1%", soaked.error_rate < 0.001, f"{soaked.error_rate:.4%}", timing=True)
    result.check(
        "no memory growth after warm-up (< 5%)",
        soaked.growth_pct < 5,
        f"{warm.rss_mb:.1f} -> {final.rss_mb:.1f} MB",
        timing=True,
    )
