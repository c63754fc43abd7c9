"""Many models behind one data plane: a directory of metadata files, a Zipf-like mix of traffic across them and
one model broken from the start; by default within a memory budget that holds about `budget_models` of them.

The control plane is this scenario. It publishes demo models of different shapes and sizes (`MODELS`: input
width, output values, hidden size, depth; the first `models` of them) to a bucket of its own and writes one
metadata file per model into one directory, with one more model whose metadata names an artifact of another
sha256 (the sync refuses it). Then `nexus sync` on the directory, Triton on the repository (an admin key, for the
watcher), `nexus watch` on the directory and the proxy (`NEXUS_META_PATH` the directory, `MODEL_NAME` empty: every
model), each a process of its own, as deployed. Every 200's body is checked against that model's output computed
in-process (the same DemoSpec, hence the same weights). A model is resident while Triton holds its Python-backend
stubs, one process per instance (`INSTANCE_COUNT`); their PSS is what it costs (`reliability.residency`).

Within a budget (`budget_models` > 0, the default). First every model is loaded in a Triton of their own, no budget
(one request each) and its stubs' PSS read: the budget (`residency.budget_for`) is halfway between the
`budget_models` largest together and the `budget_models` + 1 smallest together, so that any `budget_models` of them
fit and no more. Then Triton starts with MODEL_MEMORY_BUDGET (no model pinned: none loaded), `nexus watch` hosts the
decider (RESIDENCY_PORT) and the proxy asks it (RESIDENCY_URL). Traffic is Zipf-like, cut in two: the hot head (the
`budget_models` - 1 first ranks, the last place left for loads) gets an open loop at `load_fraction` of the capacity
measured on it, shared 1/rank^`zipf_s`; the other models, the cold tail, get one request at a time, `cold_pause_s`
after the last one's answer, every one once first (past the load's end if need be) and then by their 1/rank^`zipf_s`
weight. Each cold request finds its model unloaded (the previous cold one is the least recently used): an eviction
and a load, whose wait is the proxy's `Nexus-Load-Wait-Ms` header. A load window is one of the decider's loads or
unloads (its log lines: each one's time less the seconds it says it took). Meanwhile the stubs' PSS under
tritonserver is summed every `sample_interval_s` (psutil, apart from the decider's own figures, read beside it from
GET /v1/residency).

Why not 1/rank across all of them at that rate: it sends the models past the hot three 41% of the traffic, a
hundred and more requests a second across 9 models of which one fits at a time: each wants a load, and a stub's
start costs about 1 CPU-second on this 2-core machine; that measures how fast stubs start, not residency.

Pass criteria (budget): the sync as below; every usable model listed, the broken one not served; the hot models'
first requests (at once, nothing loaded) answered; no failed request (200, or 429 with Retry-After past the
capacity), no 200 with a wrong body, every model answered; the stubs' PSS never above the budget in any reading, the
decider's budget the same; every model loaded on demand and some evicted; [timing] the hot model's p99 for requests
sent inside a load window within 1.5x of its p99 outside them. Figures: the budget and each model's PSS, the peak
sampled PSS vs the budget, the cold load waits' p50/p99, the decider's loads and evictions, those p99s, each model's
requests and p99.

Every model resident (`budget_models` = 0, `Config.all_resident`): no budget, every model loaded at Triton's start.
The capacity of the mix is measured first (a closed loop per model, its clients in proportion to its share,
`capacity_s`), then an open loop per model offers `load_fraction` of it for the whole run, the model ranked r a
share proportional to 1/r^`zipf_s`. After `before_s`, the metadata of one more model (`ADDED`) is written into
the directory (atomically): the watcher must load it with nothing restarted. It is sent a request every
`probe_interval_s` from the write to its first answer (the load time), then joins the mix with the tail's share
for `after_s`. Its stubs' PSS per model, read once the models are loaded and again at the end, gives the models
per GiB. Pass criteria: the sync installs every usable model and not the broken one; the usable models are ready
on /v1/models and the broken one is not (listed with its problem, or not served), a request to it a clean error;
no failed request to the served models, no 200 with a wrong body; the added model answers with no restart (same
Triton, proxy and watcher processes), right from its first 200 on, and is ready on /v1/models; every usable model
resident, one stub per instance, the broken one not; [timing] the hot model's p99 while the new one loads within
1.5x of its steady p99. Figures: the load time, those p99s, each model's requests and p99, the memory per model.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from nexusml.command import demo
from nexusml.core.metadata import ModelMetadata
from nexusml.core.process import ManagedProcess
from nexusml.testing.artifacts import SYNC_COMMAND
from nexusml.testing.environment import free_port
from nexusml.testing.polling import wait_until
from nexusml.testing.servers import ProxyProcess, triton_infer
from nexusml.triton.server import TritonServer
from reliability import procinfo, residency, traffic
from reliability.bed import Bed
from reliability.load import (
    LoadStats,
    Sample,
    Workload,
    closed_loop,
    open_loop,
    percentile,
    send_one,
    summarize,
)
from reliability.result import ScenarioResult
from reliability.scenarios.model_update import _p99_ms, _window, _write_atomically

ADMIN_KEY = "reliability-admin-key"
# A bucket of the scenario's own, so that its objects never replace those other scenarios' metadata point at.
BUCKET = "nexus-many-models"

# Hottest first: the first `Config.models` of them are published, the model ranked r gets a share of 1/r^s.
MODELS = (
    demo.DemoSpec(name="mm_hot", width=5, outputs=2, hidden=256, layers=2, seed=1),
    demo.DemoSpec(name="mm_wide", width=64, outputs=4, hidden=512, layers=2, seed=2),
    demo.DemoSpec(name="mm_narrow", width=2, outputs=1, hidden=32, layers=1, seed=3),
    demo.DemoSpec(name="mm_deep", width=8, outputs=3, hidden=128, layers=5, seed=4),
    demo.DemoSpec(name="mm_large", width=16, outputs=8, hidden=2048, layers=3, seed=5),
    demo.DemoSpec(name="mm_tiny", width=3, outputs=1, hidden=8, layers=1, seed=6),
    demo.DemoSpec(name="mm_scores", width=32, outputs=10, hidden=256, layers=3, seed=7),
    demo.DemoSpec(name="mm_pair", width=4, outputs=2, hidden=64, layers=2, seed=8),
    demo.DemoSpec(name="mm_flat", width=128, outputs=1, hidden=1024, layers=1, seed=9),
    demo.DemoSpec(name="mm_mid", width=10, outputs=5, hidden=512, layers=3, seed=10),
    demo.DemoSpec(name="mm_thin", width=6, outputs=2, hidden=16, layers=4, seed=11),
    demo.DemoSpec(name="mm_big", width=24, outputs=6, hidden=1536, layers=4, seed=12),
)
ADDED = demo.DemoSpec(name="mm_added", width=12, outputs=3, hidden=128, layers=2, seed=13)
BROKEN = demo.DemoSpec(name="mm_broken", width=5, outputs=2, hidden=32, layers=1, seed=14)
ALLOWED = {200, 429}  # 429: past MAX_IN_FLIGHT, with Retry-After
# A line of the watcher's log: time, level, logger, message.
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ \S+: (.*)$")
WATCH_STEPS = ("install", "try", "switch")
# The decider's lines for a load and an unload, each ending in how long it took.
RESIDENCY_STEP = re.compile(r"^(\S+) (?:loaded in ([\d.]+) s \(|unloaded .*; ([\d.]+) s\)$)")


@dataclass(frozen=True)
class Config:
    models: int = len(MODELS)  # how many of MODELS are published at the start
    budget_models: int = 4  # the memory budget holds about this many of them; 0: no budget, every model resident
    zipf_s: float = 1.0
    capacity_s: float = 3.0
    capacity_concurrency: int = 32
    load_fraction: float = 0.5
    load_s: float = 70.0  # within a budget: the hot models' load; the cold ones' goes on until each was sent one
    # Within a budget: between a cold model's answer and the next cold request; past the 2 s a model stays busy
    # after its last request (the decider's BUSY_FOR_S), so that the last cold model is the one evicted.
    cold_pause_s: float = 2.5
    sample_interval_s: float = 0.5  # within a budget: how often the stubs' PSS is read
    before_s: float = 8.0  # every model resident: load before the added model's metadata is written
    after_s: float = 6.0  # every model resident: load after the added model answered
    warmup_s: float = 1.0  # the first seconds of load (connections opening) are left out of the steady p99
    probe_interval_s: float = 0.05
    load_bound_s: float = 180.0  # how long the added model may take to answer before the scenario gives up
    ready_bound_s: float = 300.0  # how long the models may take to be ready at the start (a bound, no verdict)
    poll_interval_s: float = 0.5  # WATCH_INTERVAL_S
    instance_count: int = 1  # INSTANCE_COUNT (and MIN_INSTANCE_COUNT: fixed): stubs per model
    rows: int = 32
    max_outstanding: int = 256  # per model's open loop; within a budget, of the one open loop
    # Within a budget: the proxy's REQUEST_TIMEOUT_MS. A cold request waits for an eviction and a stub's start (2-10 s
    # on 2 busy cores): a client of models loaded on demand gives them a deadline above that.
    deadline_ms: int = 30000

    @classmethod
    def all_resident(cls) -> Config:
        """No budget: four models, every one loaded at Triton's start, one more added while they serve."""
        return cls(models=4, budget_models=0)

    @classmethod
    def long(cls, duration_s: float) -> Config:
        """All of MODELS within a budget for four, one instance each, for 9 x `duration_s` (3 minutes at the
        CLI's default 20 s)."""
        return cls(
            capacity_s=5.0,
            load_s=9 * duration_s,
            cold_pause_s=3.0,
            warmup_s=5.0,
            poll_interval_s=1.0,
            max_outstanding=512,
        )

    @classmethod
    def long_all_resident(cls, duration_s: float) -> Config:
        """All of MODELS with the sync's default of two instances each, every one resident, for several minutes."""
        return cls(
            models=len(MODELS),
            budget_models=0,
            capacity_s=5.0,
            before_s=4 * duration_s,
            after_s=4 * duration_s,
            warmup_s=5.0,
            poll_interval_s=1.0,
            instance_count=2,
        )


