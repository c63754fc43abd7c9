"""Tensors between a proxy worker and Triton through Triton's system shared memory, instead of in the message.

Each worker's upstream client owns one POSIX shared-memory object (`/dev/shm/nexus-proxy-<pid>-<random>`, created
here, unlinked on close) which Triton maps once it is registered. A request (or a coalesced batch) takes a slot
big enough for its inputs *and* its outputs, its inputs are copied in once from the numpy arrays, the request names
offsets instead of carrying bytes, Triton writes the outputs into the same slot, and they are copied out before
the slot is given back.

Why a slot is reused only after Triton's answer for it is in: until then Triton may still read the inputs or write
the outputs, and a new request in the same bytes would get another request's data (a wrong answer, no error). A
call that ends without Triton's answer (timed out, cancelled, connection lost) leaves its slot *quarantined*: it is
not reused while the registration it was sent under lives. Triton forgets a registration only by restarting, and
each registration has a fresh name, so once the region is registered again (after Triton forgot it) no request of
an older name can touch it any more and the quarantine is lifted. Quarantined bytes are shown in `GET /v1/models`;
a region filled by them only makes requests go in the message again, never fail.

When Triton cannot use the region (another host or container without this /dev/shm, a Triton without the API, the
restricted API refusing the key) the worker sends tensors in the message, and says why once: in its log and in
`GET /v1/models` (`shared_memory`). Inputs or outputs that are BYTES, or outputs whose size is not known before
the answer (a -1 dimension), go in the message too.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

from nexusml.core.triton_errors import TritonFailure, classify, status_and_message
from proxy.schema import ModelSchema

log = logging.getLogger("proxy")

ALIGN = 64  # each tensor starts on a cache line
SHM_DIR = Path("/dev/shm")  # where shm_open (Triton's side) finds a POSIX shared-memory object on Linux
RETRY_S = 1.0  # between registration attempts while Triton is unreachable
# Triton's answer to a request naming a region it does not know (gRPC NOT_FOUND, HTTP 404): it restarted.
FORGOTTEN = "unable to find shared memory region"
# What a call that ended without Triton's answer looks like when tritonclient raises it as a Triton error.
NO_ANSWER = frozenset({"StatusCode.UNAVAILABLE", "StatusCode.CANCELLED", "StatusCode.DEADLINE_EXCEEDED"})


def aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def answered(err: Any) -> bool:
    """Whether a Triton error is Triton's answer (it no longer reads or writes the request's slot), not a call
    that ended without one. Over gRPC a full queue and an expired queue timeout are UNAVAILABLE answers too."""
    status, message = status_and_message(err)
    if status not in NO_ANSWER:
        return True
    return classify(err) in (TritonFailure.QUEUE_FULL, TritonFailure.RESTRICTED) or "timeout expired" in message.lower()


class Allocator:
    """First fit over one region: free ranges kept sorted by offset and merged with their neighbours on free.

    A handful of slots are in use at once (one per request or batch in flight), so a list is as fast as anything.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.free: list[tuple[int, int]] = [(0, size)]  # (offset, size), sorted by offset

    def take(self, nbytes: int) -> int | None:
        """The offset of `nbytes` (rounded up to ALIGN) now reserved, or None when no free range is that large."""
        nbytes = aligned(max(nbytes, 1))
        for i, (offset, size) in enumerate(self.free):
            if size >= nbytes:
                if size == nbytes:
                    del self.free[i]
                else:
                    self.free[i] = (offset + nbytes, size - nbytes)
                return offset
        return None

    def give(self, offset: int, nbytes: int) -> None:
        """Free what `take(nbytes)` returned as `offset`."""
        nbytes = aligned(max(nbytes, 1))
        i = 0
        while i < len(self.free) and self.free[i][0] < offset:
            i += 1
        start, end = offset, offset + nbytes
        if i < len(self.free) and self.free[i][0] == end:  # merge with the range after
            end += self.free.pop(i)[1]
        if i > 0 and sum(self.free[i - 1]) == start:  # and the one before
            i -= 1
            start = self.free.pop(i)[0]
        self.free.insert(i, (start, end - start))

    @property
    def free_bytes(self) -> int:
        return sum(size for _, size in self.free)


