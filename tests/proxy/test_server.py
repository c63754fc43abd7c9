"""`nexus proxy` as a real process: start-up errors, graceful SIGTERM with requests in flight, workers."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nexusml.testing.environment import base_environment
from nexusml.testing.servers import ProxyProcess, finish_request, held_request
from nexusml.triton.server import TritonServer
from proxy.server import keep_large_buffers
from tests.proxy.conftest import answered_by, wait_for_both_workers

pytestmark = pytest.mark.integration


def in_flight(proxy: ProxyProcess) -> int:
    value = proxy.metric("nexus_proxy_in_flight")
    return -1 if value is None else int(value)


def test_bad_setting_stops_start_up_naming_the_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nexusml", "proxy"],
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
    held = [held_request(proxy.port) for _ in range(3)]
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
    proxy = proxy_process(MODEL_SERVER_URL=triton.http_url, PROXY_WORKERS="2", ACCESS_LOG="all").start()
    wait_for_both_workers(proxy, "/metrics")
    proxy.signal(signal.SIGTERM)
    assert proxy.wait() == 0, proxy.log()


PREDICT = {"X-API-Key": "r-key", "Content-Type": "application/json"}


def limited_two_workers(make: Callable[..., ProxyProcess], triton: TritonServer, keys: Path) -> ProxyProcess:
    """A two-worker proxy, both workers answering, with one tenant limited to a burst of 4 (and next to no refill)."""
    limit = {"requests_per_s": 0.001, "requests_burst": 4}
    keys.write_text(json.dumps({"tenants": {"team-r": {"keys": ["r-key"], "rate_limit": limit}}}))
    proxy = make(MODEL_SERVER_URL=triton.grpc_url, PROXY_WORKERS="2", ACCESS_LOG="all", API_KEYS_FILE=str(keys))
    wait_for_both_workers(proxy.start())
    return proxy


def predict_on(connection: http.client.HTTPConnection) -> int:
    connection.request("POST", "/predict", body=b'{"input": [1, 2, 3, 4, 5]}', headers=PREDICT)
    response = connection.getresponse()
    response.read()
    return response.status


def test_two_workers_give_one_connection_its_tenants_whole_limit(
    proxy_process: Callable[..., ProxyProcess], triton: TritonServer, tmp_path: Path
) -> None:
    """One keep-alive connection reaches one worker: it gets the tenant's burst of 4, not one worker's part (2)."""
    proxy = limited_two_workers(proxy_process, triton, tmp_path / "keys.json")
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    statuses = [predict_on(connection) for _ in range(8)]
    connection.close()
    assert statuses == [200] * 4 + [429] * 4, proxy.log()


def test_two_workers_take_a_tenants_requests_from_one_bucket(
    proxy_process: Callable[..., ProxyProcess], triton: TritonServer, tmp_path: Path
) -> None:
    """Fresh connections until both workers have served the tenant: 4 predictions in all, not 4 on each."""
    proxy = limited_two_workers(proxy_process, triton, tmp_path / "keys.json")
    statuses = []
    while len(statuses) < 8 or answered_by(proxy, "/predict") != {0, 1}:
        assert len(statuses) < 200, "the kernel gave every connection to one worker"
        connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
        statuses.append(predict_on(connection))
        connection.close()
    assert statuses.count(200) == 4 and statuses.count(429) == len(statuses) - 4, statuses


@pytest.mark.parametrize(
    "second", [pytest.param(signal.SIGTERM, id="sigterm-twice"), pytest.param(signal.SIGINT, id="then-sigint")]
)
def test_signals_to_the_whole_group_stop_two_workers_once(
    proxy_process: Callable[..., ProxyProcess], triton: TritonServer, second: signal.Signals
) -> None:
    """A stop of the process group (systemd's control-group stop, a Ctrl-C on a terminal): each worker gets the
    group's signal and its supervisor's SIGTERM, then the group's second signal while draining."""
    proxy = proxy_process(MODEL_SERVER_URL=triton.http_url, PROXY_WORKERS="2", ACCESS_LOG="all").start()
    wait_for_both_workers(proxy, "/metrics")
    assert proxy.process is not None
    os.killpg(proxy.process.pid, signal.SIGTERM)
    time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proxy.process.pid, second)
    assert proxy.wait() == 0, proxy.log()
    assert "Traceback" not in proxy.log()
    assert proxy.log().count(" stopping: ") == 2, proxy.log()  # one line per worker


def test_workers_die_with_a_parent_killed_hard(
    proxy_process: Callable[..., ProxyProcess], triton: TritonServer
) -> None:
    """A SIGKILLed proxy (OOM) must not leave its workers holding the port."""
    import psutil

    proxy = proxy_process(MODEL_SERVER_URL=triton.grpc_url, PROXY_WORKERS="2").start()
    assert proxy.process is not None
    workers = [child for child in psutil.Process(proxy.process.pid).children() if "python" in child.name()]
    assert len(workers) >= 2
    proxy.signal(signal.SIGKILL)
    _, alive = psutil.wait_procs(workers, timeout=30)  # a bound for the event, not a verdict on speed
    assert not alive, [worker.pid for worker in alive]


@pytest.mark.parametrize(
    ("access_log", "logged"),
    [
        pytest.param("all", {"/healthz", "/nope"}, id="all"),
        pytest.param(None, {"/nope"}, id="default-errors-only"),
        pytest.param("off", set(), id="off"),
    ],
)
def test_request_log_is_one_json_line_per_request(
    proxy_process: Callable[..., ProxyProcess], triton: TritonServer, access_log: str | None, logged: set[str]
) -> None:
    setting = {"ACCESS_LOG": access_log} if access_log else {}
    proxy = proxy_process(MODEL_SERVER_URL=triton.grpc_url, **setting).start()
    proxy.get("/healthz")
    proxy.get("/nope")
    proxy.signal(signal.SIGTERM)
    assert proxy.wait() == 0
    lines = [json.loads(line) for line in proxy.log().splitlines() if line.startswith("{")]
    lines = [line for line in lines if line["path"] != "/readyz"]  # the harness's start-up polling
    assert {line["path"] for line in lines} == logged
    for line in lines:
        assert line["request_id"] and line["status"] == (200 if line["path"] == "/healthz" else 404)
        assert line.get("code") == (None if line["status"] == 200 else "not_found")


def test_large_buffers_are_kept_for_reuse_on_glibc() -> None:
    """Freed request-sized buffers stay mapped (glibc's mallopt), so a large body is not faulted in afresh."""
    assert keep_large_buffers() is True
