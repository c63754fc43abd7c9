"""What one worker shares between its requests, and what it keeps per served model.

`ProxyState` is the worker's: settings, the upstream client (with its shared memory), MAX_IN_FLIGHT's places
shared by the tenants, draining, metrics, and the served models by name (`models`). MAX_IN_FLIGHT is the worker's,
not a model's: it bounds what the worker holds in memory and sends upstream, whichever model a request is for.
A `ModelState` is one served model's: its schema, its coalescer (so its batches and deadlines are its own), the version
Triton last answered with, and its own `send`. With a memory budget (`RESIDENCY_URL`) the worker also has its view of
which models are loaded (`residency`, `proxy.residency`), and a model's state says whether it is. `ProxyState` lives
under the typed key `STATE` of its app (`proxy.app.create_app`), so two apps in one process (tests) never share
anything. Models are added and removed, and their schemas set through `ModelState.serve`, by the loader
(`proxy.model_loader`) only.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from aiohttp import web

from proxy.client import Outputs, Upstream
from proxy.coalesce import Coalescer
from proxy.errors import ModelNotFound, NotReady, Overloaded, OverShare, ProxyError
from proxy.metrics import Metrics
from proxy.pacing import Pacer
from proxy.residency import NOT_RESIDENT, RESIDENT, Residence, Residency
from proxy.schema import ModelSchema
from proxy.settings import ProxySettings
from proxy.stacked import Tensor
from proxy.tenants import Tenant, weighted_share

LOADING, READY, FAILED = "loading", "ready", "failed"  # and, with a memory budget, NOT_RESIDENT


@dataclass(eq=False)
class ModelState:
    """One served model. `problem` says why it is not ready (it names the model); `failed` marks a problem that
    is not "not there yet" (Triton has the model but the proxy cannot serve it), still retried."""

    name: str
    worker: ProxyState
    schema: ModelSchema | None = None  # None until read from Triton; then the one served
    problem: str = ""
    failed: bool = False
    coalescer: Coalescer | None = None
    version_seen: str = ""  # the version Triton last answered with (GET /v1/models)
    in_flight: int = 0  # its predictions in progress: a removed model's coalescer is closed once none is left
    loaded: asyncio.Event = field(default_factory=asyncio.Event)  # set once its first schema is in
    reading: asyncio.Task[ModelSchema] | None = None  # its schema's read from Triton in progress, shared
    label: str = field(init=False)  # its `model` label value in the metrics

    def __post_init__(self) -> None:
        self.problem = self.problem or f"model {self.name}: metadata not read from Triton yet"
        metrics = self.worker.metrics
        self.label = metrics.model_label(self.name)
        self._rows = metrics.batch_rows.labels(self.label)
        self._latency = metrics.upstream_latency.labels(self.label)

    @property
    def state(self) -> str:
        """ready, loading (its schema not read yet) or failed (read, but not servable); with a memory budget
        also not_resident (not loaded in Triton now; its schema, once read, is kept), and loading or failed as the
        decider says while it loads the model or could not."""
        residence = self.residence
        if residence is not None and residence.state != RESIDENT:
            return residence.state if residence.state in (NOT_RESIDENT, FAILED) else LOADING
        if self.schema is not None:
            return READY
        return FAILED if self.failed else LOADING

    @property
    def residence(self) -> Residence | None:
        """The decider's last word on this model; None without a memory budget, or before it said any."""
        residency = self.worker.residency
        return None if residency is None else residency.models.get(self.name)

    def not_ready(self) -> NotReady:
        return NotReady(self.problem)

    def serve(self, schema: ModelSchema) -> None:
        """Serve `schema` from now on: the first one read makes the coalescer (when on and the model batches),
        a later one (a new version the watcher put live) gives it that version's limits."""
        first = self.schema is None
        self.schema = schema
        self.failed = False
        self.loaded.set()
        settings = self.worker.settings
        if not (settings.coalesce and schema.batched):
            return
        max_rows, slots = coalescing_limits(settings, schema)
        if self.coalescer is not None:
            self.coalescer.reconfigure(max_rows, slots, schema.preferred_batch_sizes)
        elif first:
            metrics = self.worker.metrics
            self.coalescer = Coalescer(
                self.send,
                max_rows=max_rows,
                slots=slots,
                max_wait_s=settings.coalesce_max_wait_ms / 1000,
                preferred=schema.preferred_batch_sizes,
                on_padding=metrics.padded_rows.inc,
                aging_s=settings.priority_max_wait_ms / 1000,
                on_wait=lambda tenant, seconds: metrics.tenant_queue_wait(tenant.name, seconds),
            )

    async def send(
        self, arrays: dict[str, Tensor], rows: int, deadline: float, level: int = 0, request_id: str = ""
    ) -> tuple[Outputs, str]:
        """One upstream inference, measured; `level` is its priority level (0: the model's default)."""
        worker = self.worker
        assert worker.upstream is not None and self.schema is not None
        self._rows.observe(rows)
        started = time.perf_counter()
        try:
            outputs, version = await worker.upstream.infer(
                self.schema, worker.settings.model_version, arrays, deadline, request_id, level
            )
        except ProxyError as err:
            worker.metrics.upstream_errors.labels(err.code, self.label).inc()
            raise
        finally:
            self._latency.observe(time.perf_counter() - started)
        self.version_seen = version
        return outputs, version

    def coalescing(self) -> str:
        """How its requests are merged, in words for the log."""
        if self.coalescer is None:
            return "off"
        return (
            f"on ({self.coalescer.slots} batches in flight, up to {self.coalescer.max_rows} rows, "
            f"shaped to preferred sizes {list(self.coalescer.preferred) or 'none'})"
        )


