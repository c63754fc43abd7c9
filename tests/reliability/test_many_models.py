"""Short forms of the many-models scenario: a directory of models served by one proxy and one Triton under a
Zipf-like mix of traffic, one model broken from the start; within a memory budget that holds four of the twelve,
and with every model resident and one added by `nexus watch` while the others serve.

Only functional criteria are asserted (the broken model fails alone, no failed request to the others, every
answer that model's own output; within the budget: the stubs' PSS never above it, every model loaded on demand
and some evicted; every model resident: the added model loaded with nothing restarted, every usable model
resident); the load waits, the p99s and the memory per model are figures of `python -m reliability`. The pieces
that read no server (the shares, the watcher's steps in its log) are tested on their own first.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from reliability.bed import Bed
from reliability.scenarios import many_models
from tests.reliability.conftest import assert_functional


@pytest.mark.parametrize(
    ("count", "s", "expected"),
    [
        pytest.param(4, 1.0, [0.48, 0.24, 0.16, 0.12], id="zipf-4"),
        pytest.param(3, 0.0, [1 / 3, 1 / 3, 1 / 3], id="s-0-is-uniform"),
        pytest.param(1, 1.0, [1.0], id="one-model"),
    ],
)
def test_shares(count: int, s: float, expected: list[float]) -> None:
    assert many_models.shares(count, s) == pytest.approx(expected)


def test_watch_steps_of_one_model_since_the_write(tmp_path: Path) -> None:
    log = tmp_path / "watch.log"
    log.write_text(
        "watching /models every 0.5 s; Triton at grpc://127.0.0.1:1\n"
        "2026-01-02 03:04:00,000 INFO nexusml.updates.watch: mm_added version 1: install\n"  # before the write
        "2026-01-02 03:04:05,100 INFO nexusml.updates.watch: update mm_added: nothing -> version 1\n"
        "2026-01-02 03:04:05,250 INFO nexusml.updates.watch: mm_added version 1: install\n"
        "2026-01-02 03:04:05,300 INFO nexusml.updates.watch: mm_other version 1: install\n"
        "2026-01-02 03:04:06,000 INFO nexusml.sync.pipeline: downloading s3://b/mm_added/1/model.pt (1 bytes)\n"
        "2026-01-02 03:04:06,500 INFO nexusml.updates.watch: mm_added version 1: try\n"
        "2026-01-02 03:04:09,000 INFO nexusml.updates.watch: mm_added version 1: switch\n"
        "2026-01-02 03:04:12,750 INFO nexusml.updates.watch: mm_added version 1 is live (7.5 s)\n"
    )
    written = datetime(2026, 1, 2, 3, 4, 5).timestamp()
    steps = many_models.watch_steps(log, "mm_added", written)
    assert [(round(at - written, 2), label) for at, label in steps] == [
        (0.25, "install"),
        (1.5, "try"),
        (4.0, "switch"),
        (7.75, "live"),
    ]


def test_residency_windows_from_the_deciders_log(tmp_path: Path) -> None:
    log = tmp_path / "watch.log"
    log.write_text(
        "2026-01-02 03:03:00,000 INFO nexusml.updates.residency: mm_old loaded in 2.0 s (1.0 MiB; 1.0 MiB of "
        "MODEL_MEMORY_BUDGET=9.0 MiB in use)\n"  # before
        "2026-01-02 03:04:06,000 INFO nexusml.updates.residency: mm_deep unloaded to make room for mm_large "
        "(161.3 MiB; idle since 03:04:01; 1.0 s)\n"
        "2026-01-02 03:04:09,900 INFO nexusml.updates.residency: mm_large loaded in 3.9 s (188.8 MiB; 674.9 MiB of "
        "MODEL_MEMORY_BUDGET=734.3 MiB in use)\n"
        "2026-01-02 03:04:10,000 INFO nexusml.updates.watch: mm_large version 1: install\n"
    )
    since = datetime(2026, 1, 2, 3, 4, 0).timestamp()
    windows = many_models.residency_windows(log, since)
    assert [(round(start - since, 2), round(end - since, 2), label) for start, end, label in windows] == [
        (5.0, 6.0, "unload mm_deep"),
        (6.0, 9.9, "load mm_large"),
    ]


@pytest.mark.parametrize(
    ("spans", "expected"),
    [
        pytest.param(
            [(10.0, 13.0, "load mm_a")],
            {"first": [(10.0, 10.5)], "middle": [(10.5, 12.5)], "last": [(12.5, 13.0)]},
            id="a-load-in-three",
        ),
        pytest.param(
            [(10.0, 10.8, "load mm_a")],
            {"first": [(10.0, 10.5)], "middle": [], "last": [(10.3, 10.8)]},
            id="shorter-than-two-edges",
        ),
        pytest.param(
            [(1.0, 2.0, "unload mm_b"), (2.0, 4.0, "load mm_a")],
            {"first": [(2.0, 2.5)], "middle": [(2.5, 3.5)], "last": [(3.5, 4.0)]},
            id="unloads-left-out",
        ),
    ],
)
def test_load_phases(spans: list[tuple[float, float, str]], expected: dict[str, list[tuple[float, float]]]) -> None:
    phases = many_models.load_phases(spans, edge_s=0.5)
    assert {phase: [(start, end) for start, end, _ in windows] for phase, windows in phases.items()} == expected


@pytest.mark.integration
@pytest.mark.parametrize(
    "config",
    [
        pytest.param(many_models.Config(), id="within-a-budget-for-four"),
        pytest.param(many_models.Config.all_resident(), id="every-model-resident"),
    ],
)
def test_many_models_under_load(bed: Bed, config: many_models.Config) -> None:
    result = many_models.run(bed, config)
    print(result.explain(), result.figures)
    assert_functional(result)
