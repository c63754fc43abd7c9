"""The shared-memory slots and registration of `proxy.shm`, with Triton's calls faked (the real ones:
tests/proxy/test_shm_triton.py)."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from tritonclient.utils import InferenceServerException

from proxy import shm
from proxy.schema import ModelSchema, TensorSchema
from proxy.shm import ALIGN, SHM_DIR, Allocator, SharedMemory, answered

SCHEMA = ModelSchema(
    "m", ("1",), "python", 8, (TensorSchema("INPUT__0", "FP32", (3, 4)),), (TensorSchema("OUTPUT__0", "FP32", (2,)),)
)
REGION = 64 * 1024


def error(status: str, message: str) -> InferenceServerException:
    return InferenceServerException(msg=message, status=status)


class FakeTriton:
    """Registers what it is told, as Triton 2.51 does (tests/proxy/test_shm_triton.py shows the real one):
    `refuse` (an exception) makes the next registrations fail; a name in `in_use` (a request of it still queued or
    running) is not unregistered; unregistering a name it does not know succeeds. A key is never registered twice
    (2.51 would map it through a closed file descriptor)."""

    def __init__(self) -> None:
        self.regions: dict[str, tuple[str, int]] = {}
        self.refuse: Exception | None = None
        self.in_use: set[str] = set()
        self.keys: list[str] = []  # every key ever registered, in order
        self.refusals = 0  # unregisters refused
        self.gate: asyncio.Event | None = None  # when set up, a registration waits for it

    async def register(self, name: str, key: str, byte_size: int) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.refuse is not None:
            raise self.refuse
        assert Path("/dev/shm", key[1:]).stat().st_size == byte_size
        assert key not in {k for k, _ in self.regions.values()}, f"{key} registered twice"
        self.regions[name] = (key, byte_size)
        self.keys.append(key)

    async def unregister(self, name: str) -> None:
        if name in self.in_use:
            self.refusals += 1
            raise error(
                "StatusCode.INTERNAL", f"Cannot unregister shared memory region '{name}', it is currently in use."
            )
        self.regions.pop(name, None)

    def restart(self) -> None:
        self.regions.clear()
        self.in_use.clear()


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


def free_bytes(memory: SharedMemory) -> int:
    assert memory.current is not None
    return memory.current.allocator.free_bytes


async def until(condition: Callable[[], bool]) -> None:
    """Let the background tasks run until `condition` holds (bounded, so a broken rule fails instead of hanging)."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


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
    assert free_bytes(memory) == REGION


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
    assert free_bytes(memory) == REGION - lease.nbytes
    assert "quarantined" in memory.describe()["detail"]
    triton.restart()
    assert memory.forgot(error("StatusCode.NOT_FOUND", f"Unable to find shared memory region: '{first_name}'"))
    assert memory.lease(SCHEMA, arrays()) is None  # in the message until registered again
    for _ in range(100):
        if memory.active:
            break
        await asyncio.sleep(0.01)
    assert memory.active and memory.region != first_name and list(triton.regions) == [memory.region]
    assert free_bytes(memory) == REGION and memory.quarantined_bytes == 0


@pytest.mark.asyncio
async def test_a_slot_of_an_older_registration_is_freed_whatever_its_end(
    memory: SharedMemory, triton: FakeTriton
) -> None:
    await memory.open()
    lease = memory.lease(SCHEMA, arrays())
    assert lease is not None
    triton.restart()
    memory.forgot(error("404", f"Unable to find shared memory region: '{memory.region}'"))
    await asyncio.sleep(0.05)
    assert memory.active and lease.region != memory.region
    memory.give_back(lease, answered=False)
    assert free_bytes(memory) == REGION


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


SMALL = 8 * 192  # eight slots of `arrays()`: two quarantined are a quarter of it


@pytest_asyncio.fixture
async def small(triton: FakeTriton, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SharedMemory]:
    """A region of eight slots, registered, with unregister attempts every 10 ms."""
    monkeypatch.setattr(shm, "RETRY_S", 0.01)
    region = SharedMemory("auto", SMALL, triton.register, triton.unregister)
    await region.open()
    assert region.active
    yield region
    await region.close()


def lease(memory: SharedMemory) -> shm.Lease:
    got = memory.lease(SCHEMA, arrays())
    assert got is not None
    return got


