"""What one worker shares between its requests: the served model, the upstream client, the in-flight counts.

`ProxyState` lives under the typed key `STATE` of its app (`proxy.app.create_app`), so two apps in one process
(tests) never share anything. The model's schema is set through `serve`, by the loader and the follower
(`proxy.model_loader`) only; `serve` also keeps the coalescer's limits those of the schema being served.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web

from proxy.client import Outputs, Upstream
from proxy.coalesce import Coalescer
from proxy.errors import Overloaded, OverShare, ProxyError
from proxy.metrics import Metrics
from proxy.schema import ModelSchema
from proxy.settings import ProxySettings
from proxy.stacked import Tensor
from proxy.tenants import Tenant


@dataclass
class ProxyState:
    """Everything one worker shares between requests."""

    settings: ProxySettings
    worker: int = 0
    upstream: Upstream | None = None
    schema: ModelSchema | None = None  # None until read from Triton; then the one served
    schema_problem: str = "model metadata not read from Triton yet"
    coalescer: Coalescer | None = None
    version_seen: str = ""  # the version Triton last answered with (GET /v1/models)
    in_flight: int = 0  # predictions in progress, bodies still arriving included
    admitted: int = 0  # of those, past their body: the ones MAX_IN_FLIGHT bounds
    admitted_by: dict[str, int] = field(default_factory=dict)  # `admitted` per tenant name, those with any
    weights: dict[str, float] = field(default_factory=dict)  # their weights (the latest seen)
    draining: bool = False
    metrics: Metrics = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = Metrics(in_flight=lambda: self.in_flight)

    def serve(self, schema: ModelSchema) -> None:
        """Serve `schema` from now on: the first one read makes the coalescer (when on and the model batches),
        a later one (a new version the watcher put live) gives it that version's limits."""
        first = self.schema is None
        self.schema = schema
        if not (self.settings.coalesce and schema.batched):
            return
        max_rows, slots = coalescing_limits(self.settings, schema)
        if self.coalescer is not None:
            self.coalescer.reconfigure(max_rows, slots, schema.preferred_batch_sizes)
        elif first:
            self.coalescer = Coalescer(
                self.send,
                max_rows=max_rows,
                slots=slots,
                max_wait_s=self.settings.coalesce_max_wait_ms / 1000,
                preferred=schema.preferred_batch_sizes,
                on_padding=self.metrics.padded_rows.inc,
                aging_s=self.settings.priority_max_wait_ms / 1000,
                on_wait=lambda tenant, seconds: self.metrics.tenant_queue_wait(tenant.name, seconds),
            )

    async def send(
        self, arrays: dict[str, Tensor], rows: int, deadline: float, level: int = 0, request_id: str = ""
    ) -> tuple[Outputs, str]:
        """One upstream inference, measured; `level` is its priority level (0: the model's default)."""
        assert self.upstream is not None and self.schema is not None
        self.metrics.batch_rows.observe(rows)
        started = time.perf_counter()
        try:
            outputs, version = await self.upstream.infer(
                self.schema, self.settings.model_version, arrays, deadline, request_id, level
            )
        except ProxyError as err:
            self.metrics.upstream_errors.labels(err.code).inc()
            raise
        finally:
            self.metrics.upstream_latency.observe(time.perf_counter() - started)
        self.version_seen = version
        return outputs, version

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
            share = limit * tenant.weight / sum(self.weights.values())
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

    def coalescing(self) -> str:
        """How requests are merged, in words for the start-up log."""
        if self.coalescer is None:
            return "off"
        return (
            f"on ({self.coalescer.slots} batches in flight, up to {self.coalescer.max_rows} rows, "
            f"shaped to preferred sizes {list(self.coalescer.preferred) or 'none'})"
        )


def coalescing_limits(settings: ProxySettings, schema: ModelSchema) -> tuple[int, int]:
    """(rows per merged batch, batches in flight): the settings, else what the model's config says."""
    return (
        min(settings.coalesce_max_rows or schema.max_batch_size, schema.max_batch_size),
        settings.coalesce_max_batches or schema.instance_count,
    )


STATE = web.AppKey("state", ProxyState)
