"""`nexus watch`: notice new metadata and put its version live without downtime (`nexusml.updates.swap`).

The control plane publishes a version by writing a new `.nexus_meta.json`, locally or, with `WATCH_META_URI`,
as an S3 object (polled by ETag), or many models' under an S3 prefix (mirrored into the metadata directory,
`nexusml.sync.mirror`). Every `WATCH_INTERVAL_S` the watcher reads it; when it names something other
than what `config.pbtxt` serves, it runs a swap. An older version is a rollback and takes the same path.

With a directory of metadata the `CatalogWatcher` follows every
model: a changed file is that model's swap, a new model is the same swap with nothing served before, a model whose
file was removed is unloaded (Triton lets its in-flight requests finish) and its folder deleted. A file that turns
unusable keeps its model's served version: which model a file published is remembered in the repository
(`nexusml.core.catalog.departed`). Swaps run one at a time, and one model's failure touches no other.

A swap that fails for a reason that belongs to the version (metadata, missing object, integrity, load, smoke
test) marks that metadata failed in `<repository>/.nexus_watch.json`, logged in one line with its cause, so it is
not retried in a loop (nor after a restart); the old version keeps serving. Writing a different metadata (a fixed
artifact, another version) is tried afresh. A failure that belongs to the moment (S3 or Triton unreachable, the
disk) is retried at the next poll. Prometheus metrics on `WATCH_METRICS_PORT` count swaps started, succeeded and
failed by cause, and show the version served and the one being tried.

With MIN_INSTANCE_COUNT below INSTANCE_COUNT, instances follow traffic (`Following.scale`, every poll): a model is
served with MIN_INSTANCE_COUNT instances, goes to INSTANCE_COUNT when its requests waited in Triton's queue longer
than its batcher's delay plus SCALE_UP_QUEUE_MS on average over the last poll (`scaling`), and back to
MIN_INSTANCE_COUNT after SCALE_DOWN_IDLE_S without such queueing and with work that MIN_INSTANCE_COUNT instances
would do at most half busy (`quiet`). A change writes the served version's config with
the new count and loads it (`Swapper.scale`); Triton serves the old instances until the new ones are loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from nexusml.core import catalog, metadata
from nexusml.core.catalog import Catalog
from nexusml.core.errors import (
    ArtifactNotFound,
    IntegrityError,
    MetadataError,
    ModelLoadFailed,
    NexusError,
    SettingsError,
    SmokeTestFailed,
    UnsafeArchive,
)
from nexusml.core.memory import Memory
from nexusml.core.metadata import ModelMetadata
from nexusml.core.settings import MEMORY_BUDGET, MODEL_SERVER_URL, PINNED_MODELS, RESIDENCY_KEY, env, nested
from nexusml.sync import mirror, storage
from nexusml.sync.mirror import S3Mirror
from nexusml.sync.repository import disk_errors
from nexusml.sync.settings import SyncSettings
from nexusml.sync.triton_config import from_pbtxt, instance_count
from nexusml.triton.settings import ADMIN_KEY
from nexusml.updates.residency import Residency
from nexusml.updates.swap import ModelStats, Swapper, TritonAdmin, served

log = logging.getLogger(__name__)

STATE_FILE = ".nexus_watch.json"
# Failures that belong to the version: marked, never retried for the same metadata.
PERMANENT = (MetadataError, ArtifactNotFound, IntegrityError, UnsafeArchive, ModelLoadFailed, SmokeTestFailed)


@dataclass(frozen=True)
class WatchSettings:
    """`nexus watch`: new metadata -> install, smoke test, switch under traffic, or roll back."""

    interval_s: float = env(
        "WATCH_INTERVAL_S",
        2.0,
        "seconds between two reads of the metadata (file or S3 object); 0 turns the watcher off in `nexus up`",
        float,
        minimum=0,
        maximum=86400,
    )
    triton_url: str = MODEL_SERVER_URL.field()  # its repository API and the smoke test, over gRPC only
    admin_key: str | None = ADMIN_KEY.field()
    load_timeout_s: float = env(
        "WATCH_LOAD_TIMEOUT_S",
        600.0,
        "longest one Triton call of a swap may take (loading a model included)",
        float,
        minimum=1,
        maximum=86400,
    )
    metrics_port: int = env(
        "WATCH_METRICS_PORT", 9102, "port of the watcher's Prometheus metrics; 0: none", int, minimum=0, maximum=65535
    )
    metrics_host: str = env("WATCH_METRICS_HOST", "127.0.0.1", "address the watcher's metrics bind")
    scale_up_queue_ms: float = env(
        "SCALE_UP_QUEUE_MS",
        10.0,
        "with MIN_INSTANCE_COUNT: a model goes to INSTANCE_COUNT instances when its requests waited in Triton's "
        "queue longer than its batcher's delay plus this, on average over one poll",
        float,
        minimum=0,
    )
    scale_down_idle_s: float = env(
        "SCALE_DOWN_IDLE_S",
        300.0,
        "with MIN_INSTANCE_COUNT: a scaled-up model goes back to MIN_INSTANCE_COUNT after this long without such "
        "queueing",
        float,
        minimum=0,
    )
    memory_budget: int | None = MEMORY_BUDGET.field()
    pinned: tuple[str, ...] = PINNED_MODELS.field()
    residency_port: int = env(
        "RESIDENCY_PORT",
        9103,
        "with MODEL_MEMORY_BUDGET: port of the API through which the proxy asks for a model to be loaded; 0: none",
        int,
        minimum=0,
        maximum=65535,
    )
    residency_host: str = env("RESIDENCY_HOST", "127.0.0.1", "address the residency API binds")
    residency_key: str | None = RESIDENCY_KEY.field()
    sync: SyncSettings = nested(SyncSettings)

    def validate(self) -> None:
        if self.memory_budget is not None and not self.residency_port:
            raise SettingsError("MODEL_MEMORY_BUDGET needs RESIDENCY_PORT: nothing else can ask for a model's load")
        if not self.triton_url.startswith("grpc://"):
            # A load over HTTP stalls Triton's HTTP inferences (`TritonAdmin`): the watcher talks gRPC only.
            raise SettingsError(f"MODEL_SERVER_URL={self.triton_url}: the watcher wants Triton's gRPC address, grpc://")


class Source(Protocol):
    def read(self) -> tuple[str, str]:
        """(text of the metadata, where it came from); raises `NexusError`."""
        ...

    def changed(self) -> bool:
        """Whether the metadata may have changed since the last `read` (cheap: a stat, an ETag)."""
        ...


class CatalogSource(Protocol):
    def read(self) -> Catalog:
        """Every model published (a listing that fails raises `NexusError`: then nothing changes)."""
        ...

    def changed(self) -> bool:
        """Whether any metadata may have changed since the last `read`."""
        ...


class FileSource:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: tuple[float, int] | None = None

    def changed(self) -> bool:
        try:
            stat = self.path.stat()
        except OSError:
            return self.seen is not None
        return (stat.st_mtime, stat.st_size) != self.seen

    def read(self) -> tuple[str, str]:
        try:
            stat = self.path.stat()
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise MetadataError(f"{self.path}: cannot read metadata ({err})") from err
        self.seen = (stat.st_mtime, stat.st_size)
        return text, str(self.path)


class S3Source:
    """The metadata as an S3 object: a HEAD per poll, a GET when its ETag changed."""

    def __init__(self, uri: str, settings: SyncSettings) -> None:
        self.location = storage.locate(uri, settings.s3.model_bucket)
        self.endpoint = settings.s3.endpoint_url
        self.client = storage.client(settings.s3)
        self.etag: str | None = None

    def changed(self) -> bool:
        with storage.s3_errors(self.location, self.endpoint):
            head = self.client.head_object(Bucket=self.location.bucket, Key=self.location.key)
        return head.get("ETag") != self.etag

    def read(self) -> tuple[str, str]:
        with storage.s3_errors(self.location, self.endpoint):
            got = self.client.get_object(Bucket=self.location.bucket, Key=self.location.key)
            body = got["Body"].read()
        self.etag = got.get("ETag")
        try:
            return body.decode("utf-8"), str(self.location)
        except UnicodeDecodeError as err:
            raise MetadataError(f"{self.location}: metadata is not UTF-8 text") from err


class DirectorySource:
    """A directory of metadata files, fingerprinted by `catalog.stamp` (names, mtimes, sizes) each poll."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: catalog.Stamp | None = None

    def changed(self) -> bool:
        try:
            return catalog.stamp(self.path) != self.seen
        except MetadataError:
            return True  # read() says why

    def read(self) -> Catalog:
        stamp = catalog.stamp(self.path)
        found = catalog.read(self.path)
        self.seen = stamp
        return found


