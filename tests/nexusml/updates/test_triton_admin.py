"""The watcher's Triton errors, by the shared rule (`nexusml.core.triton_errors`): transient ones are a
`ServerError` (the swap is tried again), the rest the step's own failure (the version is marked failed)."""

from __future__ import annotations

from typing import NoReturn

import pytest
from tritonclient.utils import InferenceServerException

from nexusml.core.errors import ModelLoadFailed, NexusError, ServerError
from nexusml.updates.swap import TritonAdmin


@pytest.mark.parametrize(
    ("message", "status", "raised", "says"),
    [
        pytest.param(
            "This protocol is restricted, expecting header 'triton-grpc-protocol-nexus-admin-key'",
            "StatusCode.UNAVAILABLE",
            ServerError,
            "TRITON_ADMIN_KEY is missing or wrong",
            id="restricted",
        ),
        pytest.param("failed to connect", "StatusCode.UNAVAILABLE", ServerError, "did not answer", id="unreachable"),
        pytest.param("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED", ServerError, "did not answer", id="deadline"),
        pytest.param("Exceeds maximum queue size", "StatusCode.UNAVAILABLE", ServerError, "did not answer", id="busy"),
        pytest.param("load failed for model 'm'", "StatusCode.INTERNAL", ModelLoadFailed, "load failed", id="broken"),
        pytest.param("unknown model: 'm'", "StatusCode.NOT_FOUND", ModelLoadFailed, "unknown model", id="no-model"),
    ],
)
def test_triton_errors_by_meaning(message: str, status: str, raised: type[NexusError], says: str) -> None:
    admin = TritonAdmin("grpc://127.0.0.1:1", None, timeout_s=1.0)  # never contacted

    def failing() -> NoReturn:
        raise InferenceServerException(msg=message, status=status)

    with pytest.raises(NexusError, match=says) as caught:
        admin._call(failing, ModelLoadFailed, "loading m")
    assert type(caught.value) is raised
    assert str(caught.value).startswith("loading m: ")
