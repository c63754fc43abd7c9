"""The proxy's errors, each a `NexusError` with a stable snake_case `code`, and `HTTP_STATUS`, their statuses.

Handlers and the upstream client raise these; the middleware's error rendering (`proxy.middleware`) turns any
`NexusError` into `{"error": {"code": ..., "message": ...}}` with the status `HTTP_STATUS` gives its class.
Clients branch on `code`, never on `message`, so codes are part of the API (listed in `proxy/openapi.yaml` and
`docs/errors.md`) and are never renamed. Errors that ask the client to come back later carry `retry_after`,
sent as the `Retry-After` header.
"""

from __future__ import annotations

from nexusml.core.errors import NexusError


class ProxyError(NexusError):
    """Base of every error the proxy answers with; raised itself only for a bug (`internal_error`)."""

    retry_after: int | None = None

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        if retry_after is not None:
            self.retry_after = retry_after


class HttpError(ProxyError):
    """An HTTP error aiohttp raised that has no class here: its own status, and a code made of its reason."""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


# --- 400: the body is not a usable JSON document --------------------------------------------------------
class BadRequest(ProxyError):
    code = "bad_request"


class EmptyBody(BadRequest):
    code = "empty_body"


class InvalidJson(BadRequest):
    """Not JSON, truncated, or trailing garbage."""

    code = "invalid_json"


class InvalidUtf8(BadRequest):
    code = "invalid_utf8"


class JsonTooDeep(BadRequest):
    """Nesting beyond the parser's limit (1024): refused before it can exhaust anything."""

    code = "json_too_deep"


class NumberTooLarge(BadRequest):
    """A number literal no double can hold (a 5,000-digit integer, 1e400): the document itself is unusable."""

    code = "number_too_large"


class UpstreamRejected(BadRequest):
    """Triton refused the request as invalid although it passed our validation."""

    code = "upstream_rejected"


# --- 400: HTTP that aiohttp's parser refused, before any handler ran (`proxy.protocol`) ---------------------
class MalformedRequest(ProxyError):
    """Not HTTP the proxy can read; the kinds below say why, this code is any other."""

    code = "malformed_request"


class BadRequestLine(MalformedRequest):
    """An unknown method, an unreadable target or HTTP version."""

    code = "bad_request_line"


class HeaderTooLarge(MalformedRequest):
    """The request line or a header over 8190 bytes, or too many headers."""

    code = "header_too_large"


class InvalidHeader(MalformedRequest):
    """A header name or value with characters HTTP does not allow."""

    code = "invalid_header"


class BadFraming(MalformedRequest):
    """Where the body ends is unclear: conflicting or invalid Content-Length / Transfer-Encoding, bad chunks."""

    code = "bad_framing"


# --- 401 / 403 / 404 / 405 / 408 / 413 / 415 ------------------------------------------------------------
class Unauthorized(ProxyError):
    code = "unauthorized"


class Forbidden(ProxyError):
    """A known key whose tenant may not use this path (`GET /v1/tenants` needs an admin tenant)."""

    code = "forbidden"


class NotFound(ProxyError):
    code = "not_found"


class ModelNotFound(NotFound):
    """The route names a model this proxy does not serve, or `POST /predict` has no default model to answer."""

    code = "model_not_found"


class MethodNotAllowed(ProxyError):
    code = "method_not_allowed"


class BodyTimeout(ProxyError):
    code = "body_timeout"


class PayloadTooLarge(ProxyError):
    code = "payload_too_large"


class UnsupportedMediaType(ProxyError):
    code = "unsupported_media_type"


class UnsupportedEncoding(ProxyError):
    code = "unsupported_encoding"


# --- 422: valid JSON that does not fit the model ----------------------------------------------------------
class InvalidInput(ProxyError):
    code = "invalid_input"


class WrongBodyType(InvalidInput):
    """The top level is not an object."""

    code = "wrong_body_type"


class MissingInput(InvalidInput):
    """Neither `input` nor `inputs`, or it is null, or a named input is absent."""

    code = "missing_input"


class UnknownField(InvalidInput):
    code = "unknown_field"


class WrongType(InvalidInput):
    """Strings, booleans, objects or nulls where numbers belong."""

    code = "wrong_type"


class WrongShape(InvalidInput):
    """Wrong nesting depth or wrong length for the model's input shape (a -1 dimension: 1 to MAX_DYNAMIC_DIM)."""

    code = "wrong_shape"


