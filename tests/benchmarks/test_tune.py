"""The tuning sweep's choice under a p99 budget, and the candidates it generates through the config generator."""

from __future__ import annotations

import pytest

from benchmarks.tune import Candidate, choose, preferred_sizes, serving_for
from nexusml.core.metadata import Artifact, ModelMetadata, TensorSpec
from nexusml.sync.triton_config import ServingConfig, from_pbtxt, model_config, to_pbtxt


def result(mbs: int, delay: int, inst: int, throughput: float, p99: float | None, ok: bool = True) -> dict:
    return {
        "max_batch_size": mbs,
        "delay_us": delay,
        "instances": inst,
        "throughput": throughput,
        "p99_ms": p99,
        "ok": ok,
    }


RESULTS = [
    result(8, 0, 1, 4000.0, 9.0),
    result(32, 500, 1, 9000.0, 14.0),
    result(64, 2000, 1, 12000.0, 30.0),
    result(64, 2000, 2, 13000.0, 45.0),
    result(64, 0, 2, 20000.0, None, ok=False),
]


@pytest.mark.parametrize(
    ("budget", "expected"),
    [
        pytest.param(50.0, (64, 2000, 2), id="loose-budget-fastest"),
        pytest.param(40.0, (64, 2000, 1), id="budget-excludes-fastest"),
        pytest.param(14.0, (32, 500, 1), id="budget-on-the-edge"),
        pytest.param(5.0, None, id="nothing-within"),
    ],
)
def test_choose(budget, expected):
    best = choose(RESULTS, budget)
    assert (None if best is None else (best["max_batch_size"], best["delay_us"], best["instances"])) == expected


def test_choose_prefers_lower_p99_on_equal_throughput():
    best = choose([result(8, 0, 1, 100.0, 9.0), result(16, 0, 1, 100.0, 3.0)], 10.0)
    assert best["max_batch_size"] == 16


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        pytest.param(64, (4, 8, 16, 32, 64), id="power-of-two"),
        pytest.param(48, (4, 8, 16, 32, 48), id="not-a-power"),
        pytest.param(4, (4,), id="smallest"),
        pytest.param(2, (2,), id="below-four"),
    ],
)
def test_preferred_sizes(limit, expected):
    assert preferred_sizes(limit) == expected


def test_candidate_renders_through_the_generator():
    meta = ModelMetadata(
        name="demo_mlp",
        version=1,
        artifact=Artifact(uri="s3://b/k", sha256="0" * 64, size=1, format="torchscript"),
        inputs=(TensorSpec("INPUT__0", "FP32", (5,)),),
        outputs=(TensorSpec("OUTPUT__0", "FP32", (2,)),),
    )
    base = ServingConfig(32, 50_000, (4, 8, 16, 32), 256, 2_000_000, "KIND_CPU", 1, 1, dynamic_batching=False)
    config = from_pbtxt(to_pbtxt(model_config(meta, serving_for(base, Candidate(64, 2000, 2)))))
    assert config["max_batch_size"] == 64
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == "2000"
    assert config["dynamic_batching"]["preferred_batch_size"] == [4, 8, 16, 32, 64]
    assert config["instance_group"][0]["count"] == 2
