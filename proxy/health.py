"""Liveness and readiness: `/healthz` never asks Triton; `/readyz` asks it, at most once per `READY_CACHE_S`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np
from aiohttp import web

from nexusml.core.probe import probe_shape
from proxy.errors import NotReady, ProxyError, UpstreamBusy
from proxy.middleware import dumps
from proxy.state import STATE, ProxyState

READY_CACHE_S = 1.0


@dataclass
class Readiness:
    """The last readiness answer and when it was found, shared by the requests of one worker."""

    checked_at: float = -1.0
    error: ProxyError | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


READINESS = web.AppKey("readiness", Readiness)


async def healthz(request: web.Request) -> web.Response:
    """Alive: the event loop answers. Never asks Triton, so a Triton outage does not restart the proxy."""
    return web.json_response({"status": "ok"}, dumps=dumps)


async def readyz(request: web.Request) -> web.Response:
    """Ready: Triton live, the model ready, and (with READY_PROBE) a probe inference answered."""
    state, readiness = request.app[STATE], request.app[READINESS]
    if state.draining:
        raise NotReady("the proxy is shutting down")
    loop = asyncio.get_running_loop()
    async with readiness.lock:
        if loop.time() - readiness.checked_at > READY_CACHE_S:
            readiness.error = await check_ready(state)
            readiness.checked_at = loop.time()
    if readiness.error is not None:
        raise readiness.error
    assert state.schema is not None
    return web.json_response(
        {"status": "ready", "model": state.schema.name, "versions": list(state.schema.versions)}, dumps=dumps
    )


async def check_ready(state: ProxyState) -> ProxyError | None:
    """Why the proxy is not ready, or None when it is."""
    schema, upstream = state.schema, state.upstream
    if schema is None or upstream is None:
        return NotReady(state.schema_problem)
    if not await upstream.live():
        return NotReady(f"Triton at {state.settings.model_server_url} is not live")
    if not await upstream.model_ready(schema.name, state.settings.model_version):
        return NotReady(f"model {schema.name} is not ready in Triton")
    if state.settings.ready_probe:
        # Shaped as every probe is (nexusml.core.probe): a preferred batch size, which Triton runs at once.
        preferred = schema.preferred_batch_sizes
        arrays = {
            spec.name: np.zeros(probe_shape(spec.shape, schema.max_batch_size, preferred), spec.dtype)
            for spec in schema.inputs
        }
        deadline = asyncio.get_running_loop().time() + state.settings.connect_timeout_s
        try:
            await upstream.infer(schema, state.settings.model_version, arrays, deadline)
        except UpstreamBusy:
            pass  # a full queue is a busy model, not a broken one: leaving the pool now would cascade
        except ProxyError as err:
            return NotReady(f"model {schema.name} does not answer a probe inference: {err}")
    return None
