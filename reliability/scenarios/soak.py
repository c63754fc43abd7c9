"""Soak: a steady 70% of measured capacity for minutes (10 by default in the long form).

Pass criteria (issue 6, 8): error rate under 0.1%; no growth in memory, file descriptors or connections
(sampled every few seconds; growth judged from the end of warm-up to the end). The test's short form
runs seconds and asserts only the functional part (no error, no wrong body, descriptors and connections
back to where they were).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from reliability import procinfo
from reliability.bed import Bed, demo_workload
from reliability.load import closed_loop, open_loop, summarize
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


def run(bed: Bed, config: Config = Config()) -> ScenarioResult:
    result = ScenarioResult("soak", settings=config.__dict__.copy())
    log_dir = bed.path("soak")
    proxy = bed.proxy(log_dir, MODEL_SERVER_URL=bed.shared_triton().grpc_url)
    assert proxy.process is not None
    pid = proxy.process.pid
    work = demo_workload(proxy.url, timeout_s=30)
    capacity = summarize(asyncio.run(closed_loop(work, 32, config.capacity_s if config.open_loop else 0.5)))
    rate = max(config.load_fraction * capacity.rate_per_s, 5.0)
    usage: list[tuple[float, procinfo.Usage]] = []

    async def drive() -> list:
        seconds = config.minutes * 60
        driver = open_loop(work, rate, seconds, 512) if config.open_loop else closed_loop(work, 8, seconds)
        load = asyncio.create_task(driver)
        started = time.monotonic()
        while not load.done():
            usage.append((time.monotonic() - started, procinfo.usage(pid)))
            await asyncio.wait({load}, timeout=config.sample_every_s)
        return await load

    samples = asyncio.run(drive())
    time.sleep(1.0)
    final = procinfo.usage(pid)
    stats = summarize(samples)
    result.load = stats
    errors = sum(1 for s in samples if s.status != 200)
    error_rate = errors / len(samples) if samples else 1.0
    warm = usage[min(len(usage) - 1, max(1, len(usage) // 10))][1] if usage else final
    first = usage[0][1] if usage else final
    growth = (final.rss_mb - warm.rss_mb) / warm.rss_mb * 100
    result.figures.update(
        capacity_per_s=capacity.rate_per_s,
        offered_per_s=round(rate, 1),
        achieved_per_s=stats.rate_per_s,
        error_rate_pct=round(error_rate * 100, 4),
        memory_start=first.as_dict(),
        memory_after_warmup=warm.as_dict(),
        memory_end=final.as_dict(),
        memory_growth_after_warmup_pct=round(growth, 1),
        rss_mb_series=[round(u.rss_mb, 1) for _, u in usage][:: max(1, len(usage) // 20)],
    )
    result.check("no error answers", errors == 0, f"{stats.by_status} {stats.by_code}")
    result.check("no 200 with a wrong body", stats.wrong_bodies == 0, f"{stats.wrong_bodies}")
    result.check(
        "descriptors and connections back to their start",
        final.fds <= first.fds + 2 and final.connections <= first.connections + 2,
        f"fds {first.fds} -> {final.fds}, connections {first.connections} -> {final.connections}",
    )
    result.check("error rate < 0.1%", error_rate < 0.001, f"{error_rate:.4%}", timing=True)
    result.check(
        "no memory growth after warm-up (< 5%)", growth < 5, f"{warm.rss_mb:.1f} -> {final.rss_mb:.1f} MB", timing=True
    )
    return result
