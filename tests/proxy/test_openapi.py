"""Property-based run over the committed OpenAPI document (schemathesis): no input gives a 5xx.

The proxy runs as a real process on a free port, over gRPC to the shared Triton. Beyond "no server
error", every answer must use a documented status, the documented content type, and match the
documented response schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from nexusml.testing.openapi import CHECKS, schema
from nexusml.testing.servers import ProxyProcess
from nexusml.triton.server import TritonServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def running_proxy(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    log_dir: Path = tmp_path_factory.mktemp("proxy-openapi")
    proxy = ProxyProcess(log_dir / "proxy.log", MODEL_SERVER_URL=triton.grpc_url, ACCESS_LOG="off")
    proxy.start()
    yield proxy
    proxy.stop()


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_gives_a_server_error(case: schemathesis.Case, running_proxy: ProxyProcess) -> None:
    # A deadline the client itself shortens to microseconds rightly ends in 504 (test_upstream covers it).
    if case.headers:
        case.headers.pop("X-Request-Timeout-Ms", None)
    case.call_and_validate(base_url=running_proxy.url, checks=CHECKS)
