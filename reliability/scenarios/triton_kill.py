"""Triton killed (SIGKILL) under load, then restarted on the same ports by the "orchestrator" (us).

Pass criteria: no 500 and no wrong 200 at any point; `/readyz` turns false; the same proxy
process (no restart) serves again after Triton is back; [timing] new requests get 503 within 1 s of the
kill; no request outlives its deadline by more than 0.5 s; after Triton is ready, 99% of requests succeed
within 5 s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial

from nexusml.testing.polling import wait_until
from nexusml.testing.servers import ProxyProcess
from nexusml.triton.server import TritonServer
from reliability import procinfo
from reliability.bed import Bed, demo_workload
from reliability.load import Sample, summarize, while_running
from reliability.result import ScenarioResult

# 504: a request in flight at the kill may run into its deadline while gRPC reconnects; that is a clean
# answer too. 502 or 500 would not be.
ALLOWED = {200, 429, 503, 504}


@dataclass(frozen=True)
class Config:
    before_s: float = 1.5
    down_s: float = 2.0
    after_s: float = 4.0
    concurrency: int = 8
    deadline_ms: int = 2000
    recovery_bound_s: float = 60.0  # a generous bound on recovery, not a speed verdict

    @classmethod
    def long(cls, duration_s: float) -> Config:
        return cls(before_s=duration_s / 3, down_s=5.0, after_s=max(10.0, duration_s / 2), concurrency=32)


@dataclass
class Timeline:
    """When the orchestrator killed, restarted and saw Triton ready, and the proxy's readiness meanwhile."""

    marks: dict[str, float] = field(default_factory=dict)
    readiness: list[tuple[float, int]] = field(default_factory=list)
    recovered: bool = False  # /readyz 200 again within `recovery_bound_s`, after the load
    proxy_alive: bool = False  # the same proxy process, after the load


def _orchestrate(bed: Bed, config: Config, triton: TritonServer, proxy: ProxyProcess, timeline: Timeline) -> None:
    """Kill Triton, read the proxy's readiness while it is down, restart it on the same ports."""
    marks = timeline.marks
    time.sleep(config.before_s)
    marks["kill"] = time.monotonic()
    bed.kill_triton(triton)
    end = time.monotonic() + config.down_s
    while time.monotonic() < end:
        timeline.readiness.append((time.monotonic(), proxy.get("/readyz")[0]))
        time.sleep(0.1)
    marks["restart"] = time.monotonic()
    bed.restart_triton(triton, bed.path("triton-kill"))
    marks["ready"] = time.monotonic()
    time.sleep(config.after_s)


def run(bed: Bed, config: Config = Config()) -> ScenarioResult:
    result = ScenarioResult("triton-killed", settings=config.__dict__.copy())
    log_dir = bed.path("triton-kill")
    triton = bed.triton(bed.demo_repository, log_dir)
    proxy = bed.proxy(log_dir, MODEL_SERVER_URL=triton.grpc_url, REQUEST_TIMEOUT_MS=str(config.deadline_ms))
    assert proxy.process is not None
    pid = proxy.process.pid
    before = procinfo.usage(pid)
    work = demo_workload(proxy.url, timeout_s=config.deadline_ms / 1000 + 10)
    timeline = Timeline()
    total = config.before_s + config.down_s + config.after_s + 120
    samples = while_running(
        partial(_orchestrate, bed, config, triton, proxy, timeline), work, config.concurrency, total
    )
    timeline.recovered = wait_until(lambda: proxy.get("/readyz")[0] == 200, config.recovery_bound_s)
    after = procinfo.usage(pid)
    timeline.proxy_alive = proxy.process.poll() is None
    _judge(result, config, samples, timeline)
    result.figures.update(memory_before=before.as_dict(), memory_after=after.as_dict())
    return result


def _judge(result: ScenarioResult, config: Config, samples: list[Sample], timeline: Timeline) -> None:
    stats = summarize(samples)
    result.load = stats
    marks, readiness = timeline.marks, timeline.readiness
    kill, ready = marks["kill"], marks["ready"]
    after_kill = [s for s in samples if s.started >= kill and s.started < marks["restart"]]
    first_503 = min((s.started + s.latency_s for s in after_kill if s.status == 503), default=None)
    new_503_max = max((s.latency_s for s in after_kill if s.status == 503), default=0.0)
    overshoot = max((s.latency_s * 1000 - config.deadline_ms for s in samples if s.status != 0), default=0.0)
    late_failures = [s for s in samples if s.started >= ready and s.status != 200]
    recovery_s = max((s.started - ready for s in late_failures), default=0.0)
    since_ready = [s for s in samples if s.started >= ready]
    ok_ratio = sum(1 for s in since_ready if s.status == 200) / len(since_ready) if since_ready else 0.0
    tail = samples[-50:]
    result.figures.update(
        time_to_first_503_ms=round((first_503 - kill) * 1000, 1) if first_503 else None,
        max_503_latency_after_kill_ms=round(new_503_max * 1000, 1),
        max_deadline_overshoot_ms=round(max(overshoot, 0.0), 1),
        triton_restart_to_ready_s=round(ready - marks["restart"], 2),
        recovery_after_ready_s=round(recovery_s, 2),
        success_since_ready_pct=round(ok_ratio * 100, 2),
    )
    statuses = {int(s) for s in stats.by_status}
    result.check("no 500/502 and no hang", statuses <= ALLOWED, f"statuses {stats.by_status} codes {stats.by_code}")
    result.check("no 200 with a wrong body", stats.wrong_bodies == 0, f"{stats.wrong_bodies} wrong")
    result.check(
        "429/503 carry Retry-After",
        stats.rejections_without_retry_after == 0,
        f"{stats.rejections_without_retry_after}",
    )
    result.check("503 while Triton is down", any(s.status == 503 for s in after_kill), f"{len(after_kill)} sent")
    result.check("/readyz turns false", any(code == 503 for _, code in readiness), f"{readiness[:1]} ...")
    result.check(
        "recovers with no proxy restart",
        timeline.recovered and timeline.proxy_alive and all(s.status == 200 for s in tail),
        f"ready again: {timeline.recovered}; last {len(tail)} statuses {sorted({s.status for s in tail})}",
    )
    result.check(
        "503 within 1 s of the kill",
        first_503 is not None and first_503 - kill < 1.0 and new_503_max < 1.0,
        f"first after {result.figures['time_to_first_503_ms']} ms, slowest 503 {new_503_max * 1000:.0f} ms",
        timing=True,
    )
    result.check("deadline overshoot <= 0.5 s", overshoot <= 500, f"{overshoot:.0f} ms", timing=True)
    result.check(
        "all requests succeed from 5 s after ready",
        bool(since_ready) and recovery_s <= 5.0,
        f"last failure {recovery_s:.2f} s after ready; {ok_ratio:.2%} of {len(since_ready)} since ready succeeded",
        timing=True,
    )
