"""The watcher of a directory of metadata, its rules one by one: a swapper that records what it is asked to do.

Real files, a real repository folder; no S3, no Triton (`test_watch_catalog_servers.py` has them).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest

from nexusml.command.demo import write_metadata
from nexusml.core.errors import IntegrityError, ModelLoadFailed, ServerError
from nexusml.core.metadata import ModelMetadata
from nexusml.core.settings import load
from nexusml.testing.models import stub_metadata
from nexusml.updates import watch
from nexusml.updates.watch import (
    STATE_FILE,
    CatalogWatcher,
    DirectorySource,
    MirroredSource,
    S3Source,
    Watcher,
    WatchSettings,
    watcher,
)
from tests.nexusml.updates.conftest import RecordingSwapper


class Bed:
    def __init__(self, root: Path) -> None:
        self.directory = root / "meta"
        self.directory.mkdir()
        env = {
            "NEXUS_META_PATH": str(self.directory),
            "MODEL_REPOSITORY": str(root / "repo"),
            "DEVICE": "cpu",
            "WATCH_METRICS_PORT": "0",
        }
        self.settings = load(WatchSettings, env)
        self.swapper = RecordingSwapper(self.settings.sync)
        self.watcher = self.fresh()

    def fresh(self) -> CatalogWatcher:
        """A watcher as after a restart: its state is what the repository holds."""
        return CatalogWatcher(self.settings, DirectorySource(self.directory), self.swapper)  # type: ignore[arg-type]

    def publish(self, *metas: ModelMetadata) -> None:
        for meta in metas:
            write_metadata(meta, self.directory)

    def write(self, file: str, text: str) -> None:
        (self.directory / file).write_text(text)

    def served(self) -> dict[str, int]:
        repo = self.swapper.repo
        return {name: int(repo.versions(name)[-1]) for name in repo.models()}

    def version_metric(self, model: str) -> float | None:
        return self.watcher.metrics.registry.get_sample_value("nexus_model_version", {"model": model})


@pytest.fixture
def bed(tmp_path: Path) -> Bed:
    return Bed(tmp_path)


def test_new_models_are_installed_then_nothing_happens_until_a_file_changes(bed: Bed) -> None:
    bed.publish(stub_metadata("a"), stub_metadata("b"))
    assert bed.watcher.poll() == {"a": "swapped", "b": "swapped"}
    assert bed.served() == {"a": 1, "b": 1}
    assert bed.watcher.poll() == {}
    assert bed.version_metric("a") == 1
    assert bed.swapper.repo.sources() == {"a": "a.json", "b": "b.json"}


def test_a_changed_file_swaps_only_its_model(bed: Bed) -> None:
    bed.publish(stub_metadata("a"), stub_metadata("b"))
    bed.watcher.poll()
    bed.publish(stub_metadata("b", 2))
    assert bed.watcher.poll() == {"a": "served", "b": "swapped"}
    assert bed.swapper.swapped == [("a", 1), ("b", 1), ("b", 2)]
    assert bed.version_metric("b") == 2 and bed.version_metric("a") == 1


def test_a_removed_file_removes_its_model(bed: Bed) -> None:
    bed.publish(stub_metadata("a"), stub_metadata("b"))
    bed.watcher.poll()
    (bed.directory / "b.json").unlink()
    assert bed.watcher.poll() == {"a": "served", "b": "removed"}
    assert bed.served() == {"a": 1} and bed.swapper.removed == ["b"]
    assert bed.version_metric("b") is None
    assert bed.swapper.repo.sources() == {"a": "a.json"}


def test_a_file_that_breaks_keeps_its_model_and_is_logged_once(bed: Bed, caplog: pytest.LogCaptureFixture) -> None:
    bed.publish(stub_metadata("a"), stub_metadata("b"))
    bed.watcher.poll()
    with caplog.at_level(logging.WARNING):
        bed.write("b.json", '{"name": "b", "version": ')
        assert bed.watcher.poll() == {str(bed.directory / "b.json"): "unusable", "a": "served"}
        bed.write("b.json", '{"name": "b", "version": ')  # rewritten, still broken: not said again
        assert bed.watcher.poll() == {str(bed.directory / "b.json"): "unusable", "a": "served"}
    assert sum("b.json" in r.getMessage() for r in caplog.records) == 1
    assert bed.served() == {"a": 1, "b": 1} and bed.swapper.removed == []
    # The watcher restarted: the broken file's model is still known to be its, and kept.
    assert bed.fresh().poll()[str(bed.directory / "b.json")] == "unusable"
    assert bed.served() == {"a": 1, "b": 1}
    bed.publish(stub_metadata("b", 2))
    assert bed.watcher.poll()["b"] == "swapped"


def test_two_files_naming_one_model_change_nothing_for_it(bed: Bed) -> None:
    bed.publish(stub_metadata("a"))
    bed.watcher.poll()
    bed.write("copy.json", stub_metadata("a", 2).to_json())
    outcomes = bed.watcher.poll()
    assert outcomes["a"] == "held"
    assert bed.served() == {"a": 1} and bed.swapper.swapped == [("a", 1)] and bed.swapper.removed == []
    (bed.directory / "copy.json").unlink()
    assert bed.watcher.poll() == {"a": "served"}


def test_one_models_failure_touches_no_other(bed: Bed) -> None:
    bed.publish(stub_metadata("a"), stub_metadata("b"))
    bed.watcher.poll()
    bed.swapper.failures["a"] = ModelLoadFailed("loading a: not a model")
    bed.publish(stub_metadata("a", 2), stub_metadata("b", 2))
    assert bed.watcher.poll() == {"a": "failed: load", "b": "swapped"}
    assert bed.served() == {"a": 1, "b": 2}
    failed = json.loads((bed.settings.sync.repository / STATE_FILE).read_text())["failed"]
    assert [(e["name"], e["version"]) for e in failed.values()] == [("a", 2)]
    assert bed.watcher.metrics.registry.get_sample_value(
        "nexus_model_swaps_by_model_total", {"model": "a", "outcome": "load"}
    )
    assert bed.watcher.poll() == {}  # not retried
    assert bed.fresh().poll()["a"] == "failed before"


def test_a_transient_failure_is_retried_at_the_next_poll_without_a_change(bed: Bed) -> None:
    bed.publish(stub_metadata("a"), stub_metadata("b"))
    bed.watcher.poll()
    bed.swapper.failures["b"] = ServerError("Triton at grpc://x did not answer")
    (bed.directory / "b.json").unlink()
    assert bed.watcher.poll() == {"a": "served", "b": "retry: server"}
    assert bed.served() == {"a": 1, "b": 1}
    del bed.swapper.failures["b"]
    assert bed.watcher.poll() == {"a": "served", "b": "removed"}
    assert bed.watcher.poll() == {}


def test_a_directory_that_cannot_be_read_changes_nothing(bed: Bed) -> None:
    bed.publish(stub_metadata("a"))
    bed.watcher.poll()
    shutil.rmtree(bed.directory)
    assert bed.watcher.poll() == {"": "unreadable"}
    assert bed.served() == {"a": 1}


def test_a_model_from_before_the_directory_is_kept_while_some_file_is_broken(bed: Bed) -> None:
    """No file is remembered for it (synced from a single file, say): a broken file may be its."""
    RecordingSwapper(bed.settings.sync).swap(stub_metadata("old"))
    bed.publish(stub_metadata("a"))
    bed.write("b.json", "{")
    assert bed.watcher.poll()["a"] == "swapped"
    assert bed.served() == {"a": 1, "old": 1}
    (bed.directory / "b.json").unlink()
    assert bed.watcher.poll() == {"a": "served", "old": "removed"}


def test_the_source_follows_the_settings(tmp_path: Path) -> None:
    env = {"MODEL_REPOSITORY": str(tmp_path / "repo"), "AWS_REGION": "us-east-1", "WATCH_METRICS_PORT": "0"}
    (tmp_path / "meta").mkdir()
    cases = {
        str(tmp_path / "meta"): (CatalogWatcher, DirectorySource),
        str(tmp_path / "meta.json"): (Watcher, None),
    }
    for path, (kind, source) in cases.items():
        made = watcher(load(WatchSettings, {**env, "NEXUS_META_PATH": path}))
        assert isinstance(made, kind) and (source is None or isinstance(made.source, source))
    prefix = watcher(
        load(WatchSettings, {**env, "NEXUS_META_PATH": str(tmp_path / "meta"), "WATCH_META_URI": "s3://bucket/models/"})
    )
    assert isinstance(prefix, CatalogWatcher) and isinstance(prefix.source, MirroredSource)
    single = watcher(load(WatchSettings, {**env, "WATCH_META_URI": "s3://bucket/models/a.json"}))
    assert isinstance(single, Watcher) and isinstance(single.source, S3Source)


def test_a_served_model_triton_could_not_load_is_loaded_again_with_back_off(
    bed: Bed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a directory one model's failed load does not stop Triton, so nothing restarts it: the watcher loads it
    again, at once, then after a back-off that doubles while it keeps failing; a model Triton serves is left alone."""
    bed.publish(stub_metadata("a"), stub_metadata("b"))
    bed.watcher.poll()
    clock = [1000.0]
    monkeypatch.setattr(watch.time, "monotonic", lambda: clock[0])
    bed.swapper.admin.failed = {"a": "out of memory"}
    bed.swapper.failures["a"] = ModelLoadFailed("loading a: out of memory")
    assert bed.watcher.heal() == [] and bed.swapper.reloaded == ["a"]
    clock[0] += watch.HEAL_BACKOFF_S - 1
    assert bed.watcher.heal() == [] and bed.swapper.reloaded == ["a"]  # not due yet
    clock[0] += 1
    assert bed.watcher.heal() == [] and bed.swapper.reloaded == ["a", "a"]
    clock[0] += watch.HEAL_BACKOFF_S  # the back-off doubled: not due
    assert bed.watcher.heal() == [] and bed.swapper.reloaded == ["a", "a"]
    del bed.swapper.failures["a"]
    clock[0] += watch.HEAL_BACKOFF_S
    assert bed.watcher.heal() == ["a"] and bed.swapper.reloaded == ["a", "a", "a"]
    assert bed.watcher.heal() == [] and bed.swapper.reloaded == ["a", "a", "a"]  # served now: left alone
    bed.swapper.admin.failed = {"b": watch.UNLOADED}  # unloaded on purpose (being removed, an operator)
    assert bed.watcher.heal() == [] and bed.swapper.reloaded == ["a", "a", "a"]


