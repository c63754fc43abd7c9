"""A Python-backend stub that dies: a test model calls `os._exit` on a trigger input, under load.

Triton 2.51 does not restart a dead stub: the model stays "ready" while every request fails with "Stub
process is not healthy". The proxy's `/readyz` (which runs a probe inference) takes the pod out of
rotation, and the watchdog of `nexus up` (`nexusml.triton.watchdog`, the same probe the containers' health
checks run) restarts Triton on the same ports after a few failed probes; the proxy reconnects by itself.

Pass criteria: no 200 with a wrong body, no 500; the failures are answered as errors (502 upstream_error,
or 504 deadline_exceeded when the stub died holding the trigger's batch); `/readyz` turns false; the normal
model next to it keeps serving; the watchdog restarts Triton once, saying why, and the same proxy serves
correct answers again. Figure: seconds from the
crash to `/readyz` answering 200 again.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

from nexusml.testing.servers import ProxyProcess
from nexusml.triton.server import TritonServer
from nexusml.triton.watchdog import Watchdog, probe
from reliability.bed import Bed, faulty_workload
from reliability.load import Sample, Workload, closed_loop, send_one, summarize
from reliability.models import CRASH_TRIGGER, add_faulty_model
from reliability.result import ScenarioResult

ALLOWED = {200, 502, 503, 504}


@dataclass(frozen=True)
class Config:
    before_s: float = 1.0
    after_s: float = 2.0
    concurrency: int = 8
    recovery_bound_s: float = 60.0
    # The watchdog's settings (WATCHDOG_*), short so the scenario is short; 2 probes 1 s apart leave the
    # check of the model next to the crashed one time to run before Triton is restarted.
    watchdog_interval_s: float = 1.0
    watchdog_failures: int = 2

    @classmethod
    def long(cls, duration_s: float) -> Config:
        return cls(before_s=duration_s / 3, after_s=duration_s / 3, concurrency=32)


def _demo_answers(url: str) -> bool:
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    try:
        tensor = httpclient.InferInput("INPUT__0", [1, 5], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 5), np.float32))
        return client.infer("demo_mlp", [tensor]).as_numpy("OUTPUT__0").shape == (1, 2)
    except Exception:
        return False
    finally:
        client.close()


class Supervisor(threading.Thread):
    """The watchdog of `nexus up`, polled from a thread of its own, restarting Triton as the stack does."""

    def __init__(self, bed: Bed, triton: TritonServer, model: str, config: Config, log_dir: Path) -> None:
        super().__init__(name="watchdog", daemon=True)
        self.triton = triton
        self.stopped = threading.Event()

        def restart(cause: str) -> None:
            self.triton.stop()
            self.triton = bed.restart_triton(self.triton, log_dir)

        self.watchdog = Watchdog(
            lambda: probe(self.triton.http_url, model, timeout_s=5),
            restart,
            failures=config.watchdog_failures,
            interval_s=config.watchdog_interval_s,
            backoff_s=30,
            backoff_max_s=600,
        )

    def run(self) -> None:
        while not self.stopped.wait(0.1):
            self.watchdog.poll()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=60)


@dataclass
class Crash:
    """The trigger's answer and what followed: when it was sent, readiness meanwhile, when /readyz recovered."""

    answer: Sample | None = None
    marks: dict[str, float] = field(default_factory=dict)
    readiness: list[int] = field(default_factory=list)


def run(bed: Bed, config: Config = Config()) -> ScenarioResult:
    result = ScenarioResult("python-stub-dies", settings=config.__dict__.copy())
    log_dir = bed.path("stub-crash")
    repository = log_dir / "repository"
    shutil.copytree(bed.demo_repository / "demo_mlp", repository / "demo_mlp")
    add_faulty_model(repository, "crashy", "crash")
    triton = bed.triton(repository, log_dir)
    proxy = bed.proxy(log_dir, MODEL_SERVER_URL=triton.grpc_url, MODEL_NAME="crashy")
    assert proxy.process is not None
    supervisor = Supervisor(bed, triton, "crashy", config, log_dir)
    crash = Crash()
    try:
        samples = asyncio.run(_drive(config, proxy, triton, supervisor, crash))
    finally:
        supervisor.stop()
    _judge(result, samples, crash, supervisor.watchdog, proxy.process.poll() is None)
    return result


