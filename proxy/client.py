"""The one upstream Triton client of a worker: gRPC (`tritonclient.grpc.aio`) or HTTP (`tritonclient.http.aio`).

Both sides expose the same small surface (`live`, `model_ready`, `ready_models`, `schema`, `infer`) and
convert every failure at this boundary, once, into a `ProxyError`: unreachable -> 503, queue full -> 429,
deadline -> 504, rejected -> 400, anything else -> 502 (what a Triton error means is decided by
`nexusml.core.triton_errors`). Every call has a timeout: health and metadata calls `UPSTREAM_CONNECT_TIMEOUT_S`,
inferences the request's remaining deadline. Triton gets the smaller of that and the model's queue timeout as
the request's own `timeout` (which overrides the queue policy's), so Triton drops work nobody waits for any
more and no request outstays `QUEUE_TIMEOUT_MS` in its queue.

Tensors travel through the worker's shared-memory region when Triton registered it (`proxy.shm`), else in the
message; a request whose region a restarted Triton forgot is sent again in the message, so that is never an error.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import grpc
import numpy as np
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.grpc import service_pb2
from tritonclient.grpc._utils import get_error_grpc
from tritonclient.utils import (
    InferenceServerException,
    deserialize_bytes_tensor,
    serialize_byte_tensor,
    triton_to_np_dtype,
)

from nexusml.core.settings import SHM_HEADER
from nexusml.core.triton_errors import TritonFailure, classify, model_not_loaded, status_and_message
from proxy.errors import (
    DeadlineExceeded,
    ModelNotLoaded,
    ProxyError,
    UpstreamBusy,
    UpstreamError,
    UpstreamForbidden,
    UpstreamRejected,
    UpstreamUnavailable,
)
from proxy.schema import ModelSchema, TensorSchema, from_triton
from proxy.settings import ProxySettings
from proxy.shm import Lease, SharedMemory, answered
from proxy.stacked import PADDING_PARAMETER, Tensor, padding_of

# gRPC waits up to 120 s between reconnection attempts by default; a restarted Triton should be found fast.
_GRPC_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]
Outputs = dict[str, np.ndarray]


def from_triton_error(err: InferenceServerException) -> ProxyError:
    """Map one Triton error to the proxy's answer, by its meaning (`nexusml.core.triton_errors`, the watcher's
    rule too); Triton's message is kept for the client."""
    status, message = status_and_message(err)
    if model_not_loaded(err):  # also while it loads or unloads (UNAVAILABLE): loaded again with a memory budget
        return ModelNotLoaded(f"Triton does not have the model loaded: {message}")
    failure = classify(err)
    if failure is TritonFailure.QUEUE_FULL:
        return UpstreamBusy(f"Triton's queue is full: {message}")
    if failure is TritonFailure.TIMED_OUT:
        return DeadlineExceeded(f"the deadline passed in Triton: {message}")
    if failure is TritonFailure.RESTRICTED:
        return UpstreamForbidden(f"Triton refused a restricted API: {message}")
    if failure is TritonFailure.UNREACHABLE:
        return UpstreamUnavailable(f"Triton is unavailable: {message}")
    if failure is TritonFailure.REJECTED:
        return UpstreamRejected(f"Triton rejected the request: {message}")
    return UpstreamError(f"Triton failed: {message} ({status or 'no status'})")


