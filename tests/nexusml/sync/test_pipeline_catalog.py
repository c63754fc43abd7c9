"""`nexus sync` with a directory of metadata: which models it removes, its exit rule, one model's failure alone.

The rules run without servers; the last tests sync a real directory (moto's S3) through the command.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nexusml.command import demo
from nexusml.core import catalog
from nexusml.core.catalog import Catalog, departed, remembered_sources
from nexusml.core.errors import ArtifactNotFound, DiskError, IntegrityError, NexusError
from nexusml.core.metadata import ModelMetadata
from nexusml.core.settings import load
from nexusml.sync import pipeline
from nexusml.sync.pipeline import CatalogResult, SyncResult, sync_catalog
from nexusml.sync.repository import Repository
from nexusml.sync.settings import SyncSettings
from nexusml.testing.artifacts import with_artifact
from nexusml.testing.environment import free_port
from nexusml.testing.models import publish_into, stub_metadata


def _catalog(
    models: tuple[str, ...] = (), problems: tuple[str, ...] = (), held: tuple[str, ...] = (), where: str = "/meta"
) -> Catalog:
    return Catalog(
        {name: stub_metadata(name) for name in models},
        {name: f"{where}/{name}.json" for name in models},
        {f"{where}/{file}": f"{where}/{file}: broken" for file in problems},
        frozenset(held),
    )


@pytest.mark.parametrize(
    ("found", "present", "remembered", "gone"),
    [
        pytest.param(_catalog(("a", "b")), ["a", "b"], {}, [], id="all-named"),
        pytest.param(_catalog(("a",)), ["a", "b"], {"b": "b.json"}, ["b"], id="file-removed"),
        pytest.param(_catalog(("a",)), ["a", "b"], {}, ["b"], id="not-remembered-nothing-broken"),
        pytest.param(_catalog(("a",), ("b.json",)), ["a", "b"], {"b": "b.json"}, [], id="its-file-broken-kept"),
        pytest.param(_catalog(("a",), ("c.json",)), ["a", "b"], {"b": "b.json"}, ["b"], id="another-file-broken"),
        pytest.param(_catalog(("a",), ("c.json",)), ["a", "b"], {}, [], id="not-remembered-some-file-broken-kept"),
        pytest.param(_catalog(("a",), held=("b",)), ["a", "b"], {"b": "b.json"}, [], id="held-kept"),
        pytest.param(_catalog(("a",)), ["a", "b"], {"b": "a.json"}, ["b"], id="its-file-names-another-model"),
        pytest.param(
            _catalog(("a",), ("b.json",), where="s3://bucket/prefix"),
            ["a", "b"],
            {"b": "b.json"},
            [],
            id="same-file-name-under-an-s3-prefix",
        ),
        pytest.param(_catalog(), ["a"], {"a": "a.json"}, [], id="empty-directory-removes-nothing"),
        pytest.param(_catalog(held=("a",)), ["a", "b"], {"b": "b.json"}, ["b"], id="only-held-names-left"),
    ],
)
def test_departed_models_are_those_no_file_names(
    found: Catalog, present: list[str], remembered: dict[str, str], gone: list[str]
) -> None:
    assert departed(found, present, remembered) == gone


def test_sources_are_remembered_by_file_name_and_forgotten_with_their_model() -> None:
    found = _catalog(("a", "c"), ("b.json",))
    remembered = {"a": "old-a.json", "b": "b.json", "d": "d.json"}
    assert remembered_sources(found, remembered, ["d"]) == {"a": "a.json", "b": "b.json", "c": "c.json"}


_SYNCED = SyncResult(Path("/r/a/1"), True, True, [])


@pytest.mark.parametrize(
    ("result", "code"),
    [
        pytest.param(CatalogResult(), None, id="empty-directory"),
        pytest.param(CatalogResult({"a": _SYNCED}, serving=["a"]), None, id="all-synced"),
        pytest.param(
            CatalogResult({"a": _SYNCED}, {"b": IntegrityError("x")}, {"c.json": "c"}, serving=["a"]),
            None,
            id="one-broken-model-and-file-others-serve",
        ),
        pytest.param(CatalogResult(failed={"b": IntegrityError("x")}), "integrity", id="nothing-serves-a-model-failed"),
        pytest.param(CatalogResult(problems={"c.json": "c: bad"}), "bad_metadata", id="nothing-serves-a-file-unusable"),
        pytest.param(
            CatalogResult(failed={"b": ArtifactNotFound("x")}, serving=["b"]),
            None,
            id="failed-model-keeps-its-older-version",
        ),
    ],
)
def test_the_command_fails_only_when_nothing_is_left_to_serve(result: CatalogResult, code: str | None) -> None:
    failure = result.failure()
    assert (failure.code if failure else None) == code


def _settings(tmp_path: Path) -> SyncSettings:
    return load(SyncSettings, {"MODEL_REPOSITORY": str(tmp_path / "repo"), "DEVICE": "cpu"})


def _fake_sync(failures: dict[str, NexusError]) -> Any:
    """`pipeline.sync` as far as a directory cares: a model folder with a config, or the model's failure."""

    def sync(meta: ModelMetadata, settings: SyncSettings, progress: bool = False) -> SyncResult:
        if meta.name in failures:
            raise failures[meta.name]
        folder = settings.repository / meta.name
        (folder / str(meta.version)).mkdir(parents=True, exist_ok=True)
        (folder / "config.pbtxt").write_text("")
        return SyncResult(folder / str(meta.version), True, True, [])

    return sync