async def _drive(
    config: Config, proxy: ProxyProcess, triton: TritonServer, supervisor: Supervisor, crash: Crash
) -> list[Sample]:
    """Load on the crashy model; the trigger; the neighbour checked; the watchdog started; /readyz followed."""
    marks, readiness = crash.marks, crash.readiness
    work = faulty_workload(proxy.url, timeout_s=20)
    trigger = Workload(proxy.url, [[CRASH_TRIGGER, 0, 0, 0, 0]], [[0.0, 0.0]], timeout_s=20)
    stop = asyncio.Event()
    load = asyncio.create_task(closed_loop(work, config.concurrency, 600, stop=stop))
    await asyncio.sleep(config.before_s)
    marks["trigger"] = time.monotonic()
    crash.answer = await send_one(trigger)
    # The neighbour is checked before the watchdog starts: a restart (which it will make) would take the
    # neighbour down with Triton for a moment, and that is not what this criterion asks.
    marks["demo_ok"] = float(await asyncio.to_thread(_demo_answers, triton.http_url))
    supervisor.start()
    end = time.monotonic() + config.recovery_bound_s
    while time.monotonic() < end:
        status = (await asyncio.to_thread(proxy.get, "/readyz"))[0]
        readiness.append(status)
        if status == 200 and supervisor.watchdog.restarts:
            break
        await asyncio.sleep(0.1)
    marks["ready"] = time.monotonic()
    marks["recovered"] = float(readiness[-1] == 200 and supervisor.watchdog.restarts > 0)
    await asyncio.sleep(config.after_s)
    stop.set()
    return await load


def _judge(result: ScenarioResult, samples: list[Sample], crash: Crash, watchdog: Watchdog, proxy_alive: bool) -> None:
    marks, readiness, answer = crash.marks, crash.readiness, crash.answer
    assert answer is not None
    restarts = watchdog.restarts
    stats = summarize(samples)
    result.load = stats
    crashed = [s for s in samples if marks["trigger"] <= s.started < marks["ready"]]
    tail = samples[-30:]
    result.figures.update(
        trigger_answer=f"{answer.status} {answer.code}",
        failures_while_crashed=sum(1 for s in crashed if s.status != 200),
        requests_while_crashed=len(crashed),
        watchdog_restarts=restarts,
        recovery_s=round(marks["ready"] - marks["trigger"], 2),
    )
    statuses = {int(s) for s in stats.by_status}
    result.check("only 200/502/503/504 (no 500, no hang)", statuses <= ALLOWED, f"{stats.by_status} {stats.by_code}")
    result.check("no 200 with a wrong body", stats.wrong_bodies == 0, f"{stats.wrong_bodies} wrong")
    trigger_failed = answer.status in ALLOWED - {200}
    result.check("the trigger gets an error, not a 200", trigger_failed, f"{answer.status} {answer.code}")
    result.check("/readyz turns false", 503 in readiness, f"readiness answers {sorted(set(readiness))}")
    result.check("the model next to it keeps serving", bool(marks["demo_ok"]), "demo_mlp answered direct on Triton")
    result.check(
        "the watchdog restarts Triton once, saying why",
        restarts == 1 and "does not answer an inference" in (watchdog.last_cause or ""),
        f"{restarts} restart(s); cause: {watchdog.last_cause}",
    )
    result.check(
        "recovers under the watchdog, same proxy",
        bool(marks["recovered"]) and proxy_alive and all(s.status == 200 for s in tail),
        f"last {len(tail)} statuses {sorted({s.status for s in tail})}; /readyz 200 again after "
        f"{marks['ready'] - marks['trigger']:.1f} s",
    )
    result.notes.append(
        "Triton 2.51 keeps a model READY after its stub died and never restarts the stub; /readyz's probe "
        "inference notices, and the watchdog (nexus up; the containers' health checks run the same probe) "
        "restarts Triton after WATCHDOG_FAILURES failed probes; the proxy reconnects by itself."
    )