class Upstream(ABC):
    """One Triton, one protocol; shared by every request of a worker."""

    client: Any  # tritonclient's aio client of the protocol

    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        self.protocol = settings.upstream_protocol
        self.url = settings.model_server_url
        self.shm = SharedMemory(
            settings.shared_memory,
            settings.shared_memory_bytes,
            self._register_shm,
            self._unregister_shm,
            self._shm_status,
        )

    async def _call(self, call: Callable[[], Awaitable[Any]], timeout_s: float) -> Any:
        """A metadata or health call, bounded and mapped."""
        try:
            async with asyncio.timeout(timeout_s):
                return await call()
        except InferenceServerException as err:
            raise from_triton_error(err) from err
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            raise UpstreamUnavailable(f"Triton at {self.url} did not answer: {type(err).__name__}") from err

    async def live(self) -> bool:
        try:
            return bool(await self._call(self._live, self.settings.connect_timeout_s))
        except ProxyError:
            return False

    async def model_ready(self, name: str, version: str) -> bool:
        try:
            return bool(await self._call(lambda: self._model_ready(name, version), self.settings.connect_timeout_s))
        except ProxyError:
            return False

    async def ready_models(self) -> list[str]:
        index = await self._call(self._index, self.settings.connect_timeout_s)
        return sorted({str(m["name"]) for m in index if m.get("state") == "READY"})

    async def schema(self, name: str, version: str) -> ModelSchema:
        timeout = self.settings.connect_timeout_s
        metadata = await self._call(lambda: self._metadata(name, version), timeout)
        config = await self._call(lambda: self._config(name, version), timeout)
        return from_triton(metadata, config)

    async def infer(
        self,
        schema: ModelSchema,
        version: str,
        arrays: dict[str, Tensor],
        deadline: float,
        request_id: str = "",
        level: int = 0,
    ) -> tuple[Outputs, str]:
        """Run one inference; `deadline` is on the event loop's clock. Returns outputs and the version that ran.

        `level` is the request's priority level (1 first), sent only to a model with that many priority levels
        (Triton refuses a priority its config does not have); 0 sends none: the model's default level."""
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise DeadlineExceeded("the deadline passed before the request reached Triton")
        # Triton's `timeout` bounds the time in its queue: the model's QUEUE_TIMEOUT_MS unless the deadline is sooner.
        queue_timeout_s = min(remaining, schema.queue_timeout_s or remaining)
        priority = level if 0 < level <= schema.priority_levels else 0
        try:
            return await self._send(schema, version, arrays, deadline, remaining, queue_timeout_s, request_id, priority)
        except InferenceServerException as err:
            raise from_triton_error(err) from err
        except TimeoutError as err:
            raise DeadlineExceeded(f"Triton did not answer within {remaining * 1000:.0f} ms") from err
        except (aiohttp.ClientError, OSError) as err:
            raise UpstreamUnavailable(f"Triton at {self.url} is unreachable: {type(err).__name__}") from err

    async def _send(
        self,
        schema: ModelSchema,
        version: str,
        arrays: dict[str, Tensor],
        deadline: float,
        timeout_s: float,
        queue_timeout_s: float,
        request_id: str,
        priority: int,
    ) -> tuple[Outputs, str]:
        """Through a shared-memory slot when one is free, else in the message. The slot is given back only once
        Triton's answer is in (`SharedMemory.give_back`). A region Triton forgot, or outputs larger than the slot
        sized from the schema (a new version live before the proxy read its schema), send the request again in
        the message, within the same deadline."""
        lease = self.shm.lease(schema, arrays)
        if lease is not None:
            done = False
            try:
                result = await self._infer(
                    schema, version, arrays, timeout_s, queue_timeout_s, request_id, priority, lease
                )
                done = True
                return result
            except SlotMismatch:
                done = True  # Triton answered; the outputs just were not what the slot was laid out for
            except InferenceServerException as err:
                done = answered(err)
                if not (self.shm.forgot(err) or _outgrew_slot(err)):
                    raise
            finally:
                self.shm.give_back(lease, done)
            # Triton forgot the region, or its outputs did not fit the slot: again in the message, within the deadline.
            timeout_s = deadline - asyncio.get_running_loop().time()
            if timeout_s <= 0:
                raise DeadlineExceeded("the deadline passed before the request reached Triton")
            queue_timeout_s = min(queue_timeout_s, timeout_s)
        return await self._infer(schema, version, arrays, timeout_s, queue_timeout_s, request_id, priority, None)

    @abstractmethod
    async def _register_shm(self, name: str, key: str, byte_size: int) -> None: ...

    @abstractmethod
    async def _unregister_shm(self, name: str) -> None: ...

    @abstractmethod
    async def _shm_status(self) -> list[tuple[str, str]]: ...

    @abstractmethod
    async def _live(self) -> bool: ...

    @abstractmethod
    async def _model_ready(self, name: str, version: str) -> bool: ...

    @abstractmethod
    async def _index(self) -> list[dict[str, Any]]: ...

    @abstractmethod
    async def _metadata(self, name: str, version: str) -> dict[str, Any]: ...

    @abstractmethod
    async def _config(self, name: str, version: str) -> dict[str, Any]: ...

    @abstractmethod
    async def _infer(
        self,
        schema: ModelSchema,
        version: str,
        arrays: dict[str, Tensor],
        timeout_s: float,
        queue_timeout_s: float,
        request_id: str,
        priority: int,
        lease: Lease | None,
    ) -> tuple[Outputs, str]: ...

    async def close(self) -> None:
        """Unregister and unlink the shared-memory region, then close the client."""
        await self.shm.close()
        await self.client.close()


