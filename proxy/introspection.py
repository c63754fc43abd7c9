"""What the proxy says about itself: the models it serves (`/v1/models`), its tenants (`/v1/tenants`), its metrics,
its API document."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web

from nexusml.core.probe import candidate_name
from proxy.errors import Forbidden, ProxyError
from proxy.middleware import dumps
from proxy.residency import FAILED, NOT_RESIDENT
from proxy.state import STATE, ModelState, ProxyState
from proxy.tenants import SHARE_WINDOW_S, TENANCY, TENANT

OPENAPI_PATH = Path(__file__).with_name("openapi.yaml")
OPENAPI = web.AppKey("openapi", bytes)


async def models(request: web.Request) -> web.Response:
    """Every served model (its schema once read, its state, the version serving it, during a model update the
    version being tried, why it is not ready, with a memory budget the memory it holds or last held), the metadata
    files that name no usable model (`problems`), and whether this worker's tensors reach Triton through shared
    memory (`shared_memory`)."""
    state = request.app[STATE]
    assert state.upstream is not None
    served = sorted(state.models.values(), key=lambda model: model.name)
    described = await asyncio.gather(*(describe(state, model) for model in served))
    problems = list(state.problems)
    if not served and state.problem:
        problems.append(state.problem)
    # How this worker's tensors reach Triton: `active` false means in the message, `detail` says why.
    return web.json_response(
        {"models": described, "problems": problems, "shared_memory": state.upstream.shm.describe()}, dumps=dumps
    )


async def describe(state: ProxyState, model: ModelState) -> dict[str, Any]:
    schema = model.schema
    described: dict[str, Any] = {"name": model.name} if schema is None else schema.describe()
    described["state"] = current = model.state
    described["served_version"] = model.version_seen or (schema.versions[-1] if schema and schema.versions else None)
    described["trying_version"] = None
    described["problem"] = None if schema is not None or current == NOT_RESIDENT else model.problem
    residence = model.residence
    described["memory_bytes"] = None if residence is None else residence.bytes
    if residence is not None and residence.state == FAILED:
        described["problem"] = residence.problem or f"model {model.name}: Triton could not load it"
    if model.name in state.held:
        described["problem"] = (
            f"model {model.name} is named by two metadata files (see problems): served as it was until one goes"
        )
    if schema is None:
        return described
    assert state.upstream is not None
    candidate = candidate_name(model.name)
    try:
        if await state.upstream.model_ready(candidate, ""):
            tried = await state.upstream.schema(candidate, "")
            described["trying_version"] = tried.versions[-1] if tried.versions else None
    except ProxyError:
        pass  # no candidate, or Triton busy: nothing is being tried that the proxy can see
    return described


async def tenants(request: web.Request) -> web.Response:
    """Each tenant's weight, priority, limits and current share, never a key; for admin tenants only.

    With keys, the key must be an admin tenant's (every key of `API_KEYS` is); with no keys at all the proxy has
    one tenant, `default`, and this path is as open as `/v1/models`. Shares are this worker's (the one that
    answered, `worker`): with several workers each sees the connections the kernel gave it.
    """
    tenancy = request.app[TENANCY]
    if tenancy.required and not request[TENANT].admin:
        raise Forbidden(f"tenant {request[TENANT].name} is not an admin tenant; /v1/tenants is for admin tenants")
    return web.json_response(
        {"tenants": tenancy.snapshot(), "worker": request.app[STATE].worker, "window_s": SHARE_WINDOW_S}, dumps=dumps
    )


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.Response(body=state.metrics.render(), headers={"Content-Type": state.metrics.content_type})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/yaml")
