"""Noisy neighbour: two teams through one proxy, one of them flooding it. Six phases on the shared Triton, each
with a proxy of its own, two for e (its tenants in a keys file written to the phase's folder, `API_KEYS_FILE`):

a. capacity: tenant A's flood (wrk, `flood_connections`, closed loop) on a proxy without keys: served req/s.
b. B alone: `light_connections` Python clients (closed loop) with B's key: B's p50/p99 and rate. Then the same
   beside one busy loop per core that never touches the stack (`b_beside_busy_loops`): the share of B's rate and
   p99 that the host's scheduler alone takes once every core is busy, as a flood makes them. It is a reference
   for the timing criteria below, not one of them.
c. A's flood (wrk, A's key) and B (Python, B's key) together, equal weights: B's p99, errors and rate against
   b; A's answers (200, or 429 with Retry-After past its share); A's and B's served rate against a.
d. weights 3:1, both saturating (two wrk runs of `saturating_connections` each): served rows A:B against 3:1.
e. a tenant limited to `rate_limit_per_s` requests/s (burst `rate_burst`) flooding: accepted rate against the
   limit; its 429s carry Retry-After. Then the same on one connection to a proxy of two workers, at
   `one_connection_limit_per_s`: the connection reaches one worker, and the limit is the proxy's, whole.
f. key rotation under load: B has two keys, one is removed from the file while clients of both keys and A's
   wrk run; the removed key answers 401 (how long after the write is measured), nobody else's request fails.

Functional criteria (asserted by tests/reliability/test_tenants.py): B never fails, A and the limited tenant get
only 200 or 429 with Retry-After, no 200 with a wrong body, the removed key ends on 401 and the other key and A
never fail. Timing criteria (reported): B's p99 beside the flood <= 2x alone, B's rate >= 90% of alone, total
served >= 90% of capacity, shares within 10% of 3:1, accepted rate within 5% of the limit, removal within 2 s.

Load generators: the floods are wrk (C, a small fraction of the proxy's CPU per request), B is the Python client
of `reliability.load` (it keeps every latency; 2 connections cost little). On a 2-core machine the proxy,
Triton (its Python backend's stub), wrk and the Python client share the cores; the CPU column of the report
says what else ran. Measured there, the proxy's worker is the bottleneck of the flood (100% of a core, Triton
about 15%); B measured by wrk instead of Python gave the same picture (p99 x19 beside the flood).

Where the time goes: `queue_wait_mean_ms` is each tenant's mean wait in the proxy's fair queue (the coalescer,
from `nexus_proxy_tenant_queue_wait_seconds`); a wait for one of `MAX_ACTIVE`'s places comes before it. A latency
far above it was spent before that queue (the request in the socket and the proxy's event loop, both first come
first served: a CPU-bound proxy queues there) or after it. `upstream_call_ms` splits the after: the proxy's mean
upstream call against Triton's own time for the same requests, in three windows: B alone, B beside the busy loops,
and the flood with B (every call of both tenants, most of them the flood's batches); what the proxy measures
beyond Triton's part is its event loop's (and gRPC's) share.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp

from nexusml.testing.servers import ProxyProcess, metric_sums
from nexusml.triton.server import TritonServer
from reliability.bed import Bed, demo_workload
from reliability.load import LoadStats, Sample, Workload, closed_loop, request, summarize, wrk_loop
from reliability.result import ScenarioResult

KEY_A = "nn-key-a-flood"
KEY_B = "nn-key-b-light"
KEY_B_OLD = "nn-key-b-old"
KEY_LIMITED = "nn-key-r-limited"
FLOOD_ALLOWED = {200, 429}


@dataclass(frozen=True)
class Config:
    phase_s: float = 3.0
    flood_connections: int = 256
    light_connections: int = 2
    saturating_connections: int = 64
    weights: tuple[float, float] = (3.0, 1.0)
    rate_limit_per_s: float = 200.0
    rate_burst: int = 20
    rate_connections: int = 32
    # One connection must outrun its limit: wrk on one connection with the demo model, answered 200, did about
    # 150 requests/s on this 2-core machine.
    one_connection_limit_per_s: float = 30.0
    rotation_connections: int = 32  # A's wrk during the rotation
    rotation_before_s: float = 1.0  # load before the key is removed
    rotation_after_s: float = 3.0  # load after it (the removed key is polled for at most this long)
    timeout_s: float = 30.0

    @classmethod
    def long(cls, duration_s: float) -> Config:
        return cls(phase_s=duration_s, rotation_before_s=duration_s / 4, rotation_after_s=duration_s / 2)


def write_keys(path: Path, tenants: dict[str, dict[str, Any]]) -> float:
    """The keys file (JSON, which the YAML reader reads too), replaced in one rename as an operator's tooling or
    a Secret volume's symlink swap would; returns the monotonic time of the rename."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(json.dumps({"tenants": tenants}, indent=2))
    os.replace(temporary, path)
    return time.monotonic()