class GrpcUpstream(Upstream):
    def __init__(self, settings: ProxySettings) -> None:
        super().__init__(settings)
        self.client = grpcaio.InferenceServerClient(settings.upstream_address, channel_args=_GRPC_CHANNEL_ARGS)
        # Over gRPC Triton reads a restricted API's header with this prefix.
        self.shm_headers = {f"triton-grpc-protocol-{SHM_HEADER}": settings.shm_key} if settings.shm_key else None

    async def _register_shm(self, name: str, key: str, byte_size: int) -> None:
        await self.client.register_system_shared_memory(
            name, key, byte_size, headers=self.shm_headers, client_timeout=self.settings.connect_timeout_s
        )

    async def _unregister_shm(self, name: str) -> None:
        await self.client.unregister_system_shared_memory(
            name, headers=self.shm_headers, client_timeout=self.settings.connect_timeout_s
        )

    async def _shm_status(self) -> list[tuple[str, str]]:
        status = await self.client.get_system_shared_memory_status(
            headers=self.shm_headers, as_json=True, client_timeout=self.settings.connect_timeout_s
        )
        return [(str(region["name"]), str(region["key"])) for region in status.get("regions", {}).values()]

    async def _live(self) -> bool:
        return await self.client.is_server_live(client_timeout=self.settings.connect_timeout_s)

    async def _model_ready(self, name: str, version: str) -> bool:
        return await self.client.is_model_ready(name, version, client_timeout=self.settings.connect_timeout_s)

    async def _index(self) -> list[dict[str, Any]]:
        index = await self.client.get_model_repository_index(as_json=True)
        return index.get("models", [])

    async def _metadata(self, name: str, version: str) -> dict[str, Any]:
        return await self.client.get_model_metadata(name, version, as_json=True)

    async def _config(self, name: str, version: str) -> dict[str, Any]:
        return await self.client.get_model_config(name, version, as_json=True)

    async def _infer(
        self,
        schema: ModelSchema,
        version: str,
        arrays: dict[str, Tensor],
        timeout_s: float,
        queue_timeout_s: float,
        request_id: str,
        priority: int,
        lease: Lease | None,
    ) -> tuple[Outputs, str]:
        """One ModelInfer call on the client's own stub, its request built here rather than through tritonclient's
        InferInput/InferResult objects (measured: a third less CPU per call, docs/decisions.md). Errors are
        tritonclient's, so they are mapped as every other call's."""
        request = infer_request(schema, version, arrays, queue_timeout_s, request_id, priority, lease)
        try:
            response = await self.client._client_stub.ModelInfer(request=request, timeout=timeout_s)
        except grpc.RpcError as err:
            raise get_error_grpc(err) from None
        return _outputs(response, schema, lease), response.model_version


