"""Short form of the shared-memory scenario: Triton killed and restarted under load, the region registered again."""

from __future__ import annotations

import pytest

from reliability.bed import Bed
from reliability.scenarios import shm_restart
from tests.reliability.conftest import assert_functional

pytestmark = pytest.mark.integration


def test_triton_restarted_under_load_with_shared_memory(bed: Bed) -> None:
    result = shm_restart.run(bed, shm_restart.Config())
    assert_functional(result)
    print(result.explain(), result.figures)
