"""Short forms of SIGTERM under load, for the proxy and for Triton; `make run` stopped by group signals."""

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


def test_make_run_stopped_by_signals_to_its_process_group(bed: Bed) -> None:
    """Once after ready, with a SIGINT to the group while it drains, and once during start-up: GNU make passes
    the SIGTERM on, so `nexus up` gets two each time."""
    result = sigterm.run(bed, sigterm.Config(target="make-run"))
    print(result.explain(), result.figures)
    assert_functional(result)
