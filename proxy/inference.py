"""The path every inference route shares (readiness, in-flight accounting, the body, the deadline, the model's
load with a memory budget, the upstream call, coalesced or not), and the proxy's own routes on it: `POST /predict`
(the default model) and `POST /models/{name}/predict`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from aiohttp import web

from proxy.client import Outputs
from proxy.errors import (
    BadRequest,
    BodyTimeout,
    DeadlineExceeded,
    ModelNotLoaded,
    NotReady,
    PayloadTooLarge,
    UnsupportedEncoding,
    UnsupportedMediaType,
)
from proxy.middleware import DEADLINE, JSON, LOAD_WAIT_MS, MODEL, REQUEST_ID
from proxy.model_loader import read_schema
from proxy.schema import ModelSchema
from proxy.settings import ProxySettings
from proxy.state import STATE, ModelState
from proxy.tenants import TENANCY, TENANT
from proxy.validation import Prediction, predict_from_body, response_body

Parsed = TypeVar("Parsed")


async def predict(request: web.Request) -> web.Response:
    """`POST /predict`: the default model's (`DEFAULT_MODEL`, else the only one served)."""
    state = request.app[STATE]
    model = state.default
    if model is None:
        raise state.no_default()
    return await predict_with(request, model)


async def predict_named(request: web.Request) -> web.Response:
    """`POST /models/{name}/predict`: `/predict` for the model the path names."""
    return await predict_with(request, request.app[STATE].model(request.match_info["name"]))


async def predict_with(request: web.Request, model: ModelState) -> web.Response:
    request[MODEL] = model.label
    check_headers(request)
    max_dim = request.app[STATE].settings.max_dynamic_dim

    def parse(body: bytes, schema: ModelSchema) -> tuple[Prediction, Prediction]:
        prediction = predict_from_body(body, schema, max_dim)
        return prediction, prediction

    schema, prediction, outputs, version = await predicting(request, model, parse)
    return web.Response(
        body=response_body(outputs, schema, prediction),
        content_type=JSON,
        headers={"X-Model-Name": schema.name, "X-Model-Version": version},
    )


async def predicting(
    request: web.Request, model: ModelState, parse: Callable[[bytes, ModelSchema], tuple[Prediction, Parsed]]
) -> tuple[ModelSchema, Parsed, Outputs, str]:
    """What every inference route shares: readiness, the in-flight bookkeeping, the body, the deadline, and
    the upstream call (coalesced or not) of `model`. `parse` turns the body into validated arrays for `schema`.

    With a memory budget, a model not loaded (or whose schema was never read) is loaded first, within the
    deadline (`wait_for_model`), once the body is in and before a MAX_IN_FLIGHT place is taken: requests waiting
    for a load hold none. A model Triton says is not loaded (unloaded since the last heartbeat) is loaded again,
    once, its place given back while it waits; the body is parsed again if the load brought a new schema."""
    state = request.app[STATE]
    settings = state.settings
    if state.draining:
        raise NotReady("the proxy is shutting down")
    schema = model.schema
    residency = state.residency
    if residency is None:
        if schema is None:
            raise model.not_ready()
        waiting = False
    else:
        residency.used.add(model.name)
        waiting = schema is None or model.name not in residency.resident
    state.in_flight += 1  # in progress from here (the gauge, and what a graceful shutdown waits for)
    model.in_flight += 1  # what a removed model's coalescer waits for before it closes
    state.metrics.in_flight_changed(1)
    tenant = request[TENANT]
    admitted = paced = False
    try:
        deadline = request_deadline(request)
        body = await read_body(request, settings)
        parsed_with: ModelSchema | None = None
        retried = False
        while True:
            if waiting:
                schema = await wait_for_model(request, model, deadline)
            assert schema is not None
            # A MAX_IN_FLIGHT place is taken only once the body is in: clients still uploading (slowly, maybe on
            # purpose) hold none, so they cannot make everyone else's requests 429. Reading is bounded by
            # BODY_TIMEOUT_S and MAX_BODY_BYTES instead. It is taken before the parse, so a refusal costs none, and
            # so does a wait for the tenant's turn among the MAX_ACTIVE predictions worked on at once.
            state.admit(tenant)
            admitted = True
            waited = await state.pacer.acquire(tenant, deadline)
            paced = True
            if waited:
                state.metrics.tenant_pace_wait(tenant.name, waited)
            if schema != parsed_with:  # the first parse, or a load brought another interface
                prediction, parsed = parse(body, schema)
                if parsed_with is None:
                    request.app[TENANCY].charge_rows(tenant, prediction.rows)
                    state.metrics.tenant_request(tenant.name, prediction.rows)
                parsed_with = schema
            try:
                coalescer = model.coalescer
                if coalescer is not None:
                    outputs, version = await coalescer.submit(prediction.arrays, prediction.rows, deadline, tenant)
                else:
                    outputs, version = await model.send(
                        prediction.arrays, prediction.rows, deadline, tenant.level, request[REQUEST_ID]
                    )
                return schema, parsed, outputs, version
            except ModelNotLoaded:
                if residency is None or retried:
                    raise
                retried = waiting = True
                residency.evicted(model.name)
                state.pacer.release(tenant)  # no place is held while waiting for a load
                state.release(tenant)
                admitted = paced = False
    finally:
        if paced:
            state.pacer.release(tenant)
        if admitted:
            state.release(tenant)
        state.in_flight -= 1
        model.in_flight -= 1
        state.metrics.in_flight_changed(-1)


