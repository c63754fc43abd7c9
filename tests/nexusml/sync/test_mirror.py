"""An S3 prefix of metadata mirrored into a directory (nexusml/sync/mirror.py), against moto's S3 server; the sync and
the watcher that follow the prefix through it."""

from __future__ import annotations

import argparse
import errno
import logging
from pathlib import Path
from typing import Any

import pytest

from nexusml.command import cli
from nexusml.core.errors import DiskError, NexusError, SettingsError
from nexusml.core.settings import load
from nexusml.sync import mirror
from nexusml.sync.mirror import S3Mirror
from nexusml.sync.repository import Repository
from nexusml.sync.settings import SyncSettings
from nexusml.testing.models import TEST_BUCKET, PublishedModel, stub_metadata
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
    uri = f"s3://{TEST_BUCKET}/{prefix}"
    env = {**s3_env, "MODEL_REPOSITORY": str(directory.parent / "repo"), "NEXUS_META_PATH": str(directory)}
    return S3Mirror(uri, load(SyncSettings, {**env, "WATCH_META_URI": uri}))


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
    assert sum("huge.json not mirrored" in r.getMessage() for r in caplog.records) == 1


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
    ("make", "path", "uri", "refused"),
    [
        pytest.param(None, "models", "s3://bucket/models/", None, id="a-directory-not-made-yet"),
        pytest.param("dir", "models", "s3://bucket/models/", None, id="an-existing-directory"),
        pytest.param("file", "models", "s3://bucket/models/", "must name a directory", id="an-existing-file"),
        pytest.param(None, ".nexus_meta.json", "s3://bucket/models/", "looks like one model's file", id="a-file-name"),
        pytest.param(None, "models", "s3://bucket/team#a/", "a prefix cannot hold them", id="a-fragment"),
        pytest.param("file", "meta.json", "s3://bucket/models/a.json", None, id="one-object-is-not-a-prefix"),
    ],
)
def test_a_prefix_needs_a_directory_and_a_plain_key(
    tmp_path: Path, make: str | None, path: str, uri: str, refused: str | None
) -> None:
    target = tmp_path / path
    if make == "dir":
        target.mkdir()
    elif make == "file":
        target.write_text("{}")
    env = {"NEXUS_META_PATH": str(target), "MODEL_REPOSITORY": str(tmp_path / "repo"), "WATCH_META_URI": uri}
    if refused is None:
        load(SyncSettings, env)
    else:
        with pytest.raises(SettingsError, match=refused):
            load(SyncSettings, env)


@pytest.mark.integration
def test_one_object_that_cannot_be_mirrored_is_skipped_and_the_others_are_not(
    s3_env: dict[str, str], s3_client: Any, prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A name no file can have (its temporary past the filesystem's 255 bytes) is one object's problem, said once."""
    long_name = "m" * 250 + ".json"
    _put(s3_client, prefix + long_name, '{"m": 1}')
    _put(s3_client, prefix + "a.json", '{"a": 1}')
    directory = tmp_path / "models"
    mirrored = _mirror(s3_env, prefix, directory)
    with caplog.at_level(logging.WARNING, logger=mirror.__name__):
        assert mirrored.pull() is True
        _put(s3_client, prefix + "b.json", '{"b": 2}')
        assert mirrored.pull() is True
    assert _files(directory) == {"a.json": '{"a": 1}', "b.json": '{"b": 2}'}
    assert sum("not mirrored" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.integration
def test_the_sync_mirrors_a_prefix_first_so_that_triton_starts_with_every_model(
    s3_env: dict[str, str], s3_client: Any, demo_model: PublishedModel, prefix: str, tmp_path: Path
) -> None:
    _put(s3_client, prefix + "demo.json", demo_model.meta.to_json())
    env = {
        **s3_env,
        "NEXUS_META_PATH": str(tmp_path / "models"),
        "MODEL_REPOSITORY": str(tmp_path / "repo"),
        "WATCH_META_URI": f"s3://{TEST_BUCKET}/{prefix}",
        "DEVICE": "cpu",
    }
    assert cli._sync(argparse.Namespace(no_progress=True), env) == 0
    assert (tmp_path / "models" / "demo.json").is_file()
    assert Repository(tmp_path / "repo").models() == [demo_model.meta.name]


@pytest.mark.integration
def test_a_directory_that_cannot_be_written_stops_the_pull(
    s3_env: dict[str, str], s3_client: Any, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not one object's problem: a full or read-only directory would fail them all, so it is the pull's error."""
    _put(s3_client, prefix + "a.json", '{"a": 1}')
    mirrored = _mirror(s3_env, prefix, tmp_path / "models")

    def full(self: Path, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(DiskError, match="No space left"):
        mirrored.pull()


@pytest.mark.integration
def test_the_sync_fails_when_not_one_object_of_the_prefix_could_be_mirrored(
    s3_env: dict[str, str], s3_client: Any, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty directory is a deployment with nothing published yet (exit 0); objects that could not be read are not
    that: the sync exits with the first one's cause."""
    monkeypatch.setattr(mirror, "MAX_OBJECT_BYTES", 4)
    _put(s3_client, prefix + "a.json", '{"a": 1}')
    env = {
        **s3_env,
        "NEXUS_META_PATH": str(tmp_path / "models"),
        "MODEL_REPOSITORY": str(tmp_path / "repo"),
        "WATCH_META_URI": f"s3://{TEST_BUCKET}/{prefix}",
    }
    with pytest.raises(NexusError, match="more than metadata's 4"):
        cli._sync(argparse.Namespace(no_progress=True), env)