@dataclass
class Phase:
    """One phase's proxy and the workloads of its tenants (headers carry the keys)."""

    proxy: ProxyProcess
    log_dir: Path

    def work(self, config: Config, key: str = "", seed: int = 7) -> Workload:
        headers = {"X-API-Key": key} if key else {}
        return demo_workload(self.proxy.url, seed=seed, headers=headers, timeout_s=config.timeout_s)


def _start(bed: Bed, config: Config, name: str, tenants: dict[str, dict[str, Any]] | None, **settings: str) -> Phase:
    """A proxy for one phase: `tenants` in a keys file; None: no keys at all. `settings`: more of its environment."""
    log_dir = bed.path(f"noisy-neighbour-{name}")
    env = {
        "MODEL_SERVER_URL": bed.shared_triton().grpc_url,
        "REQUEST_TIMEOUT_MS": str(int(config.timeout_s * 1000)),
        **settings,
    }
    if tenants is not None:
        keys = log_dir / "keys.json"
        write_keys(keys, tenants)
        env["API_KEYS_FILE"] = str(keys)
    return Phase(bed.proxy(log_dir, **env), log_dir)


@contextmanager
def busy_loops(count: int) -> Iterator[None]:
    """`count` processes spinning on the CPU that never touch the proxy or Triton: what the host alone takes from
    a light tenant once every core is busy, the floor under what any proxy could give it beside a flood."""
    spinning: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(count):
            spinning.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        yield
    finally:
        for process in spinning:
            process.kill()
            process.wait()


def tenant_samples(proxy: ProxyProcess, name: str) -> dict[str, float]:
    """The samples of metric `name` by their `tenant` label, from one scrape (labels other than tenant summed)."""
    status, body = proxy.get("/metrics")
    found: dict[str, float] = {}
    if status != 200:
        return found
    for line in body.decode().splitlines():
        if not line.startswith(name + "{"):
            continue
        labels, _, value = line[len(name) + 1 :].rpartition("} ")
        tenant = next((part[8:-1] for part in labels.split(",") if part.startswith('tenant="')), "")
        found[tenant] = found.get(tenant, 0.0) + float(value)
    return found


def queue_wait_ms(proxy: ProxyProcess) -> dict[str, float]:
    """Each tenant's mean wait in the coalescer (`nexus_proxy_tenant_queue_wait_seconds`), in ms: where a
    tenant's latency is spent, in the proxy's queue or elsewhere (Triton, the event loop)."""
    sums = tenant_samples(proxy, "nexus_proxy_tenant_queue_wait_seconds_sum")
    counts = tenant_samples(proxy, "nexus_proxy_tenant_queue_wait_seconds_count")
    return {t: round(sums[t] / counts[t] * 1000, 2) for t in sorted(sums) if counts.get(t)}


