"""The shared-memory slots and registration of `proxy.shm`, with Triton's calls faked (the real ones:
tests/proxy/test_shm_triton.py)."""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from tritonclient.utils import InferenceServerException

from proxy import shm
from proxy.schema import ModelSchema, TensorSchema
from proxy.shm import ALIGN, Allocator, SharedMemory, answered

SCHEMA = ModelSchema(
    "m", ("1",), "python", 8, (TensorSchema("INPUT__0", "FP32", (3, 4)),), (TensorSchema("OUTPUT__0", "FP32", (2,)),)
)
REGION = 64 * 1024


def error(status: str, message: str) -> InferenceServerException:
    return InferenceServerException(msg=message, status=status)


class FakeTriton:
    """Registers what it is told; `refuse` (an exception) makes the next registrations fail."""

    def __init__(self) -> None:
        self.regions: dict[str, tuple[str, int]] = {}
        self.refuse: Exception | None = None

    async def register(self, name: str, key: str, byte_size: int) -> None:
        if self.refuse is not None:
            raise self.refuse
        assert Path("/dev/shm", key[1:]).stat().st_size == byte_size
        self.regions[name] = (key, byte_size)

    async def unregister(self, name: str) -> None:
        del self.regions[name]


@pytest.fixture
def triton() -> FakeTriton:
    return FakeTriton()


@pytest_asyncio.fixture
async def memory(triton: FakeTriton) -> AsyncIterator[SharedMemory]:
    region = SharedMemory("auto", REGION, triton.register, triton.unregister)
    yield region
    await region.close()


def arrays(rows: int = 2) -> dict[str, np.ndarray]:
    return {"INPUT__0": np.arange(rows * 12, dtype=np.float32).reshape(rows, 3, 4)}


@pytest.mark.parametrize(
    ("takes", "gives", "free"),
    [
        pytest.param([100], [0], [(0, 1024)], id="one-back"),
        pytest.param([64, 64, 64], [1], [(64, 64), (192, 832)], id="hole-in-the-middle"),
        pytest.param([64, 64, 64], [0, 2, 1], [(0, 1024)], id="merge-both-sides"),
        pytest.param([64, 64, 64], [2, 0], [(0, 64), (128, 896)], id="merge-after"),
        pytest.param([1024], [], [], id="exactly-full"),
    ],
)
def test_allocator_frees_and_merges(takes: list[int], gives: list[int], free: list[tuple[int, int]]) -> None:
    allocator = Allocator(1024)
    offsets = [allocator.take(n) for n in takes]
    for i in gives:
        offset = offsets[i]
        assert offset is not None
        allocator.give(offset, takes[i])
    assert allocator.free == free


def test_allocator_aligns_and_says_none_when_nothing_fits() -> None:
    allocator = Allocator(4 * ALIGN)
    assert [allocator.take(1), allocator.take(ALIGN + 1)] == [0, ALIGN]
    assert allocator.take(2 * ALIGN) is None
    assert allocator.take(ALIGN) == 3 * ALIGN
    assert allocator.free_bytes == 0


def test_allocator_reuses_the_first_range_that_fits() -> None:
    allocator = Allocator(1024)
    first, _ = allocator.take(128), allocator.take(128)
    assert first == 0
    allocator.give(0, 128)
    assert allocator.take(64) == 0


@pytest.mark.asyncio
async def test_a_lease_carries_inputs_in_and_outputs_out(memory: SharedMemory, triton: FakeTriton) -> None:
    await memory.open()
    assert memory.describe()["active"] and list(triton.regions) == [memory.region]
    lease = memory.lease(SCHEMA, arrays())
    assert lease is not None and lease.region == memory.region
    offset, nbytes = lease.inputs["INPUT__0"]
    assert nbytes == 2 * 12 * 4
    region = np.memmap(Path("/dev/shm", memory.key[1:]), np.uint8, "r+")  # what Triton sees
    assert np.array_equal(region[offset : offset + nbytes].view(np.float32).reshape(2, 3, 4), arrays()["INPUT__0"])
    out_offset, out_bytes = lease.outputs["OUTPUT__0"]
    assert out_bytes == 2 * 2 * 4 and out_offset >= offset + nbytes
    region[out_offset : out_offset + out_bytes] = np.array([[1, 2], [3, 4]], np.float32).view(np.uint8).ravel()
    answer = lease.read("OUTPUT__0", np.float32, [2, 2])
    memory.give_back(lease, answered=True)
    region[out_offset : out_offset + out_bytes] = 0  # the next request's bytes do not change an answer given
    assert answer.tolist() == [[1, 2], [3, 4]]
    assert memory._allocator.free_bytes == REGION


@pytest.mark.parametrize(
    ("schema", "rows"),
    [
        pytest.param(SCHEMA, 2000, id="larger-than-the-region"),
        pytest.param(
            ModelSchema("m", ("1",), "python", 8, SCHEMA.inputs, (TensorSchema("OUTPUT__0", "FP32", (-1,)),)),
            2,
            id="output-size-unknown",
        ),
        pytest.param(
            ModelSchema("m", ("1",), "python", 8, SCHEMA.inputs, (TensorSchema("OUTPUT__0", "BYTES", (1,)),)),
            2,
            id="bytes-output",
        ),
    ],
)
@pytest.mark.asyncio
async def test_what_cannot_go_through_a_slot_goes_in_the_message(
    memory: SharedMemory, schema: ModelSchema, rows: int
) -> None:
    await memory.open()
    assert memory.lease(schema, arrays(rows)) is None


