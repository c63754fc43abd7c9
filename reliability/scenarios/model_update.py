"""A model update under load: `nexus watch` puts a good version live, and refuses two broken ones, while users
keep sending requests at about half of the stack's capacity.

The stack is the deployed one: a Triton started with an admin key (the watcher loads and reloads models through
its restricted repository API), a proxy in front sending unpinned requests (so whichever version Triton serves
answers, named by `X-Model-Version`), and a `Watcher` polled in a loop as `nexus watch` polls it, in a process of
its own as `nexus watch` is (this module is that process's entry point; it reports every poll as a JSON line).
Polled from a thread of the load generator's process instead, the watcher's own work (creating a boto3 client,
hashing, JSON) held the GIL for hundreds of milliseconds at the start of every swap: the generator stalled, then
sent the arrivals it had missed in one burst, and that burst was measured as the swap's latency and 429s.

The control plane is this scenario: it writes the metadata file (atomically), first version 2 of the demo model
(weights of its own, so its answers differ from version 1's), then a version whose artifact verifies but is not a
model (the load fails), then one that loads but answers 3 values where its metadata declares 2 (the smoke test
fails).

Load: the capacity is measured first (a closed loop of `capacity_concurrency` clients for `capacity_s`), then an
open loop offers half of it for the whole scenario, so a swap that takes CPU (a candidate model's stub starts,
loads torch) shows up as latency, not as queues the generator itself built. The generator runs with its heap
frozen (`reliability.load.frozen_heap`): its own garbage collector's pauses otherwise made bursts that the
proxy answered 429, every few seconds, swap or no swap. Every answer's body is checked against the outputs of
the version that answered it.

Windows per update: before (the `before_s`/`after_s` of load preceding the write), during (from the metadata
write to the return of the watcher's poll that handled it), after (`after_s` from then).

Pass criteria: no failed request (non-200) at any time; no 200 with a wrong body; the watcher
swaps version 2 in and answers carry version 2 within 5 s plus the swap's own duration of the write, never
version 1 again; the broken versions end in "failed: load" and "failed: smoke_test", every answer is from
version 2 throughout, nothing of them is left in the repository; [timing] p99 during the swap within 2x of
before. Figures: seconds from the write to the first version-2 answer, each swap's duration, p99 ratio.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nexusml.command import demo
from nexusml.core.metadata import ModelMetadata
from nexusml.core.probe import CANDIDATE_SUFFIX
from nexusml.core.process import spawn
from nexusml.core.settings import load
from nexusml.sync.repository import Repository
from nexusml.testing import updates
from nexusml.testing.environment import base_environment
from nexusml.testing.models import PublishedModel
from nexusml.testing.polling import wait_until
from nexusml.testing.servers import ProxyProcess
from nexusml.updates.swap import served
from nexusml.updates.watch import WatchSettings, watcher
from reliability.bed import Bed
from reliability.load import LoadStats, Sample, Workload, closed_loop, open_loop, percentile, summarize
from reliability.result import ScenarioResult

MODEL = "demo_mlp"
ADMIN_KEY = "reliability-admin-key"
# A bucket of the scenario's own: the versions it publishes (keys `demo_mlp/<version>/...`) must not replace
# objects other tests' metadata in the bed's bucket point at (their checksums would no longer match).
BUCKET = "nexus-model-update"


@dataclass(frozen=True)
class Config:
    capacity_s: float = 1.5
    capacity_concurrency: int = 32
    # Of the measured capacity, offered as an open loop. The long form measures at half; the short
    # form offers a quarter: on 2 shared cores the stubs a swap starts (torch imported) can starve the stack for
    # a few hundred ms, and at half load that backlog may pass MAX_IN_FLIGHT (429s), a figure for the report
    # rather than a verdict for a test that asserts the swap's correctness under traffic.
    load_fraction: float = 0.25
    before_s: float = 1.5
    after_s: float = 1.5
    poll_interval_s: float = 0.2  # WATCH_INTERVAL_S
    swap_bound_s: float = 120.0  # how long one swap may take before the scenario gives up (a bound, no verdict)
    rows: int = 64
    max_outstanding: int = 512

    @classmethod
    def long(cls, duration_s: float) -> Config:
        return cls(capacity_s=5.0, load_fraction=0.5, before_s=duration_s, after_s=duration_s, poll_interval_s=1.0)


@dataclass(frozen=True)
class Poll:
    started: float  # time.monotonic(), the same clock in every process of this machine
    ended: float
    outcome: str
    counters: dict[str, int]


class WatchProcess:
    """`nexus watch`'s polling loop in a child process that reports each poll: when it started and
    returned, what it did (`Watcher.poll`'s answer), and the watcher's counters; also the swap's steps."""

    def __init__(self, env: dict[str, str], log_file: Path) -> None:
        root = Path(__file__).resolve().parents[2]
        self.polls: list[Poll] = []
        self.steps: list[tuple[float, str]] = []
        self.log = log_file.open("ab")
        self.process = spawn(
            [sys.executable, "-m", __name__],
            env={**base_environment(), **env, "PYTHONPATH": str(root)},
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        self.reader = threading.Thread(target=self._read, name="nexus-watch-reader", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:  # not one of ours (a library that prints): kept in the log, not a poll
                self.log.write(line)
                continue
            if "step" in event:
                self.steps.append((event["at"], event["step"]))
            else:
                self.polls.append(Poll(event["started"], event["ended"], event["outcome"], event["counters"]))

    def handled(self, written: float) -> Poll | None:
        """The first poll that returned after `written` having done something (a swap, a refusal)."""
        return next((p for p in list(self.polls) if p.ended > written and p.outcome != "unchanged"), None)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.reader.join(timeout=10)
        self.log.close()


def _watch_main() -> None:
    """The child: `WatchSettings` from the environment, then poll every WATCH_INTERVAL_S until terminated."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    lock = threading.Lock()

    def emit(event: dict[str, Any]) -> None:
        with lock:
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()

    class Steps(logging.Handler):
        """The watcher logs `<name> version <n>: <step>` as a swap moves on; reported with the time."""

        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if message.rsplit(": ", 1)[-1] in ("install", "try", "switch"):
                emit({"step": message, "at": time.monotonic()})

    logging.getLogger("nexusml.updates.watch").addHandler(Steps())
    watching = watcher(load(WatchSettings, os.environ))
    while True:
        started = time.monotonic()
        try:
            outcome = watching.poll()
        except Exception as err:  # the watcher must not raise; if it does, that is a finding
            outcome = f"raised {type(err).__name__}: {err}"
        metrics = watching.metrics
        counters = {
            "started": int(metrics.started._value.get()),
            "succeeded": int(metrics.succeeded._value.get()),
            "served_version": int(metrics.served._value.get()),
        }
        emit({"started": started, "ended": time.monotonic(), "outcome": outcome, "counters": counters})
        time.sleep(watching.settings.interval_s)


@dataclass(frozen=True)
class Update:
    label: str
    meta: ModelMetadata
    written: float
    poll: Poll | None

    @property
    def returned(self) -> float:
        return self.poll.ended if self.poll else float("inf")

    @property
    def outcome(self) -> str:
        return self.poll.outcome if self.poll else "no poll handled it"


def _write_atomically(path: Path, meta: ModelMetadata) -> None:
    """What a control plane should do: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(meta.to_json())
    tmp.replace(path)


def _window(samples: list[Sample], start: float, end: float) -> list[Sample]:
    return [s for s in samples if start <= s.started < end]


def _p99_ms(samples: list[Sample]) -> float:
    return round(percentile([s.latency_s * 1000 for s in samples if s.status >= 0], 99), 2)


def _peak_outstanding(samples: list[Sample]) -> int:
    """Most requests waiting for their answer at once (what MAX_IN_FLIGHT counts, seen from the client)."""
    events = sorted(
        [(s.started, 1) for s in samples if s.status >= 0]
        + [(s.started + s.latency_s, -1) for s in samples if s.status >= 0]
    )
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


def _describe(samples: list[Sample]) -> str:
    """One window in a line: how many, by status, p99, peak outstanding, which versions answered."""
    statuses = dict(sorted(Counter(str(s.status) for s in samples).items()))
    versions = dict(sorted(Counter(s.version for s in samples if s.status == 200).items()))
    by_status = " ".join(f"{k}:{v}" for k, v in statuses.items()) or "-"
    by_version = " ".join(f"v{k}:{v}" for k, v in versions.items()) or "-"
    return (
        f"n {len(samples)}; status {by_status}; p99 {_p99_ms(samples)} ms; "
        f"peak outstanding {_peak_outstanding(samples)}; versions {by_version}"
    )


def _expected(spec: demo.DemoSpec, rows: list[list[float]]) -> list[list[float]]:
    return np.asarray(demo.reference_outputs(spec, rows)[0]).tolist()


@dataclass(frozen=True)
class Versions:
    """What the scenario serves and publishes: version 1 (served at start), 2 (good), the broken ones."""

    v1: PublishedModel
    v2: PublishedModel
    broken: list[tuple[str, ModelMetadata, str]]  # (label, metadata, the outcome the watcher must report)


@dataclass
class Measured:
    """Everything the load and the updates left behind, for the figures and the verdicts."""

    first_poll: str
    capacity: LoadStats
    rate: float
    samples: list[Sample]
    began: float
    ended: float
    updates: list[Update]

    @property
    def answered(self) -> list[Sample]:
        return [s for s in self.samples if s.status >= 0]

    def windows(self, after_s: float) -> dict[str, dict[str, list[Sample]]]:
        """Per update: before = the load preceding the write (as long as the phase before it), during = write
        -> poll returned, after = `after_s` from then."""
        windows: dict[str, dict[str, list[Sample]]] = {}
        previous_end = self.began
        for update in self.updates:
            windows[update.label] = {
                "before": _window(self.samples, previous_end, update.written),
                "during": _window(self.samples, update.written, update.returned),
                "after": _window(self.samples, update.returned, update.returned + after_s),
            }
            previous_end = update.returned
        return windows

    def first_v2(self) -> float | None:
        return min((s.started + s.latency_s for s in self.answered if s.version == "2"), default=None)


def run(bed: Bed, config: Config = Config()) -> ScenarioResult:
    result = ScenarioResult("model-update", settings=config.__dict__.copy())
    log_dir = bed.path("model-update")
    repository = log_dir / "model_repository"
    meta_path = log_dir / ".nexus_meta.json"
    versions = _publish_versions(bed, log_dir, repository, meta_path)
    triton = bed.triton(repository, log_dir, TRITON_ADMIN_KEY=ADMIN_KEY)
    proxy = bed.proxy(log_dir, MODEL_SERVER_URL=triton.grpc_url, MODEL_NAME=MODEL)
    assert proxy.process is not None
    watch_env = {
        **bed.s3_env,
        "WATCH_INTERVAL_S": str(config.poll_interval_s),
        "WATCH_METRICS_PORT": "0",
        "MODEL_SERVER_URL": triton.grpc_url,
        "TRITON_ADMIN_KEY": ADMIN_KEY,
        "NEXUS_META_PATH": str(meta_path),
        "MODEL_REPOSITORY": str(repository),
        "DEVICE": "cpu",
        "BATCH_TIMEOUT_MS": "2",
    }
    load(WatchSettings, watch_env)  # settings a watcher would refuse fail here, with their message
    poller = WatchProcess(watch_env, log_dir / "watch.log")
    try:
        measured = _drive(config, meta_path, proxy, poller, versions)
        if not poller.alive():
            result.notes.append(f"The watcher process exited (code {poller.process.poll()}): see {poller.log.name}.")
        _figures(config, result, measured, poller)
        _judge(result, measured, versions, repository, proxy)
        return result
    finally:
        poller.stop()


def _publish_versions(bed: Bed, log_dir: Path, repository: Path, meta_path: Path) -> Versions:
    """Version 1 is the bed's demo model (already synced); 2 and the broken ones are published now, before any
    load, so exporting them (torch, CPU) does not weigh on the figures."""
    shutil.copytree(bed.demo_repository / MODEL, repository / MODEL)
    with contextlib.suppress(Exception):  # already there (a second run on the same S3)
        bed.s3_client.create_bucket(Bucket=BUCKET)
    v2 = updates.good(2, bed.s3_client, log_dir / "published", BUCKET)
    broken: list[tuple[str, ModelMetadata, str]] = [
        ("v3 unloadable", updates.unloadable(v2.meta, 3, bed.s3_client, BUCKET), "failed: load"),
        ("v4 wrong shape", updates.wrong_shape(4, bed.s3_client, log_dir / "published", BUCKET), "failed: smoke_test"),
    ]
    _write_atomically(meta_path, bed.demo_model.meta)
    return Versions(bed.demo_model, v2, broken)


def _drive(config: Config, meta_path: Path, proxy: ProxyProcess, poller: WatchProcess, versions: Versions) -> Measured:
    """The load (capacity first, then an open loop at `load_fraction` of it) and the updates under it."""
    wait_until(lambda: bool(poller.polls) or not poller.alive(), 60)
    first_poll = poller.polls[0].outcome if poller.polls else f"none (watcher exit code {poller.process.poll()})"
    rows = np.random.default_rng(11).normal(size=(config.rows, versions.v1.spec.width)).round(3).tolist()
    expected = {"1": _expected(versions.v1.spec, rows), "2": _expected(versions.v2.spec, rows)}
    work = Workload(proxy.url, rows, expected["1"], expected_by_version=expected, timeout_s=30)
    capacity = summarize(asyncio.run(closed_loop(work, config.capacity_concurrency, config.capacity_s)))
    rate = max(config.load_fraction * capacity.rate_per_s, 10.0)
    updates_done: list[Update] = []

    def publish(label: str, meta: ModelMetadata) -> None:
        """Write the metadata, then wait for the watcher's poll that handles it (runs in a worker thread)."""
        written = time.monotonic()
        _write_atomically(meta_path, meta)
        wait_until(
            lambda: poller.handled(written) is not None or not poller.alive(), config.swap_bound_s, interval_s=0.02
        )
        updates_done.append(Update(label, meta, written, poller.handled(written)))

    async def drive() -> tuple[list[Sample], float, float]:
        stop = asyncio.Event()
        total = config.before_s + 3 * (config.after_s + config.swap_bound_s)
        sending = asyncio.create_task(open_loop(work, rate, total, config.max_outstanding, stop=stop))
        began = time.monotonic()
        await asyncio.sleep(config.before_s)
        await asyncio.to_thread(publish, "v2 good", versions.v2.meta)
        await asyncio.sleep(config.after_s)
        for label, meta, _ in versions.broken:
            await asyncio.to_thread(publish, label, meta)
            await asyncio.sleep(config.after_s)
        ended = time.monotonic()
        stop.set()
        return await sending, began, ended

    samples, began, ended = asyncio.run(drive())
    return Measured(first_poll, capacity, rate, samples, began, ended, updates_done)


def _swap_figures(measured: Measured, windows: dict[str, dict[str, list[Sample]]]) -> dict[str, Any]:
    """The good version's swap: how long it took, when version 2 first answered, p99 before and during."""
    good = measured.updates[0]
    first_v2 = measured.first_v2()
    to_v2_s = None if first_v2 is None else first_v2 - good.written
    p99_before = _p99_ms(windows[good.label]["before"])
    p99_during = _p99_ms(windows[good.label]["during"])
    return {
        "write_to_first_v2_s": None if to_v2_s is None else round(to_v2_s, 2),
        "swap_v2_s": round(good.returned - good.written, 2),
        "p99_before_swap_ms": p99_before,
        "p99_during_swap_ms": p99_during,
        "p99_during_over_before": round(p99_during / p99_before, 2) if p99_before else None,
    }


def _figures(config: Config, result: ScenarioResult, measured: Measured, poller: WatchProcess) -> None:
    stats = summarize(measured.samples)
    result.load = stats
    windows = measured.windows(config.after_s)
    good = measured.updates[0]
    steps = [(round(at - good.written, 2), step.rsplit(": ", 1)[-1]) for at, step in poller.steps]
    result.figures.update(
        capacity_per_s=measured.capacity.rate_per_s,
        capacity_statuses=measured.capacity.by_status,
        load_setting=f"open loop at {config.load_fraction:.0%} of the capacity measured just before (a closed loop "
        f"of {config.capacity_concurrency} clients for {config.capacity_s:g} s): {measured.rate:.1f}/s offered",
        offered_per_s=round(measured.rate, 1),
        achieved_per_s=stats.rate_per_s,
        generator_saturated=sum(1 for s in measured.samples if s.status == -1),
        watch_interval_s=config.poll_interval_s,
        **_swap_figures(measured, windows),
    )
    for update in measured.updates:
        key = update.label.split()[0]
        result.figures[f"{key}_outcome"] = update.outcome
        result.figures[f"{key}_poll_s"] = round(update.returned - update.written, 2)
        for phase, window in windows[update.label].items():
            result.figures[f"{key}_{phase}"] = _describe(window)
    result.figures["swap_steps_s_after_v2_write"] = " ".join(f"{step}@{at}" for at, step in steps)
    if poller.polls:
        result.figures["watch_counters"] = poller.polls[-1].counters
    result.notes.append(
        f"Load ran {measured.ended - measured.began:.1f} s. Each swap installs the version beside the served one, "
        f"loads it as `{MODEL}{CANDIDATE_SUFFIX}` (a Python-backend stub of its own, torch imported) for the smoke "
        "test, then reloads the model with the new config; Triton serves the old version until the new one is loaded."
    )


def _judge(
    result: ScenarioResult, measured: Measured, versions: Versions, repository: Path, proxy: ProxyProcess
) -> None:
    _judge_swap(result, measured)
    _judge_refusals(result, measured, versions, repository)
    assert proxy.process is not None
    result.check(
        "the proxy stays ready",
        proxy.process.poll() is None and proxy.get("/readyz")[0] == 200,
        "same proxy process, /readyz 200 at the end",
    )


def _judge_swap(result: ScenarioResult, measured: Measured) -> None:
    """The traffic around the good version: never a failure or a wrong body, version 1 then only version 2."""
    stats, answered, good, figures = result.load, measured.answered, measured.updates[0], result.figures
    assert stats is not None
    failed = [s for s in answered if s.status != 200]
    first_v2 = measured.first_v2()
    to_v2_s = None if first_v2 is None else first_v2 - good.written
    swap_s = good.returned - good.written
    ratio = figures["p99_during_over_before"]
    back_to_v1 = [s for s in answered if first_v2 is not None and s.started >= first_v2 and s.version == "1"]
    before_write = [s for s in answered if s.status == 200 and s.started + s.latency_s < good.written]
    result.check(
        "the watcher starts on version 1 (served)",
        measured.first_poll == "served",
        f"first poll: {measured.first_poll}",
    )
    result.check(
        "no failed request (all 200) during the whole scenario",
        not failed,
        f"{stats.by_status} {stats.by_code}; {len(answered)} answered",
    )
    result.check(
        "no 200 with a wrong body (checked against the version that answered)",
        stats.wrong_bodies == 0,
        f"{stats.wrong_bodies} wrong; versions {dict(Counter(s.version for s in answered))}",
    )
    result.check(
        "version 1 answers before the write",
        bool(before_write) and all(s.version == "1" for s in before_write),
        f"{len(before_write)} answers; versions {sorted({s.version for s in before_write})}",
    )
    result.check("the good version is swapped in", good.outcome == "swapped", good.outcome)
    result.check(
        "answers carry version 2 within 5 s + the swap's duration of the write",
        to_v2_s is not None and to_v2_s <= 5.0 + swap_s,
        f"first version-2 answer {to_v2_s if to_v2_s is None else round(to_v2_s, 2)} s after the write; "
        f"the swap took {swap_s:.2f} s",
    )
    result.check(
        "never version 1 again once version 2 answered",
        not back_to_v1,
        f"{len(back_to_v1)} version-1 answers to requests sent after the first version-2 answer",
    )
    result.check(
        "p99 during the swap within 2x of before",
        ratio is not None and ratio <= 2.0,
        f"{figures['p99_during_swap_ms']} ms during vs {figures['p99_before_swap_ms']} ms before (x{ratio})",
        timing=True,
    )


def _judge_refusals(result: ScenarioResult, measured: Measured, versions: Versions, repository: Path) -> None:
    """The broken versions: each refused with its cause, version 2 answering throughout, nothing of them left."""
    good, *refused = measured.updates
    since_good = [s for s in measured.answered if s.started >= good.returned]
    for update, (_, _, cause) in zip(refused, versions.broken, strict=True):
        result.check(f"{update.label}: the watcher names the cause", update.outcome == cause, update.outcome)
    result.check(
        "broken versions: every answer from version 2 throughout",
        bool(since_good) and all(s.version == "2" for s in since_good if s.status == 200),
        f"{len(since_good)} requests since the swap returned; versions {sorted({s.version for s in since_good})}",
    )
    result.check(
        "broken versions: no failed request",
        all(s.status == 200 for s in since_good),
        f"statuses {dict(Counter(s.status for s in since_good))}",
    )
    repo = Repository(repository)
    left = sorted(p.name for p in repository.glob(f"*{CANDIDATE_SUFFIX}"))
    installed = repo.versions(MODEL)
    still = served(repo, MODEL)
    result.check(
        "the repository ends serving version 2, with nothing of the broken ones",
        still == versions.v2.meta and not left and not any(meta.version in installed for _, meta, _ in versions.broken),
        f"served: version {still.version if still else None}; installed {installed}; candidates left {left}",
    )


if __name__ == "__main__":
    _watch_main()
