"""The aiohttp application: routes, the one middleware, and the shared upstream client's lifetime.

`create_app(settings)` builds everything from the settings object; the upstream client, the model's
schema and the counters live in one `ProxyState` under a typed `web.AppKey`, opened and closed by a
`cleanup_ctx`, so two apps in one process (tests) never share anything. The model's schema is read from
Triton at start-up and, while Triton is unreachable, retried in the background: the proxy starts and
answers `/healthz` without Triton, and `/readyz` and `/predict` say 503 until the schema is in.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.metadata
import itertools
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson
from aiohttp import web

from nexusml.core import metadata, probe
from nexusml.core.errors import MetadataError, NexusError
from proxy import v2
from proxy.client import Outputs, Upstream, connect
from proxy.coalesce import Coalescer
from proxy.errors import (
    BadRequest,
    BodyTimeout,
    MethodNotAllowed,
    ModelUnknown,
    NotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    ProxyError,
    Unauthorized,
    UnsupportedEncoding,
    UnsupportedMediaType,
    UpstreamBusy,
    UpstreamForbidden,
)
from proxy.metrics import Metrics
from proxy.schema import ModelSchema
from proxy.settings import ProxySettings
from proxy.validation import Prediction, parse_json, response_body, to_prediction

OPENAPI_PATH = Path(__file__).with_name("openapi.yaml")
_VERSION = importlib.metadata.version("nexusml-dataplane")  # reported by GET /v2
READY_CACHE_S = 1.0
SCHEMA_RETRY_S = 1.0
SCHEMA_REFRESH_S = 2.0
LINGER_S = 1.0
CLIENT_GONE = 499  # nginx's status for "client closed the request": counted in metrics, never sent
_REQUEST_ID_FORMAT = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_JSON = "application/json"

access_log = logging.getLogger("proxy.access")
log = logging.getLogger("proxy")


@dataclass
class ProxyState:
    """Everything one worker shares between requests."""

    settings: ProxySettings
    worker: int = 0
    upstream: Upstream | None = None
    schema: ModelSchema | None = None
    schema_problem: str = "model metadata not read from Triton yet"
    coalescer: Coalescer | None = None
    in_flight: int = 0  # predictions in progress, bodies still arriving included
    admitted: int = 0  # of those, past their body: the ones MAX_IN_FLIGHT bounds
    draining: bool = False
    metrics: Metrics = field(init=False)
    ready_at: float = -1.0
    ready_error: ProxyError | None = None
    ready_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    loader: asyncio.Task[None] | None = None
    version_seen: str = ""  # the version Triton last answered with (GET /v1/models)
    follower: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.metrics = Metrics(in_flight=lambda: self.in_flight)

    async def send(
        self, arrays: dict[str, np.ndarray], rows: int, deadline: float, request_id: str = ""
    ) -> tuple[Outputs, str]:
        """One upstream inference, measured."""
        assert self.upstream is not None and self.schema is not None
        self.metrics.batch_rows.observe(rows)
        started = time.perf_counter()
        try:
            outputs, version = await self.upstream.infer(
                self.schema, self.settings.model_version, arrays, deadline, request_id
            )
        except ProxyError as err:
            self.metrics.upstream_errors.labels(err.code).inc()
            raise
        finally:
            self.metrics.upstream_latency.observe(time.perf_counter() - started)
        self.version_seen = version
        return outputs, version

    async def follow_schema(self) -> None:
        """Re-read the schema every `SCHEMA_REFRESH_S`, so validation follows a new version the watcher put live
        (its interface may differ). Two small metadata calls per worker; a failure keeps the schema it has."""
        assert self.upstream is not None
        while True:
            await asyncio.sleep(SCHEMA_REFRESH_S)
            current = self.schema
            if current is None:
                continue
            try:
                fresh = await self.upstream.schema(current.name, self.settings.model_version)
            except ProxyError:
                continue
            if fresh == current:
                continue
            self.schema = fresh
            if self.coalescer is not None and fresh.batched:
                self.coalescer.max_rows, self.coalescer.slots = coalescing_limits(self.settings, fresh)
                self.coalescer.preferred = fresh.preferred_batch_sizes
            log.info("model %s now serves version %s", fresh.name, ",".join(fresh.versions))


def coalescing_limits(settings: ProxySettings, schema: ModelSchema) -> tuple[int, int]:
    """(rows per merged batch, batches in flight): the settings, else what the model's config says."""
    return (
        min(settings.coalesce_max_rows or schema.max_batch_size, schema.max_batch_size),
        settings.coalesce_max_batches or schema.instance_count,
    )


