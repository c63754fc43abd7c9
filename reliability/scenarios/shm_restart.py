"""Triton killed and restarted under load while the proxy sends tensors through shared memory.

A restarted Triton has forgotten the proxy's region: the first request that names it gets "unable to find shared
memory region", goes again in the message, and the proxy registers the region under a fresh name
(`proxy.shm`). A slot whose call ended without an answer is not reused before that, so no answer can carry
another request's bytes.

Pass criteria: shared memory active before (Triton lists the proxy's region) and again after the restart, under a
new region name Triton lists; no wrong 200 at any point; no 5xx but the outage's 503 (and 504 for a request caught
by the kill); the last requests all succeed.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import tritonclient.http as httpclient

from nexusml.core.settings import SHM_HEADER
from nexusml.testing.polling import wait_until
from nexusml.testing.servers import ProxyProcess
from nexusml.triton.server import TritonServer
from reliability.bed import Bed, demo_workload
from reliability.load import summarize, while_running
from reliability.result import ScenarioResult
from reliability.scenarios import triton_kill
from reliability.scenarios.triton_kill import ALLOWED


@dataclass(frozen=True)
class Config(triton_kill.Config):
    """`triton-killed`'s phases and load, with a shorter outage."""

    down_s: float = 1.5


def shared_memory(proxy: ProxyProcess) -> dict[str, Any]:
    """The proxy's `shared_memory` field of `GET /v1/models` ({} while it cannot answer)."""
    status, body = proxy.get("/v1/models")
    return json.loads(body).get("shared_memory", {}) if status == 200 else {}


def triton_regions(triton: TritonServer, key: str) -> set[str]:
    client = httpclient.InferenceServerClient(f"{triton.settings.host}:{triton.settings.http_port}")
    try:
        return {region["name"] for region in client.get_system_shared_memory_status(headers={SHM_HEADER: key})}
    finally:
        client.close()


def listed(triton: TritonServer, key: str, proxy: ProxyProcess) -> str:
    """The proxy's active region if Triton lists it, else ""."""
    shared = shared_memory(proxy)
    regions = triton_regions(triton, key) if shared.get("active") else set()
    return next((name for name in regions if name in shared.get("detail", "")), "")


def _orchestrate(bed: Bed, config: Config, triton: TritonServer) -> None:
    """Kill Triton under the load, restart it on the same ports (it forgets every region), keep the load on."""
    time.sleep(config.before_s)
    bed.kill_triton(triton)
    time.sleep(config.down_s)
    bed.restart_triton(triton, bed.path("shm-restart"))
    time.sleep(config.after_s)


def run(bed: Bed, config: Config = Config()) -> ScenarioResult:
    result = ScenarioResult("shm-triton-restart", settings=config.__dict__.copy())
    log_dir = bed.path("shm-restart")
    key = secrets.token_urlsafe(16)
    triton = bed.triton(bed.demo_repository, log_dir, TRITON_SHM_KEY=key)
    proxy = bed.proxy(
        log_dir, MODEL_SERVER_URL=triton.grpc_url, TRITON_SHM_KEY=key, REQUEST_TIMEOUT_MS=str(config.deadline_ms)
    )
    before = listed(triton, key, proxy)
    work = demo_workload(proxy.url, timeout_s=config.deadline_ms / 1000 + 10)
    total = config.before_s + config.down_s + config.after_s + 120
    samples = while_running(partial(_orchestrate, bed, config, triton), work, config.concurrency, total)
    recovered = wait_until(lambda: proxy.get("/readyz")[0] == 200, config.recovery_bound_s)
    found: list[str] = []  # the load after the restart found the region forgotten and had it registered again
    wait_until(lambda: bool(found.append(listed(triton, key, proxy)) or found[-1]), config.recovery_bound_s)
    after = found[-1] if found else ""
    stats = summarize(samples)
    result.load = stats
    tail = samples[-50:]
    result.figures.update(region_before=before, region_after=after, statuses=stats.by_status)
    statuses = {int(s) for s in stats.by_status}
    result.check("shared memory active before the kill", bool(before), f"region {before!r}")
    result.check("no 5xx but the outage's", statuses <= ALLOWED, f"statuses {stats.by_status} codes {stats.by_code}")
    result.check("no 200 with a wrong body", stats.wrong_bodies == 0, f"{stats.wrong_bodies} wrong")
    result.check("503 while Triton is down", stats.by_status.get("503", 0) > 0, f"{stats.by_status}")
    result.check(
        "region registered again under a new name",
        bool(after) and after != before,
        f"before {before!r}, after {after!r}; /v1/models {shared_memory(proxy)}",
    )
    result.check(
        "recovers with no proxy restart",
        recovered and all(s.status == 200 for s in tail),
        f"ready again: {recovered}; last {len(tail)} statuses {sorted({s.status for s in tail})}",
    )
    return result
