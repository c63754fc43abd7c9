"""What a Triton error means, one rule for every process that talks to Triton (the proxy, the watcher).

tritonclient raises one exception type, `InferenceServerException`, for every failure of either protocol; what
went wrong is in its `status()` (gRPC: `"StatusCode.UNAVAILABLE"`; HTTP: the status number as text, e.g.
`"503"`) and its `message()`. Some meanings show only in the message: over gRPC Triton answers a full queue,
an expired queue timeout and a restricted API all with `StatusCode.UNAVAILABLE`, so their phrases are looked
for before that status is. So does it a model that is loading or unloading ("Request for unknown model: 'x'
version 1 is not at ready state", "... has no available versions"): `classify` keeps that unreachable (the
watcher tries again), and `model_not_loaded` tells it apart for a caller that can load the model (the proxy).

Duck-typed: this module takes anything with `status()` and `message()` and imports no tritonclient, so every
layer may use it. Each caller maps the meaning to its own error (`proxy.client`, `nexusml.updates.swap`).
"""

from __future__ import annotations

import enum
from typing import Protocol


class TritonException(Protocol):
    """The two methods of `tritonclient.utils.InferenceServerException` this module reads."""

    def status(self) -> object: ...

    def message(self) -> object: ...


class TritonFailure(enum.Enum):
    QUEUE_FULL = "queue_full"  # the model's queue is full: busy, not broken
    TIMED_OUT = "timed_out"  # a deadline or the model's queue timeout passed
    RESTRICTED = "restricted"  # an API the deployment restricts to its admin key
    UNREACHABLE = "unreachable"  # Triton did not answer, is shutting down, or dropped the call
    MODEL_UNKNOWN = "model_unknown"  # the model is not loaded there
    REJECTED = "rejected"  # the request is invalid for the model
    FAILED = "failed"  # anything else: the model or Triton failed


_UNKNOWN_MODEL = "unknown model"  # Triton's phrase for a model it has no ready version of, whatever the status

# In order, the first that matches wins: (meaning, phrases of the message, statuses).
_RULES: tuple[tuple[TritonFailure, tuple[str, ...], frozenset[str]], ...] = (
    (TritonFailure.QUEUE_FULL, ("maximum queue size",), frozenset({"StatusCode.RESOURCE_EXHAUSTED", "429"})),
    (TritonFailure.TIMED_OUT, ("timeout expired",), frozenset({"StatusCode.DEADLINE_EXCEEDED", "504"})),
    (TritonFailure.RESTRICTED, ("is restricted",), frozenset({"StatusCode.PERMISSION_DENIED", "403"})),
    (TritonFailure.UNREACHABLE, (), frozenset({"StatusCode.UNAVAILABLE", "StatusCode.CANCELLED", "503"})),
    # A model loading or unloading is answered with StatusCode.UNAVAILABLE (503): unreachable just above.
    (TritonFailure.MODEL_UNKNOWN, (_UNKNOWN_MODEL,), frozenset({"StatusCode.NOT_FOUND", "404"})),
    (TritonFailure.REJECTED, (), frozenset({"StatusCode.INVALID_ARGUMENT", "StatusCode.OUT_OF_RANGE", "400"})),
)


def status_and_message(err: TritonException) -> tuple[str, str]:
    """The status as text ("" when none) and the message (the exception's text when it has none)."""
    return str(err.status() or ""), str(err.message() or err)


def classify(err: TritonException) -> TritonFailure:
    """The meaning of one Triton error: the first rule whose phrase is in the message or whose status it has."""
    status, message = status_and_message(err)
    lower = message.lower()
    for failure, phrases, statuses in _RULES:
        if status in statuses or any(phrase in lower for phrase in phrases):
            return failure
    return TritonFailure.FAILED


def model_not_loaded(err: TritonException) -> bool:
    """Whether Triton says it has no ready version of the model: not in its repository (`MODEL_UNKNOWN`), or
    loading or unloading (`UNREACHABLE` by status, "unknown model" by its message)."""
    failure = classify(err)
    return failure is TritonFailure.MODEL_UNKNOWN or (
        failure is TritonFailure.UNREACHABLE and _UNKNOWN_MODEL in status_and_message(err)[1].lower()
    )