STATE = web.AppKey("state", ProxyState)
OPENAPI = web.AppKey("openapi", bytes)
REQUEST_ID = web.RequestKey("request_id", str)
DEADLINE = web.RequestKey("deadline", float)


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


# --- start-up and shutdown ------------------------------------------------------------------------------
async def _load_schema(state: ProxyState) -> None:
    """Find the model and read its schema from Triton, retrying until it works (or the app stops).

    Each new kind of problem is logged once, so a proxy that can never become ready says why in one line.
    """
    assert state.upstream is not None
    settings = state.settings
    logged: str | None = None
    while True:
        try:
            name = await _model_name(state.upstream, settings)
            state.schema = await state.upstream.schema(name, settings.model_version)
        except Exception as err:  # anything else would end this task silently and leave /readyz stale
            # Configuration problems (no model named, a broken metadata file) are not Triton's: say so plainly.
            configuration = isinstance(err, ModelUnknown | MetadataError)
            if configuration:
                state.schema_problem = str(err)
            else:
                state.schema_problem = f"model metadata not available from {settings.model_server_url}: {err}"
            if not isinstance(err, NexusError):
                log.exception("unexpected error reading the model's metadata")
            if logged != type(err).__name__:
                level = logging.ERROR if configuration else logging.WARNING
                log.log(level, "%s; retrying every %g s", state.schema_problem, SCHEMA_RETRY_S)
                logged = type(err).__name__
            await asyncio.sleep(SCHEMA_RETRY_S)
            continue
        schema = state.schema
        if settings.coalesce and schema.batched:
            max_rows, slots = coalescing_limits(settings, schema)
            state.coalescer = Coalescer(
                state.send,
                max_rows=max_rows,
                slots=slots,
                max_wait_s=settings.coalesce_max_wait_ms / 1000,
                preferred=schema.preferred_batch_sizes,
                on_padding=state.metrics.padded_rows.inc,
            )
        coalescing = "off"
        if state.coalescer is not None:
            coalescing = (
                f"on ({state.coalescer.slots} batches in flight, up to {state.coalescer.max_rows} rows, "
                f"shaped to preferred sizes {list(state.coalescer.preferred) or 'none'})"
            )
        log.info(
            "serving model %s (versions %s) from %s; coalescing %s",
            schema.name,
            ",".join(schema.versions),
            settings.model_server_url,
            coalescing,
        )
        state.follower = asyncio.get_running_loop().create_task(state.follow_schema())
        return


async def _model_name(upstream: Upstream, settings: ProxySettings) -> str:
    """Which model to serve: `MODEL_NAME`, else the control plane's metadata, else Triton's repository index.

    The metadata comes before the index because deployments restrict Triton's model-repository API to an
    admin key the proxy does not hold (compose and the chart mount the metadata for the sync anyway);
    the index serves `nexus proxy` pointed at a Triton of its own with nothing configured.
    """
    if settings.model_name:
        return settings.model_name
    if settings.meta_path.is_file():
        return metadata.load(settings.meta_path).name
    try:
        return await _only_model(upstream)
    except UpstreamForbidden as err:
        raise ModelUnknown(
            f"cannot tell which model to serve: MODEL_NAME is empty, there is no metadata file at "
            f"NEXUS_META_PATH={settings.meta_path}, and {err}; set MODEL_NAME or mount the metadata"
        ) from err


async def _only_model(upstream: Upstream) -> str:
    models = await upstream.ready_models()
    if len(models) != 1:
        raise NotReady(f"MODEL_NAME is not set and Triton serves {len(models)} ready models {models}")
    return models[0]


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    state.upstream = connect(state.settings)
    state.loader = asyncio.create_task(_load_schema(state))
    # A Triton that is up answers within the timeout; one that is not must not hold up start-up.
    await asyncio.wait({state.loader}, timeout=2 * state.settings.connect_timeout_s)
    try:
        yield
    finally:
        state.loader.cancel()
        if state.follower is not None:
            state.follower.cancel()
        if state.coalescer is not None:
            await state.coalescer.close()
        await state.upstream.close()


