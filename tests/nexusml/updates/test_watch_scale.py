"""Instances follow traffic: the rule (statistics of two polls -> a count), the config rewrite, and the watcher.

A real repository folder and the real `Swapper`; Triton is a fake that hands out statistics and records loads
(`test_watch_scale_servers.py` has a real one).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from nexusml.core.errors import ModelLoadFailed, NexusError, SettingsError
from nexusml.core.metadata import ModelMetadata
from nexusml.core.settings import load
from nexusml.sync import pipeline
from nexusml.sync.repository import RECORD_FILE, Repository
from nexusml.sync.triton_config import from_pbtxt
from nexusml.testing.models import stub_metadata
from nexusml.updates import watch
from nexusml.updates.swap import ModelStats, Swapper
from nexusml.updates.watch import Watcher, WatchSettings, queueing, quiet, scaling

MS = 1_000_000  # nanoseconds
SCALING = {"MIN_INSTANCE_COUNT": "1", "INSTANCE_COUNT": "2", "SCALE_UP_QUEUE_MS": "10", "SCALE_DOWN_IDLE_S": "60"}


def settings(tmp_path: Path, **environ: str) -> WatchSettings:
    base = {
        "NEXUS_META_PATH": str(tmp_path / "meta.json"),
        "MODEL_REPOSITORY": str(tmp_path / "repo"),
        "DEVICE": "cpu",
        "WATCH_METRICS_PORT": "0",
    }
    return load(WatchSettings, {**base, **environ})


@pytest.mark.parametrize(
    ("queued", "waited_ms", "delay_ms", "busy"),
    [
        pytest.param(0, 0, 2, False, id="no-requests"),
        pytest.param(10, 20, 2, False, id="waits-within-the-batchers-delay"),
        pytest.param(10, 120, 2, False, id="mean-at-the-threshold"),
        pytest.param(10, 121, 2, True, id="mean-beyond-delay-plus-margin"),
        pytest.param(1, 500, 50, True, id="one-request-that-waited-long"),
        pytest.param(100, 5_900, 50, False, id="long-delay-long-waits-within-it"),
        pytest.param(4, 80, 0, True, id="no-batching-delay-queued-20-ms"),
    ],
)
def test_queueing_is_a_mean_wait_beyond_the_batchers_delay_plus_a_margin(
    tmp_path: Path, queued: int, waited_ms: int, delay_ms: int, busy: bool
) -> None:
    before = ModelStats(queued=1000, queue_ns=7 * MS)
    now = ModelStats(queued=1000 + queued, queue_ns=7 * MS + waited_ms * MS)
    assert queueing(before, now, delay_ms * 1000, settings(tmp_path, **SCALING)) is busy


@pytest.mark.parametrize(
    ("low", "busy_ms", "elapsed_s", "is_quiet"),
    [
        pytest.param(1, 0, 2, True, id="no-work"),
        pytest.param(1, 1000, 2, True, id="one-instance-half-busy"),
        pytest.param(1, 1001, 2, False, id="one-instance-more-than-half-busy"),
        pytest.param(2, 1500, 2, True, id="two-instances-under-half-busy"),
        pytest.param(1, 3000, 2, False, id="work-of-more-than-one-instance"),
    ],
)
def test_quiet_is_work_that_min_instances_do_at_most_half_busy(
    tmp_path: Path, low: int, busy_ms: int, elapsed_s: float, is_quiet: bool
) -> None:
    wide = settings(tmp_path, **{**SCALING, "MIN_INSTANCE_COUNT": str(low), "INSTANCE_COUNT": "4"})
    before = ModelStats(busy_ns=9 * MS)
    assert quiet(before, ModelStats(busy_ns=9 * MS + busy_ms * MS), elapsed_s, wide) is is_quiet


@pytest.mark.parametrize(
    ("busy", "count", "idle_s", "target"),
    [
        pytest.param(True, 1, None, 2, id="queueing-at-min-goes-up"),
        pytest.param(True, 2, None, None, id="queueing-at-max-stays"),
        pytest.param(False, 2, None, None, id="not-quiet-stays"),
        pytest.param(False, 2, 59, None, id="quiet-but-not-long-enough"),
        pytest.param(False, 2, 60, 1, id="quiet-long-enough-goes-down"),
        pytest.param(False, 1, 3600, None, id="quiet-at-min-stays"),
    ],
)
def test_scaling_rule(tmp_path: Path, busy: bool, count: int, idle_s: float | None, target: int | None) -> None:
    assert scaling(busy, count, idle_s, settings(tmp_path, **SCALING)) == target


def test_up_goes_straight_to_instance_count(tmp_path: Path) -> None:
    wide = settings(tmp_path, **{**SCALING, "INSTANCE_COUNT": "4"})
    assert scaling(True, 1, None, wide) == 4
    assert scaling(False, 3, 60, wide) == 1


def test_min_above_instance_count_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="MIN_INSTANCE_COUNT=3 exceeds INSTANCE_COUNT=2"):
        settings(tmp_path, MIN_INSTANCE_COUNT="3", INSTANCE_COUNT="2")


class FakeTriton:
    """Statistics set by the test; loads recorded (the config each load found on disk), or failing."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.stats: dict[str, ModelStats] = {}
        self.loads: list[tuple[str, int]] = []
        self.failure: NexusError | None = None
        self.asked = 0

    def statistics(self) -> dict[str, ModelStats]:
        self.asked += 1
        return dict(self.stats)

    def load(self, model: str) -> None:
        if self.failure is not None:
            raise self.failure
        config = from_pbtxt(self.repo.config_text(model) or "")
        self.loads.append((model, config["instance_group"][0]["count"]))

    def queue(self, model: str, requests: int, waited_ms: float) -> None:
        """`requests` more went through `model`'s queue, waiting `waited_ms` in all."""
        seen = self.stats.get(model, ModelStats())
        self.stats[model] = seen + ModelStats(requests, round(waited_ms * MS))

    def work(self, model: str, busy_s: float) -> None:
        """`model`'s instances executed for `busy_s` more, nothing queued."""
        self.stats[model] = self.stats.get(model, ModelStats()) + ModelStats(busy_ns=round(busy_s * 1e9))


