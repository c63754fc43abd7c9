"""Short form of the noisy-neighbour scenario: two tenants through one proxy, one flooding it."""

from __future__ import annotations

import pytest

from reliability.bed import Bed
from reliability.scenarios import noisy_neighbour
from tests.reliability.conftest import assert_functional

pytestmark = pytest.mark.integration


def test_noisy_neighbour_fails_nobody_but_the_flood(bed: Bed) -> None:
    result = noisy_neighbour.run(bed, noisy_neighbour.Config())
    assert_functional(result)
    print(result.explain(), result.figures)