@pytest.mark.asyncio
async def test_a_quarter_quarantined_retires_the_region_once_triton_lets_it_go(
    small: SharedMemory, triton: FakeTriton
) -> None:
    old_name, old_key = small.region, small.key
    pending, first, second = lease(small), lease(small), lease(small)
    triton.in_use.add(old_name)  # a request of the old name is still queued or running in Triton
    small.give_back(first, answered=False)
    assert small.retiring is None  # an eighth: not yet
    small.give_back(second, answered=False)
    await until(lambda: small.retiring is not None)
    assert small.region != old_name and small.key != old_key and small.active
    assert set(triton.regions) == {old_name, small.region} and triton.keys == [old_key, small.key]
    assert lease(small).region == small.region  # new requests go to the new region
    assert "retired" in small.describe()["detail"] and small.quarantined_bytes == 2 * 192
    await until(lambda: triton.refusals >= 3)  # refused again and again: the old region stays, file and all
    assert small.retiring is not None and Path("/dev/shm", old_key[1:]).exists()
    # The request still in flight under the old name gets its answer: its outputs are read from the old region.
    out_offset, _ = pending.outputs["OUTPUT__0"]
    pending.view[out_offset : out_offset + 16] = np.array([[1, 2], [3, 4]], np.float32).view(np.uint8).ravel()
    assert pending.read("OUTPUT__0", np.float32, [2, 2]).tolist() == [[1, 2], [3, 4]]
    small.give_back(pending, answered=True)
    triton.in_use.clear()  # Triton is done with every request of the old name
    await until(lambda: small.retiring is None)
    assert list(triton.regions) == [small.region] and not Path("/dev/shm", old_key[1:]).exists()
    assert small.quarantined_bytes == 0 and "retired" not in small.describe()["detail"]


@pytest.mark.asyncio
async def test_a_slot_in_flight_when_its_region_is_unlinked_keeps_its_bytes(
    small: SharedMemory, triton: FakeTriton
) -> None:
    pending = lease(small)
    old_name = small.region
    for _ in range(2):
        small.give_back(lease(small), answered=False)
    await until(lambda: small.retiring is None and small.region != old_name)
    assert pending.home is not None and not Path("/dev/shm", pending.home.key[1:]).exists()
    # Triton refused no unregister, so no request of the old name was in Triton: this one never reached it. Its
    # mapping here lives on, and whatever its call ends with, it frees nothing in the new region.
    assert pending.read("OUTPUT__0", np.float32, [2, 2]).shape == (2, 2)
    before = free_bytes(small)
    small.give_back(pending, answered=False)
    small.give_back(lease(small), answered=True)
    assert free_bytes(small) == before and small.retiring is None


@pytest.mark.asyncio
async def test_one_region_retires_at_a_time(small: SharedMemory, triton: FakeTriton) -> None:
    first_name = small.region
    triton.in_use.add(first_name)
    for _ in range(2):
        small.give_back(lease(small), answered=False)
    await until(lambda: small.retiring is not None)
    second_name = small.region
    for _ in range(3):
        small.give_back(lease(small), answered=False)
    refused = triton.refusals
    await until(lambda: triton.refusals >= refused + 3)
    assert small.region == second_name and set(triton.regions) == {first_name, second_name}
    triton.in_use.clear()  # the first goes, then the second, quarantined past a quarter, retires in turn
    await until(lambda: small.region not in (first_name, second_name) and small.retiring is None)
    assert list(triton.regions) == [small.region] and len(triton.keys) == 3 and free_bytes(small) == SMALL


