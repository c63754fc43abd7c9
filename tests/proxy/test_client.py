"""The gRPC request and answer as `proxy.client` builds and reads them, against tritonclient's own reading."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from proxy.client import _outputs, _raw
from proxy.schema import ModelSchema, TensorSchema


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
