"""`nexus watch`: notice new metadata and put its version live without downtime (`nexusml.updates.swap`).

The control plane publishes a version by writing a new `.nexus_meta.json`, locally or, with `WATCH_META_URI`,
as an S3 object (polled by ETag). Every `WATCH_INTERVAL_S` the watcher reads it; when it names something other
than what `config.pbtxt` serves, it runs a swap. An older version is a rollback and takes the same path.

A swap that fails for a reason that belongs to the version (metadata, missing object, integrity, load, smoke
test) marks that metadata failed in `<repository>/.nexus_watch.json`, logged in one line with its cause, so it is
not retried in a loop (nor after a restart); the old version keeps serving. Writing a different metadata (a fixed
artifact, another version) is tried afresh. A failure that belongs to the moment (S3 or Triton unreachable, the
disk) is retried at the next poll. Prometheus metrics on `WATCH_METRICS_PORT` count swaps started, succeeded and
failed by cause, and show the version served and the one being tried.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from nexusml.core import metadata
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
from nexusml.core.metadata import ModelMetadata
from nexusml.core.settings import MODEL_SERVER_URL, env, nested
from nexusml.sync import storage
from nexusml.sync.repository import disk_errors
from nexusml.sync.settings import SyncSettings
from nexusml.triton.settings import ADMIN_KEY
from nexusml.updates.swap import Swapper, TritonAdmin, served

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
    meta_uri: str | None = env(
        "WATCH_META_URI",
        None,
        "s3://bucket/key of the metadata to watch (ETag polling); unset: the file NEXUS_META_PATH",
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
    sync: SyncSettings = nested(SyncSettings)

    def validate(self) -> None:
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
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.started = Counter("nexus_model_swaps_started", "swaps begun", registry=self.registry)
        self.succeeded = Counter("nexus_model_swaps_succeeded", "swaps that put a version live", registry=self.registry)
        self.failed = Counter(
            "nexus_model_swaps_failed", "swaps that failed, by cause (error code)", ["cause"], registry=self.registry
        )
        self.served = Gauge("nexus_model_served_version", "version config.pbtxt serves", registry=self.registry)
        self.trying = Gauge("nexus_model_trying_version", "version being swapped in; 0: none", registry=self.registry)


class Watcher:
    """Compares the published metadata with what is served, one `poll` at a time, and swaps when they differ.

    The loop that polls every `WATCH_INTERVAL_S` is the caller's (`nexus watch` in `nexusml.command.cli`). A
    standing problem (unusable metadata, another model's name, a swap retried) is logged once, not every poll.
    """

    def __init__(self, settings: WatchSettings, source: Source, swapper: Swapper) -> None:
        self.settings = settings
        self.source = source
        self.swapper = swapper
        self.failed = FailedVersions(settings.sync.repository)
        self.metrics = WatchMetrics()
        self._told: str | None = None  # the last problem logged, so a standing one is logged once

    def poll(self) -> str:
        """One look at the metadata; swaps when it names a version not served. Returns what happened."""
        try:
            if not self.source.changed() and self._told is None:
                return "unchanged"
            text, where = self.source.read()
            meta = metadata.loads(text, where)
        except NexusError as err:
            self._tell(f"metadata not usable: {err}", logging.WARNING)
            return "unusable"
        others = [name for name in self.swapper.repo.models() if name != meta.name]
        if others:
            # The proxy serves one model, named at its start: another name is a new deployment, not an update.
            self._tell(
                f"{where} names model {meta.name}, the repository serves {', '.join(others)}: "
                "a different model needs a restart (nexus up) or a redeploy, not an update",
                logging.ERROR,
            )
            return "other model"
        current = served(self.swapper.repo, meta.name)
        if current is not None:
            self.metrics.served.set(current.version)
        if current == meta:
            self._told = None
            return "served"
        cause = self.failed.cause(meta)
        if cause is not None:
            self._tell(f"{meta.name} version {meta.version} failed before ({cause}); not retried", logging.INFO)
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
            self.swapper.swap(meta, on_step=lambda step: log.info("%s version %d: %s", meta.name, meta.version, step))
        except NexusError as err:
            self.metrics.failed.labels(err.code).inc()
            if isinstance(err, PERMANENT):
                self.failed.mark(meta, f"{err.code}: {err}")
                log.error(
                    "%s version %d not served (%s: %s); %s keeps serving", meta.name, meta.version, err.code, err, was
                )
                self._told = None
                return f"failed: {err.code}"
            self._tell(f"{meta.name} version {meta.version}: {err}; retrying every {self.settings.interval_s:g} s")
            return f"retry: {err.code}"
        except Exception as err:  # a bug of ours: said (once, with its trace), retried, the version not marked
            self.metrics.failed.labels("internal").inc()
            message = f"{meta.name} version {meta.version}: the swap failed unexpectedly ({err!r}); {was} keeps serving"
            if message != self._told:
                log.exception("%s", message)
                self._told = message
            return "retry: internal"
        finally:
            self.metrics.trying.set(0)
        self.metrics.succeeded.inc()
        self.metrics.served.set(meta.version)
        self._told = None
        log.info("%s version %d is live (%.1f s)", meta.name, meta.version, time.monotonic() - started)
        return "swapped"

    def _tell(self, message: str, level: int = logging.WARNING) -> None:
        if message != self._told:
            log.log(level, "%s", message)
            self._told = message


def watcher(settings: WatchSettings) -> Watcher:
    source: Source = (
        S3Source(settings.meta_uri, settings.sync) if settings.meta_uri else FileSource(settings.sync.meta_path)
    )
    admin = TritonAdmin(settings.triton_url, settings.admin_key, settings.load_timeout_s)
    return Watcher(settings, source, Swapper(settings.sync, admin))


def serve_metrics(settings: WatchSettings, metrics: WatchMetrics) -> None:
    if settings.metrics_port:
        start_http_server(settings.metrics_port, settings.metrics_host, registry=metrics.registry)