class HttpUpstream(Upstream):
    def __init__(self, settings: ProxySettings) -> None:
        super().__init__(settings)
        self.client = httpaio.InferenceServerClient(
            settings.upstream_address,
            conn_limit=max(settings.max_in_flight, 16),
            conn_timeout=settings.request_timeout_ms / 1000 + settings.connect_timeout_s,
        )
        self.shm_headers = {SHM_HEADER: settings.shm_key} if settings.shm_key else None

    async def _register_shm(self, name: str, key: str, byte_size: int) -> None:
        async with asyncio.timeout(self.settings.connect_timeout_s):
            await self.client.register_system_shared_memory(name, key, byte_size, headers=self.shm_headers)

    async def _unregister_shm(self, name: str) -> None:
        async with asyncio.timeout(self.settings.connect_timeout_s):
            await self.client.unregister_system_shared_memory(name, headers=self.shm_headers)

    async def _shm_status(self) -> list[tuple[str, str]]:
        async with asyncio.timeout(self.settings.connect_timeout_s):
            status = await self.client.get_system_shared_memory_status(headers=self.shm_headers)
        return [(str(region["name"]), str(region["key"])) for region in status]

    async def _live(self) -> bool:
        return await self.client.is_server_live()

    async def _model_ready(self, name: str, version: str) -> bool:
        return await self.client.is_model_ready(name, version)

    async def _index(self) -> list[dict[str, Any]]:
        return await self.client.get_model_repository_index()

    async def _metadata(self, name: str, version: str) -> dict[str, Any]:
        return await self.client.get_model_metadata(name, version)

    async def _config(self, name: str, version: str) -> dict[str, Any]:
        return await self.client.get_model_config(name, version)

    async def _infer(
        self,
        schema: ModelSchema,
        version: str,
        arrays: dict[str, Tensor],
        timeout_s: float,
        queue_timeout_s: float,
        request_id: str,
        priority: int,
        lease: Lease | None,
    ) -> tuple[Outputs, str]:
        inputs = []
        for spec in schema.inputs:
            array = arrays[spec.name]
            tensor = httpclient.InferInput(spec.name, list(array.shape), spec.datatype)
            if lease is None:
                tensor.set_data_from_numpy(np.asarray(array), binary_data=True)
            else:
                offset, nbytes = lease.inputs[spec.name]
                tensor.set_shared_memory(lease.region, nbytes, offset)
            inputs.append(tensor)
        requested = [httpclient.InferRequestedOutput(spec.name, binary_data=True) for spec in schema.outputs]
        if lease is not None:
            for output in requested:
                offset, nbytes = lease.outputs[output.name()]
                output.set_shared_memory(lease.region, nbytes, offset)
        padding = padding_of(arrays)
        async with asyncio.timeout(timeout_s):
            result = await self.client.infer(
                schema.name,
                inputs,
                model_version=version,
                outputs=requested,
                request_id=request_id,
                priority=priority,
                timeout=max(int(queue_timeout_s * 1_000_000), 1),
                parameters={PADDING_PARAMETER: padding} if padding else None,
            )
        if lease is None:
            outputs = {spec.name: result.as_numpy(spec.name) for spec in schema.outputs}
        else:
            outputs = {}
            for spec in schema.outputs:
                output = result.get_output(spec.name) or {}
                outputs[spec.name] = _from_slot(lease, spec, output.get("datatype"), list(output.get("shape", [])))
        return outputs, str(result.get_response().get("model_version", version))