def shares(count: int, s: float) -> list[float]:
    """Zipf's law over `count` ranks: the share of rank r is proportional to 1/r^s."""
    weights = [1 / rank**s for rank in range(1, count + 1)]
    return [w / sum(weights) for w in weights]


@dataclass(frozen=True)
class Served:
    """One published model: its spec, metadata, and the requests that check it."""

    spec: demo.DemoSpec
    meta: ModelMetadata
    work: Workload

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class Stack:
    """The processes under test, as deployed, and the directory the control plane writes."""

    meta_dir: Path
    triton: TritonServer
    proxy: ProxyProcess
    watch: ManagedProcess

    def pids(self) -> dict[str, int | None]:
        return {
            name: process.process.pid if process.process and process.process.poll() is None else None
            for name, process in (("triton", self.triton), ("proxy", self.proxy), ("watch", self.watch))
        }


@dataclass
class Measured:
    """What the load and the added model left behind."""

    capacity: LoadStats
    rate: float
    samples: dict[str, list[Sample]]  # by model, the added one included
    probes: list[Sample]  # to the added model, from the write to its first answer
    began: float
    written: float
    written_wall: float  # time.time() of the write, for the watcher's log
    loaded: float | None  # when the added model's first 200 came back
    ended: float


@dataclass(frozen=True)
class Prepared:
    """The models published, their metadata written and synced: what both runs start from."""

    log_dir: Path
    meta_dir: Path
    repository: Path
    env: dict[str, str]  # the sync's and the watcher's settings
    served: list[Served]
    broken: Served


def run(bed: Bed, config: Config = Config()) -> ScenarioResult:
    if config.budget_models:
        return _within_budget(bed, config)
    return _all_resident(bed, config)


def _prepare(bed: Bed, config: Config, result: ScenarioResult, name: str) -> Prepared:
    """Publish the models, write their metadata (the broken one's too) and `nexus sync` the directory."""
    log_dir = bed.path(name)
    meta_dir = log_dir / "models"
    meta_dir.mkdir()
    repository = log_dir / "model_repository"
    env = {
        **bed.s3_env,
        "NEXUS_META_PATH": str(meta_dir),
        "MODEL_REPOSITORY": str(repository),
        "DEVICE": "cpu",
        "BATCH_TIMEOUT_MS": "2",
        "INSTANCE_COUNT": str(config.instance_count),
        "MIN_INSTANCE_COUNT": str(config.instance_count),
    }
    served = _publish(bed, config, log_dir, MODELS[: config.models])
    broken = _broken(_publish(bed, config, log_dir, [BROKEN])[0])
    for model in [*served, broken]:
        _write_atomically(meta_dir / f"{model.name}.json", model.meta)
    synced = subprocess.run(list(SYNC_COMMAND), env=env, capture_output=True, text=True, timeout=600)
    _judge_sync(result, synced, repository, served, broken)
    return Prepared(log_dir, meta_dir, repository, env, served, broken)


