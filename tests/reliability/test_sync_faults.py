"""Short forms of the sync faults: S3 stream cut by a relay (resumed; or failing with exit 6), object
replaced mid-download (exit 7), device files, fifos, hard links and a bomb in archives (exit 8), a full
disk (exit 9); after each: old or new version, never a mix, and no temporary files."""

from __future__ import annotations

import pytest

from reliability.bed import Bed
from reliability.result import ScenarioResult
from reliability.scenarios import sync_faults

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id) for case in sync_faults.CASES])
def test_sync_fault(bed: Bed, case: sync_faults.Case) -> None:
    result = ScenarioResult("sync-faults")
    sync_faults.run_case(bed, case, result)
    assert not result.functional_failures, result.explain()
