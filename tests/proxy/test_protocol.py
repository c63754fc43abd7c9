"""HTTP that aiohttp's parser refuses: our error envelope, one WARNING line each, none at ERROR, bounded in a flood.

A real `ProxyRunner` on a socket (aiohttp's TestServer would not use its connection handler), its upstream
unreachable (the refusals come before any handler runs), and raw bytes that no HTTP client would send.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from nexusml.core.settings import load
from proxy import protocol
from proxy.app import create_app, server_options
from proxy.errors import BadFraming
from proxy.middleware import as_error, middleware
from proxy.settings import ProxySettings
from proxy.state import STATE, ProxyState

HEAD = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"

MALFORMED = [
    pytest.param(b"GARBAGE\r\n\r\n", "bad_request_line", id="not-http"),
    pytest.param(b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", "bad_request_line", id="bad-version"),
    pytest.param(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", "header_too_large", id="long-target"),
    pytest.param(
        HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "bad_framing",
        id="length-and-chunked",
    ),
    pytest.param(HEAD + b"Content-Length: abc\r\n\r\n", "bad_framing", id="invalid-length"),
    pytest.param(HEAD + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello", "bad_framing", id="two-lengths"),
    pytest.param(HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", "bad_framing", id="bad-chunk"),
    pytest.param(HEAD + b"Transfer-Encoding: gzip, chunked, x\r\n\r\n", "bad_framing", id="bad-transfer-encoding"),
    pytest.param(
        b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(2000)) + b"\r\n",
        "header_too_large",
        id="2000-headers",
    ),
    pytest.param(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", "header_too_large", id="long-header"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nX-A\x01b: v\r\n\r\n", "invalid_header", id="bad-header-name"),
]


@pytest_asyncio.fixture
async def port() -> AsyncIterator[int]:
    settings = load(
        ProxySettings,
        {"MODEL_SERVER_URL": "http://127.0.0.1:9", "MODEL_NAME": "demo_mlp", "UPSTREAM_CONNECT_TIMEOUT_S": "0.05"},
    )
    runner = protocol.ProxyRunner(create_app(settings), **server_options(settings))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner.addresses[0][1]
    await runner.cleanup()


def exchange(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `data`, read the answer to its end: (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, body


def client_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """What the refusals logged (the unreachable upstream's retries aside)."""
    return [record for record in caplog.records if record.name.startswith(("aiohttp", "proxy.http"))]


@pytest.mark.asyncio
@pytest.mark.parametrize(("data", "code"), MALFORMED)
async def test_a_malformed_request_gets_our_envelope_and_one_warning(
    port: int, caplog: pytest.LogCaptureFixture, data: bytes, code: str
) -> None:
    caplog.set_level(logging.DEBUG)
    status, headers, body = await asyncio.to_thread(exchange, port, data)
    assert status == 400
    assert headers["Content-Type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert error["code"] == code and error["message"]
    (record,) = client_lines(caplog)
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert record.request_id == headers["X-Request-Id"]
    assert record.fields == {"peer": "127.0.0.1", "status": 400, "code": code}


@pytest.mark.asyncio
async def test_a_flood_of_malformed_requests_logs_a_bounded_number_of_lines(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    flood = 10 * protocol.LINES_PER_S

    def send_all() -> list[int]:
        return [exchange(port, b"GARBAGE\r\n\r\n")[0] for _ in range(flood)]

    started = asyncio.get_running_loop().time()
    statuses = await asyncio.to_thread(send_all)
    await asyncio.sleep(1.1)  # the summary of what was held back comes when its second is over
    seconds = asyncio.get_running_loop().time() - started
    assert statuses == [400] * flood
    records = client_lines(caplog)
    assert all(record.levelno == logging.WARNING and record.exc_info is None for record in records)
    suppressed = sum(record.fields.get("suppressed", 0) for record in records)
    per_request = [record for record in records if "suppressed" not in record.fields]
    assert len(per_request) + suppressed == flood
    assert len(records) <= (protocol.LINES_PER_S + 1) * (int(seconds) + 2)


def test_a_body_whose_framing_breaks_after_its_head_is_bad_framing_not_a_bug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The parser's error then reaches the handler reading the body, as aiohttp's RequestPayloadError."""
    request = make_mocked_request("POST", "/predict")
    err = as_error(web.RequestPayloadError("Invalid character in chunk size"), request, "r-1")
    assert isinstance(err, BadFraming) and "chunk size" in str(err)
    assert not caplog.records  # no ERROR, no traceback: the one line is the middleware's (`protocol.report`)


@pytest_asyncio.fixture
async def echo_port() -> AsyncIterator[int]:
    """The proxy's middleware in front of a handler that reads the whole body, on a `ProxyRunner`."""
    settings = load(ProxySettings, {"ACCESS_LOG": "errors"})

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    app = web.Application(middlewares=[middleware(settings)])
    app[STATE] = ProxyState(settings, 0)
    app.router.add_post("/echo", echo)
    runner = protocol.ProxyRunner(app, **server_options(settings))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield runner.addresses[0][1]
    await runner.cleanup()


def exchange_in_two(port: int, first: bytes, then: bytes) -> bytes:
    """`first`, a pause (the server starts reading the body), `then`; the whole answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(first)
        time.sleep(0.1)
        sock.sendall(then)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.asyncio
async def test_a_body_whose_chunks_break_midway_is_answered_at_once_with_one_line(
    echo_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Not after BODY_TIMEOUT_S (aiohttp leaves that body waiting), and one answer, not a second for the error
    aiohttp queues as the connection's next request."""
    caplog.set_level(logging.DEBUG)
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
    answer = await asyncio.to_thread(exchange_in_two, echo_port, head, b"zz\r\n0\r\n\r\n")
    assert answer.count(b"HTTP/1.") == 1 and answer.startswith(b"HTTP/1.1 400")
    assert b"Connection: close" in answer and b'"code":"bad_framing"' in answer
    records = [record for record in caplog.records if record.name.startswith(("aiohttp", "proxy"))]
    assert [(record.name, record.levelno) for record in records] == [("proxy.http", logging.WARNING)]
    assert records[0].fields["code"] == "bad_framing"