@pytest.mark.parametrize("cause", ["no-space", "triton-refuses"])
@pytest.mark.asyncio
async def test_a_region_that_cannot_be_retired_stays_with_its_quarantine(
    small: SharedMemory,
    triton: FakeTriton,
    cause: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if cause == "no-space":

        def full(*args: object) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(shm.os, "posix_fallocate", full)
    else:
        triton.refuse = error("StatusCode.INTERNAL", "failed to register shared memory region")
    name, key = small.region, small.key
    with caplog.at_level(logging.WARNING, logger="proxy"):
        for _ in range(2):
            small.give_back(lease(small), answered=False)
        await until(lambda: any("stays, quarantine and all" in r.message for r in caplog.records))
    assert small.active and small.region == name and small.retiring is None and list(triton.regions) == [name]
    assert free_bytes(small) == SMALL - 2 * 192 and lease(small).region == name
    assert [p.name for p in Path("/dev/shm").iterdir() if p.name.startswith(key[1:].rsplit("-", 1)[0])] == [key[1:]]


@pytest.mark.asyncio
async def test_a_name_retired_here_that_triton_no_longer_knows_is_not_a_restart(
    small: SharedMemory, triton: FakeTriton
) -> None:
    old_name = small.region
    for _ in range(2):
        small.give_back(lease(small), answered=False)
    await until(lambda: small.retiring is None and small.region != old_name)
    current = small.region
    # A request sent under the old name reached Triton after the unregister: refused, never run; it goes again
    # in the message, and the current region stays registered.
    assert small.forgot(error("StatusCode.NOT_FOUND", f"Unable to find shared memory region: '{old_name}'"))
    assert small.active and small.region == current and list(triton.regions) == [current]


@pytest.mark.asyncio
async def test_triton_restarted_while_a_region_retires(small: SharedMemory, triton: FakeTriton) -> None:
    old_name = small.region
    triton.in_use.add(old_name)
    for _ in range(2):
        small.give_back(lease(small), answered=False)
    await until(lambda: small.retiring is not None)
    small.give_back(lease(small), answered=False)
    fresh_key = small.key
    triton.restart()
    assert small.forgot(error("StatusCode.NOT_FOUND", f"Unable to find shared memory region: '{small.region}'"))
    await until(lambda: small.active and small.retiring is None)
    # The new Triton knows the current region under a new name and holds nothing of either.
    assert list(triton.regions) == [small.region] and triton.regions[small.region][0] == fresh_key
    assert small.quarantined_bytes == 0 and free_bytes(small) == SMALL


@pytest.mark.asyncio
async def test_close_while_a_region_retires_unregisters_and_unlinks_both(
    small: SharedMemory, triton: FakeTriton
) -> None:
    old_key = small.key
    triton.in_use.add(small.region)
    for _ in range(2):
        small.give_back(lease(small), answered=False)
    await until(lambda: small.retiring is not None)
    new_key = small.key
    triton.in_use.clear()  # shutting down: Triton's requests ended (else it keeps the region until it stops)
    await small.close()
    assert not triton.regions and small.current is None and small.retiring is None
    assert not Path("/dev/shm", old_key[1:]).exists() and not Path("/dev/shm", new_key[1:]).exists()


@pytest.mark.asyncio
async def test_a_restart_while_the_new_region_registers_keeps_the_old_one(
    small: SharedMemory, triton: FakeTriton
) -> None:
    """Which Triton got the new name is unknown: it is unregistered and dropped, and the current region is
    registered again (never its key twice in one Triton)."""
    key = small.key
    triton.gate = asyncio.Event()
    for _ in range(2):
        small.give_back(lease(small), answered=False)
    await until(lambda: len(list(Path("/dev/shm").glob(f"{key[1:].rsplit('-', 1)[0]}-*"))) == 2)  # the new one made
    triton.restart()
    assert small.forgot(error("StatusCode.NOT_FOUND", f"Unable to find shared memory region: '{small.region}'"))
    triton.gate.set()
    await until(lambda: small.active)
    assert small.key == key and small.retiring is None and list(triton.regions) == [small.region]
    assert triton.regions[small.region][0] == key and free_bytes(small) == SMALL
    assert [p.name for p in Path("/dev/shm").glob(f"{key[1:].rsplit('-', 1)[0]}-*")] == [key[1:]]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "lost",
    [
        pytest.param(error("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded"), id="grpc-deadline"),
        pytest.param(TimeoutError(), id="http-timeout"),
    ],
)
async def test_a_registration_whose_answer_was_lost_is_undone_before_the_next(
    memory: SharedMemory, triton: FakeTriton, lost: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Triton applied it, the answer never came: retried (not given up), and the maybe-registered name goes
    first, so the object is never registered under two names (FakeTriton refuses that, as 2.51 must not see it)."""
    monkeypatch.setattr(shm, "RETRY_S", 0.01)
    register, attempts = triton.register, []

    async def applied_then_lost(name: str, key: str, byte_size: int) -> None:
        attempts.append(name)
        await register(name, key, byte_size)
        if len(attempts) == 1:
            raise lost

    memory._register = applied_then_lost
    await memory.open()
    assert not memory.active and "retried" in memory.detail
    for _ in range(200):
        if memory.active:
            break
        await asyncio.sleep(0.01)
    assert memory.active and list(triton.regions) == [memory.region] and len(attempts) == 2


@pytest.mark.asyncio
async def test_a_registration_cut_off_by_shutdown_is_undone(memory: SharedMemory, triton: FakeTriton) -> None:
    """The loader's task cancelled mid-registration (the worker stopping): the name it may have left is gone too."""
    triton.gate = asyncio.Event()
    unregistered: list[str] = []
    unregister = triton.unregister

    async def recorded(name: str) -> None:
        unregistered.append(name)
        await unregister(name)

    memory._unregister = recorded
    opening = asyncio.get_running_loop().create_task(memory.open())
    await asyncio.sleep(0.01)  # inside the registration call
    opening.cancel()
    await asyncio.gather(opening, return_exceptions=True)
    await memory.close()
    assert len(unregistered) == 1 and not triton.regions


@pytest.mark.asyncio
async def test_regions_left_by_dead_workers_are_removed_and_live_ones_kept(triton: FakeTriton) -> None:
    """A worker killed outright leaves its object (and Triton its name); the next one to open removes both. An
    object a live worker holds (its lock) is left alone, whoever's it is."""
    tag = secrets.token_hex(4)
    dead, live = SHM_DIR / f"nexus-proxy-dead-{tag}", SHM_DIR / f"nexus-proxy-live-{tag}"
    for path in (dead, live):
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    holder = os.open(live, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    triton.regions["dead-1"] = (f"/{dead.name}", 0)

    async def status() -> list[tuple[str, str]]:
        return [(name, key) for name, (key, _) in triton.regions.items()]

    memory = SharedMemory("auto", REGION, triton.register, triton.unregister, status)
    try:
        await memory.open()
        assert memory.active and not dead.exists() and "dead-1" not in triton.regions
        assert live.exists()
        own = os.open(SHM_DIR / memory.key[1:], os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):  # this worker's own object is held as long as it lives
                fcntl.flock(own, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(own)
    finally:
        await memory.close()
        os.close(holder)
        live.unlink(missing_ok=True)
        dead.unlink(missing_ok=True)
    assert not Path(SHM_DIR, memory.key[1:]).exists()  # its own object went with the close, lock and all
