"""Waiting for something another process does: a poll with a bound, never a verdict on speed."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], object], timeout_s: float, interval_s: float = 0.1) -> bool:
    """Poll `predicate` until it is true or `timeout_s` passed; whether it ended true (asked once more at the
    end, so a slow machine that got there during the last sleep is not failed)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())
