"""Short form of the many-models scenario: a directory of models served by one proxy and one Triton under a
Zipf-like mix of traffic, one model broken from the start, one added by `nexus watch` while the others serve.

Only functional criteria are asserted (the broken model fails alone, no failed request to the others, every
answer that model's own output, the added model loaded with nothing restarted, every usable model resident);
the load time, the p99s and the memory per model are figures of `python -m reliability`. The pieces that read
no server (the shares, the watcher's steps in its log) are tested on their own first.
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


@pytest.mark.integration
def test_many_models_under_load(bed: Bed) -> None:
    result = many_models.run(bed, many_models.Config())
    print(result.explain(), result.figures)
    assert_functional(result)
