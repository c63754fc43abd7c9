"""The app factory: `create_app(settings)` wires the proxy's pieces into one aiohttp application, and nothing else.

Each worker's state lives under typed `web.AppKey`s of its app (`STATE`, `READINESS`, `OPENAPI`), opened and
closed by a `cleanup_ctx`, so two apps in one process (tests) never share anything. The pieces: the state
(`proxy.state`) and the model loader (`proxy.model_loader`), the middleware (`proxy.middleware`), and the
handlers: `/predict` (`proxy.inference`), the v2 protocol (`proxy.v2_routes`), health (`proxy.health`), and
what the proxy says about itself (`proxy.introspection`).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy import health, introspection, v2_routes
from proxy.inference import predict
from proxy.introspection import OPENAPI, OPENAPI_PATH
from proxy.middleware import middleware
from proxy.model_loader import upstream_ctx
from proxy.settings import ProxySettings
from proxy.state import STATE, ProxyState

__all__ = ["OPENAPI_PATH", "create_app", "server_options"]

LINGER_S = 1.0


def create_app(settings: ProxySettings, worker: int = 0) -> web.Application:
    """The proxy for one worker process; `worker` only labels its logs."""
    app = web.Application(middlewares=[middleware(settings)], client_max_size=settings.max_body_bytes)
    app[STATE] = ProxyState(settings, worker)
    app[health.READINESS] = health.Readiness()
    app[OPENAPI] = OPENAPI_PATH.read_bytes()
    app.cleanup_ctx.append(upstream_ctx)
    app.router.add_post("/predict", predict)
    app.router.add_get("/healthz", health.healthz, allow_head=True)
    app.router.add_get("/readyz", health.readyz, allow_head=True)
    app.router.add_get("/metrics", introspection.metrics)
    app.router.add_get("/v1/models", introspection.models)
    app.router.add_get("/openapi.yaml", introspection.openapi)
    v2_routes.add_routes(app.router)
    return app


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
