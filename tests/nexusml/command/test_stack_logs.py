"""`nexus up` with LOG_FORMAT=json: every line of the whole run is one JSON object with the common fields, Triton's
lines included, and no secret appears in any line; a malformed request logs one WARNING line and no traceback."""

from __future__ import annotations

import json
import secrets
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from nexusml.testing.environment import base_environment, stack_ports
from tests.nexusml.command.conftest import wait_until_ready

pytestmark = pytest.mark.integration

COMMON = {"time", "level", "logger", "message"}


def test_a_json_run_of_the_stack_logs_json_lines_and_no_secret(tmp_path: Path) -> None:
    ports = stack_ports()
    admin_key = "admin-" + secrets.token_hex(16)
    shm_key = "shm-" + secrets.token_hex(16)
    api_key = "client-" + secrets.token_hex(16)
    env = {
        **base_environment(),
        **ports,
        "DEVICE": "cpu",
        "TRITON_EXIT_TIMEOUT_S": "5",
        "LOG_FORMAT": "json",
        "ACCESS_LOG": "all",
        "TRITON_ADMIN_KEY": admin_key,
        "TRITON_SHM_KEY": shm_key,
        "API_KEYS": api_key,
    }
    log_path = tmp_path / "up.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "nexusml", "up"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    proxy = f"http://127.0.0.1:{ports['PORT']}"
    try:
        wait_until_ready(process, proxy, log_path)
        request = urllib.request.Request(
            f"{proxy}/predict",
            data=b'{"input": [1, 2, 3, 4, 5]}',
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        with socket.create_connection(("127.0.0.1", int(ports["PORT"])), timeout=10) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.0 400") and b'"code":"bad_framing"' in answer
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    text = log_path.read_text()
    assert code == 0, text[-3000:]
    lines = [json.loads(raw) for raw in text.splitlines()]  # every line, or this fails
    assert all(isinstance(line, dict) and line.keys() >= COMMON for line in lines), text[-3000:]
    assert admin_key not in text and api_key not in text and shm_key not in text
    assert "Traceback" not in text
    loggers = {line["logger"] for line in lines}
    assert {"tritonserver", "proxy", "proxy.access", "nexusml.core.process"} <= loggers, loggers
    triton = [line for line in lines if line["logger"] == "tritonserver"]
    assert any(line["message"].startswith("Started GRPCInferenceService") for line in triton), triton[:5]
    proxy_lines = [line["message"] for line in lines if line["logger"] == "proxy"]
    assert any("through shared memory" in message for message in proxy_lines), proxy_lines  # TRITON_SHM_KEY given
    assert {line["level"] for line in triton} <= {"INFO", "WARNING", "ERROR", "CRITICAL"}
    (started,) = [line for line in lines if line["message"].startswith("starting tritonserver:")]
    assert ":nexus-admin-key=***" in started["message"] and ":nexus-shm-key=***" in started["message"]
    (malformed,) = [line for line in lines if line["logger"] == "proxy.http"]
    assert malformed["level"] == "WARNING" and malformed["code"] == "bad_framing" and malformed["request_id"]
    (predicted,) = [line for line in lines if line["logger"] == "proxy.access" and line.get("path") == "/predict"]
    assert predicted["status"] == 200 and predicted["request_id"]
    assert (predicted["model"], predicted["version"]) == ("demo_mlp", "1")