class MirroredSource(DirectorySource):
    """The directory that an `S3Mirror` keeps in line with its prefix, pulled before each look: then read as any
    directory of metadata, which the proxy reads too."""

    def __init__(self, mirrored: S3Mirror) -> None:
        super().__init__(mirrored.directory)
        self.mirror = mirrored

    def changed(self) -> bool:
        self.mirror.pull()
        return super().changed()


# Subjects of `_told` about the models' load (scaling, healing, statistics), not about the metadata.
_LOAD_SUBJECTS = ("scale ", "heal ", "statistics", "index")
# Triton's reason for a model that was unloaded through its API, not one that failed to load.
UNLOADED = "unloaded"
# A served model Triton could not load is loaded again after this long, then twice as long each time, up to the cap.
HEAL_BACKOFF_S = 30.0
HEAL_BACKOFF_MAX_S = 600.0

# A scaled-up model goes down only while MIN_INSTANCE_COUNT instances would have been at most this busy (`quiet`).
QUIET_SHARE = 0.5


def queueing(before: ModelStats, now: ModelStats, delay_us: int, settings: WatchSettings) -> bool:
    """Whether the requests of the last poll (`before` -> `now`, cumulative) waited in Triton's queue for want of an
    instance.

    The batcher holds a request at most its delay (`max_queue_delay_microseconds`) for a batch to form while an
    instance is free; a mean wait beyond that (plus SCALE_UP_QUEUE_MS, against noise) means batches waited for a
    busy instance."""
    queued = now.queued - before.queued
    waited_ns = now.queue_ns - before.queue_ns
    return queued > 0 and waited_ns / queued > delay_us * 1e3 + settings.scale_up_queue_ms * 1e6


