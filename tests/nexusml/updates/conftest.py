"""What the watcher's tests against real servers share: a directory of models synced and served by a Triton."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexusml.command import demo
from nexusml.core import catalog
from nexusml.core.settings import load
from nexusml.sync.pipeline import sync_catalog
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