class Bed:
    def __init__(self, tmp_path: Path, **environ: str) -> None:
        self.settings = settings(tmp_path, **environ)
        self.repo = Repository(self.settings.sync.repository)
        self.triton = FakeTriton(self.repo)
        self.swapper = Swapper(self.settings.sync, self.triton)  # type: ignore[arg-type]
        self.watcher = Watcher(self.settings, source=None, swapper=self.swapper)  # type: ignore[arg-type]

    def serve(self, meta: ModelMetadata) -> None:
        """`meta` installed and served as the sync leaves it."""
        version = self.repo.version_dir(meta.name, meta.version)
        version.mkdir(parents=True, exist_ok=True)
        (version / RECORD_FILE).write_text(json.dumps({"metadata": meta.to_dict()}))
        self.repo.write_config(meta.name, pipeline.config_text(meta, self.settings.sync))

    def count(self, name: str) -> int | None:
        return self.swapper.instances(name)

    def changes(self, name: str, direction: str) -> float | None:
        labels = {"model": name, "direction": direction}
        return self.watcher.metrics.registry.get_sample_value("nexus_model_scalings_total", labels)


def test_nothing_changes_when_min_instance_count_is_unset(tmp_path: Path) -> None:
    bed = Bed(tmp_path, INSTANCE_COUNT="2")
    meta = stub_metadata("a")
    bed.serve(meta)
    assert bed.count("a") == 2
    assert bed.repo.config_text("a") == pipeline.config_text(
        meta, load(type(bed.settings.sync), {"MODEL_REPOSITORY": str(tmp_path / "repo"), "DEVICE": "cpu"})
    )
    bed.triton.queue("a", 10, 10_000)
    assert bed.watcher.scale() == {}
    bed.triton.queue("a", 10, 10_000)
    assert bed.watcher.scale() == {}
    assert bed.triton.asked == 0 and bed.triton.loads == []


def test_a_queueing_model_goes_up_then_down_after_its_idle_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bed = Bed(tmp_path, **{**SCALING, "SCALE_DOWN_IDLE_S": "0"})
    bed.serve(stub_metadata("a"))
    bed.serve(stub_metadata("b"))
    assert bed.count("a") == 1 and bed.count("b") == 1
    bed.triton.queue("a", 1, 0)
    bed.triton.queue("b", 1, 0)
    assert bed.watcher.scale() == {}  # the first look is a baseline
    bed.triton.queue("a", 10, 10 * 70)  # 70 ms each: beyond the 50 ms delay plus 10
    bed.triton.queue("b", 10, 10 * 55)  # 55 ms each: within
    with caplog.at_level(logging.INFO):
        assert bed.watcher.scale() == {"a": "up"}
    assert bed.count("a") == 2 and bed.count("b") == 1
    assert bed.triton.loads == [("a", 2)]
    [line] = [r.getMessage() for r in caplog.records if "scaled" in r.getMessage()]
    assert line.startswith("a scaled up: 1 -> 2 instances (queueing; loaded in ")
    assert bed.changes("a", "up") == 1
    bed.triton.stats["a"] = ModelStats()  # the reload starts Triton's statistics again: a new baseline
    assert bed.watcher.scale() == {}
    assert bed.watcher.scale() == {"a": "down"}
    assert bed.count("a") == 1 and bed.triton.loads == [("a", 2), ("a", 1)]
    assert bed.changes("a", "down") == 1


