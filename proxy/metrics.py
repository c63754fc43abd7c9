"""The proxy's Prometheus metrics, on prometheus-client; `/metrics` shows the whole pod, whichever worker answers.

What is counted: HTTP requests by route template, status and model (`nexus_proxy_requests_total`) and their
latency by route and model (`nexus_proxy_request_duration_seconds`); predictions in progress
(`nexus_proxy_in_flight`, the HPA's custom metric); and, per call to Triton, by model, its latency
(`nexus_proxy_upstream_duration_seconds`), its rows (`nexus_proxy_upstream_batch_rows`) and its failures by error
code (`nexus_proxy_upstream_errors_total`). `model` is the served model a request named or `/predict` chose, empty
for the routes of no model and for names the proxy does not serve (a client's name never becomes a label); a
worker gives at most `MODEL_LABELS` distinct model names their own value, the others share `_other`.
Per tenant: predictions admitted past their body and their rows (`nexus_proxy_tenant_requests_total`,
`nexus_proxy_tenant_rows_total`), refusals by cause (`nexus_proxy_tenant_rejected_total`: `rate_requests`, `rate_rows`,
`over_share`), time waited for a place among MAX_ACTIVE's (`nexus_proxy_tenant_pace_wait_seconds`, only the waits) and
in the coalescer (`nexus_proxy_tenant_queue_wait_seconds`), and keys files refused on reload
(`nexus_proxy_tenants_reload_errors_total`). With a memory budget (`RESIDENCY_URL`), the predictions that waited for
their model to load, by model (`nexus_model_load_waits_total`), and how long they waited
(`nexus_model_load_wait_seconds`, whatever the wait ended in). Label values come from bounded sets (route templates, so
unmatched paths are one `unmatched` series; status codes; the proxy's own error codes; tenant names, which come from the
operator's keys file, never from a client), never from what a client sends, so a client cannot grow the number of
series. No `_created` series are exported.

One worker (`PROXY_WORKERS=1`): each `Metrics` owns a `CollectorRegistry` (tests build many apps in one
process, and the global default registry would refuse the same name twice) with the usual process,
platform and GC collectors.

Several workers: prometheus-client's multiprocess mode. `proxy.server.serve` creates a fresh private
directory and names it in `PROMETHEUS_MULTIPROC_DIR` before it spawns the workers; prometheus-client reads
that variable when it is imported and then keeps every value in a per-process file there. A scrape, on any
worker, reads all the files and sums them, so every scrape shows the pod's totals and no series carries a
worker label; `nexus_proxy_in_flight` is summed over live workers only (`livesum`; the parent drops a
worker's file when it exits). This mode is on exactly when that variable is set, as prometheus-client
decides. Its limitation: the process, platform and GC collectors do not work across processes, so with
several workers `process_*` and `python_*` series are not exported.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)  # a model's load: seconds
MODEL_LABELS = 100  # distinct model label values per worker; later models share OTHER_MODELS
OTHER_MODELS = "_other"
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

disable_created_metrics()


class Metrics:
    """Everything one worker measures; `render()` is the body of `/metrics`, of type `content_type`."""

    content_type = CONTENT_TYPE_PLAIN_0_0_4  # the text format every Prometheus scrapes

    def __init__(self, in_flight: Callable[[], int] = lambda: 0) -> None:
        directory = os.environ.get(MULTIPROC_DIR_ENV)
        self.multiprocess = bool(directory)
        # Multiprocess: values live in files, not in a registry; a scrape reads the files (all workers').
        own = None if self.multiprocess else CollectorRegistry()
        self.requests = Counter(
            "nexus_proxy_requests_total",
            "HTTP requests by route, status and model",
            ("route", "status", "model"),
            registry=own,
        )
        self.latency = Histogram(
            "nexus_proxy_request_duration_seconds",
            "time from request to response",
            ("route", "model"),
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        self.upstream_errors = Counter(
            "nexus_proxy_upstream_errors_total",
            "failed Triton calls by error code and model",
            ("code", "model"),
            registry=own,
        )
        self.upstream_latency = Histogram(
            "nexus_proxy_upstream_duration_seconds",
            "Triton inference calls, by model",
            ("model",),
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        self.batch_rows = Histogram(
            "nexus_proxy_upstream_batch_rows",
            "rows per inference request sent to Triton, by model",
            ("model",),
            buckets=BATCH_BUCKETS,
            registry=own,
        )
        self.padded_rows = Counter(
            "nexus_proxy_padded_rows_total",
            "rows the coalescer added to reach one of Triton's preferred batch sizes (computed, then dropped)",
            registry=own,
        )
        self.in_flight = Gauge(
            "nexus_proxy_in_flight", "predictions in progress", multiprocess_mode="livesum", registry=own
        )
        # One process: the gauge reads the worker's own counter when scraped, so a request costs it nothing.
        # Several: each worker's value must be in its file, so it moves with every request.
        if not self.multiprocess:
            self.in_flight.set_function(in_flight)
        self.tenant_requests = Counter(
            "nexus_proxy_tenant_requests_total",
            "predictions admitted past their body, by tenant",
            ("tenant",),
            registry=own,
        )
        self.tenant_rows = Counter(
            "nexus_proxy_tenant_rows_total", "rows of the predictions admitted, by tenant", ("tenant",), registry=own
        )
        self.tenant_rejections = Counter(
            "nexus_proxy_tenant_rejected_total",
            "predictions refused with 429 by tenant and cause (rate_requests, rate_rows, over_share)",
            ("tenant", "cause"),
            registry=own,
        )
        self.tenant_queue_waits = Histogram(
            "nexus_proxy_tenant_queue_wait_seconds",
            "time a prediction waited in the coalescer before it was sent, by tenant",
            ("tenant",),
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        self.tenant_pace_waits = Histogram(
            "nexus_proxy_tenant_pace_wait_seconds",
            "time a prediction above its tenant's share waited for one of MAX_ACTIVE's places, by tenant",
            ("tenant",),
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        self.tenants_reload_errors = Counter(
            "nexus_proxy_tenants_reload_errors_total",
            "changed keys files refused (the previous table stays in force)",
            registry=own,
        )
        self.load_waits = Counter(
            "nexus_model_load_waits_total",
            "predictions that waited for their model to be loaded (memory budget), by model",
            ("model",),
            registry=own,
        )
        self.load_wait_seconds = Histogram(
            "nexus_model_load_wait_seconds",
            "time a prediction waited for its model to be loaded (memory budget), by model",
            ("model",),
            buckets=LOAD_BUCKETS,
            registry=own,
        )
        # (route, status, model) -> the two labelled children, so the per-request cost is one dict lookup; the
        # same for the per-tenant series, keyed by tenant name (and cause).
        self._per_route: dict[tuple[str, int, str], tuple[Counter, Histogram]] = {}
        self._models: set[str] = set()
        self._per_tenant: dict[str, tuple[Counter, Counter]] = {}
        self._rejected: dict[tuple[str, ...], Counter] = {}
        self._queue_wait: dict[tuple[str, ...], Histogram] = {}
        self._pace_wait: dict[tuple[str, ...], Histogram] = {}
        if own is None:
            self.registry = CollectorRegistry()
            MultiProcessCollector(self.registry, path=directory)
        else:
            self.registry = own
            ProcessCollector(registry=own)
            PlatformCollector(registry=own)
            GCCollector(registry=own)

    def in_flight_changed(self, delta: int) -> None:
        """A prediction started (+1) or ended (-1); only the multiprocess gauge needs telling."""
        if self.multiprocess:
            self.in_flight.inc(delta)

    def model_label(self, name: str) -> str:
        """The `model` label value of served model `name`: its name, for the first `MODEL_LABELS` names this worker
        served (a model removed keeps its place: its series stay), `_other` beyond."""
        if name in self._models or len(self._models) < MODEL_LABELS:
            self._models.add(name)
            return name
        return OTHER_MODELS

    def request_done(self, route: str, status: int, elapsed: float, model: str = "") -> None:
        """One answered request: `route` is a route template (or `unmatched`), never a client's path; `model` a
        `model_label` value, or empty."""
        children = self._per_route.get((route, status, model))
        if children is None:
            children = self._per_route[route, status, model] = (
                self.requests.labels(route, str(status), model),
                self.latency.labels(route, model),
            )
        children[0].inc()
        children[1].observe(elapsed)

    def tenant_request(self, name: str, rows: int) -> None:
        """A prediction of tenant `name` admitted past its body, with its `rows`."""
        children = self._per_tenant.get(name)
        if children is None:
            children = self._per_tenant[name] = (self.tenant_requests.labels(name), self.tenant_rows.labels(name))
        children[0].inc()
        children[1].inc(rows)

    def tenant_rejected(self, name: str, cause: str) -> None:
        """A prediction of tenant `name` refused with 429; `cause` is rate_requests, rate_rows or over_share."""
        _child(self._rejected, self.tenant_rejections, name, cause).inc()

    def tenant_queue_wait(self, name: str, seconds: float) -> None:
        """How long a prediction of tenant `name` waited in the coalescer before it was sent."""
        _child(self._queue_wait, self.tenant_queue_waits, name).observe(seconds)

    def tenant_pace_wait(self, name: str, seconds: float) -> None:
        """How long a prediction of tenant `name` waited for a place to be worked on (only waits are observed)."""
        _child(self._pace_wait, self.tenant_pace_waits, name).observe(seconds)

    def load_waited(self, model: str, seconds: float) -> None:
        """A prediction of `model` (a `model_label` value) waited `seconds` for its model to be loaded."""
        self.load_waits.labels(model).inc()
        self.load_wait_seconds.labels(model).observe(seconds)

    def tenant_reload_failed(self) -> None:
        """A changed keys file was refused; the previous table stays in force."""
        self.tenants_reload_errors.inc()

    def render(self) -> bytes:
        """The exposition: this worker's figures, or with several workers the sum of all of theirs."""
        return generate_latest(self.registry)


def _child(cache: dict[tuple[str, ...], Any], metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, looked up once per label values: a dict lookup per request after the first."""
    child = cache.get(labels)
    if child is None:
        child = cache[labels] = metric.labels(*labels)
    return child
