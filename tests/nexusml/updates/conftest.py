"""What the watcher's tests share: a directory of models synced and served by a Triton, and a swapper that records
what it is asked to do instead."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexusml.command import demo
from nexusml.core import catalog
from nexusml.core.errors import NexusError
from nexusml.core.metadata import ModelMetadata
from nexusml.core.settings import load
from nexusml.sync import pipeline
from nexusml.sync.pipeline import sync_catalog
from nexusml.sync.repository import RECORD_FILE, Repository
from nexusml.sync.settings import SyncSettings
from nexusml.testing.models import publish_into
from nexusml.testing.servers import start_triton
from nexusml.triton.server import TritonServer

ADMIN_KEY = "test-admin-key"


@dataclass
class Served:
    directory: Path
    repository: Path
    triton: TritonServer
    env: dict[str, str]  # the watcher's, MODEL_SERVER_URL included


@contextmanager
def served_catalog(
    root: Path,
    s3_env: dict[str, str],
    s3_client: Any,
    bucket: str,
    specs: demo.DemoSpec | tuple[demo.DemoSpec, ...],
    **settings: str,
) -> Iterator[Served]:
    """`specs` published into `bucket` and a directory, synced with `settings`, served by a Triton whose repository
    API wants `ADMIN_KEY` (and which reads the settings' MODEL_MEMORY_BUDGET, if any); stopped on exit."""
    s3_client.create_bucket(Bucket=bucket)
    directory, repository = root / "meta", root / "model_repository"
    directory.mkdir()
    env = {
        **s3_env,
        "NEXUS_META_PATH": str(directory),
        "MODEL_REPOSITORY": str(repository),
        "DEVICE": "cpu",
        "TRITON_ADMIN_KEY": ADMIN_KEY,
        "WATCH_METRICS_PORT": "0",
        **settings,
    }
    for spec in specs if isinstance(specs, tuple) else (specs,):
        publish_into(spec, s3_client, directory, bucket)
    sync_catalog(catalog.read(directory), load(SyncSettings, env))
    budget = {name: settings[name] for name in ("MODEL_MEMORY_BUDGET",) if name in settings}
    triton = start_triton(repository, root, TRITON_ADMIN_KEY=ADMIN_KEY, NEXUS_META_PATH=str(directory), **budget)
    try:
        yield Served(directory, repository, triton, {**env, "MODEL_SERVER_URL": triton.grpc_url})
    finally:
        triton.stop()


class IndexOnly:
    """Triton's repository index as the test sets it: the models it could not load, with their reason."""

    def __init__(self) -> None:
        self.failed: dict[str, str] = {}

    def unavailable(self) -> dict[str, str]:
        return dict(self.failed)


class RecordingSwapper:
    """Installs a version the way `served` reads it back, or raises the failure set for its model."""

    def __init__(self, settings: SyncSettings) -> None:
        self.settings = settings
        self.repo = Repository(settings.repository)
        self.admin = IndexOnly()
        self.swapped: list[tuple[str, int]] = []
        self.removed: list[str] = []
        self.reloaded: list[str] = []
        self.failures: dict[str, NexusError] = {}

    def reload(self, name: str) -> None:
        self.reloaded.append(name)
        if name in self.failures:
            raise self.failures[name]
        self.admin.failed.pop(name, None)

    def swap(self, meta: ModelMetadata, on_step: Callable[[str], None] = lambda step: None) -> None:
        if meta.name in self.failures:
            raise self.failures[meta.name]
        self.swapped.append((meta.name, meta.version))
        version = self.repo.version_dir(meta.name, meta.version)
        version.mkdir(parents=True, exist_ok=True)
        (version / RECORD_FILE).write_text(json.dumps({"metadata": meta.to_dict()}))
        self.repo.write_config(meta.name, pipeline.config_text(meta, self.settings))

    def remove(self, name: str) -> None:
        if name in self.failures:
            raise self.failures[name]
        self.removed.append(name)
        shutil.rmtree(self.repo.model_dir(name))
