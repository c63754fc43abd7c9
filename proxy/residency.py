"""The proxy's side of model residency within a memory budget (`RESIDENCY_URL`): the client of the decider in
`nexus watch` (`nexusml.updates.residency`), which alone loads and unloads models in Triton.

Each worker tells the decider, every `HEARTBEAT_S`, which models have requests in progress or waiting here
(`busy`: never unloaded to make room while they do) and which got a request since the last beat (`used`: what
"least recently used" is measured by), and keeps the snapshot it answers with: each model's state and measured
bytes (`GET /v1/models`), and which models are loaded (`resident`, the one lookup a request makes). A request for a
model not loaded asks the decider to load it (`ensure`) and waits, within its own deadline: one call per model at a
time in this worker, shared by every request waiting for that model. A call carries the deadline of the request
that started it (`deadline_s`, the seconds it still waits: the decider drops a call nobody waits for any more) and
lasts that long, plus the connection; a request that joined it and may wait longer starts a new call when it
ends for want of time. The decider answers when the model is loaded, or why it cannot be: `no_room` (every loaded
model is busy or pinned now: asked again every `NO_ROOM_RETRY_S` while the deadline allows), `over_memory_budget`,
`model_load_failed`, `model_not_found`, `deadline_exceeded`. With `RESIDENCY_KEY` every call carries it (header
`nexus-residency-key`); the decider refuses a call without it, or with another, 401.

Without `RESIDENCY_URL` none of this exists (`ProxyState.residency` is None) and every model is taken as loaded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from nexusml.core.settings import RESIDENCY_HEADER
from proxy.errors import (
    DeadlineExceeded,
    LoadFailed,
    NoRoom,
    NotReady,
    OverMemoryBudget,
    ProxyError,
    UpstreamError,
    UpstreamUnavailable,
)
from proxy.settings import ProxySettings

RESIDENT, LOADING, NOT_RESIDENT, FAILED = "resident", "loading", "not_resident", "failed"
HEARTBEAT_S = 0.5
NO_ROOM_RETRY_S = 0.2

log = logging.getLogger("proxy")


@dataclass(frozen=True)
class Residence:
    """One model's line of the decider's snapshot."""

    state: str  # resident, loading, not_resident or failed
    bytes: int | None  # measured, last known (also when not resident); None before its first load
    problem: str | None = None  # why it failed


class Residency:
    """One worker's view of which models are loaded, and its calls to the decider."""

    def __init__(self, settings: ProxySettings, busy: Callable[[], list[str]]) -> None:
        self.url = settings.residency_url.rstrip("/")
        self.busy = busy  # the models with requests in progress or waiting in this worker, now
        self.models: dict[str, Residence] = {}  # the last snapshot (with this worker's own loads since)
        self.resident: set[str] = set()  # the models loaded in Triton, as last heard
        self.used: set[str] = set()  # the models that got a request since the last heartbeat
        self.answered = False  # whether the decider answered the last heartbeat
        self.problem = f"the residency decider at RESIDENCY_URL={self.url} has not answered a heartbeat yet"
        self.headers = {RESIDENCY_HEADER: settings.residency_key} if settings.residency_key else {}
        self.connect_timeout_s = settings.connect_timeout_s
        self.heartbeat_timeout = aiohttp.ClientTimeout(total=settings.connect_timeout_s)
        # A load answers once the model is in: its call is bounded by the deadline it carries (`_load`).
        self.load_timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout_s)
        self.session: aiohttp.ClientSession | None = None
        # The one load call per model in progress, with the deadline (loop time) of the request that started it.
        self._calls: dict[str, tuple[asyncio.Task[bool], float]] = {}
        self._confirmed: dict[str, float] = {}  # models this worker's calls found loaded, and when
        self._changed = asyncio.Event()  # set, and replaced, whenever `resident` changes

    async def open(self) -> None:
        self.session = aiohttp.ClientSession(headers=self.headers)

    async def close(self) -> None:
        calls = [call for call, _ in self._calls.values()]
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    # --- the heartbeat ------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Beat every HEARTBEAT_S, as long as the app runs."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.beat()
            except Exception:  # anything else would end the heartbeat silently, and leave /readyz as it was
                log.exception("unexpected error in the residency heartbeat")
                self.answered, self.problem = False, f"{self._decider()}: the heartbeat failed; see the proxy's log"
            await asyncio.sleep(max(0.0, HEARTBEAT_S - (loop.time() - started)))

    async def beat(self) -> None:
        """One heartbeat: this worker's busy and used models out, the snapshot in. Models used since a beat that
        failed are told with the next one."""
        used, self.used = self.used, set()
        sent = asyncio.get_running_loop().time()
        try:
            status, body = await self._post("/v1/residency", {"busy": self.busy(), "used": sorted(used)}, True)
            if status != 200:
                raise self._refused(status, body, "a heartbeat")
            self.apply(body, sent)
        except ProxyError as err:
            self.used |= used
            if self.answered or self.problem != str(err):
                log.warning("%s; the proxy is not ready until it answers", err)
            self.answered, self.problem = False, str(err)
            return
        if not self.answered:
            log.info("the residency decider at RESIDENCY_URL=%s answers", self.url)
        self.answered, self.problem = True, ""

    def apply(self, snapshot: dict[str, Any], sent: float) -> None:
        """Take the decider's snapshot, answered to a heartbeat sent at `sent` (loop time): a load this worker saw
        answered after that is newer than the snapshot, so the model stays resident here."""
        listed = snapshot.get("models")
        if not isinstance(listed, dict):
            raise UpstreamError(f"{self._decider()} answered a heartbeat without its models")
        models: dict[str, Residence] = {}
        for name, entry in listed.items():
            if isinstance(entry, dict):
                measured = entry.get("bytes")
                models[str(name)] = Residence(
                    str(entry.get("state", NOT_RESIDENT)),
                    int(measured) if isinstance(measured, int | float) else None,
                    entry.get("problem") or None,
                )
        for name, at in list(self._confirmed.items()):
            if at > sent:
                models[name] = Residence(RESIDENT, models[name].bytes if name in models else None)
            else:
                del self._confirmed[name]
        self.models = models
        self._set_resident({name for name, residence in models.items() if residence.state == RESIDENT})

    # --- waiting for a load ----------------------------------------------------------------------------------
    async def ensure(self, name: str, deadline: float) -> bool:
        """Until `name` is loaded (the decider said so), within `deadline` (loop time): one call per model in this
        worker at a time, shared by its waiting requests; `no_room` asked again every NO_ROOM_RETRY_S while the
        deadline leaves time for another try, then raised. A call that ran out of the time of the request that
        started it is followed by one of this request's own when its deadline is later. Whether a call it waited
        for loaded the model (it was not in Triton: its interface may have changed meanwhile)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            call, expires = self._calls.get(name) or self._call(name, deadline)
            try:
                async with asyncio.timeout_at(deadline):
                    return await asyncio.shield(call)
            except TimeoutError:
                waited = (loop.time() - started) * 1000
                raise DeadlineExceeded(
                    f"the deadline passed after {waited:.0f} ms waiting for model {name} to load"
                ) from None
            except DeadlineExceeded:
                if expires >= deadline:
                    raise
                continue  # the call carried an earlier request's deadline: this one may still wait
            except NoRoom as err:
                if deadline - loop.time() <= NO_ROOM_RETRY_S:
                    waited = (loop.time() - started) * 1000
                    raise NoRoom(f"{err} (asked for {waited:.0f} ms)") from None
            await asyncio.sleep(NO_ROOM_RETRY_S)

    def _call(self, name: str, deadline: float) -> tuple[asyncio.Task[bool], float]:
        """Start the model's one load call, carrying `deadline`."""
        call = asyncio.get_running_loop().create_task(self._load(name, deadline))
        call.add_done_callback(lambda done: self._call_done(name, done))
        self._calls[name] = call, deadline
        return call, deadline

    def evicted(self, name: str) -> None:
        """Triton says `name` is not loaded (unloaded since the last heartbeat): not resident until heard again."""
        self._confirmed.pop(name, None)
        if name in self.resident:
            residence = self.models.get(name)
            self.models[name] = Residence(NOT_RESIDENT, residence.bytes if residence else None)
            self._set_resident(self.resident - {name})

    async def until_resident(self, name: str) -> None:
        """Until the decider says `name` is loaded (a heartbeat's snapshot, or a load this worker asked for)."""
        while name not in self.resident:
            await self._changed.wait()

    def _set_resident(self, resident: set[str]) -> None:
        if resident != self.resident:
            self.resident = resident
            self._changed.set()
            self._changed = asyncio.Event()

    def _call_done(self, name: str, call: asyncio.Task[bool]) -> None:
        if name in self._calls and self._calls[name][0] is call:
            del self._calls[name]
        if not call.cancelled():
            call.exception()  # retrieved here: every waiter may have left before it ended

    async def _load(self, name: str, deadline: float) -> bool:
        """One `POST /v1/residency/{name}` for a request that waits until `deadline` (loop time), told to the decider
        as `deadline_s` and lasting as long, plus the connection: returns once the model is loaded (whether this
        call loaded it), or raises the decider's reason."""
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise DeadlineExceeded(f"the deadline passed before model {name}'s load was asked for")
        payload = {"busy": self.busy(), "deadline_s": round(remaining, 3)}
        try:
            async with asyncio.timeout(remaining + self.connect_timeout_s):
                status, body = await self._post(f"/v1/residency/{quote(name, safe='')}", payload)
        except TimeoutError:
            raise DeadlineExceeded(
                f"{self._decider()} did not load model {name} within the {remaining * 1000:.0f} ms asked"
            ) from None
        if status == 200:
            measured = body.get("bytes")
            self.models[name] = Residence(RESIDENT, int(measured) if isinstance(measured, int | float) else None)
            self._confirmed[name] = loop.time()
            self._set_resident(self.resident | {name})
            return body.get("loaded") is True
        code, message = _code(body), _message(body)
        if status == 503 and code == "no_room":
            raise NoRoom(f"no room to load model {name}: {message}")
        if status == 507:
            raise OverMemoryBudget(message)
        if status == 502:
            raise LoadFailed(f"model {name} could not be loaded: {message}")
        if status == 404:
            raise NotReady(f"model {name} is not served: {message}")
        if status == 504 and code == "deadline_exceeded":
            raise DeadlineExceeded(f"{self._decider()} did not get to model {name}'s load in time: {message}")
        if status == 503:
            raise UpstreamUnavailable(f"{self._decider()} cannot load model {name} now: {message}")
        raise self._refused(status, body, f"loading model {name}")

    def _refused(self, status: int, body: dict[str, Any], what: str) -> ProxyError:
        """The decider's answer to a call it did not do: a refused key (401) is the proxy's configuration, not
        the decider's failure."""
        if status == 401:
            given = "set here, but not the watcher's" if self.headers else "not set here"
            return UpstreamUnavailable(
                f"{self._decider()} refused {what}: RESIDENCY_KEY is missing or wrong ({given}): {_message(body)}"
            )
        return UpstreamError(f"{self._decider()} answered {status} to {what}: {_message(body)}")

    async def _post(self, path: str, payload: dict[str, Any], heartbeat: bool = False) -> tuple[int, dict[str, Any]]:
        """The decider's status and JSON object answer (empty when it is not one); unreachable is 503."""
        assert self.session is not None
        timeout = self.heartbeat_timeout if heartbeat else self.load_timeout
        try:
            async with self.session.post(self.url + path, json=payload, timeout=timeout) as response:
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = None
                return response.status, body if isinstance(body, dict) else {}
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            raise UpstreamUnavailable(
                f"{self._decider()} did not answer: {type(err).__name__}{f': {err}' if str(err) else ''}"
            ) from None

    def _decider(self) -> str:
        return f"the residency decider at RESIDENCY_URL={self.url}"


def _code(body: dict[str, Any]) -> str:
    error = body.get("error")
    return str(error.get("code", "")) if isinstance(error, dict) else ""


def _message(body: dict[str, Any]) -> str:
    error = body.get("error")
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return "no error message"
