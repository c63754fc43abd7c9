"""`nexus sync`: metadata -> S3 -> a verified version and its config.pbtxt in the model repository.

With a directory of metadata (`nexusml.core.catalog`) every usable model is synced, one at a time
(`sync_catalog`). A failure that belongs to one model (its metadata, its object missing or refused, its bytes
or archive wrong, its hints against the settings) is that model's alone: logged, the others synced. Any other
failure (the disk, the S3 endpoint, a bug) stops the command: it would fail the next model too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nexusml.core.catalog import Catalog, departed, remembered_sources
from nexusml.core.errors import (
    AccessDenied,
    ArtifactNotFound,
    IntegrityError,
    MetadataError,
    NexusError,
    SettingsError,
    UnsafeArchive,
)
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


def config_text(meta: ModelMetadata, settings: SyncSettings, instances: int | None = None) -> str:
    """The `config.pbtxt` that serves `meta` with `settings` (and `instances`, when the watcher scaled it)."""
    return to_pbtxt(model_config(meta, serving_config(meta, settings, instances=instances)))


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


# Failures that belong to one model of a directory: the others are synced all the same.
MODEL_FAILURES = (MetadataError, ArtifactNotFound, AccessDenied, IntegrityError, UnsafeArchive, SettingsError)


@dataclass(frozen=True)
class CatalogResult:
    """What `sync_catalog` did, model by model."""

    synced: dict[str, SyncResult] = field(default_factory=dict)
    failed: dict[str, NexusError] = field(default_factory=dict)  # model -> its own failure
    problems: Mapping[str, str] = field(default_factory=dict)  # unusable file -> cause
    removed: list[str] = field(default_factory=list)
    serving: list[str] = field(default_factory=list)  # the models the repository holds afterwards

    def failure(self) -> NexusError | None:
        """The command's failure: None while the repository has a model to serve or nothing was wrong.

        One broken model must not keep the others from serving (an init container that exits non-zero keeps the
        whole pod down); a repository left with no model at all although some metadata was published is a failure,
        the first model's own (its exit code), else an unusable file's (metadata, exit 3)."""
        if self.serving or not (self.failed or self.problems):
            return None
        if self.failed:
            return next(iter(self.failed.values()))
        return MetadataError(f"no usable metadata: {'; '.join(self.problems.values())}")


def sync_catalog(
    catalog: Catalog,
    settings: SyncSettings,
    progress: bool = False,
    report: Callable[[str, SyncResult | NexusError], None] = lambda name, outcome: None,
) -> CatalogResult:
    """Sync every usable model of `catalog`, one at a time, then remove the models no metadata names any more.

    A model's own failure (`MODEL_FAILURES`) is reported and the others go on; any other failure is raised at once,
    and nothing is removed. Triton is not running: removal is deleting the folder."""
    repo = Repository(settings.repository)
    synced: dict[str, SyncResult] = {}
    failed: dict[str, NexusError] = {}
    for name in catalog.names:
        try:
            synced[name] = sync(catalog.models[name], settings, progress)
        except MODEL_FAILURES as err:
            failed[name] = err
            report(name, err)
            continue
        report(name, synced[name])
    remembered = repo.sources()
    removed = departed(catalog, repo.models(), remembered)
    for name in removed:
        with repo.locked(name):
            repo.drop_model(name)
    repo.remember_sources(remembered_sources(catalog, remembered, removed))
    return CatalogResult(synced, failed, dict(catalog.problems), removed, repo.models())
