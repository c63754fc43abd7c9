"""The main job, `nexus up`, from an empty folder: local S3, demo model, sync, Triton, proxy; SIGTERM stops all."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import tritonclient.http as httpclient

from nexusml.command import demo, stack
from nexusml.command.s3local import CREDENTIALS
from nexusml.core.process import http_ok
from nexusml.testing.environment import base_environment, free_port, stack_ports
from nexusml.testing.models import publish_into
from tests.nexusml.command.conftest import wait_until_ready

pytestmark = pytest.mark.integration


def test_up_serves_the_demo_model_and_stops_cleanly(tmp_path: Path) -> None:
    ports = stack_ports()
    log = (tmp_path / "up.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "nexusml.command.cli", "up"],
        cwd=tmp_path,
        env={**base_environment(), **ports, "DEVICE": "cpu", "TRITON_EXIT_TIMEOUT_S": "5"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    triton = f"http://127.0.0.1:{ports['TRITON_HTTP_PORT']}"
    proxy = f"http://127.0.0.1:{ports['PORT']}"
    try:
        wait_until_ready(process, proxy, (tmp_path / "up.log"))
        client = httpclient.InferenceServerClient(f"127.0.0.1:{ports['TRITON_HTTP_PORT']}")
        tensor = httpclient.InferInput("INPUT__0", [1, 5], "FP32")
        tensor.set_data_from_numpy(np.array([[1, 2, 3, 4, 5]], dtype=np.float32))
        assert client.infer("demo_mlp", [tensor]).as_numpy("OUTPUT__0").shape == (1, 2)
        with urllib.request.urlopen(_request(proxy), timeout=10) as response:
            answer = json.loads(response.read())
        # Within float32 rounding: the proxy may run the row in a batch of another size (padded to a preferred
        # size), and matrix kernels round differently by batch size.
        direct = client.infer("demo_mlp", [tensor]).as_numpy("OUTPUT__0")[0]
        np.testing.assert_allclose(answer["output"], direct, rtol=1e-5, atol=1e-6)
        assert (tmp_path / ".nexus_meta.json").is_file()
        assert (tmp_path / "model_repository" / "demo_mlp" / "1" / "model.pt").is_file()
        # The control plane publishes version 2: the watcher puts it live, the proxy's answers say so.
        s3 = {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{ports['LOCAL_S3_PORT']}"}
        published = subprocess.run(
            [sys.executable, "-m", "nexusml", "publish-demo", "--model-version", "2", "--bucket", "nexus-models"],
            cwd=tmp_path,
            env={**base_environment(), **s3},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert published.returncode == 0, published.stderr
        deadline = time.monotonic() + 120
        while _version(proxy) != "2":
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "up.log").read_text()[-3000:]
            time.sleep(0.2)
        assert "demo_mlp version 2 is live" in (tmp_path / "up.log").read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
        log.close()
    assert code == 0, (tmp_path / "up.log").read_text()[-3000:]
    assert not http_ok(f"{triton}/v2/health/live")
    assert not http_ok(f"{proxy}/healthz")
    assert not http_ok(f"http://127.0.0.1:{ports['LOCAL_S3_PORT']}/moto-api/")


def _request(proxy: str, route: str = "/predict", width: int = 5) -> urllib.request.Request:
    """The README's prediction (a row of `width` values), for the proxy at `proxy`."""
    body = json.dumps({"input": list(range(1, width + 1))}).encode()
    return urllib.request.Request(f"{proxy}{route}", data=body, headers={"Content-Type": "application/json"})