def _all_resident(bed: Bed, config: Config) -> ScenarioResult:
    result = ScenarioResult("many-models-all-resident", settings=config.__dict__.copy())
    ready = _prepare(bed, config, result, "many-models-all-resident")
    served, broken, log_dir = ready.served, ready.broken, ready.log_dir
    added = _publish(bed, config, log_dir, [ADDED])[0]
    triton = bed.triton(ready.repository, log_dir, TRITON_ADMIN_KEY=ADMIN_KEY, NEXUS_META_PATH=str(ready.meta_dir))
    proxy = bed.proxy(log_dir, MODEL_SERVER_URL=triton.grpc_url, NEXUS_META_PATH=str(ready.meta_dir), MODEL_NAME="")
    watch = _watcher(ready.env, triton, config, log_dir)
    try:
        stack = Stack(ready.meta_dir, triton, proxy, watch)
        _judge_start(result, config, stack, served, broken)
        pids = stack.pids()
        before = _memory(result, stack, "start")
        measured = _drive(config, stack, served, added)
        after = _memory(result, stack, "end")
        _figures(config, result, measured, served, added)
        _step_figures(result, measured, served[0], added, watch)
        _judge_load(result, measured, served, added, broken, stack)
        _judge_added(result, measured, added, stack, pids)
        _judge_memory(result, config, before, after, served, added, broken)
        return result
    finally:
        watch.stop()


def _publish(bed: Bed, config: Config, log_dir: Path, specs: Iterable[demo.DemoSpec]) -> list[Served]:
    """Export and upload models before any load (torch on the CPU), each with its requests and their answers."""
    with contextlib.suppress(Exception):  # already there (a second run on the same S3)
        bed.s3_client.create_bucket(Bucket=BUCKET)

    def published(spec: demo.DemoSpec) -> Served:
        meta = demo.publish(spec, bed.s3_client, BUCKET, log_dir / "published" / spec.name)
        rows = np.random.default_rng(spec.seed).normal(size=(config.rows, spec.width)).round(3).tolist()
        expected = np.asarray(demo.reference_outputs(spec, rows)[0]).tolist()
        work = Workload("", rows, expected, path=f"/models/{spec.name}/predict", timeout_s=30)
        return Served(spec, meta, work)

    return [published(spec) for spec in specs]


def _broken(model: Served) -> Served:
    """`model` with metadata that names its artifact with another sha256."""
    wrong = dataclasses.replace(model.meta.artifact, sha256=hashlib.sha256(b"another artifact").hexdigest())
    return dataclasses.replace(model, meta=dataclasses.replace(model.meta, artifact=wrong))


def _watcher(env: dict[str, str], triton: TritonServer, config: Config, log_dir: Path, **extra: str) -> ManagedProcess:
    """`nexus watch` on the directory, ready once its metrics answer; `extra`: more settings."""
    port = free_port()
    watch = ManagedProcess(
        name="watch",
        argv=[sys.executable, "-m", "nexusml", "watch"],
        env={
            **env,
            "WATCH_INTERVAL_S": str(config.poll_interval_s),
            "WATCH_METRICS_PORT": str(port),
            "WATCH_METRICS_HOST": "127.0.0.1",
            "MODEL_SERVER_URL": triton.grpc_url,
            "TRITON_ADMIN_KEY": ADMIN_KEY,
            **extra,
        },
        ready_url=f"http://127.0.0.1:{port}/metrics",
        startup_timeout_s=60,
        stop_timeout_s=30,
        log_file=log_dir / "watch.log",
    )
    watch.start()
    return watch


