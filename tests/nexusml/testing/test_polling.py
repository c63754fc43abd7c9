"""`wait_until`: true as soon as its predicate is, false after its bound, and asked once more at the end."""

from __future__ import annotations

import itertools

import pytest

from nexusml.testing import polling


class Clock:
    """`time.monotonic` and `time.sleep` for the poll: sleeping moves the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize(
    ("true_from", "expected", "asks"),
    [
        pytest.param(0, True, 1, id="at-once"),
        pytest.param(2, True, 3, id="after-two-polls"),
        pytest.param(4, True, 5, id="at-the-last-ask-after-the-bound"),
        pytest.param(5, False, 5, id="never-within-the-bound"),
    ],
)
def test_wait_until(monkeypatch: pytest.MonkeyPatch, true_from: int, expected: bool, asks: int) -> None:
    clock = Clock()
    monkeypatch.setattr(polling, "time", clock)
    counter = itertools.count()
    asked = []

    def predicate() -> bool:
        asked.append(clock.now)
        return next(counter) >= true_from

    assert polling.wait_until(predicate, timeout_s=1.0, interval_s=0.25) is expected
    assert len(asked) == asks