# --- the one middleware: request id, auth, error bodies, metrics, access log ---------------------------
def error_response(err: NexusError, settings: ProxySettings, v2: bool = False) -> web.Response:
    """`{"error": {"code", "message"}}`; on the v2 routes the protocol's own form, `{"error": "message"}`,
    with its 400 for every invalid request (the proxy's own routes say 422 for invalid input)."""
    status = err.http_status
    if v2:
        body = orjson.dumps({"error": f"{err.code}: {err}"})
        status = 400 if status == 422 else status
    else:
        body = orjson.dumps({"error": {"code": err.code, "message": str(err)}})
    response = web.Response(status=status, body=body, content_type=_JSON)
    if err.http_status in (429, 503):
        retry = getattr(err, "retry_after", None) or settings.retry_after_s
        response.headers["Retry-After"] = str(retry)
    if err.http_status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="nexus"'
    return response


def _from_http_exception(exc: web.HTTPException, request: web.Request) -> ProxyError:
    if isinstance(exc, web.HTTPNotFound):
        return NotFound(f"no route {request.path!r}")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(f"{request.method} is not allowed here; use {', '.join(sorted(exc.allowed_methods))}")
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge("the request body is over the size limit")
    err = ProxyError(exc.reason)
    err.http_status = exc.status
    err.code = re.sub(r"[^a-z0-9]+", "_", exc.reason.lower()).strip("_") or "http_error"
    return err


def _authorized(request: web.Request, keys: tuple[bytes, ...]) -> bool:
    """Constant-time comparison against every key; the key itself is never logged or echoed."""
    offered = request.headers.get("X-API-Key", "")
    auth = request.headers.get("Authorization", "")
    if not offered and auth[:7].lower() == "bearer ":
        offered = auth[7:].strip()
    if not offered:
        return False
    candidate = offered.encode("utf-8", errors="replace")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate, key)
    return matched