class NonFinite(InvalidInput):
    """`NaN` / `Infinity` literals."""

    code = "non_finite"


class OutOfRange(InvalidInput):
    """A number the input's dtype cannot hold exactly (1e39 for FP32, 300 for INT8, 1.5 or 2.0**63 for an integer)."""

    code = "out_of_range"


class TooManyRows(InvalidInput):
    """More rows than the model's `max_batch_size`, or none at all."""

    code = "batch_size"


# --- 429 / 5xx: capacity and upstream ----------------------------------------------------------------
class Overloaded(ProxyError):
    """This worker already has `MAX_IN_FLIGHT` predictions in progress."""

    code = "overloaded"


class OverShare(Overloaded):
    """The proxy is full and this tenant holds more than its weighted share of it: the tenant over its share is
    refused first, so the others keep theirs. A kind of `overloaded`, for clients that branch on that."""

    code = "over_share"


class RateLimited(ProxyError):
    """The tenant is over its own rate limit; `retry_after` comes from its token bucket, and `cause` says which
    (`rate_requests` or `rate_rows`, as counted in `nexus_proxy_tenant_rejected_total`)."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after: int | None = None, cause: str = "rate_requests") -> None:
        super().__init__(message, retry_after)
        self.cause = cause


class UpstreamBusy(ProxyError):
    """Triton's queue for the model is full."""

    code = "upstream_busy"


class UpstreamError(ProxyError):
    """Triton failed in a way that is not the client's fault."""

    code = "upstream_error"


class LoadFailed(UpstreamError):
    """Triton could not load the model the request is for (the residency decider's answer, Triton's reason)."""

    code = "model_load_failed"


class UpstreamForbidden(UpstreamError):
    """Triton refused an API that the deployment restricts to its admin key (`--*-restricted-*` flags)."""

    code = "upstream_forbidden"


class NonFiniteOutput(UpstreamError):
    """The model answered NaN or Infinity, which JSON cannot carry: the model is at fault, not the request."""

    code = "non_finite_output"


class NotReady(ProxyError):
    """The model's metadata is not loaded yet (the message names the model), or the proxy is shutting down."""

    code = "not_ready"


class ModelUnknown(NotReady):
    """Nothing names the model to serve and Triton will not list its models: ready never, until configured."""


class UpstreamUnavailable(ProxyError):
    """Triton cannot be reached, or the model is not loaded there."""

    code = "upstream_unavailable"


class ModelNotLoaded(UpstreamUnavailable):
    """Triton does not have the model loaded (an unknown model, or one loading or unloading): with a memory budget,
    unloaded to make room since the proxy last heard, so the request is made to wait for its load once more
    (`proxy.residency`)."""


class NoRoom(ProxyError):
    """With a memory budget: every loaded model is busy or pinned, so none can be unloaded to make room for this
    one before the request's deadline."""

    code = "no_room"


class OverMemoryBudget(ProxyError):
    """With a memory budget: the model does not fit in MODEL_MEMORY_BUDGET even alone (the message has the figures)."""

    code = "over_memory_budget"


class DeadlineExceeded(ProxyError):
    """The request's deadline (`REQUEST_TIMEOUT_MS`) passed before Triton answered."""

    code = "deadline_exceeded"


# The one table of HTTP statuses. A class not listed answers with its nearest listed ancestor's status; the
# project's other errors (`nexusml.core.errors`) never come from a request, so one that reaches the edge is ours: 500.
HTTP_STATUS: dict[type[NexusError], int] = {
    NexusError: 500,
    ProxyError: 500,
    BadRequest: 400,
    MalformedRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    MethodNotAllowed: 405,
    BodyTimeout: 408,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    UnsupportedEncoding: 415,
    InvalidInput: 422,
    Overloaded: 429,
    RateLimited: 429,
    UpstreamBusy: 429,
    UpstreamError: 502,
    LoadFailed: 502,
    NotReady: 503,
    UpstreamUnavailable: 503,
    NoRoom: 503,
    DeadlineExceeded: 504,
    OverMemoryBudget: 507,
}


def http_status(err: NexusError) -> int:
    """The status `err` is answered with: its class's in `HTTP_STATUS`, else its nearest ancestor's."""
    if isinstance(err, HttpError):
        return err.status
    return next(HTTP_STATUS[cls] for cls in type(err).__mro__ if cls in HTTP_STATUS)