def quiet(before: ModelStats, now: ModelStats, elapsed_s: float, settings: WatchSettings) -> bool:
    """Whether the last poll's work (`before` -> `now`, over `elapsed_s`) would have kept MIN_INSTANCE_COUNT
    instances at most `QUIET_SHARE` busy: traffic that a scaled-up model spreads without queueing but that would
    queue again on fewer instances keeps it up (instead of going down and up every SCALE_DOWN_IDLE_S)."""
    low = settings.sync.instance_range[0]
    return now.busy_ns - before.busy_ns <= QUIET_SHARE * low * elapsed_s * 1e9


def scaling(busy: bool, count: int, calm_s: float | None, settings: WatchSettings) -> int | None:
    """The instance count a model of `count` instances goes to, or None to leave it.

    `busy` (`queueing`): INSTANCE_COUNT at once (one load, not several). Down to MIN_INSTANCE_COUNT once `calm_s`,
    the seconds since the last poll that queued or was not `quiet` (None: this one), reaches SCALE_DOWN_IDLE_S."""
    low, high = settings.sync.instance_range
    if busy:
        return high if count < high else None
    if count > low and calm_s is not None and calm_s >= settings.scale_down_idle_s:
        return low
    return None


@dataclass
class _Load:
    """What the scaling remembers of one model between polls."""

    stats: ModelStats
    at: float  # monotonic time of `stats`
    busy_at: float  # monotonic time it last queued or was not quiet, or was first seen or scaled


