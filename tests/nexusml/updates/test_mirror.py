"""An S3 prefix of metadata mirrored into a directory (nexusml/updates/mirror.py), against moto's S3 server, and the
watcher that follows the prefix through it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from nexusml.core.errors import SettingsError
from nexusml.core.settings import load
from nexusml.sync.settings import SyncSettings
from nexusml.testing.models import TEST_BUCKET, stub_metadata
from nexusml.updates import mirror
from nexusml.updates.mirror import S3Mirror
from nexusml.updates.watch import CatalogWatcher, MirroredSource, WatchSettings, watcher
from tests.nexusml.updates.conftest import RecordingSwapper

PREFIX = "control-plane/models/"


@pytest.fixture
def prefix(s3_client: Any, request: pytest.FixtureRequest) -> str:
    """An empty prefix of its own in the test bucket, for this test."""
    return f"{PREFIX}{request.node.name}/"


def _put(s3_client: Any, key: str, body: str) -> None:
    s3_client.put_object(Bucket=TEST_BUCKET, Key=key, Body=body.encode())


def _mirror(s3_env: dict[str, str], prefix: str, directory: Path) -> S3Mirror:
    settings = load(SyncSettings, {**s3_env, "MODEL_REPOSITORY": str(directory.parent / "repo")})
    return S3Mirror(f"s3://{TEST_BUCKET}/{prefix}", directory, settings)


def _files(directory: Path) -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(directory.iterdir())}


@pytest.mark.integration
def test_the_json_objects_directly_under_the_prefix_are_mirrored(
    s3_env: dict[str, str], s3_client: Any, prefix: str, tmp_path: Path
) -> None:
    for key, body in {
        "a.json": '{"a": 1}',
        "b.json": '{"b": 2}',
        ".a.json.tmp.json": "a writer's temporary",
        "notes.txt": "not metadata",
        "nested/c.json": '{"c": 3}',
    }.items():
        _put(s3_client, prefix + key, body)
    _put(s3_client, prefix.rstrip("/") + "-other/d.json", '{"d": 4}')
    directory = tmp_path / "models"
    assert _mirror(s3_env, prefix, directory).pull() is True
    assert _files(directory) == {"a.json": '{"a": 1}', "b.json": '{"b": 2}'}


@pytest.mark.integration
def test_a_pull_with_nothing_new_writes_nothing_even_after_a_restart(
    s3_env: dict[str, str], s3_client: Any, prefix: str, tmp_path: Path
) -> None:
    _put(s3_client, prefix + "a.json", '{"a": 1}')
    directory = tmp_path / "models"
    first = _mirror(s3_env, prefix, directory)
    assert first.pull() is True
    stamp = (directory / "a.json").stat().st_mtime_ns, (directory / "a.json").stat().st_ino
    assert first.pull() is False
    assert _mirror(s3_env, prefix, directory).pull() is False  # a restarted watcher: same bytes, file untouched
    assert ((directory / "a.json").stat().st_mtime_ns, (directory / "a.json").stat().st_ino) == stamp


@pytest.mark.integration
def test_a_changed_object_is_written_again_and_a_removed_one_removed(
    s3_env: dict[str, str], s3_client: Any, prefix: str, tmp_path: Path
) -> None:
    _put(s3_client, prefix + "a.json", '{"a": 1}')
    _put(s3_client, prefix + "b.json", '{"b": 2}')
    directory = tmp_path / "models"
    mirrored = _mirror(s3_env, prefix, directory)
    mirrored.pull()
    _put(s3_client, prefix + "a.json", '{"a": 10}')
    s3_client.delete_object(Bucket=TEST_BUCKET, Key=prefix + "b.json")
    assert mirrored.pull() is True
    assert _files(directory) == {"a.json": '{"a": 10}'}


@pytest.mark.integration
def test_an_empty_listing_removes_nothing(s3_env: dict[str, str], s3_client: Any, prefix: str, tmp_path: Path) -> None:
    _put(s3_client, prefix + "a.json", '{"a": 1}')
    directory = tmp_path / "models"
    mirrored = _mirror(s3_env, prefix, directory)
    mirrored.pull()
    s3_client.delete_object(Bucket=TEST_BUCKET, Key=prefix + "a.json")  # a control plane's `rm *; cp`, halfway
    assert mirrored.pull() is False
    assert _files(directory) == {"a.json": '{"a": 1}'}


@pytest.mark.integration
def test_an_object_too_large_for_metadata_is_skipped_and_said_once(
    s3_env: dict[str, str],
    s3_client: Any,
    prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(mirror, "MAX_OBJECT_BYTES", 16)
    _put(s3_client, prefix + "a.json", '{"a": 1}')
    _put(s3_client, prefix + "huge.json", "x" * 17)
    directory = tmp_path / "models"
    mirrored = _mirror(s3_env, prefix, directory)
    with caplog.at_level(logging.WARNING, logger=mirror.__name__):
        mirrored.pull()
        mirrored.pull()
    assert _files(directory) == {"a.json": '{"a": 1}'}
    assert sum("too large for metadata" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.integration
def test_the_watcher_follows_models_published_and_removed_under_the_prefix(
    s3_env: dict[str, str], s3_client: Any, prefix: str, tmp_path: Path
) -> None:
    directory = tmp_path / "models"
    env = {
        **s3_env,
        "NEXUS_META_PATH": str(directory),
        "MODEL_REPOSITORY": str(tmp_path / "repo"),
        "DEVICE": "cpu",
        "WATCH_METRICS_PORT": "0",
        "WATCH_META_URI": f"s3://{TEST_BUCKET}/{prefix}",
    }
    settings = load(WatchSettings, env)
    made = watcher(settings)
    assert isinstance(made, CatalogWatcher) and isinstance(made.source, MirroredSource)
    swapper = RecordingSwapper(settings.sync)
    following = CatalogWatcher(settings, made.source, swapper)  # type: ignore[arg-type]
    for name in ("a", "b"):
        _put(s3_client, f"{prefix}{name}.json", stub_metadata(name).to_json())
    assert following.poll() == {"a": "swapped", "b": "swapped"}
    assert following.poll() == {}
    s3_client.delete_object(Bucket=TEST_BUCKET, Key=f"{prefix}b.json")
    assert following.poll() == {"a": "served", "b": "removed"}
    assert swapper.removed == ["b"] and sorted(p.name for p in directory.iterdir()) == ["a.json"]


@pytest.mark.parametrize(
    ("make", "path", "refused"),
    [
        pytest.param(None, "models", None, id="a-directory-not-made-yet"),
        pytest.param("dir", "models", None, id="an-existing-directory"),
        pytest.param("file", "models", "must name a directory", id="an-existing-file"),
        pytest.param(None, ".nexus_meta.json", "looks like one model's file", id="the-single-file-name"),
    ],
)
def test_the_metadata_path_must_be_a_directory_for_a_prefix(
    tmp_path: Path, make: str | None, path: str, refused: str | None
) -> None:
    target = tmp_path / path
    if make == "dir":
        target.mkdir()
    elif make == "file":
        target.write_text("{}")
    env = {
        "NEXUS_META_PATH": str(target),
        "MODEL_REPOSITORY": str(tmp_path / "repo"),
        "AWS_REGION": "us-east-1",
        "WATCH_META_URI": "s3://bucket/models/",
    }
    if refused is None:
        load(WatchSettings, env)
    else:
        with pytest.raises(SettingsError, match=refused):
            load(WatchSettings, env)