@dataclass(frozen=True)
class Calls:
    """Upstream calls so far, as the proxy timed them and as Triton timed the same requests (one per batch)."""

    proxy_s: float
    proxy_calls: float
    triton_s: float
    triton_calls: float

    @classmethod
    def read(cls, proxy: ProxyProcess, triton: TritonServer) -> Calls:
        """One scrape of each. A scrape that fails raises rather than become a plausible 0; the proxy's histogram
        is absent until its first upstream call (0 calls so far), Triton's counters are there from the model's load."""
        status, body = proxy.get("/metrics")
        if status != 200:
            raise RuntimeError(f"the proxy's /metrics answered {status}")
        ours = metric_sums(
            body.decode(), ("nexus_proxy_upstream_duration_seconds_sum", "nexus_proxy_upstream_duration_seconds_count")
        )
        samples = triton_samples(triton, ("nv_inference_request_duration_us", "nv_inference_request_success"))
        return cls(
            *(value or 0.0 for value in ours.values()),
            samples["nv_inference_request_duration_us"] / 1e6,
            samples["nv_inference_request_success"],
        )

    def since(self, before: Calls, prefix: str) -> dict[str, float]:
        """Mean ms of a call since `before`: the proxy's whole call (`<prefix>_proxy`), and Triton's part of it
        (`<prefix>_triton`). The difference is spent between them: in the proxy's event loop (sending, and resuming
        on the answer), gRPC and the socket."""
        calls, served = self.proxy_calls - before.proxy_calls, self.triton_calls - before.triton_calls
        return {
            f"{prefix}_proxy": round((self.proxy_s - before.proxy_s) / calls * 1000, 2) if calls else 0.0,
            f"{prefix}_triton": round((self.triton_s - before.triton_s) / served * 1000, 2) if served else 0.0,
        }


def triton_samples(triton: TritonServer, names: tuple[str, ...]) -> dict[str, float]:
    """Each of `names` summed over its samples (every model) in one scrape of Triton's metrics endpoint."""
    url = f"http://{triton.settings.host}:{triton.settings.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        found = metric_sums(response.read().decode(), names)
    missing = [name for name, value in found.items() if value is None]
    if missing:
        raise RuntimeError(f"Triton's metrics endpoint did not give {', '.join(missing)}")
    return {name: value or 0.0 for name, value in found.items()}


def _ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 3) if denominator else 0.0


def _served(stats: LoadStats) -> int:
    return stats.by_status.get("200", 0)


def _served_rate(stats: LoadStats) -> float:
    return round(_served(stats) / stats.duration_s, 1) if stats.duration_s else 0.0


def _failures(stats: LoadStats, allowed: set[int]) -> int:
    return sum(n for status, n in stats.by_status.items() if int(status) not in allowed)


def _check_flood(result: ScenarioResult, who: str, stats: LoadStats) -> None:
    """A flooding tenant's answers: 200 with the right body, or 429 with Retry-After."""
    result.check(f"{who}: only 200/429", _failures(stats, FLOOD_ALLOWED) == 0, f"statuses {stats.by_status}")
    result.check(f"{who}: no 200 with a wrong body", stats.wrong_bodies == 0, f"{stats.wrong_bodies} wrong")
    result.check(
        f"{who}: 429s carry Retry-After",
        stats.rejections_without_retry_after == 0,
        f"{stats.rejections_without_retry_after} of {stats.by_status.get('429', 0)} without",
    )


def _check_clean(result: ScenarioResult, who: str, stats: LoadStats) -> None:
    """A tenant that must never fail: every answer a 200 with the right body."""
    failed = _failures(stats, {200})
    result.check(f"{who}: 0 errors", failed == 0 and stats.sent > 0, f"{stats.sent} sent, statuses {stats.by_status}")
    result.check(f"{who}: no 200 with a wrong body", stats.wrong_bodies == 0, f"{stats.wrong_bodies} wrong")


def _flood_beside(
    flood: Callable[[], tuple[LoadStats, Any]], light: Workload, config: Config, lead_s: float
) -> tuple[LoadStats, list[Sample]]:
    """wrk's flood in a thread, and B's Python closed loop started `lead_s` later (the flood at full pressure)."""

    async def drive() -> tuple[LoadStats, list[Sample]]:
        flooding = asyncio.create_task(asyncio.to_thread(flood))
        await asyncio.sleep(lead_s)
        samples = await closed_loop(light, config.light_connections, config.phase_s)
        stats, _ = await flooding
        return stats, samples

    return asyncio.run(drive())


def run(bed: Bed, config: Config = Config()) -> ScenarioResult:
    result = ScenarioResult("noisy-neighbour", settings=config.__dict__.copy())
    result.notes.append(
        "load: A's floods are wrk (one thread), B is reliability.load's Python closed loop; proxy, Triton, wrk and "
        f"the Python client share this machine's {os.cpu_count()} cores"
    )
    capacity = _capacity(bed, config, result)
    _equal_weights(bed, config, result, capacity)
    _weights(bed, config, result)
    _rate_limit(bed, config, result)
    _rotation(bed, config, result)
    return result


