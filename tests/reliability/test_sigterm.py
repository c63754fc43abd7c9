"""Short forms of SIGTERM under load, for the proxy and for Triton."""

from __future__ import annotations

import pytest

from reliability.bed import Bed
from reliability.scenarios import sigterm
from tests.reliability.conftest import assert_functional

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("target", [pytest.param("proxy", id="proxy"), pytest.param("triton", id="triton")])
def test_sigterm_under_load(bed: Bed, target: str) -> None:
    result = sigterm.run(bed, sigterm.Config(target=target))
    print(result.explain(), result.figures)
    assert_functional(result)
