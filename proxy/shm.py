"""Tensors between a proxy worker and Triton through Triton's system shared memory, instead of in the message.

Each worker's upstream client owns a POSIX shared-memory object (`/dev/shm/nexus-proxy-<pid>-<random>`, created
here, unlinked when done with) which Triton maps once it is registered. A request (or a coalesced batch) takes a
slot big enough for its inputs *and* its outputs, its inputs are copied in once from the numpy arrays, the request
names offsets instead of carrying bytes, Triton writes the outputs into the same slot, and they are copied out
before the slot is given back.

Why a slot is reused only after Triton's answer for it is in: until then Triton may still read the inputs or write
the outputs, and a new request in the same bytes would get another request's data (a wrong answer, no error).
Triton 2.51 goes on with a request whose client gave up (a gRPC deadline, a closed HTTP connection): it still
writes the outputs when the model ends. A call that ends without Triton's answer (timed out, cancelled,
connection lost) therefore leaves its slot *quarantined*: never reused while the registration it was sent under
lives in Triton.

What lifts a quarantine is Triton's word that no request of a registration is left in it, never a delay:
- Triton restarted: it forgot every registration (a request naming one is refused, `FORGOTTEN`); the region is
  registered again under a fresh name no earlier request carries, and its quarantine is lifted.
- Once a quarter of the region is quarantined (`ROTATE_AT`), the worker *retires* it: a new object is made and
  registered, new requests lease slots there, and the old name is unregistered, again every RETRY_S while Triton
  refuses. Triton 2.51 counts the requests that use a region (queued or executing, until their response is
  complete, whether or not the client still waits) and refuses to unregister it while any does ("Cannot unregister
  shared memory region '...', it is currently in use"); a request naming it after that is refused, never run.
  So the unregister's success proves nothing in Triton will touch the old object again: it is unlinked, with
  every slot quarantined in it (leases of it still in flight here keep their mapping until they end).
  At most one region is retiring at a time, so a worker holds at most two regions of /dev/shm; until the old one
  is gone, or where /dev/shm has no room for a second, the current one fills and requests drift to the message.
The new region is a new object, not the same one under a second name: Triton 2.51 registers a second name of an
already-registered key through the file descriptor it closed after the first mapping (a `FIXME` in its
`shared_memory_manager.cc`, fixed in 2.69): refused ("Invalid shared memory region", or "invalid args" when the
number was reused by another file), or a mapping of whatever file holds that number now. A new object also keeps
this right on Triton 2.53 and later, whose unregister of a region in use succeeds at once and unmaps it only when
its last request ends: no byte of a retired object is ever leased again, whatever Triton still does with it.

Quarantined bytes (of the current region and of one retiring) are shown in `GET /v1/models`; a region filled by
them only makes requests go in the message again, never fail.

When Triton cannot use the region (another host or container without this /dev/shm, a Triton without the API, the
restricted API refusing the key) the worker sends tensors in the message, and says why once: in its log and in
`GET /v1/models` (`shared_memory`). Inputs or outputs that are BYTES, or outputs whose size is not known before
the answer (a -1 dimension), go in the message too.

A worker that ends cleanly unregisters and unlinks its regions. One killed outright (SIGKILL, the OOM killer)
leaves its objects behind; the next worker to open shared memory removes them (`unowned`: each live worker holds a
lock on its objects, which the kernel drops with the process), unregistering them from Triton first.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import mmap
import os
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

from nexusml.core.triton_errors import TritonFailure, classify, status_and_message
from proxy.schema import ModelSchema
from proxy.stacked import Stacked, Tensor

log = logging.getLogger("proxy")

ALIGN = 64  # each tensor starts on a cache line
SHM_DIR = Path("/dev/shm")  # where shm_open (Triton's side) finds a POSIX shared-memory object on Linux
RETRY_S = 1.0  # between registration attempts while Triton is unreachable, and unregister attempts while refused
ROTATE_AT = 4  # a region is retired once 1/ROTATE_AT of it is quarantined
# Triton's answer to a request naming a region it does not know (gRPC NOT_FOUND, HTTP 404): it restarted, or the
# name was unregistered (a retired region).
FORGOTTEN = "unable to find shared memory region"
# What a call that ended without Triton's answer looks like when tritonclient raises it as a Triton error.
NO_ANSWER = frozenset({"StatusCode.UNAVAILABLE", "StatusCode.CANCELLED", "StatusCode.DEADLINE_EXCEEDED"})
NAMED = re.compile(r"shared memory region: '([^']*)'", re.IGNORECASE)  # the region a FORGOTTEN answer names


def aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def answered(err: Any) -> bool:
    """Whether a Triton error is Triton's answer (it no longer reads or writes the request's slot), not a call
    that ended without one. Over gRPC a full queue and an expired queue timeout are UNAVAILABLE answers too."""
    status, message = status_and_message(err)
    if status not in NO_ANSWER:
        return True
    return classify(err) in (TritonFailure.QUEUE_FULL, TritonFailure.RESTRICTED) or "timeout expired" in message.lower()


def _is_answer(err: Exception) -> bool:
    """Whether a failed shared-memory call was answered by Triton (a refusal), rather than unreachable, timed out
    or cut off, which leaves unknown whether Triton applied it."""
    if not (hasattr(err, "status") and hasattr(err, "message")):
        return False
    return answered(err) and classify(err) is not TritonFailure.UNREACHABLE  # type: ignore[arg-type]


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


class Region:
    """One POSIX shared-memory object mapped here, its slots, and the name Triton knows it by ("" before that)."""

    def __init__(self, key: str, size: int) -> None:
        """Create the object and reserve its pages; raises OSError (and leaves nothing behind) when it cannot."""
        self.key = key
        self.size = size
        self.name = ""
        self.allocator = Allocator(size)
        self.quarantined: list[tuple[int, int]] = []  # (offset, bytes) of slots sent without an answer since
        path = SHM_DIR / key[1:]
        making = SHM_DIR / f".{key[1:]}"  # out of `sweep`'s sight until it is locked as this worker's
        fd = os.open(making, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held while this process lives: the object is a live worker's
            # Reserve the pages now: a sparse object on a full /dev/shm (a container's is 64 MB by default) would
            # kill the worker with SIGBUS on a later write; this fails here instead, and tensors go in the message.
            os.posix_fallocate(fd, 0, size)
            self._map: mmap.mmap | None = mmap.mmap(fd, size)
            os.rename(making, path)
        except OSError:
            making.unlink(missing_ok=True)
            os.close(fd)
            raise
        self._fd: int | None = fd
        self.view: np.ndarray = np.frombuffer(self._map, np.uint8)

    @property
    def quarantined_bytes(self) -> int:
        return sum(nbytes for _, nbytes in self.quarantined)

    def lift_quarantine(self) -> None:
        for offset, nbytes in self.quarantined:
            self.allocator.give(offset, nbytes)
        self.quarantined.clear()

    def unlink(self) -> None:
        """Unlink the object; the mapping goes with the last array over it (a lease still in flight keeps it)."""
        if self._map is not None:
            (SHM_DIR / self.key[1:]).unlink(missing_ok=True)
            self._map = None
        if self._fd is not None:
            os.close(self._fd)  # and with it the lock
            self._fd = None


@dataclass
class Lease:
    """One request's slot: where each input and output lies, under which registered region name."""

    region: str
    offset: int
    nbytes: int
    view: np.ndarray = field(repr=False)  # the whole region, bytes
    inputs: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (offset, bytes)
    outputs: dict[str, tuple[int, int]] = field(default_factory=dict)
    home: Region | None = field(default=None, repr=False)  # the object the slot is in

    def write(self, name: str, array: Tensor) -> None:
        """Copy one input in (the one copy of its bytes on the way to Triton)."""
        offset, nbytes = self.inputs[name]
        into = self.view[offset : offset + nbytes].view(array.dtype).reshape(array.shape)
        if isinstance(array, Stacked):
            array.copy_into(into)  # a merged batch's rows straight into the slot: never concatenated first
        else:
            np.copyto(into, array)

    def read(self, name: str, dtype: Any, shape: list[int]) -> np.ndarray:
        """Copy one output out, so the slot can be reused while the caller still holds the array."""
        offset, nbytes = self.outputs[name]
        size = int(prod(shape)) * np.dtype(dtype).itemsize
        if size > nbytes:
            raise ValueError(f"output {name} of shape {shape} is larger than its {nbytes} bytes")
        return self.view[offset : offset + size].view(dtype).reshape(shape).copy()


