"""Short form of the model-update scenario: `nexus watch` swaps a good version in, and refuses a version that
does not load and one that fails the smoke test, under steady load through the proxy.

Only functional criteria are asserted (no failed request, right bodies per version, the causes named, the
repository left serving version 2); the p99 during the swap is a figure of `python -m reliability`.
"""

from __future__ import annotations

import pytest

from reliability.bed import Bed
from reliability.scenarios import model_update
from tests.reliability.conftest import assert_functional

pytestmark = pytest.mark.integration


def test_model_update_under_load(bed: Bed) -> None:
    result = model_update.run(bed, model_update.Config())
    print(result.explain(), result.figures)
    assert_functional(result)
