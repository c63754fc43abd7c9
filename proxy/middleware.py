"""What every request goes through: its id and deadline, its tenant (by API key) and that tenant's rate limit,
error bodies, metrics and the access log.

Each concern is a small plain function; `middleware(settings)` composes them in ONE aiohttp middleware, since
each further middleware costs every request a coroutine and a handler wrapper on the proxy's hottest path.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from nexusml.core.errors import NexusError
from proxy import protocol
from proxy.errors import (
    BadFraming,
    HttpError,
    MalformedRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ProxyError,
    RateLimited,
    Unauthorized,
    http_status,
)
from proxy.settings import ProxySettings
from proxy.state import STATE, ProxyState
from proxy.tenants import DEFAULT_TENANT, TENANT, Tenancy, Tenant

CLIENT_GONE = 499  # nginx's status for "client closed the request": counted in metrics, never sent
REQUEST_ID = web.RequestKey("request_id", str)
DEADLINE = web.RequestKey("deadline", float)
MODEL = web.RequestKey("model", str)  # the `model` label of the served model the request is for; empty: none
LOAD_WAIT_MS = web.RequestKey("load_wait_ms", int)  # how long it waited for its model's load (memory budget)
LOAD_WAIT_HEADER = "Nexus-Load-Wait-Ms"
JSON = "application/json"
_REQUEST_ID_FORMAT = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# The routes of predictions (templates, as `route` gives them, with POST): the rate limits apply to these.
PREDICTION_ROUTES = frozenset(
    {"/predict", "/models/{name}/predict", "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"}
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
access_log = logging.getLogger("proxy.access")
log = logging.getLogger("proxy")


def dumps(value: Any) -> str:
    """`json_response`'s serialiser: orjson's."""
    return orjson.dumps(value).decode()


# --- request ids ----------------------------------------------------------------------------------------
def request_ids() -> Callable[[web.Request], str]:
    """The client's `X-Request-Id` when it is well-formed, else one generated: unique per worker run (random
    prefix) without a random draw per request."""
    prefix = secrets.token_hex(4) + "-"
    counter = itertools.count(1)

    def request_id(request: web.Request) -> str:
        offered = request.headers.get("X-Request-Id", "")
        if offered and _REQUEST_ID_FORMAT.fullmatch(offered):
            return offered
        return f"{prefix}{next(counter):x}"

    return request_id


# --- auth: the request's tenant ----------------------------------------------------------------------------
def identify(request: web.Request, tenancy: Tenancy, open_paths: frozenset[str]) -> Tenant:
    """The request's tenant: its API key's, or `DEFAULT_TENANT` when the proxy has no keys or the path is open.

    A key is looked up by its sha256 digest (`Tenancy.tenant_for`): the same work whichever key is offered, and
    no comparison that stops at the first differing byte. The key itself is never logged or echoed.
    """
    if not tenancy.required or request.path in open_paths:
        return DEFAULT_TENANT
    offered = request.headers.get("X-API-Key", "")
    if not offered:
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            offered = auth[7:].strip()
    tenant = tenancy.tenant_for(offered) if offered else None
    if tenant is None:
        raise Unauthorized("missing or invalid API key (Authorization: Bearer or X-API-Key)")
    return tenant


# --- error rendering --------------------------------------------------------------------------------------
def as_error(exc: Exception, request: web.Request, request_id: str) -> NexusError:
    """Any exception a handler raised, as the error the client is answered with."""
    if isinstance(exc, NexusError):
        return exc
    if isinstance(exc, web.HTTPNotFound):
        return NotFound(f"no route {request.path!r}")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(f"{request.method} is not allowed here; use {', '.join(sorted(exc.allowed_methods))}")
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge("the request body is over the size limit")
    if isinstance(exc, web.RequestPayloadError):  # the body's framing broke after its head was read
        cause = (str(exc).splitlines() or ["broken framing"])[0][:200].rstrip(":")
        return BadFraming(f"the body could not be read: {cause}")
    if isinstance(exc, web.HTTPException):
        code = re.sub(r"[^a-z0-9]+", "_", exc.reason.lower()).strip("_") or "http_error"
        return HttpError(exc.reason, exc.status, code)
    log.exception("unhandled error in request %s", request_id, exc_info=exc)
    return ProxyError("internal error; see the proxy's log for this request id")


def error_response(err: NexusError, settings: ProxySettings, protocol_v2: bool = False) -> web.Response:
    """`{"error": {"code", "message"}}`; on the v2 routes the protocol's own form, `{"error": "message"}`,
    with its 400 for every invalid request (the proxy's own routes say 422 for invalid input)."""
    status = http_status(err)
    if protocol_v2:
        body = orjson.dumps({"error": f"{err.code}: {err}"})
        answered = 400 if status == 422 else status
    else:
        body = orjson.dumps({"error": {"code": err.code, "message": str(err)}})
        answered = status
    response = web.Response(status=answered, body=body, content_type=JSON)
    if status in (429, 503):
        retry = getattr(err, "retry_after", None) or settings.retry_after_s
        response.headers["Retry-After"] = str(retry)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="nexus"'
    return response


# --- metrics and the access log ---------------------------------------------------------------------------
def route(request: web.Request) -> str:
    """The route's template (`/predict`), never the raw path: metrics labels stay few."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def record(
    state: ProxyState,
    request: web.Request,
    response: web.StreamResponse,
    elapsed: float,
    request_id: str,
    error: NexusError | None,
) -> None:
    """Count the request, and write its access line when `ACCESS_LOG` asks for it: its fields are the line
    (bare JSON in text format, merged into the record's JSON object in json format), with the model and
    version that answered a prediction. Malformed HTTP gets `proxy.protocol`'s rate-limited line instead."""
    status = response.status
    state.metrics.request_done(route(request), status, elapsed, request[MODEL])
    if isinstance(error, MalformedRequest):  # a client's broken HTTP: one line within the rate limit
        protocol.report(request.remote, error, request_id)
        return
    mode = state.settings.access_log
    if mode == "all" or (status >= 400 and mode == "errors"):
        level = logging.WARNING if status >= 500 else logging.INFO
        if access_log.isEnabledFor(level):
            line: dict[str, Any] = {
                "request_id": request_id,
                "method": request.method,
                "path": request.path[:200],
                "status": status,
                "ms": round(elapsed * 1000, 3),
                "worker": state.worker,
                "tenant": request[TENANT].name,
            }
            model = response.headers.get("X-Model-Name")
            if model is not None:
                line["model"], line["version"] = model, response.headers.get("X-Model-Version")
            if error is not None:
                line["code"] = error.code
            access_log.log(level, "%s %s %d", line["method"], line["path"], status, extra={"fields": line})


# --- the one middleware -----------------------------------------------------------------------------------
def middleware(
    settings: ProxySettings, tenancy: Tenancy | None = None
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """The one middleware; `tenancy` is the app's (`proxy.tenants.TENANCY`), else one made from `settings`."""
    if tenancy is None:
        tenancy = Tenancy.from_settings(settings.api_keys, settings.api_keys_file)
    open_paths = frozenset(settings.open_endpoints)
    residency = bool(settings.residency_url)
    request_id_of = request_ids()
    timeout_s = settings.request_timeout_ms / 1000

    @web.middleware
    async def each_request(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        state = request.app[STATE]
        request_id = request[REQUEST_ID] = request_id_of(request)
        now = asyncio.get_running_loop().time()
        request[DEADLINE] = now + timeout_s
        request[TENANT] = DEFAULT_TENANT
        request[MODEL] = ""
        error: NexusError | None = None
        try:
            tenant = request[TENANT] = identify(request, tenancy, open_paths)
            if request.method == "POST" and route(request) in PREDICTION_ROUTES:
                # Before the handler, so a tenant over its rate limit is refused before its body is read.
                try:
                    tenancy.admit(tenant, now)
                except RateLimited as err:
                    state.metrics.tenant_rejected(tenant.name, err.cause)
                    raise
            response = await handler(request)
        except asyncio.CancelledError:
            state.metrics.request_done(route(request), CLIENT_GONE, time.perf_counter() - started, request[MODEL])
            raise
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            error = as_error(exc, request, request_id)
            response = error_response(error, settings, request.path.startswith("/v2"))
            allow = exc.headers.get("Allow", "") if isinstance(exc, web.HTTPMethodNotAllowed) else ""
            if allow:
                response.headers["Allow"] = allow
        except Exception as exc:
            error = as_error(exc, request, request_id)
            response = error_response(error, settings, request.path.startswith("/v2"))
        response.headers["X-Request-Id"] = request_id
        if residency:
            waited = request.get(LOAD_WAIT_MS)
            if waited is not None:
                response.headers[LOAD_WAIT_HEADER] = str(waited)
        if (error is not None and (not request.content.is_eof() or isinstance(error, BadFraming))) or state.draining:
            # A body left unread (408, 413, 415, 429, ...) is discarded for at most LINGER_S, then the connection
            # closes: say so, or a keep-alive client would send its next request into it; so does one whose
            # framing broke (`proxy.protocol`). While shutting down, keep-alive clients are told to reconnect too,
            # so none sends a request on a connection about to close.
            response.force_close()
        record(state, request, response, time.perf_counter() - started, request_id, error)
        return response

    return each_request