@pytest.mark.asyncio
async def test_all_slots_busy_goes_in_the_message(triton: FakeTriton) -> None:
    memory = SharedMemory("auto", 256, triton.register, triton.unregister)
    try:
        await memory.open()
        first = memory.lease(SCHEMA, arrays())
        assert first is not None and memory.lease(SCHEMA, arrays()) is None
        memory.give_back(first, answered=True)
        assert memory.lease(SCHEMA, arrays()) is not None
    finally:
        await memory.close()


@pytest.mark.asyncio
async def test_a_slot_without_an_answer_stays_quarantined_until_triton_forgot_the_region(
    memory: SharedMemory, triton: FakeTriton
) -> None:
    await memory.open()
    first_name = memory.region
    lease = memory.lease(SCHEMA, arrays())
    assert lease is not None
    memory.give_back(lease, answered=False)  # timed out or cancelled: Triton may still read it
    assert memory._allocator.free_bytes == REGION - lease.nbytes
    assert "quarantined" in memory.describe()["detail"]
    triton.regions.clear()  # Triton restarted
    assert memory.forgot(error("StatusCode.NOT_FOUND", f"Unable to find shared memory region: '{first_name}'"))
    assert memory.lease(SCHEMA, arrays()) is None  # in the message until registered again
    for _ in range(100):
        if memory.active:
            break
        await asyncio.sleep(0.01)
    assert memory.active and memory.region != first_name and list(triton.regions) == [memory.region]
    assert memory._allocator.free_bytes == REGION and not memory.quarantined


@pytest.mark.asyncio
async def test_a_slot_of_an_older_registration_is_freed_whatever_its_end(memory: SharedMemory) -> None:
    await memory.open()
    lease = memory.lease(SCHEMA, arrays())
    assert lease is not None
    memory.forgot(error("404", f"Unable to find shared memory region: '{memory.region}'"))
    await asyncio.sleep(0.05)
    assert memory.active and lease.region != memory.region
    memory.give_back(lease, answered=False)
    assert memory._allocator.free_bytes == REGION


@pytest.mark.parametrize(
    ("refusal", "detail"),
    [
        pytest.param(
            error("StatusCode.INTERNAL", "Unable to open shared memory region: '/x'"),
            "not on this host",
            id="another-host",
        ),
        pytest.param(
            error("StatusCode.UNAVAILABLE", "This protocol is restricted, expecting header 'x'"),
            "refused TRITON_SHM_KEY",
            id="restricted",
        ),
        pytest.param(error("StatusCode.UNIMPLEMENTED", "no such method"), "no such method", id="no-api"),
    ],
)
@pytest.mark.asyncio
async def test_a_refused_registration_falls_back_and_says_so_once(
    memory: SharedMemory, triton: FakeTriton, refusal: Exception, detail: str, caplog: pytest.LogCaptureFixture
) -> None:
    triton.refuse = refusal
    with caplog.at_level(logging.INFO, logger="proxy"):
        await memory.open()
        await memory.open()
    assert memory.describe() == {"active": False, "detail": memory.detail} and detail in memory.detail
    assert [r.message for r in caplog.records].count(
        f"shared memory: tensors go to Triton in the message: {memory.detail}"
    ) == 1
    assert not Path("/dev/shm", memory.key[1:]).exists()
    assert memory.lease(SCHEMA, arrays()) is None


@pytest.mark.asyncio
async def test_an_unreachable_triton_is_retried_until_it_registers(
    memory: SharedMemory, triton: FakeTriton, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shm, "RETRY_S", 0.01)
    triton.refuse = error("StatusCode.UNAVAILABLE", "failed to connect to all addresses")
    await memory.open()
    assert not memory.active and "unreachable" in memory.detail
    await asyncio.sleep(0.05)
    triton.refuse = None
    for _ in range(100):
        if memory.active:
            break
        await asyncio.sleep(0.01)
    assert memory.active and list(triton.regions) == [memory.region]


@pytest.mark.asyncio
async def test_off_never_creates_a_region(triton: FakeTriton) -> None:
    memory = SharedMemory("off", REGION, triton.register, triton.unregister)
    await memory.open()
    assert memory.describe() == {"active": False, "detail": "off (UPSTREAM_SHARED_MEMORY=off)"}
    assert not triton.regions and not Path("/dev/shm", memory.key[1:]).exists()
    await memory.close()


@pytest.mark.asyncio
async def test_close_unregisters_and_unlinks(memory: SharedMemory, triton: FakeTriton) -> None:
    await memory.open()
    path = Path("/dev/shm", memory.key[1:])
    assert path.exists()
    await memory.close()
    assert not triton.regions and not path.exists() and not memory.active


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        pytest.param(error("StatusCode.INVALID_ARGUMENT", "bad shape"), True, id="rejected"),
        pytest.param(error("StatusCode.INTERNAL", "model failed"), True, id="failed"),
        pytest.param(error("StatusCode.UNAVAILABLE", "Exceeds maximum queue size"), True, id="queue-full"),
        pytest.param(error("StatusCode.UNAVAILABLE", "Request timeout expired"), True, id="queue-timeout"),
        pytest.param(error("503", "server shutting down"), True, id="http-503"),
        pytest.param(error("StatusCode.UNAVAILABLE", "Socket closed"), False, id="connection-lost"),
        pytest.param(error("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded"), False, id="client-deadline"),
        pytest.param(error("StatusCode.CANCELLED", "Locally cancelled"), False, id="cancelled"),
    ],
)
def test_answered_tells_triton_answers_from_calls_without_one(err: Exception, expected: bool) -> None:
    assert answered(err) is expected


@pytest.mark.asyncio
async def test_a_full_dev_shm_falls_back_before_any_write(
    memory: SharedMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shm.os, "posix_fallocate", full)
    await memory.open()
    assert not memory.active and "No space left on device" in memory.detail
    assert not Path("/dev/shm", memory.key[1:]).exists()