def _predict(proxy: str, route: str = "/predict", width: int = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(_request(proxy, route, width), timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError:
        return 0, b""


def _version(proxy: str) -> str | None:
    with urllib.request.urlopen(_request(proxy), timeout=10) as response:
        return response.headers["X-Model-Version"]


def _tritonserver(up: subprocess.Popen[bytes]) -> psutil.Process:
    (server,) = [p for p in psutil.Process(up.pid).children(recursive=True) if p.name() == "tritonserver"]
    return server


def test_up_restarts_triton_when_a_dead_stub_leaves_the_model_ready_but_mute(tmp_path: Path) -> None:
    """The Python-backend stubs SIGKILLed: Triton keeps the model READY and fails every inference; the watchdog
    restarts Triton on the same ports, says why in the log, and the same proxy serves again on its own."""
    ports = stack_ports()
    watchdog = {"WATCHDOG_INTERVAL_S": "0.5", "WATCHDOG_FAILURES": "2", "WATCHDOG_BACKOFF_S": "1"}
    log_path = tmp_path / "up.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "nexusml.command.cli", "up"],
        cwd=tmp_path,
        env={**base_environment(), **ports, **watchdog, "DEVICE": "cpu", "TRITON_EXIT_TIMEOUT_S": "5"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    proxy = f"http://127.0.0.1:{ports['PORT']}"
    try:
        wait_until_ready(process, proxy, log_path)
        assert _predict(proxy)[0] == 200
        proxy_pid = next(p.pid for p in psutil.Process(process.pid).children() if "proxy" in p.cmdline())
        server = _tritonserver(process)
        stubs = server.children(recursive=True)
        assert stubs, "no Python-backend stub under tritonserver"
        for stub in stubs:
            stub.kill()
        psutil.wait_procs(stubs, timeout=30)
        deadline = time.monotonic() + 180
        while "watchdog: Triton restarted (restart 1)" not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        deadline = time.monotonic() + 60  # the proxy's gRPC channel reconnects by itself
        while (answer := _predict(proxy))[0] != 200:
            assert time.monotonic() < deadline, answer
            time.sleep(0.5)
        assert len(json.loads(answer[1])["output"]) == 2
        assert _tritonserver(process).pid != server.pid
        assert proxy_pid in {p.pid for p in psutil.Process(process.pid).children()}, "the proxy was not restarted"
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
        log.close()
    text = log_path.read_text()
    assert code == 0, text[-3000:]
    (line,) = [line for line in text.splitlines() if "watchdog: restarting Triton" in line]
    assert "(restart 1): 2 consecutive probes failed: model demo_mlp is ready but does not answer" in line, line
    assert "is not healthy" in line, line


def test_sigterm_during_start_up_stops_what_was_started(tmp_path: Path) -> None:
    """A signal while the demo model is being published: the local S3 already runs and must be stopped."""
    ports = stack_ports()
    process = subprocess.Popen(
        [sys.executable, "-m", "nexusml.command.cli", "up"],
        cwd=tmp_path,
        env={**base_environment(), **ports, "DEVICE": "cpu"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    s3 = f"http://127.0.0.1:{ports['LOCAL_S3_PORT']}/moto-api/"
    deadline = time.monotonic() + 60
    while not http_ok(s3):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert not http_ok(s3)
    assert not http_ok(f"http://127.0.0.1:{ports['TRITON_HTTP_PORT']}/v2/health/live")


def test_a_failing_step_ends_the_job_with_that_steps_exit_code(tmp_path: Path) -> None:
    """S3 configured but no metadata: the sync step exits 3 (bad metadata), so `nexus up` exits 3 too."""
    env = {**base_environment(), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "MODEL_BUCKET": "models"}
    result = subprocess.run(
        [sys.executable, "-m", "nexusml", "up"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 3, result.stderr
    assert "nexus sync: error: " in result.stderr
    assert "sync failed with exit code 3" in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr


@pytest.mark.usefixtures("stop_signal_handlers")
def test_a_second_sigterm_while_up_logs_its_stop_ends_it_cleanly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`make run` stopped by a SIGTERM to its process group: make passes one more on to `nexus up`, which once
    landed in `up`'s own "stopping" line and ended the stop with a traceback and exit 1."""
    stopped = []

    class Server:
        def stop(self) -> None:
            stopped.append("server")

    def run(settings: stack.StackSettings, env: dict[str, str], running: list[object]) -> None:
        running.append(Server())
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler runs here

    class ForwardedByMake(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().endswith("stopping"):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.2)  # a handler still in would raise here, inside the write

    monkeypatch.setattr(stack, "_run", run)
    caplog.set_level(logging.INFO, logger=stack.log.name)
    forwarded = ForwardedByMake()
    stack.log.addHandler(forwarded)
    try:
        code = stack.up(None, {})  # type: ignore[arg-type]
    finally:
        stack.log.removeHandler(forwarded)
    assert code == 0
    assert stopped == ["server"]
    assert [r.getMessage() for r in caplog.records if r.name == stack.log.name] == ["SIGTERM: stopping"]


def test_up_serves_every_model_of_a_directory_and_follows_it(
    tmp_path: Path, s3_env: dict[str, str], s3_client: Any
) -> None:
    """S3 configured and NEXUS_META_PATH a directory: no demo model published; every model synced, served by
    name, a new file added and a removed one unloaded while it runs."""
    directory = tmp_path / "meta"
    directory.mkdir()
    alpha = demo.DemoSpec(name="alpha", hidden=16, layers=1)
    beta = demo.DemoSpec(name="beta", width=8, outputs=3, heads=2, hidden=16, layers=1)
    gamma = demo.DemoSpec(name="gamma", width=3, outputs=1, hidden=16, layers=1)
    for spec in (alpha, beta):
        publish_into(spec, s3_client, directory)
    ports = stack_ports()
    env = {**s3_env, **ports, "NEXUS_META_PATH": str(directory), "DEVICE": "cpu", "INSTANCE_COUNT": "1"}
    log_path = tmp_path / "up.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "nexusml", "up"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    proxy = f"http://127.0.0.1:{ports['PORT']}"

    def answers(spec: demo.DemoSpec) -> int:
        return _predict(proxy, f"/models/{spec.name}/predict", spec.width)[0]

    def until(check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 120
        while not check():
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)

    try:
        wait_until_ready(process, proxy, log_path)
        assert (answers(alpha), answers(beta)) == (200, 200)
        assert not (tmp_path / ".nexus_meta.json").exists()  # no demo model published
        until(lambda: "/models/beta/predict" in log_path.read_text())  # the banner, once the watcher is up
        publish_into(gamma, s3_client, directory)
        until(lambda: answers(gamma) == 200)
        (directory / "gamma.json").unlink()
        until(lambda: not (tmp_path / "model_repository" / "gamma").exists())
        until(lambda: answers(gamma) == 404)
        assert answers(alpha) == 200
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
        log.close()
    assert code == 0, log_path.read_text()[-3000:]