def _listing(proxy: ProxyProcess) -> dict[str, Any]:
    """GET /v1/models as a document; {} when it does not answer 200 with JSON."""
    status, body = proxy.get("/v1/models")
    if status != 200:
        return {}
    try:
        doc = json.loads(body)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _entries(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """/v1/models' models by name."""
    models = doc.get("models", [])
    return {m["name"]: m for m in models if isinstance(m, dict) and "name" in m} if isinstance(models, list) else {}


def _ready(proxy: ProxyProcess, names: Iterable[str], states: tuple[str, ...]) -> bool:
    entries = _entries(_listing(proxy))
    return all(entries.get(name, {}).get("state") in states for name in names)


def _memory(result: ScenarioResult, stack: Stack, when: str) -> dict[str, residency.Resident]:
    assert stack.triton.process is not None
    models = residency.resident(stack.triton.process.pid)
    result.figures[f"triton_rss_mb_{when}"] = round(procinfo.usage(stack.triton.process.pid).rss_mb, 1)
    return models


def _drive(config: Config, stack: Stack, served: list[Served], added: Served) -> Measured:
    """Capacity first, then an open loop per model at its share of `load_fraction` of it; the added model's
    metadata is written after `before_s`, probed until it answers, then sent its share for `after_s`."""
    url = stack.proxy.url
    works = [dataclasses.replace(model.work, url=url) for model in served]
    added_work = dataclasses.replace(added.work, url=url)
    share = shares(len(served), config.zipf_s)

    async def capacity() -> list[Sample]:
        loops = [
            closed_loop(work, max(1, round(config.capacity_concurrency * part)), config.capacity_s)
            for work, part in zip(works, share, strict=True)
        ]
        return [sample for samples in await asyncio.gather(*loops) for sample in samples]

    measured_capacity = summarize(asyncio.run(capacity()))
    rate = max(config.load_fraction * measured_capacity.rate_per_s, 10.0)
    tail_rate = max(rate * share[-1], 1.0)
    bound = config.before_s + config.load_bound_s + config.after_s

    async def drive() -> Measured:
        stop = asyncio.Event()
        sending = [
            asyncio.create_task(open_loop(work, max(rate * part, 1.0), bound, config.max_outstanding, stop))
            for work, part in zip(works, share, strict=True)
        ]
        began = time.monotonic()
        await asyncio.sleep(config.before_s)
        written, written_wall = time.monotonic(), time.time()
        _write_atomically(stack.meta_dir / f"{added.name}.json", added.meta)
        probes: list[Sample] = []
        loaded = None
        while loaded is None and time.monotonic() - written < config.load_bound_s:
            probe = await send_one(added_work, len(probes))
            probes.append(probe)
            if probe.status == 200:
                loaded = probe.started + probe.latency_s
            else:
                await asyncio.sleep(config.probe_interval_s)
        joining = asyncio.create_task(open_loop(added_work, tail_rate, bound, config.max_outstanding, stop))
        await asyncio.sleep(config.after_s)
        ended = time.monotonic()
        stop.set()
        samples = dict(zip((m.name for m in served), await asyncio.gather(*sending), strict=True))
        samples[added.name] = await joining
        return Measured(measured_capacity, rate, samples, probes, began, written, written_wall, loaded, ended)

    return asyncio.run(drive())


def _describe(samples: list[Sample]) -> str:
    """One model's traffic in a line: how many, by status, p99, wrong bodies."""
    answered = [s for s in samples if s.status >= 0]
    statuses = " ".join(f"{k}:{v}" for k, v in sorted(Counter(str(s.status) for s in samples).items())) or "-"
    wrong = sum(1 for s in answered if s.status == 200 and not s.correct)
    return f"n {len(answered)}; status {statuses}; p99 {_p99_ms(samples)} ms; wrong {wrong}"


def _figures(config: Config, result: ScenarioResult, measured: Measured, served: list[Served], added: Served) -> None:
    everything = [s for samples in measured.samples.values() for s in samples]
    stats = summarize(everything)
    result.load = stats
    hot = measured.samples[served[0].name]
    steady = _window(hot, measured.began + config.warmup_s, measured.written)
    loading = _window(hot, measured.written, measured.loaded or measured.ended)
    p99_steady, p99_loading = _p99_ms(steady), _p99_ms(loading)
    share = shares(len(served), config.zipf_s)
    result.figures.update(
        capacity_per_s=measured.capacity.rate_per_s,
        capacity_statuses=measured.capacity.by_status,
        load_setting=f"an open loop per model at {config.load_fraction:.0%} of the mix's capacity measured just "
        f"before, shared 1/rank^{config.zipf_s:g}: {measured.rate:.1f}/s offered",
        offered_per_s=round(measured.rate, 1),
        achieved_per_s=stats.rate_per_s,
        generator_saturated=sum(1 for s in everything if s.status == -1),
        shares_pct={m.name: round(100 * part, 1) for m, part in zip(served, share, strict=True)},
        load_s=None if measured.loaded is None else round(measured.loaded - measured.written, 2),
        probes_before_loaded=dict(Counter(f"{s.status} {s.code}".strip() for s in measured.probes)),
        hot_model=served[0].name,
        hot_p99_steady_ms=p99_steady,
        hot_p99_while_loading_ms=p99_loading,
        hot_p99_loading_over_steady=round(p99_loading / p99_steady, 2) if p99_steady else None,
        hot_requests_steady_loading=f"{len(steady)} / {len(loading)}",
        watch_interval_s=config.poll_interval_s,
    )
    for model in [*served, added]:
        result.figures[f"traffic_{model.name}"] = _describe(measured.samples[model.name])
    result.notes.append(
        f"Load ran {measured.ended - measured.began:.1f} s; {added.name}'s metadata was written "
        f"{measured.written - measured.began:.1f} s in. The hot model's steady p99 is its load from "
        f"{config.warmup_s:g} s in to that write, the p99 while loading from the write to {added.name}'s first answer."
    )


def watch_steps(log_file: Path, name: str, since_wall: float) -> list[tuple[float, str]]:
    """The watcher's steps for `name` since `since_wall` (its lines `<name> version <n>: <step>` and `... is live`),
    each with its time.time()."""
    steps: list[tuple[float, str]] = []
    text = log_file.read_text(errors="replace") if log_file.exists() else ""
    for line in text.splitlines():
        found = LOG_LINE.match(line)
        if found is None or not found[2].startswith(f"{name} version "):
            continue
        at = datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local time, as the log's
        step = found[2].rsplit(": ", 1)[-1]
        label = step if step in WATCH_STEPS else "live" if " is live" in found[2] else None
        if label is not None and at >= since_wall - 1:
            steps.append((at, label))
    return steps


def residency_windows(log_file: Path, since_wall: float) -> list[tuple[float, float, str]]:
    """The decider's loads and unloads since `since_wall`, from its log lines (`<model> loaded in <s> s (...`,
    `<model> unloaded ...; <s> s)`): each as (start, end) in time.time() and `load <model>` / `unload <model>`."""
    spans = []
    text = log_file.read_text(errors="replace") if log_file.exists() else ""
    for line in text.splitlines():
        found = LOG_LINE.match(line)
        step = RESIDENCY_STEP.match(found[2]) if found else None
        if found is None or step is None:
            continue
        end = datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local time, as the log's
        took = float(step[2] or step[3])
        if end - took >= since_wall - 1:
            spans.append((end - took, end, f"{'load' if step[2] else 'unload'} {step[1]}"))
    return sorted(spans)


LOAD_EDGE_S = 0.5  # the start and the end of a load, each set apart in `hot_p99_by_load_phase_ms`


def load_phases(
    spans: list[tuple[float, float, str]], edge_s: float = LOAD_EDGE_S
) -> dict[str, list[tuple[float, float, str]]]:
    """The decider's loads cut in three: their first `edge_s` (the stub's start), their middle, and their last
    `edge_s` (Triton's warmup, the model made ready). A load shorter than two edges has no middle, and its edges
    overlap."""
    loads = [(start, end, label) for start, end, label in spans if label.startswith("load")]
    return {
        "first": [(start, min(start + edge_s, end), label) for start, end, label in loads],
        "middle": [(start + edge_s, end - edge_s, label) for start, end, label in loads if end - start > 2 * edge_s],
        "last": [(max(end - edge_s, start), end, label) for start, end, label in loads],
    }


def _step_figures(
    result: ScenarioResult, measured: Measured, hot: Served, added: Served, watch: ManagedProcess
) -> None:
    """Where the load time went (the watcher's steps, then the proxy's first answer) and the hot model's p99 in
    each step: a step that starts a stub (the candidate's smoke test, the served instances) takes CPU."""
    assert watch.log_file is not None
    marks = [
        (measured.written + at - measured.written_wall, label)
        for at, label in watch_steps(watch.log_file, added.name, measured.written_wall)
    ]
    marks = [(measured.written, "write"), *marks]
    if measured.loaded is not None:
        marks.append((measured.loaded, "answered"))
    result.figures["load_steps_s"] = " ".join(f"{label}@{at - measured.written:.2f}" for at, label in marks)
    hot_samples = measured.samples[hot.name]
    result.figures["hot_p99_by_step_ms"] = {
        f"{label}-{following}": _p99_ms(_window(hot_samples, start, end))
        for (start, label), (end, following) in itertools.pairwise(marks)
    }


def _judge_sync(
    result: ScenarioResult,
    synced: subprocess.CompletedProcess[str],
    repository: Path,
    served: list[Served],
    broken: Served,
) -> None:
    installed = sorted(p.name for p in repository.iterdir() if p.is_dir()) if repository.is_dir() else []
    output = synced.stdout + synced.stderr
    said = [line for line in output.splitlines() if broken.name in line]
    result.figures["sync"] = f"exit {synced.returncode}; on {broken.name}: {said[-1] if said else 'nothing'}"
    result.check(
        "nexus sync installs every usable model, not the broken one",
        set(installed) == {m.name for m in served},
        f"installed {installed}",
    )
    result.check("nexus sync names the broken model", bool(said), said[-1] if said else output[-300:])


def _judge_start(
    result: ScenarioResult,
    config: Config,
    stack: Stack,
    served: list[Served],
    broken: Served,
    states: tuple[str, ...] = ("ready",),
) -> None:
    """Once every usable model is in one of `states` on /v1/models (ready; within a budget, not resident until its
    first request too): the broken one is not served, and a request to it fails cleanly."""
    names = [m.name for m in served]
    ready = wait_until(lambda: _ready(stack.proxy, names, states), config.ready_bound_s, interval_s=0.5)
    doc = _listing(stack.proxy)
    entries = _entries(doc)
    found = {name: entries.get(name, {}).get("state") for name in names}
    result.check(f"every usable model is {' or '.join(states)} on /v1/models", ready, f"{found}")
    shown = entries.get(broken.name)
    result.figures["broken_on_v1_models"] = (
        shown if shown is not None else f"not listed; problems {doc.get('problems')}"
    )
    result.check(
        "the broken model is not served: /v1/models shows its problem, or does not list it",
        shown is None or (shown.get("state") != "ready" and bool(shown.get("problem"))),
        f"{shown}",
    )
    answer = asyncio.run(send_one(dataclasses.replace(broken.work, url=stack.proxy.url)))
    result.figures["broken_answer"] = f"{answer.status} {answer.code}"
    result.check(
        "a request to the broken model is a clean error (4xx or 503), not a 200 or a 5xx",
        400 <= answer.status < 500 or answer.status == 503,
        f"{answer.status} {answer.code}",
    )


def _judge_load(
    result: ScenarioResult, measured: Measured, served: list[Served], added: Served, broken: Served, stack: Stack
) -> None:
    figures = result.figures
    _judge_answers(result, measured.samples, [m.name for m in served])
    ratio = figures["hot_p99_loading_over_steady"]
    result.check(
        f"{served[0].name}'s p99 while {added.name} loads within 1.5x of its steady p99",
        ratio is not None and ratio <= 1.5,
        f"{figures['hot_p99_while_loading_ms']} ms loading vs {figures['hot_p99_steady_ms']} ms steady (x{ratio})",
        timing=True,
    )
    doc = _listing(stack.proxy)
    shown = _entries(doc).get(broken.name)
    result.check(
        "the broken model is still not served at the end, the others unaffected",
        shown is None or shown.get("state") != "ready",
        f"{shown}",
    )


def _judge_answers(result: ScenarioResult, samples: dict[str, list[Sample]], names: list[str]) -> None:
    """No failed request (200, or 429 with Retry-After past the capacity), no 200 with a wrong body, and a 200 from
    every model of `names`."""
    answered = {name: [s for s in found if s.status >= 0] for name, found in samples.items()}
    failed = Counter(
        f"{name} {s.status} {s.code}".strip()
        for name, found in answered.items()
        for s in found
        if s.status not in ALLOWED or (s.status == 429 and not s.retry_after)
    )
    stats = summarize([s for found in answered.values() for s in found])
    result.check(
        "no failed request to the served models (200, or 429 with Retry-After past the capacity)",
        not failed,
        f"{stats.by_status} {stats.by_code}; failed {dict(failed)}",
    )
    result.check(
        "no 200 with a wrong body (each model's own output, computed in-process)",
        stats.wrong_bodies == 0,
        f"{stats.wrong_bodies} wrong of {stats.sent}",
    )
    quiet = [name for name in names if not any(s.status == 200 for s in answered.get(name, []))]
    result.check("every served model answered", not quiet, f"none from {quiet}" if quiet else f"{len(names)} models")


def _judge_added(
    result: ScenarioResult, measured: Measured, added: Served, stack: Stack, pids: dict[str, int | None]
) -> None:
    """The model added mid-run: loaded with nothing restarted, right from its first answer on."""
    load_s = result.figures["load_s"]
    now = stack.pids()
    result.check(
        f"{added.name} answers after its metadata is written, nothing restarted",
        measured.loaded is not None and now == pids and None not in now.values(),
        f"first 200 {load_s} s after the write; processes {pids} -> {now}",
    )
    early = [s for s in measured.probes if s.status in (0, 500) or (s.status == 200 and not s.correct)]
    result.check(
        f"{added.name}: requests before it loaded were refused cleanly (no 500, no hang, no wrong 200)",
        not early,
        f"{result.figures['probes_before_loaded']}",
    )
    since = [s for s in measured.samples[added.name] if s.status >= 0]
    first = [s for s in measured.probes if s.status == 200]
    bad = [s for s in [*first, *since] if s.status not in ALLOWED or (s.status == 200 and not s.correct)]
    result.check(
        f"{added.name} answers right from its first 200 on",
        bool(since) and not bad,
        f"{len(since)} requests after it loaded; {len(bad)} failed or wrong",
    )
    state = _entries(_listing(stack.proxy)).get(added.name, {}).get("state")
    result.check(f"{added.name} is ready on /v1/models", state == "ready", f"state {state}")
    result.check("the proxy stays ready", stack.proxy.get("/readyz")[0] == 200, "/readyz at the end")


def _judge_memory(
    result: ScenarioResult,
    config: Config,
    before: dict[str, residency.Resident],
    after: dict[str, residency.Resident],
    served: list[Served],
    added: Served,
    broken: Served,
) -> None:
    """Every usable model resident with one stub per instance, the broken one not; PSS per model as figures."""
    for when, models, expected in (
        ("start", before, [m.name for m in served]),
        ("end", after, [m.name for m in [*served, added]]),
    ):
        stubs = {name: len(models[name].stubs) if name in models else 0 for name in expected}
        result.check(
            f"at the {when}: every usable model resident ({config.instance_count} stub(s) each), the broken one not",
            all(n == config.instance_count for n in stubs.values()) and broken.name not in models,
            f"stubs {stubs}; resident {sorted(models)}",
        )
    pss = [m.pss_mb for m in after.values()]
    result.figures.update(
        resident_models=len(after),
        stubs_total=sum(len(m.stubs) for m in after.values()),
        stubs_pss_total_mb=round(sum(pss), 1),
        pss_per_model_mb_mean=round(sum(pss) / len(pss), 1) if pss else None,
        pss_per_model_mb_range=f"{min(pss):.1f} - {max(pss):.1f}" if pss else None,
        pss_per_stub_mb_mean=round(sum(pss) / max(1, sum(len(m.stubs) for m in after.values())), 1),
        models_per_gib=residency.models_per_gib(after),
    )
    for name, model in after.items():
        result.figures[f"memory_{name}"] = model.describe()


# ------------------------------------------------------------------------------------------------ within a budget


@dataclass
class Budgeted:
    """What the load within a budget left behind."""

    capacity: LoadStats  # of the hot head, once resident
    rate: float  # offered to the head
    warm: list[traffic.Answer]  # the head's first requests: their models' first loads
    answers: list[traffic.Answer]  # the load's, head and tail
    began: float
    began_wall: float  # time.time() at `began`, for the decider's log
    ended: float


def _within_budget(bed: Bed, config: Config) -> ScenarioResult:
    result = ScenarioResult("many-models", settings=config.__dict__.copy())
    ready = _prepare(bed, config, result, "many-models")
    served, broken, log_dir = ready.served, ready.broken, ready.log_dir
    sizes = _measure_first(bed, config, result, ready)
    budget = residency.budget_for(list(sizes.values()), config.budget_models)
    _budget_setting(result, config, sizes, budget)
    budget_env = {"MODEL_MEMORY_BUDGET": str(budget)}
    triton = bed.triton(
        ready.repository, log_dir, TRITON_ADMIN_KEY=ADMIN_KEY, NEXUS_META_PATH=str(ready.meta_dir), **budget_env
    )
    port = free_port()
    decider = f"http://127.0.0.1:{port}"
    watch = _watcher(
        ready.env, triton, config, log_dir, RESIDENCY_PORT=str(port), RESIDENCY_HOST="127.0.0.1", **budget_env
    )
    try:
        answering = wait_until(lambda: _snapshot(decider) is not None, 60, interval_s=0.5)
        result.check("the decider answers GET /v1/residency", answering, decider)
        proxy = bed.proxy(
            log_dir,
            MODEL_SERVER_URL=triton.grpc_url,
            NEXUS_META_PATH=str(ready.meta_dir),
            MODEL_NAME="",
            RESIDENCY_URL=decider,
            REQUEST_TIMEOUT_MS=str(config.deadline_ms),
        )
        stack = Stack(ready.meta_dir, triton, proxy, watch)
        assert triton.process is not None
        result.figures["resident_at_start"] = sorted(residency.resident(triton.process.pid))
        _judge_start(result, config, stack, served, broken, states=("ready", "not_resident"))
        sampler = residency.Sampler(triton.process.pid, config.sample_interval_s, lambda: _used_bytes(decider))
        with sampler:
            measured = _drive_within(config, stack, served)
        snapshot = _snapshot(decider) or {}
        spans = _load_windows(measured, watch)
        _budget_figures(config, result, measured, served, budget, sampler.readings, snapshot, spans)
        _judge_within(result, config, measured, served, broken, stack, budget, sampler.readings, snapshot)
        return result
    finally:
        watch.stop()


def _measure_first(bed: Bed, config: Config, result: ScenarioResult, ready: Prepared) -> dict[str, int]:
    """Each model's stubs' PSS (bytes), read with every model loaded in a Triton of their own with no budget, after
    one request each (a stub's first forward pass allocates); that Triton is stopped again."""
    log_dir = ready.log_dir / "measured-first"
    log_dir.mkdir()
    triton = bed.triton(ready.repository, log_dir, NEXUS_META_PATH=str(ready.meta_dir))
    try:
        refused = {}
        for model in ready.served:
            try:
                triton_infer(triton, model.name, np.asarray(model.work.rows[:1], dtype=np.float32))
            except Exception as err:  # tritonclient raises its own exception types; the figure names it
                refused[model.name] = f"{type(err).__name__}: {err}"
        assert triton.process is not None
        found = residency.resident(triton.process.pid)
    finally:
        stubs = procinfo.children(triton.process.pid) if triton.process else []
        triton.stop()
        procinfo.reap(stubs)
    stubs_per_model = {m.name: len(found[m.name].stubs) if m.name in found else 0 for m in ready.served}
    result.check(
        f"measured first, no budget: every usable model loaded ({config.instance_count} stub(s) each), answering",
        all(n == config.instance_count for n in stubs_per_model.values()) and not refused,
        f"stubs {stubs_per_model}; refused {refused}",
    )
    for name, model in found.items():
        result.figures[f"memory_{name}"] = model.describe()
    return {name: round(model.pss_mb * 2**20) for name, model in found.items() if name in stubs_per_model}


def _budget_setting(result: ScenarioResult, config: Config, measured: dict[str, int], budget: int) -> None:
    sizes = sorted(measured.values())
    fit = config.budget_models
    result.figures.update(
        budget_mib=round(budget / 2**20, 1),
        budget_rule=f"halfway between the {fit} largest models together ({sum(sizes[-fit:]) / 2**20:.1f} MiB) and "
        f"the {fit + 1} smallest together ({sum(sizes[: fit + 1]) / 2**20:.1f} MiB), their PSS measured first",
        pss_measured_first_mib={name: round(size / 2**20, 1) for name, size in measured.items()},
    )


def _snapshot(decider: str) -> dict[str, Any] | None:
    """The decider's GET /v1/residency; None when it does not answer 200 with a JSON object."""
    try:
        with urllib.request.urlopen(f"{decider}/v1/residency", timeout=2) as response:
            doc = json.loads(response.read())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _used_bytes(decider: str) -> int | None:
    used = (_snapshot(decider) or {}).get("used_bytes")
    return used if isinstance(used, int) else None


def _drive_within(config: Config, stack: Stack, served: list[Served]) -> Budgeted:
    """The head's first requests (their loads), the head's capacity once resident, then the load: the head at its
    shares of `load_fraction` of that capacity, and meanwhile the cold tail one request at a time."""
    works = {m.name: dataclasses.replace(m.work, url=stack.proxy.url) for m in served}
    head = served[: config.budget_models - 1]
    share = shares(len(head), config.zipf_s)
    tail = {m.name: 1 / rank**config.zipf_s for rank, m in enumerate(served, 1) if rank > len(head)}

    async def warm() -> list[traffic.Answer]:
        async with traffic.traced_session(len(head)) as session:
            return list(await asyncio.gather(*(traffic.send(session, m.name, works[m.name], 0) for m in head)))

    async def capacity() -> list[Sample]:
        loops = [
            closed_loop(works[m.name], max(1, round(config.capacity_concurrency * part)), config.capacity_s)
            for m, part in zip(head, share, strict=True)
        ]
        return [sample for samples in await asyncio.gather(*loops) for sample in samples]

    warmed = asyncio.run(warm())
    measured_capacity = summarize(asyncio.run(capacity()))
    rate = max(config.load_fraction * measured_capacity.rate_per_s, 10.0)
    arrivals = traffic.steady_arrivals(
        {m.name: rate * part for m, part in zip(head, share, strict=True)}, config.load_s
    )
    order = traffic.visiting_order(tail, max(len(tail), int(config.load_s / config.cold_pause_s) + 1))

    async def load() -> list[traffic.Answer]:
        hot, cold = await asyncio.gather(
            traffic.scheduled(works, arrivals, config.max_outstanding),
            traffic.one_at_a_time(works, order, config.cold_pause_s, config.load_s, at_least=len(tail)),
        )
        return [*hot, *cold]

    began, began_wall = time.monotonic(), time.time()
    answers = asyncio.run(load())
    return Budgeted(measured_capacity, rate, warmed, answers, began, began_wall, time.monotonic())


def _by_model(answers: list[traffic.Answer]) -> dict[str, list[Sample]]:
    found: dict[str, list[Sample]] = {}
    for answer in answers:
        found.setdefault(answer.model, []).append(answer.sample)
    return found


def _load_windows(measured: Budgeted, watch: ManagedProcess) -> list[tuple[float, float, str]]:
    """The decider's loads and unloads during the load, in time.monotonic() (`residency_windows`)."""
    assert watch.log_file is not None
    shift = measured.began_wall - measured.began
    return [
        (start - shift, end - shift, label)
        for start, end, label in residency_windows(watch.log_file, measured.began_wall)
        if start - shift < measured.ended
    ]


def _hot_windows(
    config: Config, measured: Budgeted, hot: str, spans: list[tuple[float, float, str]]
) -> tuple[list[Sample], list[Sample]]:
    """The hot model's requests sent while the decider loaded or unloaded a model, and those sent outside (past the
    warm-up)."""
    windows = traffic.merge((start, end) for start, end, _ in spans)
    mine = [a.sample for a in measured.answers if a.model == hot and a.sample.status >= 0]
    loading = [s for s in mine if traffic.within(s.started, windows)]
    steady = [
        s for s in mine if s.started >= measured.began + config.warmup_s and not traffic.within(s.started, windows)
    ]
    return loading, steady


def _waits(answers: list[traffic.Answer]) -> str:
    waits = [a.load_wait_ms for a in answers if a.load_wait_ms is not None]
    if not waits:
        return "none waited"
    return (
        f"{len(waits)} waited: p50 {percentile(waits, 50):.0f} ms, p99 {percentile(waits, 99):.0f} ms, "
        f"max {max(waits)} ms"
    )


def _budget_figures(
    config: Config,
    result: ScenarioResult,
    measured: Budgeted,
    served: list[Served],
    budget: int,
    readings: list[residency.Reading],
    snapshot: dict[str, Any],
    spans: list[tuple[float, float, str]],
) -> None:
    stats = summarize([a.sample for a in measured.answers])
    result.load = stats
    head = served[: config.budget_models - 1]
    cold = [a for a in measured.answers if a.model not in {m.name for m in head}]
    waits = [a.load_wait_ms for a in measured.answers if a.load_wait_ms is not None]
    windows = traffic.merge((start, end) for start, end, _ in spans)
    loading, steady = _hot_windows(config, measured, head[0].name, spans)
    p99_loading, p99_steady = _p99_ms(loading), _p99_ms(steady)
    peak = residency.peak(readings)
    reported = [r.reported_bytes for r in readings if r.reported_bytes is not None]
    models = snapshot.get("models") if isinstance(snapshot.get("models"), dict) else {}
    result.figures.update(
        capacity_per_s=measured.capacity.rate_per_s,
        capacity_statuses=measured.capacity.by_status,
        load_setting=f"the {len(head)} hot models at {config.load_fraction:.0%} of their capacity measured just "
        f"before ({measured.rate:.1f}/s), shared 1/rank^{config.zipf_s:g}; the {len(served) - len(head)} cold ones "
        f"one request at a time, {config.cold_pause_s:g} s after the last one's answer, each once first, then by "
        f"1/rank^{config.zipf_s:g}",
        offered_per_s=round(measured.rate, 1),
        achieved_per_s=stats.rate_per_s,
        generator_saturated=sum(1 for a in measured.answers if a.sample.status == -1),
        head_shares_pct={
            m.name: round(100 * part, 1) for m, part in zip(head, shares(len(head), config.zipf_s), strict=True)
        },
        cold_requests=dict(Counter(a.model for a in cold)),
        cold_timeline=" ".join(
            f"{a.model}@{a.sample.started - measured.began:.1f}s:{a.sample.status}/{a.load_wait_ms}ms" for a in cold
        ),
        first_loads=_waits(measured.warm),
        load_waits=_waits(measured.answers),
        cold_load_p50_ms=round(percentile(waits, 50)) if waits else None,
        cold_load_p99_ms=round(percentile(waits, 99)) if waits else None,
        residency_windows=f"{sum(1 for *_, label in spans if label.startswith('load'))} loads and "
        f"{sum(1 for *_, label in spans if label.startswith('unload'))} unloads, {len(windows)} windows, "
        f"{sum(end - start for start, end in windows):.1f} s of {measured.ended - measured.began:.1f} s",
        residency_steps=" ".join(
            f"{label}@{start - measured.began:.1f}-{end - measured.began:.1f}s" for start, end, label in spans
        ),
        pss_peak_mib=round(peak.stubs_bytes / 2**20, 1) if peak else None,
        pss_peak_vs_budget=f"{peak.stubs_bytes / 2**20:.1f} of {budget / 2**20:.1f} MiB "
        f"({100 * peak.stubs_bytes / budget:.1f}%), resident then {sorted(peak.models)}"
        if peak
        else "no reading",
        pss_readings=len(readings),
        pss_over_budget=" ".join(
            f"@{r.at - measured.began:.1f}s:{r.stubs_bytes / 2**20:.1f}MiB{sorted(r.models)}"
            for r in readings
            if r.stubs_bytes > budget
        )
        or "none",
        max_resident_models=max((len(r.models) for r in readings), default=0),
        decider_used_peak_mib=round(max(reported) / 2**20, 1) if reported else None,
        decider_budget_mib=round(snapshot["budget_bytes"] / 2**20, 1)
        if isinstance(snapshot.get("budget_bytes"), int)
        else None,
        decider_loads=sum(int(m.get("loads") or 0) for m in models.values() if isinstance(m, dict)),
        decider_evictions=sum(int(m.get("evictions") or 0) for m in models.values() if isinstance(m, dict)),
        decider_by_model={
            name: f"{m.get('state')}, loads {m.get('loads')}, evictions {m.get('evictions')}, "
            f"{(m.get('bytes') or 0) / 2**20:.1f} MiB, last load {m.get('last_load_s')} s"
            for name, m in models.items()
            if isinstance(m, dict)
        },
        hot_model=head[0].name,
        hot_p99_steady_ms=p99_steady,
        hot_p99_while_loading_ms=p99_loading,
        hot_p99_loading_over_steady=round(p99_loading / p99_steady, 2) if p99_steady else None,
        hot_requests_steady_loading=f"{len(steady)} / {len(loading)}",
        hot_p99_by_step_ms={
            kind: _p99_ms(_hot_windows(config, measured, head[0].name, [w for w in spans if w[2].startswith(kind)])[0])
            for kind in ("load", "unload")
        },
        hot_p99_by_load_phase_ms={
            phase: _p99_ms(_hot_windows(config, measured, head[0].name, windows)[0])
            for phase, windows in load_phases(spans).items()
        },
    )
    by_model = _by_model(measured.answers)
    for model in served:
        result.figures[f"traffic_{model.name}"] = _describe(by_model.get(model.name, []))
    result.notes.append(
        f"Load ran {measured.ended - measured.began:.1f} s after the hot models' first loads and a capacity "
        f"measurement of {config.capacity_s:g} s. A load window is a load or an unload of the decider's (from its "
        "log: each line's time less the seconds it says it took); the hot model's p99 while loading is over its "
        f"requests sent inside one, its steady p99 over those sent outside them from {config.warmup_s:g} s in."
    )


def _judge_within(
    result: ScenarioResult,
    config: Config,
    measured: Budgeted,
    served: list[Served],
    broken: Served,
    stack: Stack,
    budget: int,
    readings: list[residency.Reading],
    snapshot: dict[str, Any],
) -> None:
    first = [a for a in measured.warm if a.sample.status != 200 or not a.sample.correct]
    result.check(
        "the hot models' first requests, sent at once with nothing loaded, answered right (their loads in turn)",
        not first,
        f"{_waits(measured.warm)}; failed {[f'{a.model} {a.sample.status} {a.sample.code}' for a in first]}",
    )
    _judge_answers(result, _by_model(measured.answers), [m.name for m in served])
    peak = residency.peak(readings)
    result.check(
        f"the stubs' PSS never above the budget (read every {config.sample_interval_s:g} s under tritonserver)",
        peak is not None and peak.stubs_bytes <= budget,
        result.figures["pss_peak_vs_budget"] + f"; {len(readings)} readings",
    )
    reported = [r.reported_bytes for r in readings if r.reported_bytes is not None]
    result.check(
        "the decider holds the same budget and never counts more",
        snapshot.get("budget_bytes") == budget and bool(reported) and max(reported) <= budget,
        f"budget {snapshot.get('budget_bytes')} (ours {budget}); used at most "
        f"{max(reported) if reported else None} in {len(reported)} readings",
    )
    models = snapshot.get("models") if isinstance(snapshot.get("models"), dict) else {}
    unloaded = [m.name for m in served if not (models.get(m.name) or {}).get("loads")]
    evictions = result.figures["decider_evictions"]
    result.check(
        "every model loaded on its first request, and models evicted to make room (the decider's counts)",
        not unloaded and evictions > 0,
        f"never loaded {unloaded}; loads {result.figures['decider_loads']}, evictions {evictions}",
    )
    head = {m.name for m in served[: config.budget_models - 1]}
    cold = [a for a in measured.answers if a.model not in head and a.sample.status >= 0]
    result.check(
        "requests for a model not loaded waited for its load (Nexus-Load-Wait-Ms)",
        any(a.load_wait_ms is not None for a in cold),
        result.figures["load_waits"],
    )
    ratio = result.figures["hot_p99_loading_over_steady"]
    result.check(
        f"{served[0].name}'s p99 while another model loads within 1.5x of its steady p99",
        ratio is not None and ratio <= 1.5,
        f"{result.figures['hot_p99_while_loading_ms']} ms loading vs {result.figures['hot_p99_steady_ms']} ms "
        f"steady (x{ratio})",
        timing=True,
    )
    shown = _entries(_listing(stack.proxy)).get(broken.name)
    result.check(
        "the broken model is failed at the end, with the watcher's cause (integrity), the others unaffected",
        shown is not None and shown.get("state") == "failed" and "integrity" in str(shown.get("problem")),
        f"{shown}",
    )
    result.check("the proxy stays ready", stack.proxy.get("/readyz")[0] == 200, "/readyz at the end")
