"""Overload: measure the proxy's capacity, then offer twice that rate (open loop).

Pass criteria: only 200, 429 (with Retry-After) or 503; no 200 with a wrong body; accepted requests meet the
deadline (no 504); [timing] rejections answered with p99 under 50 ms; [timing] proxy memory grows less than 10%.

Both phases are driven by wrk with every answer checked (`reliability.load.wrk_loop`): the capacity as a closed
loop of `concurrency` connections, the overload as an open loop at twice that with up to `max_outstanding`
connections. A Python client offering this rate on the cores the proxy and Triton use measured its own event
loop's queueing instead of the proxy's rejections.
"""

from __future__ import annotations

from dataclasses import dataclass

from reliability import procinfo
from reliability.bed import Bed, demo_workload
from reliability.load import LoadStats, wrk_loop
from reliability.result import ScenarioResult

ALLOWED = {200, 429, 503}


@dataclass(frozen=True)
class Config:
    capacity_s: float = 2.0
    duration_s: float = 3.0
    concurrency: int = 32
    max_in_flight: int = 32
    deadline_ms: int = 2000
    max_outstanding: int = 512

    @classmethod
    def long(cls, duration_s: float) -> Config:
        return cls(capacity_s=5.0, duration_s=duration_s, concurrency=64, max_in_flight=64)


def run(bed: Bed, config: Config = Config()) -> ScenarioResult:
    result = ScenarioResult("overload", settings=config.__dict__.copy())
    log_dir = bed.path("overload")
    proxy = bed.proxy(
        log_dir,
        MODEL_SERVER_URL=bed.shared_triton().grpc_url,
        MAX_IN_FLIGHT=str(config.max_in_flight),
        REQUEST_TIMEOUT_MS=str(config.deadline_ms),
    )
    assert proxy.process is not None
    work = demo_workload(proxy.url, timeout_s=config.deadline_ms / 1000 + 10)
    capacity, _ = wrk_loop(work, config.concurrency, config.capacity_s, log_dir, "capacity")
    before = procinfo.usage(proxy.process.pid)
    offered = 2 * max(capacity.rate_per_s, 10.0)
    stats, summary = wrk_loop(work, config.max_outstanding, config.duration_s, log_dir, "overload", rate=offered)
    after = procinfo.usage(proxy.process.pid)
    result.load = stats
    growth = (after.rss_mb - before.rss_mb) / before.rss_mb * 100
    result.figures.update(
        capacity_per_s=capacity.rate_per_s,
        capacity_statuses=capacity.by_status,
        offered_per_s=round(offered, 1),
        achieved_per_s=stats.rate_per_s,
        generator_skipped=summary.behind_schedule,
        memory_before=before.as_dict(),
        memory_after=after.as_dict(),
        memory_growth_pct=round(growth, 1),
    )
    _judge(result, config, stats, growth)
    if summary.behind_schedule:
        result.notes.append(
            f"the load generator skipped {summary.behind_schedule} arrivals (all {config.max_outstanding} "
            "connections waiting for an answer)"
        )
    return result


def _judge(result: ScenarioResult, config: Config, stats: LoadStats, growth: float) -> None:
    statuses = {int(s) for s in stats.by_status if int(s) >= 0}
    result.check("only 200/429/503", statuses <= ALLOWED, f"statuses {stats.by_status}")
    result.check("no 200 with a wrong body", stats.wrong_bodies == 0, f"{stats.wrong_bodies} wrong")
    result.check(
        "429/503 carry Retry-After",
        stats.rejections_without_retry_after == 0,
        f"{stats.rejections_without_retry_after} without",
    )
    result.check("overload reached (some 429)", stats.by_status.get("429", 0) > 0, f"{stats.by_status.get('429', 0)}")
    result.check("accepted requests meet the deadline (no 504)", 504 not in statuses, f"max {stats.accepted_max_ms} ms")
    result.check("rejections p99 < 50 ms", stats.rejection_p99_ms < 50, f"{stats.rejection_p99_ms} ms", timing=True)
    result.check(
        "accepted within deadline",
        stats.accepted_max_ms <= config.deadline_ms,
        f"max {stats.accepted_max_ms} ms vs {config.deadline_ms} ms",
        timing=True,
    )
    memory = result.figures
    result.check(
        "proxy memory grows < 10%",
        growth < 10,
        f"{memory['memory_before']['rss_mb']:.1f} -> {memory['memory_after']['rss_mb']:.1f} MB",
        timing=True,
    )