Register = Callable[[str, str, int], Awaitable[None]]
Status = Callable[[], Awaitable[list[tuple[str, str]]]]
"""Triton's registered system shared-memory regions, as (name, key)."""
Unregister = Callable[[str], Awaitable[None]]


def unowned() -> list[tuple[Path, int]]:
    """This proxy's objects in /dev/shm that no live worker holds, each opened and locked (by this process now).

    A worker holds an exclusive `flock` on each of its objects as long as it lives; the kernel drops it when the
    process ends, however it ends (SIGKILL, the OOM killer), and it works across containers sharing /dev/shm, where
    process ids do not. So an object whose lock can be taken was left by a worker that did not end cleanly."""
    found = []
    for path in SHM_DIR.glob("nexus-proxy-*"):
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:  # gone meanwhile, or another user's
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live worker's
            os.close(fd)
            continue
        found.append((path, fd))
    return found


def new_key() -> str:
    """A POSIX shared-memory name unique across the containers sharing /dev/shm."""
    return f"/nexus-proxy-{os.getpid()}-{secrets.token_hex(4)}"


class SharedMemory:
    """One worker's regions (the current one, and at most one retiring), their slots and their registrations with
    Triton (`register`/`unregister` are the upstream client's calls, with the shared-memory key)."""

    def __init__(
        self, mode: str, size: int, register: Register, unregister: Unregister, status: Status | None = None
    ) -> None:
        self.mode = mode
        self.size = size
        self._register = register
        self._unregister = unregister
        self._status = status
        self._swept = False
        self.key = new_key()  # the current region's object
        self.active = False
        self.detail = "off (UPSTREAM_SHARED_MEMORY=off)" if mode == "off" else "not registered with Triton yet"
        self.region = ""  # the name the current region is registered under; a fresh one per registration
        self.current: Region | None = None
        self.retiring: Region | None = None  # retired, until Triton agrees to unregister it
        self._generation = 0
        self._logged = ""
        self._retry: asyncio.Task[None] | None = None
        self._unsettled: str | None = None  # a name whose registration may or may not have been applied
        self._rotation: asyncio.Task[None] | None = None
        self._rotate_after = 0.0  # loop time before which a failed rotation is not tried again
        self._opening: asyncio.Lock = asyncio.Lock()

    @property
    def quarantined_bytes(self) -> int:
        """Bytes of slots sent without an answer, in the current region and a retiring one."""
        return sum(r.quarantined_bytes for r in (self.current, self.retiring) if r is not None)

    def describe(self) -> dict[str, Any]:
        """The `shared_memory` field of `GET /v1/models`."""
        detail = self.detail
        if self.active and self.current is not None and self.current.quarantined:
            detail += f"; {self.current.quarantined_bytes} bytes quarantined after calls without an answer"
        if self.active and self.retiring is not None:
            detail += (
                f"; region {self.retiring.name} retired ({self.retiring.quarantined_bytes} bytes quarantined),"
                " unregistered once Triton holds no request of it"
            )
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
            if not self._swept:
                self._swept = True
                await self._sweep()
            if self.current is None:
                try:
                    self.current = Region(self.key, self.size)
                except OSError as err:
                    self._fall_back(f"cannot create {SHM_DIR}{self.key}: {err}")
                    return
            if self._unsettled is not None:
                # An earlier attempt may have been registered: Triton 2.51 must never map the same object under
                # two names (module docstring), so that name goes first (a name Triton does not know goes too).
                try:
                    await self._unregister(self._unsettled)
                except Exception as err:
                    self._refused(err)
                    return
                self._unsettled = None
            name = self._name()
            try:
                await self._register(name, self.key, self.size)
            except asyncio.CancelledError:
                self._unsettled = name  # cancelled mid-call (shutting down): `close` unregisters it
                raise
            except Exception as err:  # Triton's refusal or the transport's failure: both decided below
                if not _is_answer(err):
                    self._unsettled = name  # sent, maybe applied, answer lost: settled before the next attempt
                self._refused(err)
                return
            # A Triton that forgot the old name holds no request of it: the quarantine is lifted.
            self.current.name = self.region = name
            self.current.lift_quarantine()
            self.active = True
            self.detail = f"region {name}, {self.size} bytes in {SHM_DIR}{self.key}"
            self._say(logging.INFO, f"tensors go to Triton through shared memory: {self.detail}")

    async def _sweep(self) -> None:
        """Remove the objects workers left when they did not end cleanly (`unowned`), unregistering them from this
        Triton first where it still holds them (best effort: one a request still uses stays registered)."""
        stale = unowned()
        if not stale:
            return
        keys = {f"/{path.name}" for path, _ in stale}
        try:
            registered = await self._status() if self._status is not None else []
        except Exception as err:  # the objects go anyway; Triton forgets their names when it restarts
            log.info("shared memory: could not list Triton's regions: %s", err)
            registered = []
        for name, key in registered:
            if key in keys:
                await self._forget(name)
        for path, fd in stale:
            path.unlink(missing_ok=True)
            os.close(fd)
        log.info("shared memory: removed %d regions left by workers that did not end cleanly", len(stale))

    def lease(self, schema: ModelSchema, arrays: dict[str, Tensor]) -> Lease | None:
        """A slot for this request's inputs and outputs with the inputs written, or None: send it in the message."""
        home = self.current
        if not self.active or home is None:
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
        offset = home.allocator.take(total)
        if offset is None:
            return None
        lease = Lease(self.region, offset, total, home.view, home=home)
        at = offset
        for name, is_input, nbytes in layout:
            (lease.inputs if is_input else lease.outputs)[name] = (at, nbytes)
            at += aligned(max(nbytes, 1))
        for name in lease.inputs:
            lease.write(name, arrays[name])
        return lease

    def give_back(self, lease: Lease, answered: bool) -> None:
        """Free the slot once Triton's answer for it is in; else quarantine it (module docstring)."""
        home = lease.home
        if home is None or home is not self.current:
            # A retiring region is dropped whole once Triton lets it go (a retired one is gone already).
            if not answered and home is not None and home is self.retiring:
                home.quarantined.append((lease.offset, lease.nbytes))
            return
        if answered or lease.region != home.name:
            # A slot of an older registration: its requests can no longer reach the region (see open).
            home.allocator.give(lease.offset, lease.nbytes)
            return
        home.quarantined.append((lease.offset, lease.nbytes))
        self._rotate_if_due()

    def forgot(self, err: Exception) -> bool:
        """Whether `err` says Triton does not know a region (it restarted, or a retired name is gone); for the
        current one, register it again, in the background, and send in the message meanwhile."""
        message = status_and_message(err)[1]  # type: ignore[arg-type]
        if FORGOTTEN not in message.lower() or not self.region:
            return False
        named = NAMED.search(message)
        if named is not None and named.group(1) != self.region:
            return True  # a name retired here, or one the current region had before Triton restarted
        if self.active:
            self.active = False
            self.detail = "Triton forgot the region (restarted?): registering it again"
            log.warning("shared memory: %s", self.detail)
            self._logged = ""  # what comes of it is news, even if it was said before
            self._retry_soon(0.0)
        return True

    async def close(self) -> None:
        """Unregister from Triton (best effort: it may be gone) and unlink the regions."""
        if self._retry is not None:
            self._retry.cancel()
        async with self._opening:  # a registration under way ends first, so its name is known here
            if self._rotation is not None:
                self._rotation.cancel()
            names = [self.region] if self.active else []
            if self.retiring is not None:
                names.append(self.retiring.name)
            if self._unsettled is not None:  # maybe registered: cut off, or cancelled by this shutdown
                names.append(self._unsettled)
            self.active = False
            for name in names:
                await self._forget(name)
            self.detail = "closed"
            self._release_regions()

    def _name(self) -> str:
        self._generation += 1
        return f"{self.key[1:]}-{self._generation}"

    def _rotate_if_due(self) -> None:
        """Start retiring the current region once enough of it is quarantined (module docstring)."""
        if self.current is None or self.current.quarantined_bytes * ROTATE_AT < self.size:
            return
        rotating = self._rotation is not None and not self._rotation.done()
        if not self.active or self.retiring is not None or (rotating and self._rotation is not asyncio.current_task()):
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._rotate_after:
            return
        self._rotation = loop.create_task(self._rotate())

    async def _rotate(self) -> None:
        """Register a new region, lease from it, then unregister the old one once Triton lets it go."""
        async with self._opening:
            old = self.current
            if not self.active or old is None or self.retiring is not None:
                return
            key = new_key()
            try:
                fresh = Region(key, self.size)
            except OSError as err:
                self._rotation_failed(f"cannot create {SHM_DIR}{key}: {err}")
                return
            name = f"{key[1:]}-{self._generation + 1}"
            try:
                await self._register(name, key, self.size)
            except Exception as err:  # whatever it was, the old region stays in use
                if not _is_answer(err):
                    await self._forget(name)  # it may have been applied: do not leave it holding the object
                fresh.unlink()
                self._rotation_failed(f"Triton refused {name}: {err}")
                return
            if not self.active:
                # Triton restarted meanwhile: which Triton holds the new name is unknown, and registering its key
                # twice is what must never happen (module docstring); the old region is registered again instead.
                await self._forget(name)
                fresh.unlink()
                return
            self._generation += 1
            fresh.name = name
            self.current, self.retiring, self.key, self.region = fresh, old, key, name
            self.detail = f"region {name}, {self.size} bytes in {SHM_DIR}{key}"
            log.info(
                "shared memory: region %s retired with %d bytes quarantined; tensors go through %s",
                old.name,
                old.quarantined_bytes,
                self.detail,
            )
        await self._retire(old)

    async def _retire(self, old: Region) -> None:
        """Unregister `old`, again every RETRY_S while Triton refuses (a request of it is still queued or running
        there); once it is gone, nothing in Triton can touch the object: unlink it, quarantine and all."""
        said = False
        while self.retiring is old:
            try:
                await self._unregister(old.name)
            except Exception as err:  # in use, or Triton unreachable: neither lets the region go yet
                if not said:
                    log.info(
                        "shared memory: %s not unregistered yet, tried again every %g s: %s", old.name, RETRY_S, err
                    )
                    said = True
                await asyncio.sleep(RETRY_S)
                continue
            self.retiring = None
            old.unlink()
            log.info("shared memory: %s unregistered, %d quarantined bytes freed", old.name, old.quarantined_bytes)
        self._rotate_if_due()

    async def _forget(self, name: str) -> None:
        """Unregister `name`, best effort: Triton may be gone (a restarted one does not know the name anyway)."""
        try:
            await self._unregister(name)
        except Exception as err:
            log.info("shared memory: unregistering %s failed: %s", name, err)

    def _rotation_failed(self, why: str) -> None:
        """A region could not be retired: the current one stays (requests drift to the message as it fills)."""
        self._rotate_after = asyncio.get_running_loop().time() + RETRY_S
        log.warning("shared memory: region %s stays, quarantine and all: %s", self.region, why)

    def _refused(self, err: Exception) -> None:
        if not _is_answer(err):
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
        """Registration is refused for good: free the regions, send tensors in the message, say why once."""
        self.active = False
        self.detail = why
        self._say(logging.WARNING, f"tensors go to Triton in the message: {why}")
        self._release_regions()

    def _release_regions(self) -> None:
        for region in (self.current, self.retiring):
            if region is not None:
                region.unlink()
        self.current = self.retiring = None

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
