"""The reliability bed under pytest: the session's moto S3, demo model, synced repository and shared
Triton (`tests/conftest.py`) handed to the scenarios of `reliability.scenarios` with short settings.

Tests assert only functional criteria (statuses, bodies, readiness, exit codes, files); the timing
figures are measured by `python -m reliability` and reported in RELIABILITY.md, never asserted here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nexusml.testing.models import PublishedModel
from nexusml.triton.server import TritonServer
from reliability.bed import Bed
from reliability.result import ScenarioResult


@pytest.fixture
def bed(
    s3_env: dict[str, str],
    s3_client: Any,
    demo_model: PublishedModel,
    demo_repository: Path,
    triton: TritonServer,
    tmp_path: Path,
) -> Iterator[Bed]:
    """A bed per test: shares the session's servers, stops whatever the test started itself."""
    bed = Bed(tmp_path, s3_env, s3_client, demo_model, demo_repository, shared=triton)
    yield bed
    bed.close()


def assert_functional(result: ScenarioResult) -> None:
    """Every functional criterion passed; the message lists all criteria with their figures."""
    assert not result.functional_failures, result.explain()