def digest(meta: ModelMetadata) -> str:
    """One metadata's identity: what the failed marks are keyed by."""
    return hashlib.sha256(meta.to_json().encode()).hexdigest()


class FailedVersions:
    """Metadata whose swap failed for good, kept in the repository so a restart does not retry it."""

    def __init__(self, repository: Path) -> None:
        self.path = repository / STATE_FILE
        try:
            self.entries: dict[str, dict[str, object]] = json.loads(self.path.read_text()).get("failed", {})
        except (OSError, ValueError, AttributeError):
            self.entries = {}

    def cause(self, meta: ModelMetadata) -> str | None:
        entry = self.entries.get(digest(meta))
        return None if entry is None else str(entry.get("cause"))

    def mark(self, meta: ModelMetadata, cause: str) -> None:
        self.entries[digest(meta)] = {"name": meta.name, "version": meta.version, "cause": cause, "at": time.time()}
        tmp = self.path.with_name(f".{STATE_FILE}.tmp")
        with disk_errors(f"cannot write {self.path}"):
            tmp.write_text(json.dumps({"failed": self.entries}, indent=2) + "\n")
            tmp.replace(self.path)


class WatchMetrics:
    """Totals over every model (unlabelled, as with one model) and, per model, the version served and the swaps.

    The `model` label is bounded by the models published; a removed model's version series goes with it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.started = Counter("nexus_model_swaps_started", "swaps begun", registry=self.registry)
        self.succeeded = Counter("nexus_model_swaps_succeeded", "swaps that put a version live", registry=self.registry)
        self.failed = Counter(
            "nexus_model_swaps_failed", "swaps that failed, by cause (error code)", ["cause"], registry=self.registry
        )
        self.served = Gauge(
            "nexus_model_served_version",
            "version config.pbtxt serves (one metadata file; with a directory see nexus_model_version)",
            registry=self.registry,
        )
        self.trying = Gauge(
            "nexus_model_trying_version", "version being swapped in, of any model; 0: none", registry=self.registry
        )
        self.version = Gauge("nexus_model_version", "version each model serves", ["model"], registry=self.registry)
        self.outcomes = Counter(
            "nexus_model_swaps_by_model",
            "swaps of each model by outcome: succeeded, or the failure's cause",
            ["model", "outcome"],
            registry=self.registry,
        )

        self.instances = Gauge(
            "nexus_model_instances", "instances each model's config asks for", ["model"], registry=self.registry
        )
        self.scalings = Counter(
            "nexus_model_scalings",
            "instance count changes of each model: up, down, or failed",
            ["model", "direction"],
            registry=self.registry,
        )

    def forget(self, model: str) -> None:
        """A removed model's gauges go (its swap and scaling counts stay: counters only grow)."""
        for gauge in (self.version, self.instances):
            with contextlib.suppress(KeyError):
                gauge.remove(model)