def infer_request(
    schema: ModelSchema,
    version: str,
    arrays: dict[str, Tensor],
    queue_timeout_s: float,
    request_id: str = "",
    priority: int = 0,
    lease: Lease | None = None,
) -> Any:
    """The ModelInferRequest for one inference: tensors as raw contents, or (with a lease) as places in its slot."""
    request = service_pb2.ModelInferRequest(model_name=schema.name, model_version=version, id=request_id)
    for spec in schema.inputs:
        array = arrays[spec.name]
        tensor = request.inputs.add(name=spec.name, datatype=spec.datatype, shape=array.shape)
        if lease is None:
            request.raw_input_contents.append(_raw(np.asarray(array), spec.datatype))
        else:
            _in_region(tensor.parameters, lease.region, *lease.inputs[spec.name])
    if lease is not None:
        for spec in schema.outputs:
            output = request.outputs.add(name=spec.name)
            _in_region(output.parameters, lease.region, *lease.outputs[spec.name])
    if priority:
        request.parameters["priority"].uint64_param = priority
    request.parameters["timeout"].int64_param = max(int(queue_timeout_s * 1_000_000), 1)
    padding = padding_of(arrays)
    if padding:
        request.parameters[PADDING_PARAMETER].int64_param = padding
    return request


# Triton's refusal of an output slot smaller than the output: the version it runs has outputs the proxy's cached
# schema does not know yet (it is re-read every `SCHEMA_REFRESH_S`); the message carries any size.
_SLOT_TOO_SMALL = "shared memory size specified with the request for output"


def _outgrew_slot(err: InferenceServerException) -> bool:
    return _SLOT_TOO_SMALL in status_and_message(err)[1].lower()


class SlotMismatch(Exception):
    """Triton answered with an output its slot was not laid out for (another datatype, or more bytes): a version
    the proxy's cached schema does not know yet. The request goes again in the message."""


def _from_slot(lease: Lease, spec: TensorSchema, datatype: str | None, shape: list[int]) -> np.ndarray:
    """An output copied out of the lease's slot, read as the datatype and shape Triton answered with."""
    if datatype != spec.datatype:
        raise SlotMismatch(f"output {spec.name} is {datatype}, the slot was laid out for {spec.datatype}")
    try:
        return lease.read(spec.name, spec.dtype, shape)
    except ValueError as err:
        raise SlotMismatch(str(err)) from None


def _raw(array: np.ndarray, datatype: str) -> bytes:
    """An input's bytes as Triton reads them: BYTES serialised as tritonclient does, anything else as it lies."""
    if datatype == "BYTES":
        serialized = serialize_byte_tensor(array)
        return serialized.item() if serialized.size else b""
    return array.tobytes()


def _in_region(parameters: Any, region: str, offset: int, nbytes: int) -> None:
    """Point a tensor at its bytes in a registered shared-memory region (tritonclient's `set_shared_memory`)."""
    parameters["shared_memory_region"].string_param = region
    parameters["shared_memory_byte_size"].int64_param = nbytes
    if offset:
        parameters["shared_memory_offset"].int64_param = offset


def _outputs(response: Any, schema: ModelSchema, lease: Lease | None) -> Outputs:
    """The schema's outputs from a ModelInferResponse: copied out of the lease's slot, or read from the raw
    contents, which follow the response's outputs in order (tritonclient's `InferResult.as_numpy`)."""
    found = {output.name: (index, output) for index, output in enumerate(response.outputs)}
    outputs: Outputs = {}
    for spec in schema.outputs:
        if spec.name not in found:
            raise InferenceServerException(f"Triton's answer has no output {spec.name}")
        index, output = found[spec.name]
        shape = list(output.shape)
        if lease is not None:
            outputs[spec.name] = _from_slot(lease, spec, output.datatype, shape)
        elif index >= len(response.raw_output_contents):
            raise InferenceServerException(f"Triton's answer has no data for output {spec.name}")
        elif output.datatype == "BYTES":
            outputs[spec.name] = deserialize_bytes_tensor(response.raw_output_contents[index]).reshape(shape)
        else:
            raw = response.raw_output_contents[index]
            outputs[spec.name] = np.frombuffer(raw, dtype=triton_to_np_dtype(output.datatype)).reshape(shape)
    return outputs


def connect(settings: ProxySettings) -> Upstream:
    """The client `MODEL_SERVER_URL`'s scheme asks for; opening it does not wait for Triton."""
    return HttpUpstream(settings) if settings.upstream_protocol == "http" else GrpcUpstream(settings)