def test_one_models_failure_is_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "sync", _fake_sync({"b": ArtifactNotFound("s3://b/b.pt: not found")}))
    reported: dict[str, object] = {}
    result = sync_catalog(_catalog(("a", "b", "c")), _settings(tmp_path), report=reported.__setitem__)
    assert sorted(result.synced) == ["a", "c"] and list(result.failed) == ["b"]
    assert isinstance(reported["b"], ArtifactNotFound) and isinstance(reported["c"], SyncResult)
    assert result.serving == ["a", "c"] and result.failure() is None


def test_a_failure_that_is_not_a_models_own_stops_the_command_and_removes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path)
    monkeypatch.setattr(pipeline, "sync", _fake_sync({}))
    sync_catalog(_catalog(("a", "old")), settings)
    monkeypatch.setattr(pipeline, "sync", _fake_sync({"a": DiskError("cannot write: No space left on device")}))
    with pytest.raises(DiskError):
        sync_catalog(_catalog(("a", "b")), settings)
    assert Repository(settings.repository).models() == ["a", "old"]


def test_models_no_file_names_are_removed_a_broken_files_model_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path)
    repo = Repository(settings.repository)
    monkeypatch.setattr(pipeline, "sync", _fake_sync({}))
    sync_catalog(_catalog(("a", "b", "c")), settings)
    assert repo.sources() == {"a": "a.json", "b": "b.json", "c": "c.json"}
    (settings.repository / "c__candidate").mkdir()  # left by a watcher stopped mid-swap
    result = sync_catalog(_catalog(("a",), ("b.json",)), settings)
    assert result.removed == ["c"] and repo.models() == ["a", "b"]
    assert not (settings.repository / "c").exists() and not (settings.repository / "c__candidate").exists()
    assert repo.sources() == {"a": "a.json", "b": "b.json"}


# --- through the command, against moto's S3 -------------------------------------------------------------------
# Three shapes: the README's model, a wider one with two heads, a torch.export one packed in a tar.
SPECS = (
    demo.DemoSpec(name="alpha", hidden=32, layers=1),
    demo.DemoSpec(name="beta", width=8, outputs=3, heads=2, hidden=32, layers=1),
    demo.DemoSpec(name="gamma", width=3, outputs=1, hidden=16, layers=1, format="torch_export", packaging="tar"),
)


def _run(env: dict[str, str], directory: Path, repository: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nexusml", "sync", "--meta", str(directory), "--repository", str(repository)],
        env={**env, "DEVICE": "cpu", **extra},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    (tmp_path / "meta").mkdir()
    return tmp_path / "meta"


@pytest.mark.integration
def test_a_directory_syncs_every_usable_model_and_one_broken_file_fails_alone(
    s3_env: dict[str, str], s3_client: Any, directory: Path
) -> None:
    repository = directory.parent / "repo"
    published = {spec.name: publish_into(spec, s3_client, directory) for spec in SPECS}
    (directory / "broken.json").write_text('{"name": "delta", "version": ')
    (directory / ".alpha.json.tmp").write_text("a writer's temporary: skipped")
    result = _run(s3_env, directory, repository)
    assert result.returncode == 0, result.stderr
    assert Repository(repository).models() == ["alpha", "beta", "gamma"]
    errors = [line for line in result.stderr.splitlines() if "broken.json" in line]
    assert len(errors) == 1, result.stderr
    assert "3 of 4 metadata files synced" in result.stdout
    # A file removed: its model goes. A file that breaks: its model keeps its version. A model whose new version
    # fails: logged with its name, the others synced, the command still succeeds.
    (directory / "gamma.json").unlink()
    (directory / "beta.json").write_text("{")
    corrupt = with_artifact(published["alpha"].meta, sha256="0" * 64)
    demo.write_metadata(corrupt, directory)
    result = _run(s3_env, directory, repository)
    assert result.returncode == 0, result.stderr
    assert "removed gamma" in result.stdout
    assert Repository(repository).models() == ["alpha", "beta"]
    assert Repository(repository).versions("alpha") == [1]
    assert any("model alpha not synced (integrity)" in line for line in result.stderr.splitlines()), result.stderr
    assert json.loads((repository / ".nexus_sources.json").read_text()) == {"alpha": "alpha.json", "beta": "beta.json"}


@pytest.mark.integration
def test_a_directory_with_nothing_to_serve_fails_and_s3_unreachable_fails(
    s3_env: dict[str, str], s3_client: Any, directory: Path
) -> None:
    repository = directory.parent / "repo"
    published = publish_into(SPECS[0], s3_client, directory)
    unreachable = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "S3_MAX_ATTEMPTS": "1"}
    result = _run(s3_env, directory, repository, **unreachable, S3_CONNECT_TIMEOUT_S="0.5")
    assert result.returncode == 6, result.stderr
    demo.write_metadata(with_artifact(published.meta, uri="s3://nexus-test/no/such.pt"), directory)
    result = _run(s3_env, directory, repository)
    assert result.returncode == 4, result.stderr
    assert Repository(repository).models() == []
    (directory / "alpha.json").write_text("not json")
    assert _run(s3_env, directory, repository).returncode == 3
    assert catalog.read(directory).problems