def _capacity(bed: Bed, config: Config, result: ScenarioResult) -> float:
    phase = _start(bed, config, "capacity", None)
    stats, _ = wrk_loop(phase.work(config), config.flood_connections, config.phase_s, phase.log_dir, "capacity")
    phase.proxy.stop()
    capacity = _served_rate(stats)
    result.figures.update(capacity_per_s=capacity, capacity_statuses=stats.by_status, capacity_p99_ms=stats.p99_ms)
    result.check("capacity: every request served", _failures(stats, {200}) == 0, f"statuses {stats.by_status}")
    return capacity


def _equal_weights(bed: Bed, config: Config, result: ScenarioResult, capacity: float) -> None:
    tenants = {"team-a": {"keys": [KEY_A]}, "team-b": {"keys": [KEY_B]}}
    phase = _start(bed, config, "equal", tenants)
    light = phase.work(config, KEY_B, seed=11)
    triton = bed.shared_triton()
    calls = [Calls.read(phase.proxy, triton)]
    alone = summarize(asyncio.run(closed_loop(light, config.light_connections, config.phase_s)))
    calls.append(Calls.read(phase.proxy, triton))
    with busy_loops(len(os.sched_getaffinity(0))):
        host = summarize(asyncio.run(closed_loop(light, config.light_connections, config.phase_s)))
    calls.append(Calls.read(phase.proxy, triton))
    flood_work = phase.work(config, KEY_A)

    def flood() -> tuple[LoadStats, Any]:
        return wrk_loop(flood_work, config.flood_connections, config.phase_s + 1, phase.log_dir, "flood")

    a_stats, b_samples = _flood_beside(flood, light, config, lead_s=0.5)
    waits = queue_wait_ms(phase.proxy)
    calls.append(Calls.read(phase.proxy, triton))
    phase.proxy.stop()
    beside = summarize(b_samples)
    result.load = beside
    total = _served_rate(a_stats) + _served_rate(beside)
    result.figures.update(
        b_alone_p50_ms=alone.p50_ms,
        b_alone_p99_ms=alone.p99_ms,
        b_alone_per_s=alone.rate_per_s,
        b_beside_p50_ms=beside.p50_ms,
        b_beside_p99_ms=beside.p99_ms,
        b_beside_per_s=beside.rate_per_s,
        b_beside_statuses=beside.by_status,
        b_p99_ratio=_ratio(beside.p99_ms, alone.p99_ms),
        b_rate_ratio=_ratio(beside.rate_per_s, alone.rate_per_s),
        b_beside_busy_loops={
            "p99_ms": host.p99_ms,
            "per_s": host.rate_per_s,
            "p99_ratio": _ratio(host.p99_ms, alone.p99_ms),
            "rate_ratio": _ratio(host.rate_per_s, alone.rate_per_s),
        },
        a_statuses=a_stats.by_status,
        a_codes=a_stats.by_code,
        a_served_per_s=_served_rate(a_stats),
        a_accepted_p99_ms=a_stats.accepted_p99_ms,
        queue_wait_mean_ms=waits,
        upstream_call_ms={
            **calls[1].since(calls[0], "alone"),
            **calls[2].since(calls[1], "busy_loops"),
            **calls[3].since(calls[2], "flood"),
        },
        total_served_per_s=round(total, 1),
        total_vs_capacity=_ratio(total, capacity),
    )
    _check_clean(result, "B alone", alone)
    _check_clean(result, "B beside busy loops", host)
    _check_clean(result, "B beside A's flood", beside)
    _check_flood(result, "A's flood", a_stats)
    result.check(
        "B's p99 beside the flood <= 2x alone",
        beside.p99_ms <= 2 * alone.p99_ms,
        f"{beside.p99_ms} ms vs {alone.p99_ms} ms alone (x{result.figures['b_p99_ratio']})",
        timing=True,
    )
    result.check(
        "B's rate beside the flood >= 90% of alone",
        beside.rate_per_s >= 0.9 * alone.rate_per_s,
        f"{beside.rate_per_s}/s vs {alone.rate_per_s}/s alone ({result.figures['b_rate_ratio']:.0%})",
        timing=True,
    )
    result.check(
        "total served >= 90% of capacity",
        total >= 0.9 * capacity,
        f"{total:.1f}/s vs {capacity}/s without tenants ({result.figures['total_vs_capacity']:.0%})",
        timing=True,
    )


