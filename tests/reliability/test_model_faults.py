"""Short forms of the model-fault scenarios: a Python stub that dies, and a backend slower than the deadline."""

from __future__ import annotations

import pytest

from reliability.bed import Bed
from reliability.scenarios import slow_backend, stub_crash
from tests.reliability.conftest import assert_functional

pytestmark = pytest.mark.integration


def test_python_stub_dies_under_load(bed: Bed) -> None:
    result = stub_crash.run(bed, stub_crash.Config())
    print(result.explain(), result.figures)
    assert_functional(result)


@pytest.mark.parametrize("protocol", [pytest.param("grpc", id="grpc"), pytest.param("http", id="http")])
def test_slow_backend_gives_504_and_cancels(bed: Bed, protocol: str) -> None:
    result = slow_backend.run(bed, slow_backend.Config(protocol=protocol))
    print(result.explain(), result.figures)
    assert_functional(result)
