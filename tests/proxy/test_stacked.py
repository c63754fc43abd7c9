"""A merged batch's rows (`proxy.stacked`) are the concatenation the upstream used to get, padding included."""

from __future__ import annotations

import numpy as np
import pytest

from proxy.shm import Lease
from proxy.stacked import Stacked


def expected(parts: list[np.ndarray], padding: int) -> np.ndarray:
    return np.concatenate([*parts, np.repeat(parts[-1][-1:], padding, axis=0)])


CASES = [
    pytest.param([np.arange(6, dtype=np.float32).reshape(2, 3), np.full((1, 3), 7, np.float32)], 0, id="two-parts"),
    pytest.param([np.arange(3, dtype=np.float32).reshape(1, 3)] * 3, 1, id="padded"),
    pytest.param([np.arange(4, dtype=np.int64).reshape(1, 2, 2)], 3, id="one-part-padded-3d"),
    pytest.param([np.array([[b"a"], [b"bc"]], dtype=np.object_), np.array([[b""]], dtype=np.object_)], 2, id="bytes"),
]


@pytest.mark.parametrize(("parts", "padding"), CASES)
def test_the_array_is_the_concatenation(parts: list[np.ndarray], padding: int) -> None:
    stacked = Stacked(tuple(parts), padding)
    want = expected(parts, padding)
    got = np.asarray(stacked)
    assert (stacked.shape, stacked.dtype, stacked.nbytes, len(stacked)) == (
        want.shape,
        want.dtype,
        want.nbytes,
        len(want),
    )
    assert got.dtype == want.dtype and got.tolist() == want.tolist()


@pytest.mark.parametrize(("parts", "padding"), CASES[:3])
def test_written_into_a_slot_as_the_concatenation_would_be(parts: list[np.ndarray], padding: int) -> None:
    want = expected(parts, padding)
    slots = {"X": (64, want.nbytes)}
    direct, merged = np.zeros(4096, np.uint8), np.zeros(4096, np.uint8)
    Lease("r", 0, 4096, direct, inputs=slots).write("X", want)
    Lease("r", 0, 4096, merged, inputs=slots).write("X", Stacked(tuple(parts), padding))
    assert merged.tobytes() == direct.tobytes() and direct[64 : 64 + want.nbytes].any()
