"""Which models Triton holds in memory, within `MODEL_MEMORY_BUDGET`: the one decider, in `nexus watch`.

Models load on their first request (a proxy worker asks: `ensure`), at start when pinned, or when they were the most
recently used before a restart (`warm`). When loading one would exceed the budget, the least recently used models
with no request in flight or queued (the proxies' heartbeats say which: `heartbeat`) are unloaded first. Memory is
what the models' stubs measure and report (`nexusml.core.memory`), never a guess from the file; before a model's
first load its cost is estimated from the largest stub measured so far (`estimate`), and a model that cannot fit
even alone is refused with the figures.

One process decides, so two loads never race for the same room: `ensure` holds the lock every load and unload of the
watcher's takes (`TritonAdmin.lock`: a swap or a scaling also changes what Triton holds), while heartbeats and
snapshots take only a short one. Loads and unloads go through Triton's gRPC repository API, which leaves inference
answering meanwhile (docs/decisions.md). The API (`serve_api`) is small JSON over HTTP; its routes and error codes are
in docs/api.md. Triton unreachable is said once and retried: it never ends the watcher.

What an unload gives back is the stub's private pages, not its PSS: its share of the pages all stubs map (torch's
libraries) moves to the stubs that stay. Room is counted that way (`Measured.private`), so the budget holds before the
stubs that stay have reported again.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from prometheus_client import CollectorRegistry, Counter, Gauge

from nexusml.core.errors import ModelLoadFailed, NexusError
from nexusml.core.memory import Memory, mib, read_reports, report_dir
from nexusml.core.settings import RESIDENCY_HEADER
from nexusml.sync.repository import Repository
from nexusml.updates.swap import Swapper, served_version

log = logging.getLogger(__name__)

STATE_FILE = ".nexus_residency.json"
BUSY_FOR_S = 2.0  # a proxy's "busy" lasts this long: four of its heartbeats
FRESH_S = 5.0  # a stub rewrites its report every second: older ones are of stubs gone
FIRST_STUB_BYTES = 512 * 2**20  # one stub's guess before any stub has been measured (torch alone is ~300 MB)
SETTLE_S = 10.0  # how long a load waits for its stubs' reports, and an unload for its stubs to go
RETRY_FAILED_S = 30.0  # a model whose load failed is not tried again sooner (a stub start per request otherwise)
REMEMBER_EVERY_S = 10.0
_HOLDING = ("READY", "LOADING", "UNLOADING")  # Triton's states of a model whose stubs may still run


class ResidencyError(NexusError):
    """A model could not be made resident."""


class UnknownModel(ResidencyError):
    """No such model in the repository."""

    code = "model_not_found"


class OverBudget(ResidencyError):
    """The model cannot fit in the budget even alone."""

    code = "over_memory_budget"


class NoRoom(ResidencyError):
    """Every resident model is busy or pinned now: asked again, it may fit."""

    code = "no_room"


class LoadFailed(ResidencyError, ModelLoadFailed):
    """Triton could not load the model (its reason in the message)."""

    code = "model_load_failed"


class TooLate(ResidencyError):
    """The caller's deadline passed before the decider got to its call (loads are one at a time)."""

    code = "deadline_exceeded"


# The API's answer to each failure (the proxy answers its clients the same for the same code).
HTTP_STATUS: dict[type[NexusError], int] = {
    UnknownModel: 404,
    OverBudget: 507,
    NoRoom: 503,
    LoadFailed: 502,
    TooLate: 504,
    NexusError: 503,
}


@dataclass
class Entry:
    """What the decider knows of one model, resident or not."""

    memory: Memory | None = None  # measured (PSS) for `version`; None before its first load
    version: str | None = None
    last_used: float | None = None  # time.time() of its last request a proxy reported
    busy_until: float = 0.0
    loads: int = 0
    evictions: int = 0
    last_load_s: float | None = None
    problem: str | None = None
    failed_at: float | None = None  # time.monotonic() of its last failed load
    loading: bool = False

    def failed_lately(self) -> bool:
        """Its last load failed less than RETRY_FAILED_S ago: not tried again yet."""
        return self.failed_at is not None and time.monotonic() - self.failed_at < RETRY_FAILED_S


@dataclass(frozen=True)
class Measured:
    """The loaded models' memory by their stubs' fresh reports: PSS (what they hold, shares of shared pages
    included), what unloading each would give back (`private`), and the version each serves."""

    held: dict[str, Memory]
    private: dict[str, Memory]
    versions: dict[str, str]


class ResidencyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.loads = Counter("nexus_residency_loads", "models loaded to serve a request", ["model"], registry=registry)
        self.evictions = Counter(
            "nexus_residency_evictions", "models unloaded to make room", ["model"], registry=registry
        )
        self.used = Gauge("nexus_residency_used_bytes", "memory the loaded models hold, measured", registry=registry)
        self.budget = Gauge("nexus_residency_budget_bytes", "MODEL_MEMORY_BUDGET", registry=registry)


class Residency:
    """The budget's decider over one Triton and its repository."""

    def __init__(
        self,
        budget: int,
        pinned: tuple[str, ...],
        swapper: Swapper,
        registry: CollectorRegistry,
        reports: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.budget = budget
        self.pinned = set(pinned)
        self.swapper = swapper
        self.repo: Repository = swapper.repo
        self.lock: threading.RLock = swapper.admin.lock  # held while Triton's set of loaded models changes
        self.mutex = threading.Lock()  # held briefly, for the entries
        self.reports = reports or report_dir(self.repo.root)
        self.clock = clock
        self.entries: dict[str, Entry] = {}
        self.reservations: dict[str, Memory] = {}  # room held for the watcher's swaps and scalings (`room_for`)
        self.uninstalled: dict[str, str] = {}  # models the watcher could not install: why (`not_installed`)
        self.metrics = ResidencyMetrics(registry)
        self.metrics.budget.set(budget)
        self._remembered_at = 0.0
        self._told: str | None = None
        try:
            # The stubs report only while this directory exists: made here, so without a budget nothing is measured.
            self.reports.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            log.error("memory reports directory %s not made (%s): memory is estimated, not measured", self.reports, err)

    def entry(self, name: str) -> Entry:
        with self.mutex:
            return self.entries.setdefault(name, Entry())

    # What proxies tell and ask

    def heartbeat(self, busy: Sequence[str], used: Sequence[str]) -> None:
        """A proxy worker's news; names the repository does not hold are ignored (no entry grows from a typo)."""
        models = set(self.repo.models())
        now = self.clock()
        with self.mutex:
            for name in set(busy) & models:
                self.entries.setdefault(name, Entry()).busy_until = now + BUSY_FOR_S
            for name in set(used) & models:
                self.entries.setdefault(name, Entry()).last_used = now

    def ensure(self, name: str, busy: Sequence[str] = (), deadline_s: float | None = None) -> dict[str, Any]:
        """Make `name` resident, unloading the least recently used idle models first when the budget needs it.

        Loads are one at a time: concurrent calls for one model wait on the same lock and the later ones find it
        loaded; a call whose caller stopped waiting (`deadline_s`, seconds from now) meanwhile is dropped."""
        started = time.monotonic()
        if name not in self.repo.models():
            with self.mutex:
                cause = self.uninstalled.get(name)
            # Not installed: the proxy answers 503 not_ready, as for a model not installed yet, with the cause.
            raise UnknownModel(cause or f"model {name} is not in the repository {self.repo.root}")
        self.heartbeat(busy, [name])
        if name in self.loaded():
            return self._answer(name, False, started)
        with self.lock:
            if deadline_s is not None and time.monotonic() - started > deadline_s:
                raise TooLate(f"model {name}: its caller's deadline passed while other loads went first")
            if name in self.loaded():
                return self._answer(name, False, started)
            entry = self.entry(name)
            if entry.failed_lately():
                raise LoadFailed(entry.problem or f"loading {name} failed")
            need = self.estimate(name)
            measured_before = self._measured_for(name)
            if not need.within(self.budget) and (measured_before or self._weights(name) > self.budget):
                what = "measured at its last load" if measured_before else "its served version's files alone"
                entry.problem = (
                    f"model {name} needs {need} ({what}), more than MODEL_MEMORY_BUDGET={mib(self.budget)} even alone"
                )
                raise OverBudget(entry.problem)
            if not measured_before:
                need = self._room_at_most(name, need)
            self._make_room(name, need)
            self._load(name, entry)
            if entry.memory is not None and not (entry.memory + self._pinned_cost(name)).within(self.budget):
                self._evict(name, "because it holds more than the budget leaves it")
                entry.problem = (
                    f"model {name} holds {entry.memory} once loaded (measured), more than "
                    f"MODEL_MEMORY_BUDGET={mib(self.budget)} leaves beside the pinned models"
                )
                raise OverBudget(entry.problem)
            return self._answer(name, True, started)

    def _answer(self, name: str, loaded: bool, started: float) -> dict[str, Any]:
        return {
            "name": name,
            "state": "resident",
            "bytes": _total(self.entry(name).memory),
            "loaded": loaded,
            "waited_s": round(time.monotonic() - started, 3),
        }

    # Memory

    def loaded(self) -> list[str]:
        """The repository's models Triton holds ready now (candidates are not the repository's)."""
        models = set(self.repo.models())
        return [name for name in self.swapper.admin.ready() if name in models]

    def measured(self) -> Measured:
        now = self.clock()
        held: dict[str, Memory] = {}
        private: dict[str, Memory] = {}
        versions: dict[str, str] = {}
        for name, reports in read_reports(self.reports).items():
            for report in reports:
                if now - report.written <= FRESH_S:
                    held[name] = held.get(name, Memory()) + report.memory
                    private[name] = private.get(name, Memory()) + Memory(report.private_bytes, report.device_bytes)
                    versions[name] = report.version
        return Measured(held, private, versions)

    def _served_version(self, name: str) -> str | None:
        version = served_version(self.repo, name)
        return None if version is None else str(version)

    def _measured_for(self, name: str) -> bool:
        """Whether `name`'s memory was measured for the version it serves now (a new version may differ)."""
        entry = self.entry(name)
        return entry.memory is not None and entry.version == self._served_version(name)

    def _note(self, name: str, measured: Measured) -> None:
        if name in measured.held:
            entry = self.entry(name)
            entry.memory, entry.version = measured.held[name], measured.versions[name]

    def cost(self, name: str, measured: Measured) -> Memory:
        """A loaded model's memory: measured now, else at its load, else estimated."""
        if name in measured.held:
            return measured.held[name]
        return self.estimate(name)

    def estimate(self, name: str) -> Memory:
        """What loading `name` will cost: measured at its last load of the version it serves; else one stub per
        instance as large as the largest stub measured (each holds torch) plus the weights it reads (on the device
        too, on a GPU)."""
        entry = self.entry(name)
        if entry.memory is not None and self._measured_for(name):
            return entry.memory
        stubs = [report for reports in read_reports(self.reports).values() for report in reports]
        host = max((r.host_bytes for r in stubs), default=FIRST_STUB_BYTES)
        device = max((r.device_bytes for r in stubs), default=0)
        weights = self._weights(name)
        per_stub = Memory(host + weights, device + weights if device else 0)
        return per_stub * (self.swapper.instances(name) or 1)

    def _weights(self, name: str) -> int:
        """The served version's files (the repository keeps older versions too)."""
        version = self._served_version(name)
        if version is None:
            return 0
        with contextlib.suppress(OSError):
            folder = self.repo.version_dir(name, int(version))
            return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
        return 0

    def used(self, loaded: list[str] | None = None, measured: Measured | None = None) -> Memory:
        """What the loaded models hold together."""
        measured = self.measured() if measured is None else measured
        loaded = self.loaded() if loaded is None else loaded
        return sum((self.cost(name, measured) for name in loaded), Memory())

    # Loading and unloading

    def _room_at_most(self, name: str, guess: Memory) -> Memory:
        """A guess (never measured) is no reason to refuse for good: it is held to what the pinned models leave of
        the budget (busy ones leave room later: `no_room` is asked again), and the model is measured once loaded."""
        pinned = self._pinned_cost(name)
        room = Memory(self.budget - pinned.host, self.budget - pinned.device)
        if room.host <= 0:
            return guess
        return Memory(min(guess.host, room.host), min(guess.device, max(room.device, 0)))

    def _pinned_cost(self, exclude: str) -> Memory:
        measured = self.measured()
        return sum((self.cost(m, measured) for m in self.loaded() if m in self.pinned and m != exclude), Memory())

    def _reserved(self, exclude: str = "") -> Memory:
        """Room a swap or a scaling of the watcher has made and not used yet (`room_for`)."""
        with self.mutex:
            return sum((m for name, m in self.reservations.items() if name != exclude), Memory())

    def _make_room(self, name: str, need: Memory) -> None:
        """Unload the least recently used idle model, chosen afresh each time (one may have turned busy meanwhile),
        until `need` more fits; each unload counts what it gives back (its private pages), not its PSS."""
        loaded = self.loaded()
        measured = self.measured()
        used = self.used(loaded, measured) + self._reserved(name)
        while not (used + need).within(self.budget):
            idle = self._evictable(loaded, exclude=name)
            if not idle:
                raise NoRoom(
                    f"model {name} needs {need}; {used} of MODEL_MEMORY_BUDGET={mib(self.budget)} is held by models "
                    "busy or pinned now"
                )
            victim = idle[0]
            self._evict(victim, f"to make room for {name}")
            loaded.remove(victim)
            used -= measured.private.get(victim, self.cost(victim, measured))

    def _evictable(self, loaded: list[str], exclude: str = "") -> list[str]:
        """Loaded models neither pinned nor busy, least recently used first."""
        now = self.clock()
        with self.mutex:
            idle = [
                model
                for model in loaded
                if model != exclude and model not in self.pinned and self.entries.get(model, Entry()).busy_until <= now
            ]
            return sorted(idle, key=lambda model: self.entries.get(model, Entry()).last_used or 0.0)

    def _evict(self, name: str, why: str) -> None:
        started = time.monotonic()
        entry = self.entry(name)
        self.swapper.admin.unload(name)
        # Triton answers the unload at once; the stubs finalize (their reports go) seconds later, and hold their
        # memory until they have exited, which Triton waits for before it calls the model unloaded.
        self._wait(lambda: self.swapper.admin.states().get(name) not in _HOLDING)
        entry.evictions += 1
        self.metrics.evictions.labels(name).inc()
        log.info(
            "%s unloaded %s (%s; idle since %s; %.1f s)",
            name,
            why,
            entry.memory or "memory not measured",
            time.strftime("%H:%M:%S", time.localtime(entry.last_used)) if entry.last_used else "never used",
            time.monotonic() - started,
        )

    def _load(self, name: str, entry: Entry) -> None:
        started = time.monotonic()
        entry.loading = True
        try:
            self.swapper.admin.load(name)
        except ModelLoadFailed as err:
            entry.failed_at, entry.problem = time.monotonic(), str(err)
            log.error("%s could not be loaded: %s; not tried again for %g s", name, err, RETRY_FAILED_S)
            raise LoadFailed(str(err)) from err
        finally:
            entry.loading = False
        self._wait(lambda: name in self.measured().held)
        measured = self.measured()
        self._note(name, measured)
        entry.failed_at, entry.problem = None, None
        entry.loads += 1
        entry.last_load_s = round(time.monotonic() - started, 3)
        self.metrics.loads.labels(name).inc()
        used = self.used(measured=measured)
        self.metrics.used.set(used.peak)
        log.info(
            "%s loaded in %.1f s (%s; %s of MODEL_MEMORY_BUDGET=%s in use)",
            name,
            entry.last_load_s,
            entry.memory or "memory not reported by its stubs",
            used,
            mib(self.budget),
        )

    def _wait(self, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + SETTLE_S
        while not done() and time.monotonic() < deadline:
            time.sleep(0.05)

    # What the watcher's polls do

    def enforce(self) -> list[str]:
        """Unload idle models while the loaded ones hold more than the budget (a swap or a scaling can add memory
        the decider did not place); returns those unloaded. Also forgets removed models and remembers which models
        were used last. Triton unreachable is said once; the next poll tries again."""
        evicted = []
        try:
            with self.lock:
                loaded = self.loaded()
                measured = self.measured()
                for name in loaded:
                    self._note(name, measured)
                used = self.used(loaded, measured)
                self.metrics.used.set(used.peak)
                for name in self._evictable(loaded):
                    if used.within(self.budget):
                        break
                    self._evict(name, f"because the loaded models held {used}")
                    used -= measured.private.get(name, self.cost(name, measured))
                    evicted.append(name)
                models = set(self.repo.models())
                self._load_pinned(models - set(loaded))
            with self.mutex:
                self.entries = {name: entry for name, entry in self.entries.items() if name in models}
        except NexusError as err:
            self._tell(f"memory budget not enforced this poll: {err}")
            return evicted
        self._told = None
        if time.monotonic() - self._remembered_at > REMEMBER_EVERY_S:
            self.remember()
        return evicted

    def room_for(self, name: str, extra: Memory) -> bool:
        """Whether `extra` more memory for `name` (more instances, a new version beside the old) fits, unloading idle
        models for it; False also when Triton does not answer. The room is held for `name` (no request's load takes
        it) until `release`: the watcher loads later, outside the decider's lock, after a download."""
        try:
            with self.lock:
                self._make_room(name, extra)
                with self.mutex:
                    self.reservations[name] = extra
        except NexusError:
            return False
        return True

    def not_installed(self, name: str, cause: str | None) -> None:
        """The watcher could not install a model the repository does not hold (`cause`), or holds nothing against it
        any more (None). Listed as failed with its cause, so that the proxies say why rather than "loading"."""
        with self.mutex:
            if cause is None:
                self.uninstalled.pop(name, None)
            else:
                self.uninstalled[name] = cause

    def release(self, name: str) -> None:
        """The swap or scaling that `room_for` made room for is over: what it loaded is measured from now on."""
        with self.mutex:
            self.reservations.pop(name, None)

    def settle_new(self, name: str) -> None:
        """A model the watcher just installed and loaded to test it: unloaded again when idle, so that only traffic
        brings it in (its memory, measured meanwhile, is remembered for its first load); a busy one stays (`enforce`
        unloads it once idle, if the budget needs it)."""
        try:
            with self.lock:
                self._note(name, self.measured())
                entry = self.entry(name)
                if entry.memory is not None and not entry.memory.within(self.budget):
                    entry.problem = (
                        f"model {name} holds {entry.memory} once loaded (measured at its install), more than "
                        f"MODEL_MEMORY_BUDGET={mib(self.budget)} even alone: it is not served"
                    )
                    log.error("%s", entry.problem)
                    self._evict(name, "because it holds more than the budget alone")
                elif name in self._evictable([name]):
                    self._evict(name, "after its install (it loads on its first request)")
        except NexusError as err:
            self._tell(f"{name} left loaded after its install: {err}")

    def warm(self) -> None:
        """At start: the pinned models (Triton loaded them), then the most recently used before the restart, in that
        order, while they fit without unloading anything. Triton unreachable: said, and left to traffic."""
        for name, remembered in self._recall().items():
            entry = self.entry(name)
            if entry.memory is None and isinstance(remembered.get("memory"), list):
                entry.memory, entry.version = Memory(*remembered["memory"]), remembered.get("version")
            entry.last_used = entry.last_used or remembered.get("last_used")
        try:
            with self.lock:
                self._load_pinned(set(self.repo.models()) - set(self.loaded()))
                models = set(self.repo.models()) - set(self.loaded())
                recent = sorted((n for n in models if self.entry(n).last_used), key=lambda n: -self.entry(n).last_used)
                for name in recent:
                    if not (self.used() + self.estimate(name)).within(self.budget):
                        break
                    with contextlib.suppress(LoadFailed):
                        self._load(name, self.entry(name))
        except NexusError as err:
            self._tell(f"models not loaded at start: {err}")

    def _load_pinned(self, unloaded: set[str]) -> None:
        """The pinned models among `unloaded` (at start, and each poll: one that failed is tried again after
        RETRY_FAILED_S, as `heal` does without a budget)."""
        for name in sorted(self.pinned & unloaded):
            entry = self.entry(name)
            if entry.failed_lately():
                continue
            with contextlib.suppress(LoadFailed):
                self._load(name, entry)

    def remember(self) -> None:
        """Each model's measured memory (with its version) and last use, in the repository (it outlives the
        watcher)."""
        self._remembered_at = time.monotonic()
        with self.mutex:
            state = {
                name: {
                    "memory": [entry.memory.host, entry.memory.device] if entry.memory else None,
                    "version": entry.version,
                    "last_used": entry.last_used,
                }
                for name, entry in self.entries.items()
                if entry.memory is not None or entry.last_used is not None
            }
        path = self.repo.root / STATE_FILE
        temporary = path.with_name(f".{STATE_FILE}.tmp")
        try:
            temporary.write_text(json.dumps(state, indent=1, sort_keys=True))
            temporary.replace(path)
        except OSError as err:
            log.warning("which models were used last not remembered in %s: %s", path, err)

    def _recall(self) -> dict[str, dict[str, Any]]:
        with contextlib.suppress(OSError, ValueError):
            raw = json.loads((self.repo.root / STATE_FILE).read_text())
            if isinstance(raw, dict):
                return {str(k): v for k, v in raw.items() if isinstance(v, dict)}
        return {}

    def _tell(self, message: str) -> None:
        if message != self._told:
            log.warning("%s", message)
            self._told = message

    def snapshot(self) -> dict[str, Any]:
        loaded = set(self.loaded())
        measured = self.measured()
        held = set(self.repo.models())
        with self.mutex:
            uninstalled = {name: cause for name, cause in self.uninstalled.items() if name not in held}
        listing = {name: _not_installed(cause, name in self.pinned) for name, cause in uninstalled.items()}
        for name in sorted((held | set(self.entries)) - set(uninstalled)):
            entry = self.entry(name)
            if entry.loading:
                state = "loading"
            elif name in loaded:
                state = "resident"
            elif entry.failed_lately() or entry.problem:
                state = "failed"
            else:
                state = "not_resident"
            memory = measured.held.get(name, entry.memory)
            listing[name] = {
                "state": state,
                "bytes": _total(memory),
                "host_bytes": None if memory is None else memory.host,
                "device_bytes": None if memory is None else memory.device,
                "pinned": name in self.pinned,
                "last_used": entry.last_used,
                "loads": entry.loads,
                "evictions": entry.evictions,
                "last_load_s": entry.last_load_s,
                "problem": entry.problem,
            }
        used = self.used(list(loaded), measured)
        return {"budget_bytes": self.budget, "used_bytes": used.peak, "models": dict(sorted(listing.items()))}


def _not_installed(cause: str, pinned: bool) -> dict[str, Any]:
    """A snapshot's line for a model the watcher could not install: nothing of it loaded or measured."""
    return {
        "state": "failed",
        "bytes": None,
        "host_bytes": None,
        "device_bytes": None,
        "pinned": pinned,
        "last_used": None,
        "loads": 0,
        "evictions": 0,
        "last_load_s": None,
        "problem": cause,
    }


def _total(memory: Memory | None) -> int | None:
    return None if memory is None else memory.host + memory.device


def serve_api(residency: Residency, host: str, port: int, key: str | None = None) -> ThreadingHTTPServer:
    """The decider's HTTP API on `host:port`, in threads of its own (a load holds its request for seconds). With
    `key` (RESIDENCY_KEY) every request must carry it in RESIDENCY_HEADER: the model code Triton runs shares the
    pod's loopback, and must not be able to make loads thrash."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._handle(lambda body: self._get())

        def do_POST(self) -> None:
            self._handle(self._post)

        def _get(self) -> dict[str, Any]:
            if self.path.rstrip("/") != "/v1/residency":
                raise _NoRoute(self.path)
            return residency.snapshot()

        def _post(self, body: dict[str, Any]) -> dict[str, Any]:
            if self.path.rstrip("/") == "/v1/residency":
                residency.heartbeat(_names(body, "busy"), _names(body, "used"))
                return residency.snapshot()
            prefix = "/v1/residency/"
            if not self.path.startswith(prefix) or "/" in self.path[len(prefix) :]:
                raise _NoRoute(self.path)
            deadline = body.get("deadline_s")
            if deadline is not None and not isinstance(deadline, int | float):
                raise ValueError("'deadline_s' must be a number of seconds")
            return residency.ensure(unquote(self.path[len(prefix) :]), _names(body, "busy"), deadline)

        def _handle(self, route: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
            """Every failure is a JSON error with a stable code: the proxy reads the code, never a dropped
            connection."""
            try:
                if key is not None and not hmac.compare_digest(self.headers.get(RESIDENCY_HEADER, ""), key):
                    return self._error(401, "unauthorized", f"the {RESIDENCY_HEADER} header is missing or wrong")
                self._answer(200, route(self._body()))
            except _NoRoute as err:
                self._error(404, "not_found", f"no route {err}")
            except ValueError as err:
                self._error(400, "bad_request", str(err))
            except NexusError as err:
                status = next(HTTP_STATUS[c] for c in type(err).__mro__ if c in HTTP_STATUS)
                self._error(status, err.code, str(err))
            except Exception as err:  # a bug of ours: said with its trace, answered all the same
                log.exception("residency API: %s %s failed", self.command, self.path)
                self._error(500, "internal_error", f"{type(err).__name__}: {err}")

        def _body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b"{}"
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            return body

        def _error(self, status: int, code: str, message: str) -> None:
            self._answer(status, {"error": {"code": code, "message": message}})

        def _answer(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("residency API: " + format, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="residency-api", daemon=True).start()
    return server


class _NoRoute(Exception):
    pass


def _names(body: dict[str, Any], key: str) -> list[str]:
    names = body.get(key, [])
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError(f"{key!r} must be a list of model names")
    return names
