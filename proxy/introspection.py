"""What the proxy says about itself: the model it serves (`/v1/models`), its metrics, its API document."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from nexusml.core.probe import candidate_name
from proxy.errors import NotReady, ProxyError
from proxy.middleware import dumps
from proxy.state import STATE

OPENAPI_PATH = Path(__file__).with_name("openapi.yaml")
OPENAPI = web.AppKey("openapi", bytes)


async def models(request: web.Request) -> web.Response:
    """The served model, the version serving it, and during a model update the version being tried."""
    state = request.app[STATE]
    if state.schema is None:
        raise NotReady(state.schema_problem)
    assert state.upstream is not None
    described = state.schema.describe()
    described["served_version"] = state.version_seen or (state.schema.versions[-1] if state.schema.versions else None)
    described["trying_version"] = None
    candidate = candidate_name(state.schema.name)
    try:
        if await state.upstream.model_ready(candidate, ""):
            tried = await state.upstream.schema(candidate, "")
            described["trying_version"] = tried.versions[-1] if tried.versions else None
    except ProxyError:
        pass  # no candidate, or Triton busy: nothing is being tried that the proxy can see
    return web.json_response({"models": [described]}, dumps=dumps)


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.Response(body=state.metrics.render(), headers={"Content-Type": state.metrics.content_type})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/yaml")
