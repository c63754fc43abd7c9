"""The gRPC request and answer as `proxy.client` builds and reads them, against tritonclient's own reading."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from proxy.client import GrpcUpstream, HttpUpstream, SlotMismatch, _outputs, _raw, infer_request
from proxy.errors import ProxyError
from proxy.schema import ModelSchema, TensorSchema
from proxy.shm import Lease
from proxy.stacked import PADDING_PARAMETER, Stacked, Tensor
from tests.proxy.conftest import proxy_settings


def _schema(*outputs: TensorSchema) -> ModelSchema:
    return ModelSchema("m", ("1",), "python", 8, (TensorSchema("X", "FP32", (2,)),), outputs)


@pytest.mark.parametrize(
    ("array", "datatype"),
    [
        pytest.param(np.arange(6, dtype=np.float32).reshape(2, 3), "FP32", id="fp32"),
        pytest.param(np.array([[1, -2]], dtype=np.int64), "INT64", id="int64"),
        pytest.param(np.array([[b"ab", b""], [b"\x00c", b"d"]], dtype=np.object_), "BYTES", id="bytes"),
        pytest.param(np.array([], dtype=np.object_), "BYTES", id="bytes-empty"),
    ],
)
def test_inputs_are_the_bytes_tritonclient_sends(array: np.ndarray, datatype: str) -> None:
    tensor = grpcclient.InferInput("X", list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    assert _raw(array, datatype) == (tensor._get_content() or b"")


def test_outputs_are_read_as_tritonclient_reads_them() -> None:
    response = service_pb2.ModelInferResponse(model_name="m", model_version="1")
    words = np.array([b"x", b"yz"], dtype=np.object_)
    floats = np.arange(4, dtype=np.float32).reshape(2, 2)
    response.outputs.add(name="WORDS", datatype="BYTES", shape=[2])
    response.outputs.add(name="OUT", datatype="FP32", shape=[2, 2])
    response.raw_output_contents.extend([serialize_byte_tensor(words).item(), floats.tobytes()])
    schema = _schema(TensorSchema("OUT", "FP32", (2,)), TensorSchema("WORDS", "BYTES", (1,)))
    ours = _outputs(response, schema, None)
    theirs = grpcclient.InferResult(response)
    for name in ("OUT", "WORDS"):
        assert ours[name].shape == theirs.as_numpy(name).shape
        assert ours[name].tolist() == theirs.as_numpy(name).tolist()


def test_an_output_missing_from_the_answer_is_a_triton_error() -> None:
    response = service_pb2.ModelInferResponse(model_name="m", model_version="1")
    with pytest.raises(InferenceServerException, match="no output OUT"):
        _outputs(response, _schema(TensorSchema("OUT", "FP32", (2,))), None)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("message", "resent"),
    [
        pytest.param(
            "shared memory size specified with the request for output 'OUTPUT__0' (32 bytes) should be at least 48 "
            "bytes to hold the results",
            True,
            id="outputs-outgrew-the-slot",
        ),
        pytest.param("in ensemble 'x', model failed", False, id="other-error"),
    ],
)
async def test_outputs_larger_than_the_slot_go_again_in_the_message(
    message: str, resent: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new version's larger outputs, before the proxy has read its schema: answered, not a 502."""
    upstream = GrpcUpstream(proxy_settings("grpc://127.0.0.1:1"))
    schema = _schema(TensorSchema("OUTPUT__0", "FP32", (2,)))
    freed: list[bool] = []
    sent: list[object] = []

    async def infer(*args: object) -> tuple[dict[str, np.ndarray], str]:
        lease = args[-1]
        sent.append(lease)
        if lease is not None:
            raise InferenceServerException(message, status="StatusCode.INVALID_ARGUMENT")
        return {"OUTPUT__0": np.zeros((1, 3), np.float32)}, "2"

    monkeypatch.setattr(upstream.shm, "lease", lambda schema, arrays: "a lease")
    monkeypatch.setattr(upstream.shm, "give_back", lambda lease, answered: freed.append(answered))
    monkeypatch.setattr(upstream, "_infer", infer)
    arrays = {"X": np.ones((1, 2), np.float32)}
    deadline = asyncio.get_running_loop().time() + 5
    if resent:
        outputs, version = await upstream.infer(schema, "", arrays, deadline)
        assert version == "2" and outputs["OUTPUT__0"].shape == (1, 3)
        assert sent == ["a lease", None]
    else:
        with pytest.raises(ProxyError):
            await upstream.infer(schema, "", arrays, deadline)
        assert sent == ["a lease"]
    assert freed == [True]  # Triton answered: the slot is free again
    await upstream.close()


@pytest.mark.parametrize(
    ("datatype", "shape", "mismatch"),
    [
        pytest.param("FP32", [1, 2], False, id="as-laid-out"),
        pytest.param("FP16", [1, 4], True, id="another-datatype-same-bytes"),
        pytest.param("FP32", [1, 3], True, id="more-bytes-than-the-slot"),
    ],
)
def test_outputs_in_the_slot_are_read_only_as_laid_out(datatype: str, shape: list[int], mismatch: bool) -> None:
    """A new version's outputs, before the proxy re-read the schema, are never read as the old layout."""
    region = np.zeros(64, np.uint8)
    region[:8] = np.frombuffer(np.array([1.5, -2.0], np.float32).tobytes(), np.uint8)
    lease = Lease("r", 0, 64, region, outputs={"OUT": (0, 8)})
    response = service_pb2.ModelInferResponse(model_name="m", model_version="2")
    response.outputs.add(name="OUT", datatype=datatype, shape=shape)
    schema = _schema(TensorSchema("OUT", "FP32", (2,)))
    if mismatch:
        with pytest.raises(SlotMismatch):
            _outputs(response, schema, lease)
    else:
        assert _outputs(response, schema, lease)["OUT"].tolist() == [[1.5, -2.0]]


ROWS = np.arange(6, dtype=np.float32).reshape(3, 2)


@pytest.mark.parametrize(
    ("array", "padding"),
    [
        pytest.param(Stacked((ROWS[:1], ROWS[1:]), 1), 1, id="merged-and-padded"),
        pytest.param(Stacked((ROWS[:1],), 3), 3, id="lone-row-padded"),
        pytest.param(Stacked((ROWS[:1], ROWS[1:])), 0, id="merged-exactly"),
        pytest.param(ROWS, 0, id="one-request"),
    ],
)
def test_the_padding_rows_are_named_to_the_model(array: Tensor, padding: int) -> None:
    request = infer_request(_schema(), "", {"X": array}, queue_timeout_s=1)
    if padding:
        assert request.parameters[PADDING_PARAMETER].int64_param == padding
    else:
        assert PADDING_PARAMETER not in request.parameters


@pytest.mark.asyncio
@pytest.mark.parametrize(("padding", "parameters"), [(2, {PADDING_PARAMETER: 2}), (0, None)])
async def test_the_http_upstream_names_the_padding_rows_too(
    padding: int, parameters: dict[str, int] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream = HttpUpstream(proxy_settings("http://127.0.0.1:1"))
    sent: dict[str, object] = {}

    async def infer(*args: object, **kwargs: object) -> object:
        sent.update(kwargs)
        raise InferenceServerException("stop here", status="400")

    monkeypatch.setattr(upstream.client, "infer", infer)
    try:
        with pytest.raises(InferenceServerException):
            await upstream._infer(_schema(), "", {"X": Stacked((ROWS[:1],), padding)}, 5, 1, "", 0, None)
    finally:
        await upstream.close()
    assert sent["parameters"] == parameters