def _weights(bed: Bed, config: Config, result: ScenarioResult) -> None:
    weight_a, weight_b = config.weights
    tenants = {"team-a": {"keys": [KEY_A], "weight": weight_a}, "team-b": {"keys": [KEY_B], "weight": weight_b}}
    phase = _start(bed, config, "weights", tenants)
    works = {"A": phase.work(config, KEY_A), "B": phase.work(config, KEY_B, seed=11)}

    async def drive() -> dict[str, LoadStats]:
        runs = [
            asyncio.to_thread(
                wrk_loop, work, config.saturating_connections, config.phase_s, phase.log_dir, f"weights-{who}"
            )
            for who, work in works.items()
        ]
        done = await asyncio.gather(*runs)
        return {who: stats for who, (stats, _) in zip(works, done, strict=True)}

    stats = asyncio.run(drive())
    waits = queue_wait_ms(phase.proxy)
    phase.proxy.stop()
    served_a, served_b = _served(stats["A"]), _served(stats["B"])
    share = _ratio(served_a, served_b)
    want = weight_a / weight_b
    result.figures.update(
        weights=f"{weight_a:g}:{weight_b:g}",
        weights_a_statuses=stats["A"].by_status,
        weights_b_statuses=stats["B"].by_status,
        weights_served_a=served_a,
        weights_served_b=served_b,
        weights_share_a_to_b=share,
        weights_share_vs_target=_ratio(share, want),
        weights_queue_wait_mean_ms=waits,
    )
    for who, found in stats.items():
        _check_flood(result, f"weights: {who}", found)
    result.check(
        f"served rows A:B within 10% of {weight_a:g}:{weight_b:g}",
        abs(share / want - 1) <= 0.10,
        f"{served_a}:{served_b} = {share} (x{result.figures['weights_share_vs_target']} of {want:g})",
        timing=True,
    )


class RateRun(NamedTuple):
    """One run of the rate-limit phase."""

    phase: str  # the proxy's log folder
    prefix: str  # of its figures
    where: str  # in its checks' names
    connections: int
    per_s: float
    settings: dict[str, str]  # more of the proxy's environment


def _rate_limit(bed: Bed, config: Config, result: ScenarioResult) -> None:
    runs = (
        RateRun(
            phase="rate-limit",
            prefix="rate_",
            where=f"{config.rate_connections} connections",
            connections=config.rate_connections,
            per_s=config.rate_limit_per_s,
            settings={},
        ),
        RateRun(
            phase="rate-limit-two-workers",
            prefix="rate_two_workers_",
            where="two workers, one connection",
            connections=1,
            per_s=config.one_connection_limit_per_s,
            settings={"PROXY_WORKERS": "2"},
        ),
    )
    for phase_name, prefix, where, connections, per_s, settings in runs:
        limit = {"requests_per_s": per_s, "requests_burst": config.rate_burst}
        tenants = {"team-r": {"keys": [KEY_LIMITED], "rate_limit": limit}}
        phase = _start(bed, config, phase_name, tenants, **settings)
        work = phase.work(config, KEY_LIMITED)
        stats, _ = wrk_loop(work, connections, config.phase_s, phase.log_dir, "limited")
        phase.proxy.stop()
        served = _served(stats)
        # The bucket starts full: `rate_burst` requests pass before the rate applies.
        accepted = round((served - config.rate_burst) / stats.duration_s, 1) if stats.duration_s else 0.0
        result.figures.update(
            {
                f"{prefix}limit_per_s": per_s,
                f"{prefix}connections": connections,
                f"{prefix}statuses": stats.by_status,
                f"{prefix}codes": stats.by_code,
                f"{prefix}accepted_per_s": accepted,
                f"{prefix}vs_limit": _ratio(accepted, per_s),
                f"{prefix}rejection_p99_ms": stats.rejection_p99_ms,
            }
        )
        _check_flood(result, f"rate-limited tenant ({where})", stats)
        result.check(
            f"rate-limited tenant ({where}): its 429s are rate_limited",
            stats.by_status.get("429", 0) > 0 and set(stats.by_code) <= {"rate_limited"},
            f"codes {stats.by_code}",
        )
        result.check(
            f"accepted rate within 5% of the limit ({where})",
            abs(accepted / per_s - 1) <= 0.05,
            f"{accepted}/s vs {per_s:g}/s (burst {config.rate_burst} left out)",
            timing=True,
        )


