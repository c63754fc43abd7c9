"""A merged batch's input before it is one array: its members' rows in order, then the padding rows.

The coalescer merges several requests into one upstream call. Concatenating their arrays copies every byte, and
when the upstream then copies them again into a shared-memory slot (`proxy.shm`) that first copy is wasted: for a
batch of images, a few hundred KB per image. So a merged input stays a `Stacked` until the upstream knows where
its bytes go: `copy_into` writes the parts straight into the slot, and `np.asarray` makes the one array when they
travel in the message.

The padding's rows are told to the model (`PADDING_PARAMETER`, a request parameter), whose backend leaves them out
of the forward: they only make the batch a preferred size so that Triton runs it at once, and a lone row padded to
four cost the demo model's forward 1.25 ms instead of 0.35 ms on a CPU (docs/decisions.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

# The request parameter naming how many of a request's last rows are padding; nexusml/backend/model.py reads it.
PADDING_PARAMETER = "nexus_padding_rows"


@dataclass(frozen=True, slots=True)
class Stacked:
    """`parts` one after the other along the batch dimension, then `padding` copies of the last row."""

    parts: tuple[np.ndarray, ...]
    padding: int = 0

    @property
    def shape(self) -> tuple[int, ...]:
        rows = sum(len(part) for part in self.parts) + self.padding
        return (rows, *self.parts[0].shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.parts[0].dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = np.empty(self.shape, self.dtype)
        self.copy_into(out)
        return out if dtype is None else out.astype(dtype, copy=False)

    def copy_into(self, out: np.ndarray) -> None:
        """Write the rows into `out` (of `shape`), each byte once."""
        at = 0
        for part in self.parts:
            out[at : at + len(part)] = part
            at += len(part)
        if self.padding:
            out[at:] = self.parts[-1][-1:]


Tensor = np.ndarray | Stacked
"""An input as the upstream gets it: one request's array, or a merged batch's rows."""


def padding_of(arrays: Mapping[str, Tensor]) -> int:
    """The padding rows of an upstream call's inputs (every input of a merged batch has the same)."""
    first = next(iter(arrays.values()), None)
    return first.padding if isinstance(first, Stacked) else 0