class DeciderNotes:
    """The decider's side of a swap within a budget, recording what the watcher tells it of models not installed."""

    def __init__(self) -> None:
        self.uninstalled: dict[str, str] = {}

    def not_installed(self, name: str, cause: str | None) -> None:
        if cause is None:
            self.uninstalled.pop(name, None)
        else:
            self.uninstalled[name] = cause

    def loaded(self) -> list[str]:
        return []

    def estimate(self, name: str) -> None:
        return None

    def room_for(self, name: str, need: object) -> bool:
        return True

    def release(self, name: str) -> None:
        pass

    def settle_new(self, name: str) -> None:
        pass

    def enforce(self) -> None:
        pass


def _a_fails_to_install(bed: Bed) -> DeciderNotes:
    """`b` served, then `a` published with an artifact that fails its integrity check, within a budget."""
    notes = DeciderNotes()
    bed.watcher.residency = notes  # type: ignore[assignment]
    bed.publish(stub_metadata("b"))
    bed.watcher.poll()
    bed.swapper.failures["a"] = IntegrityError("s3://bucket/a/1/model.pt: sha256 mismatch")
    bed.publish(stub_metadata("a"))
    assert bed.watcher.poll() == {"a": "failed: integrity", "b": "served"}
    return notes


def test_within_a_budget_a_model_that_could_not_be_installed_is_failed_with_its_cause(bed: Bed) -> None:
    """Not "loading": with nothing installed Triton never lists it, so only the watcher knows why."""
    notes = _a_fails_to_install(bed)
    assert list(notes.uninstalled) == ["a"]
    assert re.search(r"model a version 1 not installed \(integrity: .*sha256 mismatch\)", notes.uninstalled["a"])
    restarted = bed.fresh()
    restarted.residency = notes  # type: ignore[assignment]
    notes.uninstalled.clear()
    assert restarted.poll()["a"] == "failed before"
    assert list(notes.uninstalled) == ["a"]  # known again after a restart, from the record of failed versions
    del bed.swapper.failures["a"]
    bed.publish(stub_metadata("a", 2))
    assert restarted.poll()["a"] == "swapped"
    assert notes.uninstalled == {}


def test_within_a_budget_a_failed_models_file_removed_is_forgotten(bed: Bed) -> None:
    notes = _a_fails_to_install(bed)
    assert list(notes.uninstalled) == ["a"]
    (bed.directory / "a.json").unlink()
    bed.watcher.poll()
    assert notes.uninstalled == {}


def test_within_a_budget_a_new_version_retried_drops_the_earlier_versions_cause(bed: Bed) -> None:
    notes = _a_fails_to_install(bed)
    bed.swapper.failures["a"] = ServerError("Triton at grpc://x did not answer")
    bed.publish(stub_metadata("a", 2))
    assert bed.watcher.poll()["a"] == "retry: server"
    assert notes.uninstalled == {}  # "loading" while it is retried, not version 1's integrity error
