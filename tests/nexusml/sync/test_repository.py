"""The repository on disk: atomic install, clean failure, pruning rule, config replacement."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from nexusml.core import metadata
from nexusml.core.errors import DiskError, IntegrityError
from nexusml.sync import repository
from nexusml.sync.repository import Repository

EXAMPLE = metadata.load(Path(__file__).parents[3] / "examples" / "nexus_meta.example.json")


def version(n: int) -> metadata.ModelMetadata:
    return dataclasses.replace(EXAMPLE, version=n)


def write_model(version_dir: Path, _scratch: Path) -> None:
    (version_dir / "model.pt").write_bytes(b"weights")


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_install_lays_out_a_verified_version(tmp_path: Path) -> None:
    repo = Repository(tmp_path)
    path = repo.install(version(1), write_model)
    assert path == tmp_path / "demo_mlp" / "1"
    assert sorted(p.name for p in path.iterdir()) == [".nexus_meta.json", "model.pt", "model.py"]
    assert repo.installed(version(1))
    assert not list((tmp_path / "demo_mlp").glob(".staging-*"))


def test_subfolders_are_recorded_and_verified(tmp_path: Path) -> None:
    def with_assets(version_dir: Path, _scratch: Path) -> None:
        write_model(version_dir, _scratch)
        (version_dir / "assets").mkdir()
        (version_dir / "assets" / "vocab.txt").write_text("a\nb\n")

    repo = Repository(tmp_path)
    path = repo.install(version(1), with_assets)
    assert repo.installed(version(1))
    (path / "assets" / "vocab.txt").write_text("tampered")
    assert not repo.installed(version(1))


def test_failed_first_sync_under_the_lock_removes_the_model_folder(tmp_path: Path) -> None:
    repo = Repository(tmp_path)
    with pytest.raises(IntegrityError), repo.locked("demo_mlp"):
        raise IntegrityError("bad")
    assert list(tmp_path.iterdir()) == []


def test_tampered_file_is_not_installed(tmp_path: Path) -> None:
    repo = Repository(tmp_path)
    path = repo.install(version(1), write_model)
    (path / "model.pt").write_bytes(b"tampered")
    assert not repo.installed(version(1))


def test_different_metadata_is_not_installed(tmp_path: Path) -> None:
    repo = Repository(tmp_path)
    repo.install(version(1), write_model)
    other = dataclasses.replace(version(1), artifact=dataclasses.replace(EXAMPLE.artifact, sha256="1" * 64))
    assert not repo.installed(other)


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(IntegrityError("sha256 mismatch"), id="integrity"),
        pytest.param(OSError(28, "No space left on device"), id="disk-full"),
        pytest.param(KeyboardInterrupt(), id="interrupted"),
    ],
)
def test_failed_install_leaves_the_repository_as_it_was(tmp_path: Path, error: BaseException) -> None:
    repo = Repository(tmp_path)
    repo.install(version(1), write_model)
    repo.write_config("demo_mlp", "old config")
    before = snapshot(tmp_path)

    def fail(version_dir: Path, scratch: Path) -> None:
        (version_dir / "model.pt").write_bytes(b"half")
        raise error

    with pytest.raises(type(error)):
        repo.install(version(2), fail)
    assert snapshot(tmp_path) == before


def test_failed_first_install_removes_the_model_folder(tmp_path: Path) -> None:
    def fail(version_dir: Path, scratch: Path) -> None:
        raise IntegrityError("bad")

    with pytest.raises(IntegrityError):
        Repository(tmp_path).install(version(1), fail)
    assert list(tmp_path.iterdir()) == []


def test_reinstall_replaces_an_unverified_version(tmp_path: Path) -> None:
    repo = Repository(tmp_path)
    path = repo.install(version(1), write_model)
    (path / "model.pt").write_bytes(b"tampered")
    repo.install(version(1), write_model)
    assert repo.installed(version(1))
    assert (path / "model.pt").read_bytes() == b"weights"


def test_stale_staging_from_a_killed_sync_is_removed(tmp_path: Path) -> None:
    repo = Repository(tmp_path)
    stale = tmp_path / "demo_mlp" / ".staging-1-dead"
    stale.mkdir(parents=True)
    repo.install(version(1), write_model)
    assert not stale.exists()


@pytest.mark.parametrize(
    ("present", "synced", "keep", "remaining"),
    [
        pytest.param([1, 2, 3], 3, 2, [2, 3], id="keep-two"),
        pytest.param([1, 2, 3], 3, 1, [3], id="keep-one"),
        pytest.param([1, 2, 3], 1, 2, [1, 3], id="rollback-keeps-newest-other"),
        pytest.param([1], 1, 5, [1], id="nothing-to-prune"),
    ],
)
def test_prune_rule(tmp_path: Path, present: list[int], synced: int, keep: int, remaining: list[int]) -> None:
    repo = Repository(tmp_path)
    for n in present:
        repo.install(version(n), write_model)
    repo.prune("demo_mlp", synced, keep)
    assert repo.versions("demo_mlp") == remaining


def test_config_written_atomically_and_only_when_changed(tmp_path: Path) -> None:
    repo = Repository(tmp_path)
    repo.install(version(1), write_model)
    assert repo.write_config("demo_mlp", "a")
    assert not repo.write_config("demo_mlp", "a")
    assert repo.write_config("demo_mlp", "b")
    path = tmp_path / "demo_mlp" / "config.pbtxt"
    assert path.read_text() == "b"
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in path.parent.iterdir()) == ["1", "config.pbtxt"]


def test_a_dropped_model_leaves_nothing(tmp_path: Path) -> None:
    repo = Repository(tmp_path)
    repo.install(version(1), write_model)
    repo.install(version(2), write_model)
    repo.write_config("demo_mlp", "config")
    with repo.locked("demo_mlp"):
        repo.drop_model("demo_mlp")
    assert list(tmp_path.iterdir()) == []


def test_a_removal_that_fails_partway_leaves_the_model_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The config goes last: a disk error halfway keeps the model in `models`, so the next pass removes it again
    (not a config-less folder Triton would still try to load, forgotten)."""
    repo = Repository(tmp_path)
    repo.install(version(1), write_model)
    repo.install(version(2), write_model)
    repo.write_config("demo_mlp", "config")
    removed: list[Path] = []

    def rmtree_once(path: Path, ignore_errors: bool = False) -> None:
        if ignore_errors:  # the candidate's folder, absent here
            return
        if removed:
            raise OSError(5, "Input/output error")
        removed.append(path)

    monkeypatch.setattr(repository.shutil, "rmtree", rmtree_once)
    with pytest.raises(DiskError, match="cannot remove"), repo.locked("demo_mlp"):
        repo.drop_model("demo_mlp")
    assert repo.models() == ["demo_mlp"]