class Following:
    """What both watchers do with one model's metadata: compare with what is served, swap when it differs.

    A standing problem (unusable metadata, a swap retried, a version failed before) is logged once per subject (a
    model or a file), not every poll."""

    def __init__(self, settings: WatchSettings, swapper: Swapper) -> None:
        self.settings = settings
        self.swapper = swapper
        self.failed = FailedVersions(settings.sync.repository)
        self.metrics = WatchMetrics()
        self._told: dict[str, str] = {}  # subject -> the last problem logged about it
        self._loads: dict[str, _Load] = {}
        self._scale_retry: dict[str, tuple[float, int]] = {}  # a model whose change failed: (next try, failures)
        self.residency: Residency | None = None
        if settings.memory_budget is not None:
            self.residency = Residency(settings.memory_budget, settings.pinned, swapper, self.metrics.registry)

    def scale(self) -> dict[str, str]:
        """One look at Triton's statistics; scales each model the rule (`scaling`) says, one at a time.

        Nothing (not even the statistics call) when MIN_INSTANCE_COUNT is unset or INSTANCE_COUNT. Returns the
        changes made or tried, by model. A failed change leaves the old config (`Swapper.scale`), tried again at
        the next poll that still wants it."""
        low, high = self.settings.sync.instance_range
        if low == high:
            return {}
        try:
            stats = self.swapper.admin.statistics()
        except NexusError as err:
            self._tell("statistics", f"instances not scaled: {err}")
            return {}
        self._told.pop("statistics", None)
        now = time.monotonic()
        models = set(self.swapper.repo.models())
        self._loads = {name: load for name, load in self._loads.items() if name in models}
        changes = {}
        for name in sorted(models & set(stats)):
            load = self._loads.get(name)
            reloaded = load is not None and (
                stats[name].queued < load.stats.queued or stats[name].busy_ns < load.stats.busy_ns
            )
            if load is None or reloaded:  # first seen, or its statistics started again: a new baseline
                self._loads[name] = _Load(stats[name], now, now if load is None else load.busy_at)
                continue
            if self._scale_retry.get(name, (0.0, 0))[0] > now:  # a failed change backs off
                continue
            text = self.swapper.repo.config_text(name)
            if text is None:
                continue
            config = from_pbtxt(text)
            count = instance_count(config)
            self.metrics.instances.labels(name).set(count)
            delay = int(config.get("dynamic_batching", {}).get("max_queue_delay_microseconds", 0))
            busy = queueing(load.stats, stats[name], delay, self.settings)
            calm = not busy and quiet(load.stats, stats[name], now - load.at, self.settings)
            if not calm:
                load.busy_at = now
            load.stats, load.at = stats[name], now
            target = scaling(busy, count, now - load.busy_at if calm else None, self.settings)
            if target is not None and target > count and not self._room_to_scale(name, count, target):
                continue
            if target is not None:
                why = "queueing" if busy else f"quiet for {now - load.busy_at:.0f} s"
                changes[name] = self._rescale(name, count, target, why)
                if self.residency is not None:
                    self.residency.release(name)
        return changes

    def _room_to_scale(self, name: str, count: int, target: int) -> bool:
        """Within MODEL_MEMORY_BUDGET, more instances need their memory first (idle models unloaded for it)."""
        if self.residency is None:
            return True
        whole = self.residency.estimate(name)
        per_instance = Memory(whole.host // max(count, 1), whole.device // max(count, 1))
        if self.residency.room_for(name, per_instance * (target - count)):
            self._told.pop(f"scale {name}", None)
            return True
        self._tell(f"scale {name}", f"{name}: not scaled up to {target} instances: no room in MODEL_MEMORY_BUDGET now")
        return False

    def _rescale(self, name: str, count: int, target: int, why: str) -> str:
        direction = "up" if target > count else "down"
        started = time.monotonic()
        try:
            changed = self.swapper.scale(name, target)
        except NexusError as err:
            # Triton's statistics still say what made the change wanted: without a back-off every poll would load
            # INSTANCE_COUNT new instances beside the serving ones again (memory the failure may have been short of).
            failures = self._scale_retry.get(name, (0.0, 0))[1] + 1
            wait = min(HEAL_BACKOFF_S * 2 ** (failures - 1), HEAL_BACKOFF_MAX_S)
            self._scale_retry[name] = (time.monotonic() + wait, failures)
            self.metrics.scalings.labels(name, "failed").inc()
            self._tell(
                f"scale {name}",
                f"{name}: scaling {count} -> {target} instances failed ({err.code}: {err}); {count} keep serving; "
                f"next try in {wait:g} s",
            )
            return f"failed: {err.code}"
        self._scale_retry.pop(name, None)
        self._told.pop(f"scale {name}", None)
        self._loads.pop(name, None)  # a reload starts Triton's statistics again: the next poll takes a new baseline
        if not changed:  # its served version unknown (no record), or already at `target`
            return "unchanged"
        self.metrics.scalings.labels(name, direction).inc()
        self.metrics.instances.labels(name).set(target)
        log.info(
            "%s scaled %s: %d -> %d instances (%s; loaded in %.1f s)",
            name,
            direction,
            count,
            target,
            why,
            time.monotonic() - started,
        )
        return direction

    def follow(self, meta: ModelMetadata) -> str:
        """Swap to `meta` unless it is served or failed before; returns what happened."""
        current = served(self.swapper.repo, meta.name)
        if current is not None:
            self.metrics.version.labels(meta.name).set(current.version)
        if current == meta:
            self._told.pop(meta.name, None)
            return "served"
        cause = self.failed.cause(meta)
        if cause is not None:
            self._tell(
                meta.name, f"{meta.name} version {meta.version} failed before ({cause}); not retried", logging.INFO
            )
            if current is None:
                self._not_installed(meta, cause)
            return "failed before"
        return self._swap(meta, current)

    def _swap(self, meta: ModelMetadata, current: ModelMetadata | None) -> str:
        was = f"version {current.version}" if current else "nothing"
        kind = "rollback" if current is not None and meta.version < current.version else "update"
        log.info("%s %s: %s -> version %d", kind, meta.name, was, meta.version)
        self.metrics.started.inc()
        self.metrics.trying.set(meta.version)
        started = time.monotonic()
        try:
            resident = self._make_room_to_swap(meta)
            self.swapper.swap(meta, on_step=lambda step: log.info("%s version %d: %s", meta.name, meta.version, step))
        except NexusError as err:
            self._count(meta.name, err.code)
            if isinstance(err, PERMANENT):
                self.failed.mark(meta, f"{err.code}: {err}")
                if current is None:
                    self._not_installed(meta, f"{err.code}: {err}")
                log.error(
                    "%s version %d not served (%s: %s); %s keeps serving", meta.name, meta.version, err.code, err, was
                )
                self._told.pop(meta.name, None)
                return f"failed: {err.code}"
            self._tell(
                meta.name, f"{meta.name} version {meta.version}: {err}; retrying every {self.settings.interval_s:g} s"
            )
            if current is None and self.residency is not None:  # an earlier version's cause is not this one's
                self.residency.not_installed(meta.name, None)
            return f"retry: {err.code}"
        except Exception as err:  # a bug of ours: said (once, with its trace), retried, the version not marked
            self._count(meta.name, "internal")
            message = f"{meta.name} version {meta.version}: the swap failed unexpectedly ({err!r}); {was} keeps serving"
            if message != self._told.get(meta.name):
                log.exception("%s", message)
                self._told[meta.name] = message
            return "retry: internal"
        finally:
            self.metrics.trying.set(0)
            if self.residency is not None:
                self.residency.release(meta.name)
        self.metrics.succeeded.inc()
        self.metrics.outcomes.labels(meta.name, "succeeded").inc()
        self.metrics.version.labels(meta.name).set(meta.version)
        self._told.pop(meta.name, None)
        log.info("%s version %d is live (%.1f s)", meta.name, meta.version, time.monotonic() - started)
        if self.residency is not None:
            self.residency.not_installed(meta.name, None)
            if not resident:
                self.residency.settle_new(meta.name)
        return "swapped"

    def _not_installed(self, meta: ModelMetadata, cause: str) -> None:
        if self.residency is not None:
            self.residency.not_installed(meta.name, f"model {meta.name} version {meta.version} not installed ({cause})")

    def _make_room_to_swap(self, meta: ModelMetadata) -> bool:
        """Within a budget, room for the candidate beside what is loaded; returns whether the model was loaded before
        (a model that was not is unloaded again after its swap: traffic brings it in)."""
        if self.residency is None:
            return True
        resident = meta.name in self.residency.loaded()
        if not self.residency.room_for(meta.name, self.residency.estimate(meta.name)):
            # A version waits for no one's traffic to end: the budget is exceeded for the swap's duration, said here.
            log.warning(
                "%s version %d: no room in MODEL_MEMORY_BUDGET for its candidate beside the busy models; swapping "
                "over the budget",
                meta.name,
                meta.version,
            )
        return resident

    def _count(self, model: str, cause: str) -> None:
        self.metrics.failed.labels(cause).inc()
        self.metrics.outcomes.labels(model, cause).inc()

    def _tell(self, subject: str, message: str, level: int = logging.WARNING) -> None:
        if message != self._told.get(subject):
            log.log(level, "%s", message)
            self._told[subject] = message


class Watcher(Following):
    """One metadata file (or S3 object): one model, followed one `poll` at a time.

    The loop that polls every `WATCH_INTERVAL_S` is the caller's (`nexus watch` in `nexusml.command.cli`)."""

    def __init__(self, settings: WatchSettings, source: Source, swapper: Swapper) -> None:
        super().__init__(settings, swapper)
        self.source = source

    def poll(self) -> str:
        """One look at the metadata, then at the model's load (`scale`); swaps when the metadata names a version not
        served. Returns what happened to the version."""
        outcome = self._look()
        self.scale()
        if self.residency is not None:
            self.residency.enforce()
        return outcome

    def _look(self) -> str:
        try:
            metadata_told = any(not subject.startswith(_LOAD_SUBJECTS) for subject in self._told)
            if not self.source.changed() and not metadata_told:
                return "unchanged"
            text, where = self.source.read()
            meta = metadata.loads(text, where)
        except NexusError as err:
            self._tell("", f"metadata not usable: {err}", logging.WARNING)
            return "unusable"
        self._told.pop("", None)
        others = [name for name in self.swapper.repo.models() if name != meta.name]
        if others:
            # One file is one model: another name is a new deployment, not an update (a directory is many).
            self._tell(
                "",
                f"{where} names model {meta.name}, the repository serves {', '.join(others)}: "
                "a different model needs a restart (nexus up) or a redeploy, not an update",
                logging.ERROR,
            )
            return "other model"
        outcome = self.follow(meta)
        current = served(self.swapper.repo, meta.name)
        if current is not None:
            self.metrics.served.set(current.version)
        return outcome


class CatalogWatcher(Following):
    """A directory of metadata: every model followed, one `poll` at a time.

    `poll` returns what happened to each model (and each unusable file) it looked at; {} when nothing changed."""

    def __init__(self, settings: WatchSettings, source: CatalogSource, swapper: Swapper) -> None:
        super().__init__(settings, swapper)
        self.source = source
        self._again = True  # read at the next poll even if nothing changed: a retry is due
        self._heal_at: dict[str, tuple[float, float]] = {}  # a model whose reload failed: (next try, back-off then)

    def poll(self) -> dict[str, str]:
        """One look at the metadata, then at the models' load (`scale`), then at the models Triton could not load
        (`heal`); within a budget, then at the memory the loaded models hold (`Residency.enforce`)."""
        outcomes = self._look()
        self.scale()
        if self.residency is None:  # within a budget, a model loads on request; the decider retries a failed one
            self.heal()
        if self.residency is not None:
            self.residency.enforce()
        return outcomes

    def heal(self) -> list[str]:
        """Load again, with back-off, each served model that Triton holds but could not load; returns those loaded.

        With a directory of models one model's failed load does not stop Triton (`nexusml.triton.server.command`),
        so nothing restarts it: a failure of the moment at Triton's start (memory, a device busy) would otherwise
        last until the model's next version. Tried after `HEAL_BACKOFF_S`, doubling to `HEAL_BACKOFF_MAX_S`."""
        now = time.monotonic()
        served_models = self.swapper.repo.models()
        self._heal_at = {name: at for name, at in self._heal_at.items() if name in served_models}
        if not any(self._heal_at.get(name, (0.0, 0.0))[0] <= now for name in served_models):
            return []
        try:
            failed = self.swapper.admin.unavailable()
        except NexusError as err:
            self._tell("index", f"models not checked for a failed load: {err}")
            return []
        self._told.pop("index", None)
        healed = []
        for name in served_models:
            if name not in failed or failed[name] == UNLOADED:  # unloaded on purpose: being removed, or an operator's
                self._heal_at.pop(name, None)
                continue
            due, backoff = self._heal_at.get(name, (0.0, HEAL_BACKOFF_S))
            if due > now:
                continue
            try:
                self.swapper.reload(name)
            except NexusError as err:
                self._heal_at[name] = (now + backoff, min(2 * backoff, HEAL_BACKOFF_MAX_S))
                self._tell(
                    f"heal {name}",
                    f"{name} is not loaded in Triton ({failed[name]}) and loading it again failed "
                    f"({err}); next try in {backoff:g} s",
                )
                continue
            self._heal_at.pop(name, None)
            self._told.pop(f"heal {name}", None)
            log.info("%s was not loaded in Triton (%s); loaded it again", name, failed[name])
            healed.append(name)
        return healed

    def _look(self) -> dict[str, str]:
        try:
            if not self.source.changed() and not self._again:
                return {}
            found = self.source.read()
        except NexusError as err:
            self._tell("", f"metadata not readable ({err}); every model keeps what it serves")
            self._again = True
            return {"": "unreadable"}
        self._told.pop("", None)
        repo = self.swapper.repo
        outcomes: dict[str, str] = {}
        for source, cause in found.problems.items():
            self._tell(source, f"unusable metadata: {cause}; its model keeps what it serves")
            outcomes[source] = "unusable"
        for subject in [s for s in self._told if s.endswith(catalog.SUFFIX) and s not in found.problems]:
            del self._told[subject]
        for name in sorted(found.held):
            outcomes[name] = "held"
        for name in found.names:
            outcomes[name] = self.follow(found.models[name])
        if self.residency is not None:  # a file that failed to install is gone: nothing to say about its model
            for name in set(self.residency.uninstalled) - set(found.models):
                self.residency.not_installed(name, None)
        remembered = repo.sources()
        removed = []
        for name in catalog.departed(found, repo.models(), remembered):
            outcomes[name] = self._remove(name)
            if outcomes[name] == "removed":
                removed.append(name)
        self._again = any(outcome.startswith("retry") for outcome in outcomes.values())
        try:
            repo.remember_sources(catalog.remembered_sources(found, remembered, removed))
        except NexusError as err:  # the disk: what is served stands; remembered at a later poll
            self._tell("sources", f"{err}; retrying every {self.settings.interval_s:g} s")
            self._again = True
        else:
            self._told.pop("sources", None)
        return outcomes

    def _remove(self, name: str) -> str:
        try:
            self.swapper.remove(name)
        except NexusError as err:
            self._tell(name, f"{name}: its metadata is gone, but {err}; retrying every {self.settings.interval_s:g} s")
            return f"retry: {err.code}"
        self._told.pop(name, None)
        self.metrics.forget(name)
        log.info("%s removed: no metadata names it any more; unloaded, its folder deleted", name)
        return "removed"


def watcher(settings: WatchSettings) -> Watcher | CatalogWatcher:
    """The watcher of `WATCH_META_URI` (an S3 object, or a prefix mirrored into the NEXUS_META_PATH directory), else
    of `NEXUS_META_PATH` (a file or a directory)."""
    admin = TritonAdmin(settings.triton_url, settings.admin_key, settings.load_timeout_s)
    swapper = Swapper(settings.sync, admin)
    meta_uri = settings.sync.meta_uri
    if meta_uri and mirror.is_prefix(meta_uri):
        return CatalogWatcher(settings, MirroredSource(S3Mirror(meta_uri, settings.sync)), swapper)
    if meta_uri:
        return Watcher(settings, S3Source(meta_uri, settings.sync), swapper)
    if catalog.is_directory(settings.sync.meta_path):
        return CatalogWatcher(settings, DirectorySource(settings.sync.meta_path), swapper)
    return Watcher(settings, FileSource(settings.sync.meta_path), swapper)


def serve_metrics(settings: WatchSettings, metrics: WatchMetrics) -> None:
    if settings.metrics_port:
        start_http_server(settings.metrics_port, settings.metrics_host, registry=metrics.registry)