def test_a_busy_model_stays_up(tmp_path: Path) -> None:
    bed = Bed(tmp_path, **SCALING)
    bed.serve(stub_metadata("a"))
    bed.triton.queue("a", 1, 0)
    bed.watcher.scale()
    bed.triton.queue("a", 10, 10_000)
    assert bed.watcher.scale() == {"a": "up"}
    for _ in range(3):
        bed.triton.queue("a", 10, 10_000)
        assert bed.watcher.scale() == {}
    assert bed.count("a") == 2


def test_work_that_would_queue_on_fewer_instances_keeps_a_model_up(tmp_path: Path) -> None:
    bed = Bed(tmp_path, **{**SCALING, "SCALE_DOWN_IDLE_S": "0"})
    bed.serve(stub_metadata("a"))
    bed.triton.queue("a", 1, 0)
    bed.watcher.scale()
    bed.triton.queue("a", 10, 10_000)
    assert bed.watcher.scale() == {"a": "up"}
    bed.triton.stats["a"] = ModelStats(queued=1)
    bed.watcher.scale()
    for _ in range(3):
        bed.triton.work("a", 5.0)  # far more than one instance does between two polls
        assert bed.watcher.scale() == {}
    assert bed.watcher.scale() == {"a": "down"}


def test_a_failed_scale_change_leaves_the_old_config_and_backs_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Triton's statistics still want the change after it failed: without a back-off every poll would load the new
    instances beside the serving ones again."""
    clock = [1000.0]
    monkeypatch.setattr(watch.time, "monotonic", lambda: clock[0])
    bed = Bed(tmp_path, **SCALING)
    meta = stub_metadata("a")
    bed.serve(meta)
    before = bed.repo.config_text("a")
    bed.triton.failure = ModelLoadFailed("loading a: out of memory")
    bed.triton.queue("a", 1, 0)
    bed.watcher.scale()
    bed.triton.queue("a", 10, 10_000)
    assert bed.watcher.scale() == {"a": "failed: load"}
    assert bed.repo.config_text("a") == before
    assert bed.changes("a", "failed") == 1
    bed.triton.failure = None
    bed.triton.queue("a", 10, 10_000)
    assert bed.watcher.scale() == {}  # backing off
    clock[0] += watch.HEAL_BACKOFF_S
    bed.triton.queue("a", 10, 10_000)
    assert bed.watcher.scale() == {"a": "up"}


def test_the_config_rewrite_changes_the_count_and_what_follows_from_it(tmp_path: Path) -> None:
    bed = Bed(tmp_path, **SCALING)
    meta = stub_metadata("a")
    bed.serve(meta)
    one = from_pbtxt(bed.repo.config_text("a") or "")
    assert bed.swapper.scale("a", 2)
    two = from_pbtxt(bed.repo.config_text("a") or "")
    assert two["instance_group"] == [{"kind": "KIND_CPU", "count": 2}]
    # With one instance the batcher gets no queue policy (triton_config.model_config); with two it has it again.
    assert set(two["dynamic_batching"]) - set(one["dynamic_batching"]) == {
        "default_queue_policy",
        "priority_levels",
        "default_priority_level",
    }
    assert {k: v for k, v in two.items() if k not in ("instance_group", "dynamic_batching")} == {
        k: v for k, v in one.items() if k not in ("instance_group", "dynamic_batching")
    }
    assert not bed.swapper.scale("a", 2)  # already so: nothing written, nothing loaded
    assert bed.triton.loads == [("a", 2)]


def test_a_version_swap_keeps_the_scaled_count(tmp_path: Path) -> None:
    bed = Bed(tmp_path, **SCALING)
    bed.serve(stub_metadata("a"))
    bed.swapper.scale("a", 2)
    newer = stub_metadata("a", 2)
    version = bed.repo.version_dir("a", 2)
    version.mkdir(parents=True)
    (version / RECORD_FILE).write_text(json.dumps({"metadata": newer.to_dict()}))
    bed.swapper._switch(newer)
    assert bed.count("a") == 2
    assert from_pbtxt(bed.repo.config_text("a") or "")["version_policy"]["specific"]["versions"] == ["2"]
