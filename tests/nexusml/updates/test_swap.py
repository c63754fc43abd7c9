"""The smoke test's judgement of a candidate's answer, and its input: no servers needed."""

from __future__ import annotations

import numpy as np
import pytest

from nexusml.core.errors import SmokeTestFailed
from nexusml.core.metadata import Artifact, ModelMetadata, TensorSpec
from nexusml.updates.swap import check_outputs, smoke_inputs

META = ModelMetadata(
    name="m",
    version=2,
    artifact=Artifact(uri="s3://b/k", sha256="0" * 64, size=1, format="torchscript"),
    inputs=(TensorSpec("INPUT__0", "FP32", (5,)), TensorSpec("TOKENS", "INT64", (-1,))),
    outputs=(TensorSpec("OUTPUT__0", "FP32", (2,)), TensorSpec("LENGTHS", "INT32", (-1,))),
)
GOOD = {"OUTPUT__0": np.zeros((1, 2), np.float32), "LENGTHS": np.zeros((1, 7), np.int32)}


def test_smoke_inputs_are_one_row_of_zeros_with_variable_dimensions_of_one() -> None:
    inputs = smoke_inputs(META)
    assert inputs["INPUT__0"].shape == (1, 5) and inputs["INPUT__0"].dtype == np.float32
    assert inputs["TOKENS"].shape == (1, 1) and inputs["TOKENS"].dtype == np.int64
    assert not any(array.any() for array in inputs.values())


def test_a_right_answer_passes() -> None:
    check_outputs(META, GOOD)


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        pytest.param({"OUTPUT__0": None}, "missing", id="missing-output"),
        pytest.param({"OUTPUT__0": np.zeros((1, 3), np.float32)}, "shape [1, 3]", id="wrong-width"),
        pytest.param({"OUTPUT__0": np.zeros((2, 2), np.float32)}, "shape [2, 2]", id="wrong-rows"),
        pytest.param({"OUTPUT__0": np.zeros((1, 2, 1), np.float32)}, "shape", id="extra-dimension"),
        pytest.param({"OUTPUT__0": np.zeros((1, 2), np.float64)}, "FP64", id="wrong-datatype"),
        pytest.param({"OUTPUT__0": np.array([[0.0, np.nan]], np.float32)}, "not finite", id="nan"),
        pytest.param({"OUTPUT__0": np.array([[np.inf, 0.0]], np.float32)}, "not finite", id="inf"),
    ],
)
def test_a_wrong_answer_fails_naming_what(change: dict[str, np.ndarray | None], phrase: str) -> None:
    outputs = {name: array for name, array in {**GOOD, **change}.items() if array is not None}
    with pytest.raises(SmokeTestFailed, match=phrase.replace("[", r"\[").replace("]", r"\]")):
        check_outputs(META, outputs)
