"""The proxy's errors: each a `NexusError` with its HTTP status and a stable snake_case `code`.

Handlers and the upstream client raise these; one middleware (`proxy.app`) turns any of them into
`{"error": {"code": ..., "message": ...}}`. Clients branch on `code`, never on `message`, so codes are
part of the API (listed in `proxy/openapi.yaml`) and are never renamed. Errors that ask the client to
come back later carry `retry_after`, sent as the `Retry-After` header.
"""

from __future__ import annotations

from nexusml.core.errors import NexusError


class ProxyError(NexusError):
    """Base of every error the proxy answers with."""

    http_status = 500
    code = "internal_error"
    retry_after: int | None = None

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        if retry_after is not None:
            self.retry_after = retry_after


# --- 400: the body is not a usable JSON document --------------------------------------------------------
class BadRequest(ProxyError):
    http_status = 400
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


# --- 401 / 404 / 405 / 408 / 413 / 415 ------------------------------------------------------------------
class Unauthorized(ProxyError):
    http_status = 401
    code = "unauthorized"


class NotFound(ProxyError):
    http_status = 404
    code = "not_found"


class MethodNotAllowed(ProxyError):
    http_status = 405
    code = "method_not_allowed"


class BodyTimeout(ProxyError):
    http_status = 408
    code = "body_timeout"


class PayloadTooLarge(ProxyError):
    http_status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ProxyError):
    http_status = 415
    code = "unsupported_media_type"


class UnsupportedEncoding(ProxyError):
    http_status = 415
    code = "unsupported_encoding"


# --- 422: valid JSON that does not fit the model ----------------------------------------------------------
class InvalidInput(ProxyError):
    http_status = 422
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

    http_status = 429
    code = "overloaded"


class UpstreamBusy(ProxyError):
    """Triton's queue for the model is full."""

    http_status = 429
    code = "upstream_busy"


class UpstreamError(ProxyError):
    """Triton failed in a way that is not the client's fault."""

    http_status = 502
    code = "upstream_error"


class UpstreamForbidden(UpstreamError):
    """Triton refused an API that the deployment restricts to its admin key (`--*-restricted-*` flags)."""

    code = "upstream_forbidden"


class NonFiniteOutput(UpstreamError):
    """The model answered NaN or Infinity, which JSON cannot carry: the model is at fault, not the request."""

    code = "non_finite_output"


class NotReady(ProxyError):
    """The model's metadata is not loaded yet, or the proxy is shutting down."""

    http_status = 503
    code = "not_ready"


class ModelUnknown(NotReady):
    """Nothing names the model to serve and Triton will not list its models: ready never, until configured."""


class UpstreamUnavailable(ProxyError):
    """Triton cannot be reached, or the model is not loaded there."""

    http_status = 503
    code = "upstream_unavailable"


class DeadlineExceeded(ProxyError):
    """The request's deadline (`REQUEST_TIMEOUT_MS`) passed before Triton answered."""

    http_status = 504
    code = "deadline_exceeded"
