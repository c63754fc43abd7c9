"""Short forms of the load scenarios: overload at 2x capacity, and Triton killed under load then restarted."""

from __future__ import annotations

import pytest

from reliability.bed import Bed
from reliability.scenarios import overload, triton_kill
from tests.reliability.conftest import assert_functional

pytestmark = pytest.mark.integration


def test_overload_answers_only_200_429_503(bed: Bed) -> None:
    result = overload.run(bed, overload.Config())
    assert_functional(result)
    assert result.load is not None and result.load.by_status.get("429", 0) > 0


def test_triton_killed_under_load_then_restarted(bed: Bed) -> None:
    result = triton_kill.run(bed, triton_kill.Config())
    assert_functional(result)
    print(result.explain(), result.figures)
