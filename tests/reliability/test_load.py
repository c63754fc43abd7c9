"""The verdict shape both drivers share: a checking wrk run's summary read as the Python generator reads its
samples (no servers)."""

from __future__ import annotations

import math

import pytest

from benchmarks.wrk_checked import BUCKETS_PER_E, CheckedSummary
from reliability.load import Sample, checked_stats, summarize


def _bucket(ms: float) -> int:
    return math.floor(math.log(ms * 1000) * BUCKETS_PER_E)


def _summary(**overrides: object) -> CheckedSummary:
    fields: dict[str, object] = {
        "duration_s": 2.0,
        "requests": 10,
        "errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0},
        "statuses": {"200": 6, "429": 4},
        "codes": {"overloaded": 4},
        "wrong_bodies": 1,
        "without_retry_after": 2,
        "unpaired": 0,
        "behind_schedule": 0,
        "latency": {"accepted": {_bucket(10.0): 6}, "rejected": {_bucket(1.0): 4}, "other": {}},
    }
    return CheckedSummary(**{**fields, **overrides})  # type: ignore[arg-type]


def test_answers_are_judged_as_the_python_generator_judges_them() -> None:
    stats = checked_stats(_summary())
    assert stats.sent == 10 and stats.by_status == {"200": 6, "429": 4}
    assert stats.by_code == {"overloaded": 4}
    assert (stats.wrong_bodies, stats.rejections_without_retry_after) == (1, 2)
    assert stats.rejection_p99_ms == pytest.approx(1.0, rel=0.01)
    assert stats.accepted_p99_ms == pytest.approx(10.0, rel=0.01)
    assert stats.p99_ms == pytest.approx(10.0, rel=0.01) and stats.p50_ms == pytest.approx(10.0, rel=0.01)
    assert stats.rate_per_s == 5.0


@pytest.mark.parametrize(
    ("errors", "status_0", "codes"),
    [
        pytest.param({"connect": 3}, 3, {"refused": 3}, id="refused"),
        pytest.param({"read": 1, "write": 1}, 2, {"disconnected": 2}, id="disconnected"),
        pytest.param({"timeout": 2}, 2, {"hang": 2}, id="hang"),
    ],
)
def test_socket_errors_are_status_0_with_the_python_generators_codes(
    errors: dict[str, int], status_0: int, codes: dict[str, int]
) -> None:
    stats = checked_stats(_summary(errors={"connect": 0, "read": 0, "write": 0, "timeout": 0, **errors}))
    assert stats.by_status["0"] == status_0
    assert stats.sent == 10 + status_0
    assert {code: n for code, n in stats.by_code.items() if code != "overloaded"} == codes


def test_skipped_arrivals_are_minus_1_and_not_sent() -> None:
    """As the open loop's: the generator's own limit, never counted as an answer (nor as an error)."""
    stats = checked_stats(_summary(behind_schedule=5))
    assert stats.by_status["-1"] == 5 and stats.by_code["client_saturated"] == 5
    assert stats.sent == 10
    python = summarize([Sample(0.0, 0.0, -1, "client_saturated", False, None), Sample(0.0, 0.01, 200, "", False, True)])
    assert python.by_status == {"-1": 1, "200": 1} and python.sent == 1
