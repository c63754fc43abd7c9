"""The one rule for a probe's shape and for the candidate's name (watcher, proxy and watchdog share it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexusml.core.probe import CANDIDATE_SUFFIX, candidate_name, not_loaded, probe_rows, probe_shape, served_models


@pytest.mark.parametrize(
    ("max_batch_size", "preferred", "rows"),
    [
        pytest.param(64, (), 1, id="no-preferred-one-row"),
        pytest.param(64, (8, 4, 16), 4, id="smallest-preferred"),
        pytest.param(4, (8, 16), 1, id="preferred-larger-than-max-batch"),
        pytest.param(8, (16, 8), 8, id="preferred-equal-to-max-batch"),
    ],
)
def test_probe_rows(max_batch_size: int, preferred: tuple[int, ...], rows: int) -> None:
    assert probe_rows(max_batch_size, preferred) == rows


@pytest.mark.parametrize(
    ("dims", "max_batch_size", "preferred", "shape"),
    [
        pytest.param((5,), 32, (4, 8), (4, 5), id="batched"),
        pytest.param((-1, 3), 32, (), (1, 1, 3), id="variable-dimension-is-one"),
        pytest.param((3, 224, 224), 0, (4,), (3, 224, 224), id="no-batch-dimension"),
        pytest.param((), 8, (), (1,), id="scalar-rows"),
    ],
)
def test_probe_shape(
    dims: tuple[int, ...], max_batch_size: int, preferred: tuple[int, ...], shape: tuple[int, ...]
) -> None:
    assert probe_shape(dims, max_batch_size, preferred) == shape


def test_served_models_leave_out_candidates_and_folders_without_a_config(tmp_path: Path) -> None:
    for name in ("b", "a", candidate_name("a"), "scratch"):
        (tmp_path / name).mkdir()
        if name != "scratch":
            (tmp_path / name / "config.pbtxt").write_text("")
    assert candidate_name("a") == f"a{CANDIDATE_SUFFIX}"
    assert served_models(tmp_path) == ["a", "b"]
    assert served_models(tmp_path / "missing") == []


def test_not_loaded_names_each_failed_model_with_the_first_line_of_its_reason() -> None:
    index = [
        {"name": "good", "version": "1", "state": "READY"},
        {"name": "broken", "version": "1", "state": "UNAVAILABLE", "reason": "Internal: RuntimeError: bad\n\nAt:\n  x"},
        {"name": "silent", "state": "UNAVAILABLE"},
        {"name": "coming", "state": "LOADING"},
        {"name": "good__candidate", "state": "UNAVAILABLE", "reason": "unloaded"},
    ]
    assert not_loaded(index) == {"broken": "Internal: RuntimeError: bad", "silent": "not loaded"}
