"""Short form of hostile HTTP: slow-loris heads and bodies, oversized headers and bodies, malformed HTTP (its
answers and log lines counted), fuzzing."""

from __future__ import annotations

import pytest

from reliability.bed import Bed
from reliability.scenarios import hostile_http
from tests.reliability.conftest import assert_functional

pytestmark = pytest.mark.integration


def test_hostile_http(bed: Bed) -> None:
    result = hostile_http.run(bed, hostile_http.Config())
    print(result.explain(), result.figures)
    assert_functional(result)
    assert result.figures["malformed_sent"] == hostile_http.Config().malformed
