"""`nexus sync`: metadata -> S3 -> a verified version and its config.pbtxt in the model repository."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nexusml.core.errors import IntegrityError
from nexusml.core.metadata import ModelMetadata
from nexusml.sync import archive, storage
from nexusml.sync.repository import Repository, disk_errors
from nexusml.sync.settings import SyncSettings
from nexusml.sync.triton_config import model_config, serving_config, to_pbtxt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncResult:
    path: Path
    downloaded: bool
    config_written: bool
    pruned: list[int]


def _populate(meta: ModelMetadata, settings: SyncSettings, progress: bool) -> Callable[[Path, Path], None]:
    """The step that fills a staging folder: download, verify, and unpack when the artifact is a tar."""
    location = storage.locate(meta.artifact.uri, settings.s3.model_bucket)
    s3 = storage.client(settings.s3)

    def populate(version: Path, scratch: Path) -> None:
        packed = meta.artifact.packaging == "tar"
        dest = scratch / "artifact.tar" if packed else version / meta.artifact.filename
        log.info("downloading %s (%d bytes)", location, meta.artifact.size)
        with disk_errors(f"cannot write {dest}"):
            storage.download(
                s3,
                location,
                dest,
                expected_size=meta.artifact.size,
                expected_sha256=meta.artifact.sha256,
                max_bytes=settings.max_artifact_bytes,
                attempts=settings.s3.max_attempts,
                endpoint=settings.s3.endpoint_url,
                progress=progress,
            )
        if packed:
            with disk_errors(f"cannot unpack into {version}"):
                archive.unpack(dest, version, settings.max_artifact_bytes, {meta.artifact.filename})
            if not (version / meta.artifact.filename).is_file():
                raise IntegrityError(f"{location}: archive has no {meta.artifact.filename} at its root")

    return populate


def config_text(meta: ModelMetadata, settings: SyncSettings) -> str:
    """The `config.pbtxt` that serves `meta` with `settings`."""
    return to_pbtxt(model_config(meta, serving_config(meta, settings)))


def install(meta: ModelMetadata, settings: SyncSettings, progress: bool = False) -> tuple[Path, bool]:
    """Make the repository hold `meta`'s version, verified (call it inside `Repository.locked`).

    Returns the version's folder and whether it was downloaded. Serving it is a separate step (`activate`),
    so the watcher can install a version beside the one served and test it before switching.
    """
    repo = Repository(settings.repository)
    if repo.installed(meta):
        log.info("%s version %d already present and verified; nothing downloaded", meta.name, meta.version)
        return repo.version_dir(meta.name, meta.version), False
    return repo.install(meta, _populate(meta, settings, progress)), True


def activate(meta: ModelMetadata, settings: SyncSettings) -> tuple[bool, list[int]]:
    """Point `config.pbtxt` at `meta`'s installed version and prune; returns (config written, pruned)."""
    repo = Repository(settings.repository)
    written = repo.write_config(meta.name, config_text(meta, settings))
    return written, repo.prune(meta.name, meta.version, settings.keep_versions)


def sync(meta: ModelMetadata, settings: SyncSettings, progress: bool = False) -> SyncResult:
    """Make the repository hold and serve `meta`'s version, verified, with a matching config; idempotent."""
    repo = Repository(settings.repository)
    with repo.locked(meta.name):
        repo.drop_candidate(meta.name)  # left by a watcher that stopped mid-swap: Triton would load it
        path, downloaded = install(meta, settings, progress)
        written, pruned = activate(meta, settings)
    return SyncResult(path=path, downloaded=downloaded, config_written=written, pruned=pruned)
