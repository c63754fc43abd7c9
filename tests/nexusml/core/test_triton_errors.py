"""What a Triton error means: one rule, read by the proxy (`proxy.client`) and the watcher (`nexusml.updates.swap`).

The cases are the errors tritonclient raises, over gRPC (`StatusCode.*`) and HTTP (the status number), with the
messages Triton sends.
"""

from __future__ import annotations

import pytest
from tritonclient.utils import InferenceServerException

from nexusml.core.triton_errors import TritonFailure, classify, model_not_loaded, status_and_message

RESTRICTED_GRPC = "This protocol is restricted, expecting header 'triton-grpc-protocol-nexus-admin-key'"
RESTRICTED_HTTP = "This API is restricted, expecting header 'nexus-admin-key'"
UNKNOWN_MODEL = "Request for unknown model: 'x' is not found"
UNLOADING = "Request for unknown model: 'x' version 1 is not at ready state"  # loading or unloading
UNLOADED = "Request for unknown model: 'x' has no available versions"


@pytest.mark.parametrize(
    ("message", "status", "meaning"),
    [
        pytest.param("Exceeds maximum queue size", "StatusCode.UNAVAILABLE", TritonFailure.QUEUE_FULL, id="grpc-queue"),
        pytest.param("Exceeds maximum queue size", "503", TritonFailure.QUEUE_FULL, id="http-queue"),
        pytest.param("too many requests", "StatusCode.RESOURCE_EXHAUSTED", TritonFailure.QUEUE_FULL, id="exhausted"),
        pytest.param("Request timeout expired", "StatusCode.UNAVAILABLE", TritonFailure.TIMED_OUT, id="queue-timeout"),
        pytest.param("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED", TritonFailure.TIMED_OUT, id="grpc-deadline"),
        pytest.param("gateway timeout", "504", TritonFailure.TIMED_OUT, id="http-504"),
        pytest.param(RESTRICTED_GRPC, "StatusCode.UNAVAILABLE", TritonFailure.RESTRICTED, id="grpc-restricted"),
        pytest.param(RESTRICTED_HTTP, "403", TritonFailure.RESTRICTED, id="http-restricted"),
        pytest.param("denied", "StatusCode.PERMISSION_DENIED", TritonFailure.RESTRICTED, id="permission-denied"),
        pytest.param(
            "failed to connect to all addresses", "StatusCode.UNAVAILABLE", TritonFailure.UNREACHABLE, id="grpc-down"
        ),
        pytest.param("Locally cancelled", "StatusCode.CANCELLED", TritonFailure.UNREACHABLE, id="grpc-cancelled"),
        pytest.param("Service Unavailable", "503", TritonFailure.UNREACHABLE, id="http-503"),
        pytest.param(UNKNOWN_MODEL, "StatusCode.NOT_FOUND", TritonFailure.MODEL_UNKNOWN, id="grpc-unknown-model"),
        pytest.param(UNKNOWN_MODEL, "400", TritonFailure.MODEL_UNKNOWN, id="http-unknown-model"),
        pytest.param(UNLOADING, "StatusCode.UNAVAILABLE", TritonFailure.UNREACHABLE, id="grpc-unloading"),
        pytest.param(UNLOADED, "503", TritonFailure.UNREACHABLE, id="http-unloaded"),
        pytest.param("not found", "404", TritonFailure.MODEL_UNKNOWN, id="http-404"),
        pytest.param("unexpected shape", "StatusCode.INVALID_ARGUMENT", TritonFailure.REJECTED, id="grpc-invalid"),
        pytest.param("index out of range", "StatusCode.OUT_OF_RANGE", TritonFailure.REJECTED, id="grpc-range"),
        pytest.param("unexpected shape", "400", TritonFailure.REJECTED, id="http-invalid"),
        pytest.param("Stub process is not healthy", "StatusCode.INTERNAL", TritonFailure.FAILED, id="grpc-internal"),
        pytest.param("load failed for model 'x'", "StatusCode.INTERNAL", TritonFailure.FAILED, id="load-failed"),
        pytest.param("boom", "500", TritonFailure.FAILED, id="http-500"),
        pytest.param("boom", None, TritonFailure.FAILED, id="no-status"),
    ],
)
def test_meaning(message: str, status: str | None, meaning: TritonFailure) -> None:
    assert classify(InferenceServerException(msg=message, status=status)) is meaning


@pytest.mark.parametrize(
    ("message", "status", "not_loaded"),
    [
        pytest.param(UNKNOWN_MODEL, "StatusCode.NOT_FOUND", True, id="grpc-unknown-model"),
        pytest.param(UNKNOWN_MODEL, "400", True, id="http-unknown-model"),
        pytest.param(UNLOADING, "StatusCode.UNAVAILABLE", True, id="grpc-unloading"),
        pytest.param(UNLOADING, "503", True, id="http-unloading"),
        pytest.param(UNLOADED, "StatusCode.UNAVAILABLE", True, id="grpc-unloaded"),
        pytest.param(UNLOADED, "503", True, id="http-unloaded"),
        pytest.param("not found", "404", True, id="http-404"),
        pytest.param("failed to connect to all addresses", "StatusCode.UNAVAILABLE", False, id="grpc-down"),
        pytest.param("Service Unavailable", "503", False, id="http-503"),
        pytest.param("Exceeds maximum queue size", "StatusCode.UNAVAILABLE", False, id="queue"),
        pytest.param("load failed for model 'x'", "StatusCode.INTERNAL", False, id="load-failed"),
    ],
)
def test_model_not_loaded(message: str, status: str, not_loaded: bool) -> None:
    """Triton has no ready version of the model, whatever the status says: what a caller able to load it reads
    (`classify` keeps a model loading or unloading unreachable, which the watcher tries again)."""
    assert model_not_loaded(InferenceServerException(msg=message, status=status)) is not_loaded


def test_duck_typed_status_and_message() -> None:
    """Anything with `status()` and `message()` will do (core imports no tritonclient)."""

    class Raised(Exception):
        def status(self) -> object:
            return None

        def message(self) -> object:
            return None

    assert status_and_message(Raised("the exception's text")) == ("", "the exception's text")
    assert classify(Raised("the exception's text")) is TritonFailure.FAILED
