"""Many models behind one data plane: a directory of metadata files, a Zipf-like mix of traffic across them, one
model broken from the start and one more added while the others serve.

The control plane is this scenario. It publishes demo models of different shapes and sizes (`MODELS`: input
width, output values, hidden size, depth; the first `models` of them) to a bucket of its own and writes one
metadata file per model into one directory, with one more model whose metadata names an artifact of another
sha256 (the sync refuses it). Then `nexus sync` on the directory, Triton on the repository (every model loaded
at its start; an admin key, for the watcher), the proxy (`NEXUS_META_PATH` the directory, `MODEL_NAME` empty:
every model) and `nexus watch` on the directory, each a process of its own, as deployed.

Load: the capacity of the mix is measured first (a closed loop per model, its clients in proportion to its share,
`capacity_s`), then an open loop per model offers `load_fraction` of it for the whole run. The model ranked r
gets a share proportional to 1/r^`zipf_s`: a few hot models, a long tail. Every request is a
`POST /models/{name}/predict`, every 200's body checked against that model's output computed in-process (the same
DemoSpec, hence the same weights). After `before_s`, the metadata of one more model (`ADDED`) is written into
the directory (atomically): the watcher must load it with nothing restarted. It is sent a request every
`probe_interval_s` from the write to its first answer (the load time), then joins the mix with the tail's share
for `after_s`.

Memory: a model is resident while Triton holds its Python-backend stubs, one process per instance
(`INSTANCE_COUNT`); their PSS per model (`reliability.residency`), read once the models are loaded and again at
the end, is what one resident model costs, and gives the models per GiB. Every usable model is resident: there
is no memory budget.

Pass criteria: the sync installs every usable model and not the broken one; the usable models are ready on
/v1/models and the broken one is not (listed with its problem, or not served), a request to it a clean error;
no failed request to the served models (200, or 429 with Retry-After past the capacity), no 200 with a wrong
body; the added model answers with no restart (same Triton, proxy and watcher processes), right from its first
200 on, and is ready on /v1/models; every usable model resident, one stub per instance, the broken one not;
[timing] the hot model's p99 while the new one loads within 1.5x of its steady p99. Figures: the load time,
those p99s, each model's requests and p99, the memory per model.
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
from nexusml.testing.servers import ProxyProcess
from nexusml.triton.server import TritonServer
from reliability import procinfo, residency
from reliability.bed import Bed, wait_until
from reliability.load import LoadStats, Sample, Workload, closed_loop, open_loop, send_one, summarize
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


@dataclass(frozen=True)
class Config:
    models: int = 4  # how many of MODELS are published at the start
    zipf_s: float = 1.0
    capacity_s: float = 2.0
    capacity_concurrency: int = 32
    load_fraction: float = 0.5
    before_s: float = 8.0
    after_s: float = 6.0
    warmup_s: float = 1.0  # the first seconds of load (connections opening) are left out of the steady p99
    probe_interval_s: float = 0.05
    load_bound_s: float = 180.0  # how long the added model may take to answer before the scenario gives up
    ready_bound_s: float = 300.0  # how long the models may take to be ready at the start (a bound, no verdict)
    poll_interval_s: float = 0.5  # WATCH_INTERVAL_S
    instance_count: int = 1  # INSTANCE_COUNT: stubs per model
    rows: int = 32
    max_outstanding: int = 256  # per model's open loop

    @classmethod
    def long(cls, duration_s: float) -> Config:
        """All of MODELS, with the sync's default of two instances each, for several minutes."""
        return cls(
            models=len(MODELS),
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


def run(bed: Bed, config: Config = Config()) -> ScenarioResult:
    result = ScenarioResult("many-models", settings=config.__dict__.copy())
    log_dir = bed.path("many-models")
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
    }
    served, added, broken = _publish(bed, config, log_dir)
    for model in [*served, broken]:
        _write_atomically(meta_dir / f"{model.name}.json", model.meta)
    synced = subprocess.run(list(SYNC_COMMAND), env=env, capture_output=True, text=True, timeout=600)
    _judge_sync(result, synced, repository, served, broken)
    triton = bed.triton(repository, log_dir, TRITON_ADMIN_KEY=ADMIN_KEY)
    proxy = bed.proxy(log_dir, MODEL_SERVER_URL=triton.grpc_url, NEXUS_META_PATH=str(meta_dir), MODEL_NAME="")
    watch = _watcher(env, triton, config, log_dir)
    try:
        stack = Stack(meta_dir, triton, proxy, watch)
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


def _publish(bed: Bed, config: Config, log_dir: Path) -> tuple[list[Served], Served, Served]:
    """Export and upload every model before any load (torch on the CPU); the broken one's metadata names its
    artifact with another sha256."""
    with contextlib.suppress(Exception):  # already there (a second run on the same S3)
        bed.s3_client.create_bucket(Bucket=BUCKET)

    def published(spec: demo.DemoSpec) -> Served:
        meta = demo.publish(spec, bed.s3_client, BUCKET, log_dir / "published" / spec.name)
        rows = np.random.default_rng(spec.seed).normal(size=(config.rows, spec.width)).round(3).tolist()
        expected = np.asarray(demo.reference_outputs(spec, rows)[0]).tolist()
        work = Workload("", rows, expected, path=f"/models/{spec.name}/predict", timeout_s=30)
        return Served(spec, meta, work)

    served = [published(spec) for spec in MODELS[: config.models]]
    added = published(ADDED)
    broken = published(BROKEN)
    wrong = dataclasses.replace(broken.meta.artifact, sha256=hashlib.sha256(b"another artifact").hexdigest())
    return served, added, dataclasses.replace(broken, meta=dataclasses.replace(broken.meta, artifact=wrong))


def _watcher(env: dict[str, str], triton: TritonServer, config: Config, log_dir: Path) -> ManagedProcess:
    """`nexus watch` on the directory, ready once its metrics answer."""
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


def _ready(proxy: ProxyProcess, names: Iterable[str]) -> bool:
    entries = _entries(_listing(proxy))
    return all(entries.get(name, {}).get("state") == "ready" for name in names)


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


def _judge_start(result: ScenarioResult, config: Config, stack: Stack, served: list[Served], broken: Served) -> None:
    """Once every usable model is ready on /v1/models: the broken one is not, and a request to it fails cleanly."""
    names = [m.name for m in served]
    ready = wait_until(lambda: _ready(stack.proxy, names), config.ready_bound_s, interval_s=0.5)
    doc = _listing(stack.proxy)
    entries = _entries(doc)
    states = {name: entries.get(name, {}).get("state") for name in names}
    result.check("every usable model is ready on /v1/models", ready, f"{states}")
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
    stats, figures = result.load, result.figures
    assert stats is not None
    answered = {name: [s for s in samples if s.status >= 0] for name, samples in measured.samples.items()}
    failed = Counter(
        f"{name} {s.status} {s.code}".strip()
        for name, samples in answered.items()
        for s in samples
        if s.status not in ALLOWED or (s.status == 429 and not s.retry_after)
    )
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
    quiet = [m.name for m in served if not any(s.status == 200 for s in answered[m.name])]
    result.check("every served model answered", not quiet, f"none from {quiet}" if quiet else f"{len(served)} models")
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