async def _until_refused(work: Workload, bound_s: float, samples: list[Sample]) -> list[Sample]:
    """One client of the key being removed: requests back to back until 401s have come for 0.5 s (or `bound_s`),
    each appended to `samples` as it is answered."""
    end = time.monotonic() + bound_s
    refused_since: float | None = None
    async with aiohttp.ClientSession() as session:
        index = 0
        while time.monotonic() < end:
            sample = await request(session, work, index)
            index += 1
            samples.append(sample)
            if sample.status != 401:
                refused_since = None
            elif refused_since is None:
                refused_since = sample.started
            elif time.monotonic() - refused_since > 0.5:
                break
    return samples


_FIRST_ANSWER_BOUND_S = 10.0


def _rotation(bed: Bed, config: Config, result: ScenarioResult) -> None:
    tenants: dict[str, dict[str, Any]] = {"team-a": {"keys": [KEY_A]}, "team-b": {"keys": [KEY_B, KEY_B_OLD]}}
    phase = _start(bed, config, "rotation", tenants)
    keys = phase.log_dir / "keys.json"
    works = {"A": phase.work(config, KEY_A), "B": phase.work(config, KEY_B, seed=11)}
    old = phase.work(config, KEY_B_OLD, seed=13)
    span = config.rotation_before_s + config.rotation_after_s
    written: dict[str, float] = {}

    async def drive() -> tuple[LoadStats, list[Sample], list[Sample]]:
        flood = asyncio.create_task(
            asyncio.to_thread(wrk_loop, works["A"], config.rotation_connections, span + 1, phase.log_dir, "rotation")
        )
        await asyncio.sleep(0.5)
        kept = asyncio.create_task(closed_loop(works["B"], config.light_connections, span))
        answered: list[Sample] = []
        removed = asyncio.create_task(_until_refused(old, span + _FIRST_ANSWER_BOUND_S, answered))
        await asyncio.sleep(config.rotation_before_s)
        # The key is removed once it has worked: on a loaded machine its first answer can take longer than the wait.
        bound = time.monotonic() + _FIRST_ANSWER_BOUND_S
        while not any(sample.status == 200 for sample in answered) and time.monotonic() < bound:
            await asyncio.sleep(0.05)
        written["at"] = write_keys(keys, {**tenants, "team-b": {"keys": [KEY_B]}})
        a_stats, _ = await flood
        return a_stats, await kept, await removed

    a_stats, kept_samples, removed_samples = asyncio.run(drive())
    phase.proxy.stop()
    kept = summarize(kept_samples)
    write_at = written["at"]
    # The removal took effect where the old key's answers turned 401 for good.
    last_ok = max((s.started for s in removed_samples if s.status != 401), default=None)
    refused = [s for s in removed_samples if s.status == 401 and (last_ok is None or s.started > last_ok)]
    removal_s = round(refused[0].started - write_at, 3) if refused else None
    result.figures.update(
        rotation_removed_key_statuses=summarize(removed_samples).by_status,
        rotation_removed_after_s=removal_s,
        rotation_kept_key_statuses=kept.by_status,
        rotation_a_statuses=a_stats.by_status,
    )
    before = [s for s in removed_samples if s.started + s.latency_s < write_at]
    result.check(
        "rotation: the old key worked before its removal",
        bool(before) and all(s.status == 200 for s in before),
        f"{len(before)} answered before the write, statuses {summarize(before).by_status}",
    )
    result.check(
        "rotation: the removed key is refused 401",
        bool(refused) and removed_samples[-1].status == 401,
        f"401s from {removal_s} s after the write" if refused else f"statuses {summarize(removed_samples).by_status}",
    )
    _check_clean(result, "rotation: B's other key", kept)
    a_failed = _failures(a_stats, {200})
    result.check(
        "rotation: A never fails", a_failed == 0 and a_stats.wrong_bodies == 0, f"statuses {a_stats.by_status}"
    )
    result.check(
        "rotation: removed key refused within 2 s of the write",
        removal_s is not None and removal_s <= 2.0,
        f"{removal_s} s",
        timing=True,
    )
