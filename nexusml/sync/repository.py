"""The Triton model repository on disk: verified versions installed atomically, configs, pruning.

Layout: `<root>/<name>/config.pbtxt` and `<root>/<name>/<version>/` holding `model.py`, the model file
and `.nexus_meta.json` (the metadata plus the sha256 of every file, used to re-verify a version).

A version is assembled in `<root>/<name>/.staging-*/`: inside the model folder, so it is on the same
filesystem (rename is atomic) and Triton ignores it (it loads only integer-named version folders; a
folder at the root would be taken for a model). It becomes visible by one rename, after verification.

Pruning rule: keep the version just synced plus the newest `keep - 1` others; delete the rest.

A candidate (`<root>/<name>__candidate/`) is how the watcher tries a new version before users get it: a model
of its own, with one instance and the new version's folder linked in, that Triton loads beside the served one.

`<root>/.nexus_sources.json` remembers, for a directory of metadata, which file each model was
last published by (its file name), so that a file that turns unusable keeps its model while a file that is
removed removes its model (`nexusml.core.catalog.departed`). Triton ignores files at the root.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from nexusml.core.errors import DiskError
from nexusml.core.metadata import ModelMetadata
from nexusml.core.probe import candidate_name, served_models
from nexusml.sync.storage import sha256_file

RECORD_FILE = ".nexus_meta.json"
SOURCES_FILE = ".nexus_sources.json"
MODEL_CODE = "model.py"
STAGING_PREFIX = ".staging-"


def model_code() -> bytes:
    """The generic Python-backend model shipped in this package (nexusml/backend/model.py)."""
    return resources.files("nexusml.backend").joinpath(MODEL_CODE).read_bytes()


@contextmanager
def disk_errors(action: str) -> Iterator[None]:
    """Filesystem failures (full, read-only, permissions) become one `DiskError` naming the path."""
    try:
        yield
    except OSError as err:
        raise DiskError(f"{action}: {err.strerror or err} ({err.filename or ''})".rstrip(" ()")) from err


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on the folder itself, so two syncs of one model never interleave."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Repository:
    def __init__(self, root: Path) -> None:
        self.root = root

    def model_dir(self, name: str) -> Path:
        return self.root / name

    def version_dir(self, name: str, version: int) -> Path:
        return self.root / name / str(version)

    def models(self) -> list[str]:
        """The models the repository serves: folders with a config.pbtxt, less candidates."""
        return served_models(self.root)

    def versions(self, name: str) -> list[int]:
        model_dir = self.model_dir(name)
        if not model_dir.is_dir():
            return []
        return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())

    def installed(self, meta: ModelMetadata) -> bool:
        """True when the version is present, was synced from the same metadata, and every file verifies."""
        version_dir = self.version_dir(meta.name, meta.version)
        try:
            record = json.loads((version_dir / RECORD_FILE).read_text())
        except (OSError, ValueError):
            return False
        if record.get("metadata") != meta.to_dict():
            return False
        files: dict[str, str] = record.get("files", {})
        if meta.artifact.filename not in files or files.get(MODEL_CODE) != hashlib.sha256(model_code()).hexdigest():
            return False
        try:
            return all(sha256_file(version_dir / name) == digest for name, digest in files.items())
        except OSError:
            return False

    @contextmanager
    def _model_folder(self, name: str) -> Iterator[Path]:
        """Create the model folder when missing; remove it again if a failure leaves it without a version.

        So a failed first sync leaves the repository as it was.
        """
        model_dir = self.model_dir(name)
        created = not model_dir.exists()
        with disk_errors(f"cannot create {model_dir}"):
            model_dir.mkdir(parents=True, exist_ok=True)
        try:
            yield model_dir
        except BaseException:
            if created and not self.versions(name):
                shutil.rmtree(model_dir, ignore_errors=True)
            raise

    @contextmanager
    def locked(self, name: str) -> Iterator[None]:
        """Hold the model's lock for a whole sync (check, install, config, prune).

        Two syncs of one model never interleave.
        """
        with self._model_folder(name) as model_dir, _locked(model_dir):
            yield

    def install(self, meta: ModelMetadata, populate: Callable[[Path, Path], None]) -> Path:
        """Build the version in staging and rename it into place (call it inside `locked`).

        `populate(version, scratch)` fills `version` with the model's files, subfolders allowed; `scratch`
        is for downloads that are not part of the version (an archive before unpacking). On any failure
        the repository is left as it was: staging is removed, and a model folder this call created too.
        """
        with self._model_folder(meta.name) as model_dir:
            return self._build(meta, populate, model_dir)

    def _build(self, meta: ModelMetadata, populate: Callable[[Path, Path], None], model_dir: Path) -> Path:
        """Staging, verification record, fsync, one rename: the steps `install` wraps."""
        target = self.version_dir(meta.name, meta.version)
        for stale in model_dir.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a sync that was killed
        with disk_errors(f"cannot create staging in {model_dir}"):
            staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{meta.version}-", dir=model_dir))
        try:
            version, scratch = staging / "version", staging / "scratch"
            with disk_errors(f"cannot write staging folder {staging}"):
                version.mkdir()
                scratch.mkdir()
            populate(version, scratch)
            with disk_errors(f"cannot write version {target}"):
                (version / MODEL_CODE).write_bytes(model_code())
                files = {
                    p.relative_to(version).as_posix(): sha256_file(p) for p in sorted(version.rglob("*")) if p.is_file()
                }
                record = {"metadata": meta.to_dict(), "files": files}
                (version / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
                for path in (*version.rglob("*"), version):
                    if path.is_dir():
                        _fsync_dir(path)
                    else:
                        with path.open("rb") as f:
                            os.fsync(f.fileno())
                self._swap_in(version, target, staging / "previous")
                _fsync_dir(model_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        shutil.rmtree(staging, ignore_errors=True)
        return target

    @staticmethod
    def _swap_in(version: Path, target: Path, previous: Path) -> None:
        """Rename `version` to `target`; an existing (unverified) target is moved aside first."""
        if not target.exists():
            os.rename(version, target)
            return
        os.rename(target, previous)
        try:
            os.rename(version, target)
        except OSError:
            os.rename(previous, target)
            raise

    def write_config(self, name: str, text: str) -> bool:
        """Atomically replace `config.pbtxt` when its text changed; returns whether it was written."""
        path = self.model_dir(name) / "config.pbtxt"
        with disk_errors(f"cannot write {path}"):
            if path.exists() and path.read_text() == text:
                return False
            fd, tmp = tempfile.mkstemp(prefix=".config-", dir=path.parent)
            try:
                os.fchmod(fd, 0o644)
                with os.fdopen(fd, "w") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return True

    def drop_config(self, name: str) -> None:
        with disk_errors(f"cannot remove {self.model_dir(name) / 'config.pbtxt'}"):
            (self.model_dir(name) / "config.pbtxt").unlink(missing_ok=True)

    def config_text(self, name: str) -> str | None:
        """The model's current `config.pbtxt`, or None when it has none."""
        try:
            return (self.model_dir(name) / "config.pbtxt").read_text()
        except FileNotFoundError:
            return None

    def stage_candidate(self, name: str, version: int, config_text: str) -> str:
        """The candidate model of `name`'s installed `version`, with `config_text`; returns its model name."""
        candidate = candidate_name(name)
        folder = self.model_dir(candidate)
        self.drop_candidate(name)
        with disk_errors(f"cannot write candidate {folder}"):
            folder.mkdir()
            (folder / str(version)).symlink_to(Path("..") / name / str(version), target_is_directory=True)
            (folder / "config.pbtxt").write_text(config_text)
        return candidate

    def drop_candidate(self, name: str) -> None:
        shutil.rmtree(self.model_dir(candidate_name(name)), ignore_errors=True)

    def drop_model(self, name: str) -> None:
        """Delete the model's folder (every version, its config) and its candidate's (call it inside `locked`).

        The config goes last: a removal that fails partway (a disk error) leaves the model listed by `models`, so the
        next pass removes it again instead of forgetting a folder Triton would still try to load."""
        self.drop_candidate(name)
        model_dir = self.model_dir(name)
        config = model_dir / "config.pbtxt"
        with disk_errors(f"cannot remove {model_dir}"):
            for child in model_dir.iterdir():
                if child == config:
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
            config.unlink(missing_ok=True)
            model_dir.rmdir()

    def sources(self) -> dict[str, str]:
        """The remembered metadata file name of each model ({} when none is remembered)."""
        try:
            found = json.loads((self.root / SOURCES_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}

    def remember_sources(self, sources: dict[str, str]) -> None:
        """Replace the remembered sources, atomically; nothing is written when they did not change."""
        if sources == self.sources():
            return
        path = self.root / SOURCES_FILE
        tmp = path.with_name(f".{SOURCES_FILE}.tmp")
        with disk_errors(f"cannot write {path}"):
            self.root.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(sources, indent=2, sort_keys=True) + "\n")
            tmp.replace(path)

    def remove(self, name: str, version: int) -> None:
        shutil.rmtree(self.version_dir(name, version), ignore_errors=True)

    def prune(self, name: str, keep_version: int, keep: int) -> list[int]:
        """Delete versions beyond the pruning rule; returns the versions deleted."""
        others = [v for v in reversed(self.versions(name)) if v != keep_version]
        doomed = others[keep - 1 :]
        with disk_errors(f"cannot prune {self.model_dir(name)}"):
            for version in doomed:
                shutil.rmtree(self.version_dir(name, version))
        return doomed