def _route(request: web.Request) -> str:
    """The route's template (`/predict`), never the raw path: metrics labels stay few."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _middleware(settings: ProxySettings) -> Callable[..., Awaitable[web.StreamResponse]]:
    keys = tuple(key.encode() for key in settings.api_keys)
    open_paths = frozenset(settings.open_endpoints)
    # Generated request ids: unique per worker run (random prefix) without a random draw per request.
    id_prefix = secrets.token_hex(4) + "-"
    id_counter = itertools.count(1)

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        started = time.perf_counter()
        state = request.app[STATE]
        request_id = request.headers.get("X-Request-Id", "")
        if not request_id or not _REQUEST_ID_FORMAT.fullmatch(request_id):
            request_id = f"{id_prefix}{next(id_counter):x}"
        request[REQUEST_ID] = request_id
        request[DEADLINE] = asyncio.get_running_loop().time() + settings.request_timeout_ms / 1000
        error: NexusError | None = None
        allow = ""
        try:
            if keys and request.path not in open_paths and not _authorized(request, keys):
                raise Unauthorized("missing or invalid API key (Authorization: Bearer or X-API-Key)")
            response = await handler(request)
        except asyncio.CancelledError:
            state.metrics.request_done(_route(request), CLIENT_GONE, time.perf_counter() - started)
            raise
        except NexusError as err:
            error = err
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            error = _from_http_exception(exc, request)
            allow = exc.headers.get("Allow", "") if isinstance(exc, web.HTTPMethodNotAllowed) else ""
        except Exception:
            log.exception("unhandled error in request %s", request_id)
            error = ProxyError("internal error; see the proxy's log for this request id")
        if error is not None:
            response = error_response(error, settings, v2=request.path.startswith("/v2"))
            if allow:
                response.headers["Allow"] = allow
        response.headers["X-Request-Id"] = request_id
        if error is not None and not request.content.is_eof():
            # The body was left unread (408, 413, 415, 429, ...): the connection closes after this answer
            # (lingering_time 0), so say so, or a keep-alive client would send its next request into it.
            response.force_close()
        if state.draining:
            # Shutting down: tell keep-alive clients to reconnect, so none sends a request on a connection
            # the worker is about to close (they would see a reset instead of an answer or a refusal).
            response.force_close()
        elapsed = time.perf_counter() - started
        state.metrics.request_done(_route(request), response.status, elapsed)
        if settings.access_log == "all" or (response.status >= 400 and settings.access_log == "errors"):
            level = logging.WARNING if response.status >= 500 else logging.INFO
            if access_log.isEnabledFor(level):
                record: dict[str, Any] = {
                    "request_id": request_id,
                    "method": request.method,
                    "path": request.path[:200],
                    "status": response.status,
                    "ms": round(elapsed * 1000, 3),
                    "worker": state.worker,
                }
                if error is not None:
                    record["code"] = error.code
                access_log.log(level, orjson.dumps(record).decode())
        return response

    return middleware


# --- handlers ---------------------------------------------------------------------------------------------
def _check_headers(request: web.Request) -> None:
    content_type = request.content_type
    if content_type != _JSON and not content_type.endswith("+json"):
        raise UnsupportedMediaType(f"Content-Type must be application/json, not {content_type!r}")
    charset = request.charset
    if charset and charset.lower() not in ("utf-8", "utf8"):
        raise UnsupportedMediaType(f"charset must be utf-8, not {charset!r}")
    _check_encoding(request)


def _check_encoding(request: web.Request) -> None:
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedEncoding(f"Content-Encoding {encoding!r} is not supported; send the body uncompressed")


async def _read_body(request: web.Request, settings: ProxySettings) -> bytes:
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


def _deadline(request: web.Request) -> float:
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


Parsed = TypeVar("Parsed")


async def _predicting(
    request: web.Request, parse: Callable[[bytes, ModelSchema], tuple[Prediction, Parsed]]
) -> tuple[ModelSchema, Parsed, Outputs, str]:
    """What every inference route shares: readiness, the in-flight bookkeeping, the body, the deadline, and
    the upstream call (coalesced or not). `parse` turns the body into validated arrays for `schema`."""
    state = request.app[STATE]
    settings = state.settings
    if state.draining:
        raise NotReady("the proxy is shutting down")
    schema = state.schema
    if schema is None:
        raise NotReady(state.schema_problem)
    state.in_flight += 1  # in progress from here (the gauge, and what a graceful shutdown waits for)
    state.metrics.in_flight_changed(1)
    try:
        deadline = _deadline(request)
        prediction, parsed = parse(await _read_body(request, settings), schema)
        # A MAX_IN_FLIGHT slot is taken only once the body is in: clients still uploading (slowly, maybe on
        # purpose) hold none, so they cannot make everyone else's requests 429. Reading is bounded by
        # BODY_TIMEOUT_S and MAX_BODY_BYTES instead.
        if state.admitted >= settings.max_in_flight:
            raise Overloaded(f"{settings.max_in_flight} predictions already in progress")
        state.admitted += 1
        try:
            if state.coalescer is not None:
                outputs, version = await state.coalescer.submit(prediction.arrays, prediction.rows, deadline)
            else:
                outputs, version = await state.send(prediction.arrays, prediction.rows, deadline, request[REQUEST_ID])
        finally:
            state.admitted -= 1
        return schema, parsed, outputs, version
    finally:
        state.in_flight -= 1
        state.metrics.in_flight_changed(-1)


async def predict(request: web.Request) -> web.Response:
    _check_headers(request)
    max_dim = request.app[STATE].settings.max_dynamic_dim

    def parse(body: bytes, schema: ModelSchema) -> tuple[Prediction, Prediction]:
        prediction = to_prediction(parse_json(body), schema, max_dim)
        return prediction, prediction

    schema, prediction, outputs, version = await _predicting(request, parse)
    return web.Response(
        body=response_body(outputs, schema, prediction),
        content_type=_JSON,
        headers={"X-Model-Name": schema.name, "X-Model-Version": version},
    )


# --- the Open Inference Protocol (KServe v2), see proxy/v2.py ---------------------------------------------
def _served(request: web.Request) -> ModelSchema:
    """The served model's schema, if the route names it (and one of its versions); else the protocol's 404."""
    schema = request.app[STATE].schema
    if schema is None:
        raise NotReady(request.app[STATE].schema_problem)
    v2.check_model(schema, request.match_info["name"], request.match_info.get("version"))
    return schema


async def v2_server(request: web.Request) -> web.Response:
    return web.json_response(v2.server_metadata(_VERSION), dumps=_dumps)


async def v2_model(request: web.Request) -> web.Response:
    return web.json_response(v2.model_metadata(_served(request)), dumps=_dumps)


async def v2_model_config(request: web.Request) -> web.Response:
    return web.json_response(v2.model_config(_served(request)), dumps=_dumps)


async def v2_ready(request: web.Request) -> web.Response:
    """Server or model ready: the same check as /readyz (Triton live, model ready, a probe inference)."""
    if "name" in request.match_info:
        _served(request)
    await readyz(request)
    return web.Response(status=200)


async def v2_infer(request: web.Request) -> web.Response:
    _check_encoding(request)
    schema = _served(request)
    header_length = request.headers.get(v2.HEADER_LENGTH)
    max_dim = request.app[STATE].settings.max_dynamic_dim

    def parse(body: bytes, schema: ModelSchema) -> tuple[Prediction, v2.InferRequest]:
        parsed = v2.parse_infer(body, header_length, schema, max_dim)
        return parsed.prediction, parsed

    schema, parsed, outputs, version = await _predicting(request, parse)
    body, json_length = v2.infer_response(outputs, schema, parsed, version)
    if json_length is None:
        return web.Response(body=body, content_type=_JSON)
    return web.Response(body=body, content_type=v2.BINARY, headers={v2.HEADER_LENGTH: str(json_length)})


async def healthz(request: web.Request) -> web.Response:
    """Alive: the event loop answers. Never asks Triton, so a Triton outage does not restart the proxy."""
    return web.json_response({"status": "ok"}, dumps=_dumps)


async def readyz(request: web.Request) -> web.Response:
    """Ready: Triton live, the model ready, and (with READY_PROBE) a one-row inference answered."""
    state = request.app[STATE]
    if state.draining:
        raise NotReady("the proxy is shutting down")
    loop = asyncio.get_running_loop()
    async with state.ready_lock:
        if loop.time() - state.ready_at > READY_CACHE_S:
            state.ready_error = await _check_ready(state)
            state.ready_at = loop.time()
    if state.ready_error is not None:
        raise state.ready_error
    assert state.schema is not None
    return web.json_response(
        {"status": "ready", "model": state.schema.name, "versions": list(state.schema.versions)}, dumps=_dumps
    )


async def _check_ready(state: ProxyState) -> ProxyError | None:
    schema, upstream = state.schema, state.upstream
    if schema is None or upstream is None:
        return NotReady(state.schema_problem)
    if not await upstream.live():
        return NotReady(f"Triton at {state.settings.model_server_url} is not live")
    if not await upstream.model_ready(schema.name, state.settings.model_version):
        return NotReady(f"model {schema.name} is not ready in Triton")
    if state.settings.ready_probe:
        # As many rows as the smallest preferred batch size: Triton runs that at once, one row it would hold.
        rows = (schema.preferred_batch_sizes or (1,))[0]
        arrays = {
            spec.name: np.zeros(((rows,) if schema.batched else ()) + tuple(max(d, 1) for d in spec.shape), spec.dtype)
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


async def models(request: web.Request) -> web.Response:
    """The served model, the version serving it, and during a model update the version being tried."""
    state = request.app[STATE]
    if state.schema is None:
        raise NotReady(state.schema_problem)
    assert state.upstream is not None
    described = state.schema.describe()
    described["served_version"] = state.version_seen or (state.schema.versions[-1] if state.schema.versions else None)
    described["trying_version"] = None
    candidate = probe.candidate_name(state.schema.name)
    try:
        if await state.upstream.model_ready(candidate, ""):
            tried = await state.upstream.schema(candidate, "")
            described["trying_version"] = tried.versions[-1] if tried.versions else None
    except ProxyError:
        pass  # no candidate, or Triton busy: nothing is being tried that the proxy can see
    return web.json_response({"models": [described]}, dumps=_dumps)


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.Response(body=state.metrics.render(), headers={"Content-Type": state.metrics.content_type})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/yaml")


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def create_app(settings: ProxySettings, worker: int = 0) -> web.Application:
    """The proxy for one worker process; `worker` only labels its logs."""
    app = web.Application(middlewares=[_middleware(settings)], client_max_size=settings.max_body_bytes)
    app[STATE] = ProxyState(settings, worker)
    app[OPENAPI] = OPENAPI_PATH.read_bytes()
    app.cleanup_ctx.append(_upstream_ctx)
    app.router.add_post("/predict", predict)
    app.router.add_get("/healthz", healthz, allow_head=True)
    app.router.add_get("/readyz", readyz, allow_head=True)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/openapi.yaml", openapi)
    app.router.add_get("/v2", v2_server)
    app.router.add_get("/v2/health/live", healthz, allow_head=True)
    app.router.add_get("/v2/health/ready", v2_ready, allow_head=True)
    served = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")
    for model in served:  # first: aiohttp tries the routes under /v2/models in the order they were added
        app.router.add_post(f"{model}/infer", v2_infer)
    for model in served:
        app.router.add_get(model, v2_model)
        app.router.add_get(f"{model}/config", v2_model_config)
        app.router.add_get(f"{model}/ready", v2_ready, allow_head=True)
    return app