@dataclass
class Lease:
    """One request's slot: where each input and output lies, under which registered region name."""

    region: str
    offset: int
    nbytes: int
    view: np.ndarray = field(repr=False)  # the whole region, bytes
    inputs: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (offset, bytes)
    outputs: dict[str, tuple[int, int]] = field(default_factory=dict)

    def write(self, name: str, array: np.ndarray) -> None:
        """Copy one input in (the one copy of its bytes on the way to Triton)."""
        offset, nbytes = self.inputs[name]
        np.copyto(self.view[offset : offset + nbytes].view(array.dtype).reshape(array.shape), array)

    def read(self, name: str, dtype: Any, shape: list[int]) -> np.ndarray:
        """Copy one output out, so the slot can be reused while the caller still holds the array."""
        offset, nbytes = self.outputs[name]
        size = int(prod(shape)) * np.dtype(dtype).itemsize
        if size > nbytes:
            raise ValueError(f"output {name} of shape {shape} is larger than its {nbytes} bytes")
        return self.view[offset : offset + size].view(dtype).reshape(shape).copy()


Register = Callable[[str, str, int], Awaitable[None]]
Unregister = Callable[[str], Awaitable[None]]


class SharedMemory:
    """One worker's region, its slots and its registration with Triton (`register`/`unregister` are the upstream
    client's calls, with the shared-memory key)."""

    def __init__(self, mode: str, size: int, register: Register, unregister: Unregister) -> None:
        self.mode = mode
        self.size = size
        self._register = register
        self._unregister = unregister
        self.key = f"/nexus-proxy-{os.getpid()}-{secrets.token_hex(4)}"  # unique across containers sharing /dev/shm
        self.active = False
        self.detail = "off (UPSTREAM_SHARED_MEMORY=off)" if mode == "off" else "not registered with Triton yet"
        self.region = ""  # the name registered with Triton now; a fresh one per registration
        self.quarantined: list[tuple[int, int]] = []
        self._generation = 0
        self._allocator = Allocator(size)
        self._map: mmap.mmap | None = None
        self._view: np.ndarray | None = None
        self._logged = ""
        self._retry: asyncio.Task[None] | None = None
        self._opening: asyncio.Lock = asyncio.Lock()

    def describe(self) -> dict[str, Any]:
        """The `shared_memory` field of `GET /v1/models`."""
        detail = self.detail
        if self.active and self.quarantined:
            detail += f"; {sum(n for _, n in self.quarantined)} bytes quarantined after calls without an answer"
        return {"active": self.active, "detail": detail}

    async def open(self) -> None:
        """Create the region (once) and register it with Triton under a fresh name; never raises.

        Called when the model is ready, and again (in the background) when Triton forgot the region. While
        Triton is unreachable it is retried every RETRY_S; any other refusal is final: tensors go in the message.
        """
        if self.mode == "off":
            self._say(logging.INFO, "tensors go to Triton in the message: UPSTREAM_SHARED_MEMORY=off")
            return
        async with self._opening:
            if self.active:
                return
            try:
                self._create()
            except OSError as err:
                self._fall_back(f"cannot create {SHM_DIR}{self.key}: {err}")
                return
            self._generation += 1
            name = f"{self.key[1:]}-{self._generation}"
            try:
                await self._register(name, self.key, self.size)
            except Exception as err:  # Triton's refusal or the transport's failure: both decided below
                self._refused(err)
                return
            self.region = name
            self._lift_quarantine()
            self.active = True
            self.detail = f"region {name}, {self.size} bytes in {SHM_DIR}{self.key}"
            self._say(logging.INFO, f"tensors go to Triton through shared memory: {self.detail}")

    def lease(self, schema: ModelSchema, arrays: dict[str, np.ndarray]) -> Lease | None:
        """A slot for this request's inputs and outputs with the inputs written, or None: send it in the message."""
        if not self.active or self._view is None:
            return None
        layout: list[tuple[str, bool, int]] = []  # (name, is input, bytes)
        for spec in schema.inputs:
            array = arrays[spec.name]
            if array.dtype == np.object_:
                return None
            layout.append((spec.name, True, array.nbytes))
        rows = [next(iter(arrays.values())).shape[0]] if schema.batched and arrays else []
        for spec in schema.outputs:
            if spec.datatype == "BYTES" or any(d < 0 for d in spec.shape):
                return None
            layout.append((spec.name, False, int(prod([*rows, *spec.shape])) * np.dtype(spec.dtype).itemsize))
        total = sum(aligned(max(nbytes, 1)) for _, _, nbytes in layout)
        offset = self._allocator.take(total)
        if offset is None:
            return None
        lease = Lease(self.region, offset, total, self._view)
        at = offset
        for name, is_input, nbytes in layout:
            (lease.inputs if is_input else lease.outputs)[name] = (at, nbytes)
            at += aligned(max(nbytes, 1))
        for name in lease.inputs:
            lease.write(name, arrays[name])
        return lease

    def give_back(self, lease: Lease, answered: bool) -> None:
        """Free the slot once Triton's answer for it is in; else quarantine it (module docstring)."""
        if answered or lease.region != self.region:
            # A slot of an older registration: its requests can no longer reach the region (see _lift_quarantine).
            self._allocator.give(lease.offset, lease.nbytes)
        else:
            self.quarantined.append((lease.offset, lease.nbytes))

    def forgot(self, err: Exception) -> bool:
        """Whether `err` says Triton does not know the region (it restarted); if so, register it again, in the
        background, and send in the message meanwhile."""
        if FORGOTTEN not in status_and_message(err)[1].lower() or not self.region:  # type: ignore[arg-type]
            return False
        if self.active:
            self.active = False
            self.detail = "Triton forgot the region (restarted?): registering it again"
            log.warning("shared memory: %s", self.detail)
            self._logged = ""  # what comes of it is news, even if it was said before
            self._retry_soon(0.0)
        return True

    async def close(self) -> None:
        """Unregister from Triton (best effort: it may be gone) and unlink the region."""
        if self._retry is not None:
            self._retry.cancel()
        if self.active:
            self.active = False
            try:
                await self._unregister(self.region)
            except Exception as err:  # shutting down: Triton may be gone already, nothing to do about it
                log.info("shared memory: unregistering %s failed: %s", self.region, err)
        self.detail = "closed"
        self._release_region()

    def _create(self) -> None:
        if self._map is not None:
            return
        path = SHM_DIR / self.key[1:]
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            # Reserve the pages now: a sparse object on a full /dev/shm (a container's is 64 MB by default) would
            # kill the worker with SIGBUS on a later write; this fails here instead, and tensors go in the message.
            os.posix_fallocate(fd, 0, self.size)
            self._map = mmap.mmap(fd, self.size)
        except OSError:
            path.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        self._view = np.frombuffer(self._map, np.uint8)

    def _lift_quarantine(self) -> None:
        """Free the quarantined slots: the registration they were sent under is gone with the Triton that knew it,
        and the new name is one no earlier request carries."""
        for offset, nbytes in self.quarantined:
            self._allocator.give(offset, nbytes)
        self.quarantined.clear()

    def _refused(self, err: Exception) -> None:
        is_triton = hasattr(err, "status") and hasattr(err, "message")
        if not is_triton or classify(err) is TritonFailure.UNREACHABLE:  # type: ignore[arg-type]
            self.detail = f"Triton unreachable, registration retried every {RETRY_S:g} s: {type(err).__name__}"
            self._say(logging.WARNING, f"tensors go to Triton in the message for now: {self.detail}")
            self._retry_soon(RETRY_S)
            return
        status, message = status_and_message(err)  # type: ignore[arg-type]
        if classify(err) is TritonFailure.RESTRICTED:  # type: ignore[arg-type]
            message = f"Triton's shared-memory API refused TRITON_SHM_KEY ({message})"
        elif "unable to open" in message.lower():
            message = f"Triton cannot open {SHM_DIR}{self.key} (not on this host, or no shared /dev/shm): {message}"
        self._fall_back(f"{message} ({status or 'no status'})")

    def _fall_back(self, why: str) -> None:
        """Registration is refused for good: free the region, send tensors in the message, say why once."""
        self.active = False
        self.detail = why
        self._say(logging.WARNING, f"tensors go to Triton in the message: {why}")
        self._release_region()

    def _release_region(self) -> None:
        """Unlink the object; the mapping goes with the last array over it (a lease still in flight keeps it)."""
        if self._map is not None:
            (SHM_DIR / self.key[1:]).unlink(missing_ok=True)
            self._view = None
            self._map = None

    def _retry_soon(self, delay_s: float) -> None:
        """One background attempt after `delay_s` (an attempt that fails again schedules the next)."""
        running = self._retry is not None and not self._retry.done()
        if running and self._retry is not asyncio.current_task():
            return

        async def retry() -> None:
            await asyncio.sleep(delay_s)
            await self.open()

        self._retry = asyncio.get_running_loop().create_task(retry())

    def _say(self, level: int, line: str) -> None:
        """Log `line` unless it is the last one said: the fallback is said once, not once per attempt."""
        kind = line.split(":", 1)[0]
        if kind != self._logged:
            log.log(level, "shared memory: %s", line)
            self._logged = kind