async def wait_for_model(request: web.Request, model: ModelState, deadline: float) -> ModelSchema:
    """Have the decider load `model` (`Residency.ensure`), within `deadline`, then read its schema if it never was,
    or again if the decider loaded it now (a new version may have been put live while it was not loaded, with
    another interface); the wait is counted, and told to the client (`Nexus-Load-Wait-Ms`), whatever it ends in."""
    state = request.app[STATE]
    assert state.residency is not None
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        loaded = await state.residency.ensure(model.name, deadline)
        schema = model.schema
        if schema is None or loaded:
            try:
                async with asyncio.timeout_at(deadline):
                    schema = await read_schema(state, model)
            except TimeoutError:
                raise DeadlineExceeded(f"the deadline passed reading model {model.name}'s metadata") from None
        return schema
    finally:
        waited = loop.time() - started
        request[LOAD_WAIT_MS] = request.get(LOAD_WAIT_MS, 0) + round(waited * 1000)
        state.metrics.load_waited(model.label, waited)


def check_headers(request: web.Request) -> None:
    headers = request.headers
    if headers.get("Content-Type") == JSON and "Content-Encoding" not in headers:
        return  # the common request, without parsing its media type's parameters
    content_type = request.content_type
    if content_type != JSON and not content_type.endswith("+json"):
        raise UnsupportedMediaType(f"Content-Type must be application/json, not {content_type!r}")
    charset = request.charset
    if charset and charset.lower() not in ("utf-8", "utf8"):
        raise UnsupportedMediaType(f"charset must be utf-8, not {charset!r}")
    check_encoding(request)


def check_encoding(request: web.Request) -> None:
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedEncoding(f"Content-Encoding {encoding!r} is not supported; send the body uncompressed")


async def read_body(request: web.Request, settings: ProxySettings) -> bytes:
    """Read at most `MAX_BODY_BYTES`, whatever Content-Length says, within `BODY_TIMEOUT_S`."""
    limit = settings.max_body_bytes
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"the body has {declared} bytes; the limit is {limit}")
    content = request.content
    if declared is not None and content.is_eof() and content.total_bytes == declared:
        return content.read_nowait()  # arrived with the head (the common small body): no timer needed
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(settings.body_timeout_s):
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTimeout(f"the body did not arrive within {settings.body_timeout_s:g} s") from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def request_deadline(request: web.Request) -> float:
    """The request's deadline; a client may shorten it with `X-Request-Timeout-Ms`, never lengthen it."""
    deadline: float = request[DEADLINE]
    asked = request.headers.get("X-Request-Timeout-Ms")
    if asked is not None:
        try:
            value = float(asked)
        except ValueError:
            raise BadRequest("X-Request-Timeout-Ms must be a number of milliseconds") from None
        if not 0 < value < float("inf"):
            raise BadRequest("X-Request-Timeout-Ms must be positive")
        deadline = min(deadline, asyncio.get_running_loop().time() + value / 1000)
    return deadline
