"""The app factory: `create_app(settings)` wires the proxy's pieces into one aiohttp application, and nothing else.

Each worker's state lives under typed `web.AppKey`s of its app (`STATE`, `TENANCY`, `READINESS`, `OPENAPI`),
opened and closed by a `cleanup_ctx`, so two apps in one process (tests) never share anything. The pieces: the
state (`proxy.state`) and the model loader (`proxy.model_loader`), the tenants and the keys file they follow
(`proxy.tenants`), the middleware (`proxy.middleware`), and the handlers: `/predict` and `/models/{name}/predict`
(`proxy.inference`), the v2 protocol (`proxy.v2_routes`), health (`proxy.health`), and what the proxy says about
itself (`proxy.introspection`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy import health, introspection, v2_routes
from proxy.buckets import SharedBuckets
from proxy.inference import predict, predict_named
from proxy.introspection import OPENAPI, OPENAPI_PATH
from proxy.middleware import middleware
from proxy.model_loader import upstream_ctx
from proxy.settings import ProxySettings
from proxy.state import STATE, ProxyState
from proxy.tenants import TENANCY, Tenancy

__all__ = ["OPENAPI_PATH", "create_app", "server_options"]

LINGER_S = 1.0


def create_app(settings: ProxySettings, worker: int = 0, buckets: Path | None = None) -> web.Application:
    """The proxy for one worker process; `worker` only labels its logs, `buckets` is the file of rate-limit
    buckets the workers share (`proxy.buckets`; None: this process's own). A keys file (`API_KEYS_FILE`) that
    cannot be used raises `SettingsError` here, so the worker does not start."""
    state = ProxyState(settings, worker)
    tenancy = Tenancy.from_settings(
        settings.api_keys,
        settings.api_keys_file,
        state.metrics.tenant_reload_failed,
        SharedBuckets(buckets) if buckets is not None else None,
    )
    app = web.Application(middlewares=[middleware(settings, tenancy)], client_max_size=settings.max_body_bytes)
    app[STATE] = state
    app[TENANCY] = tenancy
    app[health.READINESS] = health.Readiness()
    app[OPENAPI] = OPENAPI_PATH.read_bytes()
    app.cleanup_ctx.append(upstream_ctx)
    app.cleanup_ctx.append(tenancy_ctx)
    app.router.add_post("/predict", predict)
    app.router.add_post("/models/{name}/predict", predict_named)
    app.router.add_get("/healthz", health.healthz, allow_head=True)
    app.router.add_get("/readyz", health.readyz, allow_head=True)
    app.router.add_get("/metrics", introspection.metrics)
    app.router.add_get("/v1/models", introspection.models)
    app.router.add_get("/v1/tenants", introspection.tenants)
    app.router.add_get("/openapi.yaml", introspection.openapi)
    v2_routes.add_routes(app.router)
    return app


async def tenancy_ctx(app: web.Application) -> AsyncIterator[None]:
    """aiohttp cleanup context: the tenancy counts time on the event loop's clock (the one the middleware gives
    `admit`), and follows its keys file, if it has one, as long as the app runs."""
    tenancy = app[TENANCY]
    loop = asyncio.get_running_loop()
    tenancy.clock = loop.time
    follower = None if tenancy.path is None else loop.create_task(tenancy.follow(app[STATE].settings.api_keys_poll_s))
    try:
        yield
    finally:
        if follower is not None:
            follower.cancel()


def server_options(settings: ProxySettings) -> dict[str, Any]:
    """Keyword arguments for `web.AppRunner` / `TestServer`: connection-level limits the app cannot set.

    aiohttp's keep-alive timer also runs from a connection's opening until its request head is complete,
    so it doubles as the header read timeout against slow clients. Bodies are not decompressed by
    aiohttp: the proxy accepts identity encoding only, and refuses others with 415 before reading.
    """
    return {
        "keepalive_timeout": settings.header_timeout_s,
        "auto_decompress": False,
        "access_log": None,
        "max_line_size": 8190,
        "max_field_size": 8190,
        # A body left unread (408, 413, 415, ...) is read and discarded for at most LINGER_S after the answer,
        # then the connection closes. Closing at once (no lingering) made the kernel reset the connection
        # while the client was still sending, so a client posting 64 MiB saw a reset, not the 413; aiohttp's
        # default of 10 s let a slow-loris sender hold the connection that long past BODY_TIMEOUT_S.
        "lingering_time": LINGER_S,
        # A client that goes away cancels its handler: its in-flight slot is freed at once, not at its deadline.
        "handler_cancellation": True,
    }