@dataclass
class ProxyState:
    """Everything one worker shares between requests."""

    settings: ProxySettings
    worker: int = 0
    upstream: Upstream | None = None
    models: dict[str, ModelState] = field(default_factory=dict)  # the served models by name
    default: ModelState | None = None  # the model `POST /predict` answers for, when there is one
    # Whether, without DEFAULT_MODEL, `POST /predict` is the only model's: not with a directory of metadata, where
    # "the only one" changes as files come and go (the loader decides it with the models).
    implicit_default: bool = True
    # Why no model is known (which models to serve is not decided yet, or nothing names one); None once decided.
    problem: str | None = "which models to serve is not decided yet"
    problems: list[str] = field(default_factory=list)  # metadata files that name no usable model: one line each
    held: frozenset[str] = frozenset()  # names two metadata files claim: served as they were, neither file used
    in_flight: int = 0  # predictions in progress, bodies still arriving included
    admitted: int = 0  # of those, past their body: the ones MAX_IN_FLIGHT bounds
    admitted_by: dict[str, int] = field(default_factory=dict)  # `admitted` per tenant name, those with any
    weights: dict[str, float] = field(default_factory=dict)  # their weights (the latest seen)
    pacer: Pacer = field(init=False)  # of those, the ones worked on at once (MAX_ACTIVE), shared by weight
    draining: bool = False
    residency: Residency | None = None  # with RESIDENCY_URL: which models are loaded, and the decider's client
    metrics: Metrics = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = Metrics(in_flight=lambda: self.in_flight)
        self.pacer = Pacer(self.settings.max_active)

    def add_model(self, name: str) -> ModelState:
        """Serve `name` from now on (loading until its schema is in)."""
        model = self.models[name] = ModelState(name, self)
        self._choose_default()
        return model

    def remove_model(self, name: str) -> ModelState | None:
        """Stop serving `name`: new requests for it are answered 404; those in flight keep their `ModelState`."""
        model = self.models.pop(name, None)
        self._choose_default()
        return model

    def _choose_default(self) -> None:
        name = self.settings.default_model
        if name:
            self.default = self.models.get(name)
        elif self.implicit_default and len(self.models) == 1:
            self.default = next(iter(self.models.values()))
        else:
            self.default = None

    def model(self, name: str) -> ModelState:
        """The served model `name`, or `ModelNotFound` (a name the proxy does not serve)."""
        model = self.models.get(name)
        if model is None:
            raise ModelNotFound(f"unknown model {name!r}; this proxy serves {self.served()}")
        return model

    def no_default(self) -> ProxyError:
        """Why `POST /predict` has no model (`default` is None): none known yet, or none that is the default."""
        if not self.settings.default_model and not self.implicit_default:
            return ModelNotFound(
                f"NEXUS_META_PATH is a directory of models ({self.served()}) and DEFAULT_MODEL is not set: "
                "POST /models/{name}/predict, or set DEFAULT_MODEL"
            )
        if not self.models:
            return NotReady(self.problem or "no model to serve")
        if self.settings.default_model:
            return ModelNotFound(
                f"DEFAULT_MODEL={self.settings.default_model} is not served; this proxy serves {self.served()}"
            )
        return ModelNotFound(
            f"this proxy serves {len(self.models)} models ({self.served()}) and DEFAULT_MODEL is not set: "
            "POST /models/{name}/predict, or set DEFAULT_MODEL"
        )

    def served(self) -> str:
        return ", ".join(sorted(self.models)) or "no model"

    def busy(self) -> list[str]:
        """The models with predictions in progress in this worker (waiting for a load included)."""
        return [name for name, model in self.models.items() if model.in_flight]

    def admit(self, tenant: Tenant) -> None:
        """Take one of MAX_IN_FLIGHT's places for `tenant`, or raise `Overloaded` (`OverShare`).

        Places are shared by weight among the tenants holding any: at the limit, a tenant below its share
        (`MAX_IN_FLIGHT * weight / the weights of the tenants in progress`) still gets one, so a flood that
        holds every place is refused and the others are not; a tenant alone may take them all. The total
        therefore exceeds MAX_IN_FLIGHT by at most the places of tenants below their share. Tenants are counted
        by name with their latest weight, so a keys file reloaded meanwhile does not count a team twice.
        """
        limit = self.settings.max_in_flight
        name = tenant.name
        held = self.admitted_by.get(name, 0)
        self.weights[name] = tenant.weight
        if self.admitted >= limit:
            share = weighted_share(limit, tenant.weight, self.weights.values())
            if held >= share:
                if held == self.admitted:  # alone: the whole proxy is its share
                    raise Overloaded(f"{limit} predictions already in progress")
                self.metrics.tenant_rejected(name, "over_share")
                raise OverShare(
                    f"{limit} predictions already in progress, {held} of them tenant {name}'s, "
                    f"over its share of {share:.0f}"
                )
        self.admitted += 1
        self.admitted_by[name] = held + 1

    def release(self, tenant: Tenant) -> None:
        """Give back a place `admit` took."""
        self.admitted -= 1
        name = tenant.name
        held = self.admitted_by[name] - 1
        if held:
            self.admitted_by[name] = held
        else:
            del self.admitted_by[name]
            del self.weights[name]


def coalescing_limits(settings: ProxySettings, schema: ModelSchema) -> tuple[int, int]:
    """(rows per merged batch, batches in flight): the settings, else what the model's config says."""
    return (
        min(settings.coalesce_max_rows or schema.max_batch_size, schema.max_batch_size),
        settings.coalesce_max_batches or schema.instance_count,
    )


STATE = web.AppKey("state", ProxyState)
