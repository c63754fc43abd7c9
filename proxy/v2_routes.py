"""The Open Inference Protocol's (KServe v2) routes: thin handlers over `proxy.v2`'s pure parsing, on the same
inference path as `/predict` (`proxy.inference`)."""

from __future__ import annotations

import importlib.metadata

from aiohttp import web

from proxy import v2
from proxy.health import healthz, model_ready, readyz
from proxy.inference import check_encoding, predicting
from proxy.middleware import JSON, MODEL, dumps
from proxy.schema import ModelSchema
from proxy.state import STATE, ModelState
from proxy.validation import Prediction

_VERSION = importlib.metadata.version("nexusml-dataplane")  # reported by GET /v2


def named(request: web.Request) -> ModelState:
    """The model the route names, if it is served; else the protocol's 404 (`model_not_found`)."""
    model = request.app[STATE].model(request.match_info["name"])
    request[MODEL] = model.label
    return model


def served(request: web.Request) -> tuple[ModelState, ModelSchema]:
    """The model the route names and its schema, if it is served (and has the version named); else the
    protocol's 404 (`model_not_found` for a model, `not_found` for a version), or 503 while it loads."""
    model = named(request)
    schema = model.schema
    if schema is None:
        raise model.not_ready()
    v2.check_version(schema, request.match_info.get("version"))
    return model, schema


async def server_metadata(request: web.Request) -> web.Response:
    return web.json_response(v2.server_metadata(_VERSION), dumps=dumps)


async def model_metadata(request: web.Request) -> web.Response:
    return web.json_response(v2.model_metadata(served(request)[1]), dumps=dumps)


async def model_config(request: web.Request) -> web.Response:
    return web.json_response(v2.model_config(served(request)[1]), dumps=dumps)


async def ready(request: web.Request) -> web.Response:
    """The server ready: the same check as /readyz."""
    await readyz(request)
    return web.Response(status=200)


async def ready_model(request: web.Request) -> web.Response:
    """One model ready: Triton live, the model ready there, and (with READY_PROBE) a probe inference answered."""
    model, _ = served(request)
    await model_ready(request, model)
    return web.Response(status=200)


async def infer(request: web.Request) -> web.Response:
    """An inference; with a memory budget, the version it names is checked against the schema read once the
    model is loaded (`proxy.inference.predicting`) when it is not now: the schema kept from its last load may be
    older than the versions it comes back with."""
    check_encoding(request)
    state = request.app[STATE]
    version = request.match_info.get("version")
    residency = state.residency
    if residency is None:
        model, _ = served(request)
    else:
        model = named(request)
        if model.schema is not None and model.name in residency.resident:
            v2.check_version(model.schema, version)  # before the body is read, as without a budget
    header_length = request.headers.get(v2.HEADER_LENGTH)
    max_dim = state.settings.max_dynamic_dim

    def parse(body: bytes, schema: ModelSchema) -> tuple[Prediction, v2.InferRequest]:
        v2.check_version(schema, version)  # the schema the request is served with (read again after a load)
        parsed = v2.parse_infer(body, header_length, schema, max_dim)
        return parsed.prediction, parsed

    schema, parsed, outputs, version = await predicting(request, model, parse)
    body, json_length = v2.infer_response(outputs, schema, parsed, version)
    if json_length is None:
        return web.Response(body=body, content_type=JSON)
    return web.Response(body=body, content_type=v2.BINARY, headers={v2.HEADER_LENGTH: str(json_length)})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/v2", server_metadata)
    router.add_get("/v2/health/live", healthz, allow_head=True)
    router.add_get("/v2/health/ready", ready, allow_head=True)
    models = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")
    for model in models:  # first: aiohttp tries the routes under /v2/models in the order they were added
        router.add_post(f"{model}/infer", infer)
    for model in models:
        router.add_get(model, model_metadata)
        router.add_get(f"{model}/config", model_config)
        router.add_get(f"{model}/ready", ready_model, allow_head=True)
