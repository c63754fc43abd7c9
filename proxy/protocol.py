"""Requests aiohttp's HTTP parser refuses: answered with our error envelope, logged as one quiet line.

Such a request never reaches the app or its middleware: aiohttp answers it from its connection handler
(`RequestHandler.handle_error`) with a plain-text 400 and logs `Error handling request` at ERROR with the
parser's traceback. Anything a client can send must not do that: a flood of them fills the disk and pages
someone for nothing. aiohttp has no hook for that answer (aio-libs/aiohttp#3287), so `ProxyRunner` serves
connections with `Connection`, whose `handle_error` answers a parser error with `{"error": {"code",
"message"}}` (`MalformedRequest` and its kinds, status 400 as before) and an `X-Request-Id`, and logs one
WARNING line (peer, cause, code, request id) at most `LINES_PER_S` times a second per worker; the lines held
back are told in one summary line. Any other error (a bug) keeps aiohttp's handling: ERROR and traceback.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets

import orjson
from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest

from nexusml.core.logs import RateLimit
from proxy.errors import (
    BadFraming,
    BadRequestLine,
    HeaderTooLarge,
    InvalidHeader,
    MalformedRequest,
    http_status,
)

log = logging.getLogger("proxy.http")
LINES_PER_S = 10  # per worker; with 1-2 lines of JSON each, a flood costs at most a few KB a second
_CAUSE_CHARS = 200


def malformed(exc: http_exceptions.HttpProcessingError) -> MalformedRequest:
    """The error a request the parser refused with `exc` is answered with: its kind, and the parser's cause
    (its first line, without the echo of the client's bytes that follows)."""
    cause = (exc.message or type(exc).__name__).strip().splitlines()[0]
    cause = cause.split(": b'")[0].split(": bytearray(")[0].rstrip(":").strip()[:_CAUSE_CHARS]
    lowered = cause.lower()
    kind: type[MalformedRequest] = MalformedRequest
    if isinstance(exc, http_exceptions.BadStatusLine | http_exceptions.InvalidURLError):
        kind = BadRequestLine
    elif isinstance(exc, http_exceptions.LineTooLong) or "too many headers" in lowered:
        kind = HeaderTooLarge
    elif isinstance(exc, http_exceptions.PayloadEncodingError) or any(
        word in lowered for word in ("content-length", "transfer-encoding", "chunk")
    ):
        kind = BadFraming
    elif isinstance(exc, http_exceptions.InvalidHeader) or "header" in lowered:
        kind = InvalidHeader
    return kind(cause or "malformed HTTP request")


class _Reporter:
    """The one log line per malformed request, rate-limited per worker, with a summary of those held back."""

    def __init__(self) -> None:
        self.limit = RateLimit(LINES_PER_S)
        self.prefix = "bad-" + secrets.token_hex(4) + "-"
        self.counter = itertools.count(1)
        self.summary: asyncio.TimerHandle | None = None

    def request_id(self) -> str:
        return f"{self.prefix}{next(self.counter):x}"

    def report(self, peer: str | None, err: MalformedRequest, request_id: str) -> None:
        if self.limit.allow():
            fields = {"peer": peer, "status": http_status(err), "code": err.code}
            log.warning("malformed request from %s: %s", peer, err, extra={"request_id": request_id, "fields": fields})
        elif self.summary is None:
            # One summary a second at most, when that second is over: the flood may stop at any line.
            self.summary = asyncio.get_running_loop().call_later(1.0, self._flush)

    def _flush(self) -> None:
        self.summary = None
        held = self.limit.take_suppressed()
        if held:
            self._summarise(held)

    @staticmethod
    def _summarise(held: int) -> None:
        log.warning(
            "suppressed %d more malformed request lines (at most %d a second)",
            held,
            LINES_PER_S,
            extra={"fields": {"suppressed": held}},
        )


_reporter = _Reporter()


def report(peer: str | None, err: MalformedRequest, request_id: str) -> None:
    """Log a malformed request's one line, within the rate limit (also for one the middleware answered)."""
    _reporter.report(peer, err, request_id)


class Connection(RequestHandler):
    """aiohttp's connection handler, with parser errors answered and logged as the proxy's own errors."""

    def data_received(self, data: bytes) -> None:
        """A parser error in the middle of a body (a bad chunk) fails that body at once.

        aiohttp queues the error as the connection's next request and leaves the body being read waiting for
        bytes that will never come: the handler would answer only at `BODY_TIMEOUT_S`, with a 408 that hides
        the cause. Failed here, the handler reads `RequestPayloadError`, which the middleware answers
        `bad_framing` and logs (`report`, rate-limited as here); the connection then closes, and the queued
        error goes unanswered and unlogged.
        """
        request = self._current_request
        super().data_received(data)
        if request is None or request.content.is_eof() or not self._messages:
            return
        refused = self._messages[-1][0]
        if isinstance(refused, _ErrInfo):
            request.content.set_exception(web.RequestPayloadError(refused.message or "malformed body"))
            request.content.feed_eof()  # nothing more comes: aiohttp's lingering close must not read it again
            self.close()  # after this answer, which is the one the client gets: the queued error is not answered

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, http_exceptions.HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        err = malformed(exc)
        request_id = _reporter.request_id()
        _reporter.report(request.remote, err, request_id)
        if request.writer.output_size > 0:  # as aiohttp: an answer already begun cannot be replaced
            raise ConnectionError("response already sent, cannot send another with the error message")
        body = orjson.dumps({"error": {"code": err.code, "message": str(err)}})
        response = web.Response(status=http_status(err), body=body, content_type="application/json")
        response.headers["X-Request-Id"] = request_id
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return Connection(self, loop=self._loop, **self._kwargs)


class ProxyRunner(web.AppRunner):
    """`web.AppRunner` whose connections are `Connection`s; takes `AppRunner`'s arguments."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # the app started and frozen, and the server aiohttp would use
        return _Server(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **server._kwargs,
        )
