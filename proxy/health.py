"""Liveness and readiness: `/healthz` never asks Triton; `/readyz` and each model's readiness
(`/v2/models/{name}/ready`) ask it, at most once per `READY_CACHE_S` each. With a memory budget (`RESIDENCY_URL`)
`/readyz` means Triton live and the residency decider answering the worker's heartbeat: with no model pinned
nothing is loaded until traffic comes, and a request for a model not loaded waits for its load."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
from aiohttp import web

from nexusml.core.probe import probe_shape
from proxy.errors import NotReady, ProxyError, UpstreamBusy
from proxy.middleware import dumps
from proxy.state import STATE, ModelState, ProxyState

READY_CACHE_S = 1.0


@dataclass
class Readiness:
    """The last readiness answers and when they were found, shared by the requests of one worker: the proxy's
    (key "") and each model's (its name), with the model that decided the proxy's."""

    checked: dict[str, tuple[float, ProxyError | None, ModelState | None]] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def forget(self, name: str) -> None:
        """Drop a removed model's answers: its own, and the proxy's when that model decided it."""
        self.checked.pop(name, None)
        proxy = self.checked.get("")
        if proxy is not None and proxy[2] is not None and proxy[2].name == name:
            del self.checked[""]


READINESS = web.AppKey("readiness", Readiness)


async def healthz(request: web.Request) -> web.Response:
    """Alive: the event loop answers. Never asks Triton, so a Triton outage does not restart the proxy."""
    return web.json_response({"status": "ok"}, dumps=dumps)


async def readyz(request: web.Request) -> web.Response:
    """Ready: Triton live and a model ready (`check_ready`), with (READY_PROBE) a probe inference."""
    state = request.app[STATE]
    error, model = await cached(request, "", lambda: check_ready(state))
    if error is not None:
        raise error
    assert model is not None
    return web.json_response(
        {
            "status": "ready",
            "model": model.name,
            "versions": list(model.schema.versions) if model.schema is not None else [],
            "models": {name: served.state for name, served in sorted(state.models.items())},
        },
        dumps=dumps,
    )


async def model_ready(request: web.Request, model: ModelState) -> None:
    """`model` ready (Triton live, the model ready there, the probe), or its `NotReady`."""
    state = request.app[STATE]

    async def check() -> tuple[ProxyError | None, ModelState | None]:
        return await check_live(state) or await check_model(state, model), model

    error, _ = await cached(request, model.name, check)
    if error is not None:
        raise error


async def cached(
    request: web.Request, key: str, check: Callable[[], Awaitable[tuple[ProxyError | None, ModelState | None]]]
) -> tuple[ProxyError | None, ModelState | None]:
    """`check`'s answer, asked at most once per READY_CACHE_S per key."""
    state, readiness = request.app[STATE], request.app[READINESS]
    if state.draining:
        raise NotReady("the proxy is shutting down")
    loop = asyncio.get_running_loop()
    async with readiness.lock:
        entry = readiness.checked.get(key)
        if entry is None or loop.time() - entry[0] > READY_CACHE_S:
            error, model = await check()
            entry = (loop.time(), error, model)
            if not key or key in state.models:  # a model removed meanwhile is not remembered
                readiness.checked[key] = entry
    return entry[1], entry[2]


async def check_ready(state: ProxyState) -> tuple[ProxyError | None, ModelState | None]:
    """Why the proxy is not ready (or None), and the model that decided it.

    Ready when Triton is live and any served model is ready: one broken model, the default one included, never
    takes the pod out of service, where the others would still answer. The default model's own readiness is
    `/v2/models/{name}/ready`. The default model is asked first, then those whose schema is in, so a healthy
    proxy costs one model's check. With a memory budget: Triton live and the decider answering the heartbeat
    (the model named is the default one, else the first; it may not be loaded)."""
    if not state.models:
        return NotReady(state.problem or "no model to serve"), None
    live = await check_live(state)
    if live is not None:
        return live, None
    if state.residency is not None:
        if not state.residency.answered:
            return NotReady(state.residency.problem), None
        return None, state.default or state.models[min(state.models)]
    first: ProxyError | None = None
    for model in sorted(state.models.values(), key=lambda m: (m is not state.default, m.schema is None, m.name)):
        error = await check_model(state, model)
        if error is None:
            return None, model
        first = first or error
    if len(state.models) == 1:
        return first, None
    return NotReady(f"none of the {len(state.models)} models served is ready; first: {first}"), None


async def check_live(state: ProxyState) -> ProxyError | None:
    assert state.upstream is not None
    if not await state.upstream.live():
        return NotReady(f"Triton at {state.settings.model_server_url} is not live")
    return None


async def check_model(state: ProxyState, model: ModelState) -> ProxyError | None:
    """Why `model` is not ready (its schema not read, not ready in Triton, no answer to a probe), or None."""
    schema, upstream = model.schema, state.upstream
    if schema is None or upstream is None:
        return model.not_ready()
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
