"""`python -m proxy` as a real process: start-up errors, graceful SIGTERM with requests in flight, workers."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from nexusml.sync.triton import TritonServer
from tests.conftest import base_environment
from tests.proxy.conftest import ROOT, ProxyProcess

pytestmark = pytest.mark.integration

BODY = json.dumps({"input": [1, 2, 3, 4, 5]}).encode()


def in_flight(proxy: ProxyProcess) -> int:
    status, text = proxy.get("/metrics")
    if status != 200:
        return -1
    line = next(line for line in text.decode().splitlines() if line.startswith("nexus_proxy_in_flight{"))
    return int(float(line.split()[-1]))


def open_request(proxy: ProxyProcess) -> socket.socket:
    """A prediction whose head and half its body are sent: in flight until the rest arrives."""
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
    head = (
        f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
    ).encode()
    sock.sendall(head + BODY[:10])
    return sock


def finish_request(sock: socket.socket) -> tuple[int, bytes]:
    sock.sendall(BODY[10:])
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(
        next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    )
    while len(rest) < length:
        rest += sock.recv(65536)
    sock.close()
    return int(head.split()[1]), rest


def test_bad_setting_stops_start_up_naming_the_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy"],
        cwd=ROOT,
        env={**base_environment(), "MAX_IN_FLIGHT": "lots"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "MAX_IN_FLIGHT" in result.stderr


def test_sigterm_finishes_requests_in_flight_then_exits_0(
    proxy_process: Callable[..., ProxyProcess], triton: TritonServer
) -> None:
    proxy = proxy_process(MODEL_SERVER_URL=triton.grpc_url, SHUTDOWN_GRACE_S="30", BODY_TIMEOUT_S="120").start()
    held = [open_request(proxy) for _ in range(3)]
    for _ in range(300):
        if in_flight(proxy) == 3:
            break
        time.sleep(0.05)
    assert in_flight(proxy) == 3
    proxy.signal(signal.SIGTERM)
    for _ in range(300):  # no longer accepting: new connections are refused (or answered not ready)
        status, _ = proxy.get("/readyz")
        if status in (0, 503):
            break
        time.sleep(0.05)
    assert status in (0, 503)
    results = [finish_request(sock) for sock in held]
    assert [status for status, _ in results] == [200, 200, 200]
    assert all("output" in json.loads(body) for _, body in results)
    assert proxy.wait() == 0, proxy.log()
    assert "stopping: 3 predictions in flight" in proxy.log()


def test_two_workers_share_the_port_and_stop_cleanly(
    proxy_process: Callable[..., ProxyProcess], triton: TritonServer
) -> None:
    proxy = proxy_process(MODEL_SERVER_URL=triton.http_url, PROXY_WORKERS="2").start()
    workers = set()
    for _ in range(400):
        status, text = proxy.get("/metrics")
        assert status == 200
        workers |= {
            line.split('worker="')[1].split('"')[0] for line in text.decode().splitlines() if 'worker="' in line
        }
        if workers == {"0", "1"}:
            break
    assert workers == {"0", "1"}
    proxy.signal(signal.SIGTERM)
    assert proxy.wait() == 0, proxy.log()


def test_request_log_is_one_json_line_per_request(
    proxy_process: Callable[..., ProxyProcess], triton: TritonServer
) -> None:
    proxy = proxy_process(MODEL_SERVER_URL=triton.grpc_url).start()
    proxy.get("/healthz")
    proxy.signal(signal.SIGTERM)
    assert proxy.wait() == 0
    lines = [json.loads(line) for line in proxy.log().splitlines() if line.startswith("{")]
    health = [line for line in lines if line["path"] == "/healthz"]
    assert health and health[0]["status"] == 200 and health[0]["request_id"]
