"""The Triton watchdog: its probe (against a scripted HTTP server and the real Triton), its restart and back-off
rules (on a fake clock), and the container healthcheck mode that ends tritonserver so the engine restarts it."""

from __future__ import annotations

import ast
import itertools
import json
import logging
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from nexusml.command import chart_files
from nexusml.triton import watchdog
from nexusml.triton.server import TritonServer
from nexusml.triton.watchdog import Watchdog, inference_request, probe

CONFIG = {
    "name": "m",
    "max_batch_size": 32,
    "input": [
        {"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": [5]},
        {"name": "MASK", "data_type": "TYPE_FP16", "dims": [-1, 2]},
        {"name": "EXTRA", "data_type": "TYPE_INT64", "dims": [3], "optional": True},
    ],
    "output": [{"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": [2]}],
    "dynamic_batching": {"preferred_batch_size": [16, 4, 8]},
}


@dataclass
class FakeTriton:
    """Answers /v2/models/<m>/{ready,config,infer} with the statuses a test sets; records inference bodies."""

    ready: int = 200
    infer: int = 200
    infer_error: str = "Stub process 'm_0_0' is not healthy."
    bodies: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def fake() -> Iterator[FakeTriton]:
    state = FakeTriton()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path.endswith("/ready"):
                self._answer(state.ready, b"")
            elif self.path.endswith("/config"):
                self._answer(200, json.dumps(CONFIG).encode())
            else:
                self._answer(404, b"{}")

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.bodies.append((dict(self.headers), body))
            error = json.dumps({"error": state.infer_error}).encode()
            self._answer(state.infer, b"{}" if state.infer == 200 else error)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def test_the_probe_sends_zeros_at_the_smallest_preferred_batch_size(fake: FakeTriton) -> None:
    assert probe(fake.url, "m", timeout_s=5) is None
    ((headers, body),) = fake.bodies
    header_length = int(headers["Inference-Header-Content-Length"])
    request = json.loads(body[:header_length])
    # 4 rows (the smallest preferred size: no queue delay); -1 -> 1; optional inputs left out; binary zeros
    assert request["inputs"] == [
        {"name": "INPUT__0", "shape": [4, 5], "datatype": "FP32", "parameters": {"binary_data_size": 80}},
        {"name": "MASK", "shape": [4, 1, 2], "datatype": "FP16", "parameters": {"binary_data_size": 16}},
    ]
    assert body[header_length:] == bytes(96)
    assert request["outputs"] == [{"name": "OUTPUT__0", "parameters": {"binary_data": True}}]


@pytest.mark.parametrize(
    ("config", "shape"),
    [
        pytest.param(
            {"max_batch_size": 0, "input": [{"name": "x", "data_type": "TYPE_INT8", "dims": [3]}]}, [3], id="unbatched"
        ),
        pytest.param(
            {"max_batch_size": 8, "input": [{"name": "x", "data_type": "TYPE_BOOL", "dims": [2]}]},
            [1, 2],
            id="no-preferred-sizes",
        ),
        pytest.param(
            {
                "max_batch_size": 2,
                "input": [{"name": "x", "data_type": "TYPE_STRING", "dims": [1]}],
                "dynamic_batching": {"preferred_batch_size": ["4"]},
            },
            [1, 1],
            id="preferred-above-max-bytes",
        ),
    ],
)  # fmt: skip
def test_inference_request_shapes(config: dict[str, Any], shape: list[int]) -> None:
    header, body = inference_request(config)
    (tensor,) = json.loads(header)["inputs"]
    assert tensor["shape"] == shape
    assert len(body) - len(header) == tensor["parameters"]["binary_data_size"]


@pytest.mark.parametrize(
    ("ready", "infer", "expected"),
    [
        pytest.param(200, 200, None, id="answers"),
        pytest.param(200, 503, None, id="busy-is-not-broken"),
        pytest.param(200, 500, "ready but does not answer an inference: HTTP 500", id="dead-stub"),
        pytest.param(400, 200, "is not ready", id="not-ready"),
    ],
)
def test_probe_verdicts(fake: FakeTriton, ready: int, infer: int, expected: str | None) -> None:
    fake.ready, fake.infer = ready, infer
    cause = probe(fake.url, "m", timeout_s=5)
    if expected is None:
        assert cause is None
    else:
        assert cause is not None and expected in cause, cause
        assert "\n" not in cause
    if ready == 200 and infer == 500:
        assert "Stub process 'm_0_0' is not healthy." in cause


def test_a_server_that_never_answers_is_a_failure_not_a_hang() -> None:
    with socket.socket() as listener:  # accepts connections (backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        cause = probe(f"http://127.0.0.1:{listener.getsockname()[1]}", "m", timeout_s=0.3)
    assert cause is not None and "timed out" in cause


@pytest.mark.integration
def test_probe_against_the_real_triton(triton: TritonServer) -> None:
    assert probe(triton.http_url, "demo_mlp", timeout_s=10) is None
    cause = probe(triton.http_url, "no_such_model", timeout_s=10)
    assert cause is not None and "no_such_model is not ready" in cause


# --- the restart rule, on a fake clock ------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(
    results: list[str | None], *, failures: int = 3, backoff_s: float = 10, backoff_max_s: float = 80
) -> tuple[Watchdog, list[float]]:
    """Poll once per simulated second with probe results taken from `results`; the restart times."""
    clock, restarts = Clock(), []
    outcomes = iter(results)
    dog = Watchdog(
        lambda: next(outcomes),
        lambda cause: restarts.append(clock.now),
        failures=failures,
        interval_s=1,
        backoff_s=backoff_s,
        backoff_max_s=backoff_max_s,
        clock=clock,
    )
    for _ in results:
        clock.now += 1
        dog.poll()
    return dog, restarts


@pytest.mark.parametrize(
    ("results", "restarts"),
    [
        pytest.param([None] * 10, 0, id="healthy"),
        pytest.param(["x", "x", None] * 4, 0, id="failures-not-in-a-row"),
        pytest.param(["x"] * 3, 1, id="k-in-a-row"),
        pytest.param(["x"] * 3 + [None] * 100 + ["x"] * 3, 2, id="healed-then-dies-again-after-stable"),
    ],
)
def test_restarts_after_k_failures_in_a_row(results: list[str | None], restarts: int) -> None:
    dog, times = run(results)
    assert len(times) == restarts == dog.restarts


def test_a_model_broken_for_good_is_restarted_with_growing_back_off() -> None:
    """Always failing for an hour: restarts spaced by 10, 20, 40, 80, 80, ... s, never a tight loop."""
    _, times = run(["broken"] * 3600)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert gaps[:4] == [10, 20, 40, 80]
    assert all(gap == 80 for gap in gaps[4:])
    assert len(times) == 1 + 4 + (3600 - 3 - 150) // 80


def test_the_back_off_resets_only_after_probes_pass_for_its_cap() -> None:
    """Escalated to the cap (80 s), then healed: after 80 s of passing probes the next restarts are 10 s apart
    again; after less, the back-off stays at the cap."""
    escalated = ["x"] * 200  # restarts at +3, +13, +33, +73, +153: the back-off is at its cap
    _, times = run(escalated + [None] * 81 + ["x"] * 30)
    assert times[-1] - times[-2] == 10
    _, times = run(escalated + [None] * 40 + ["x"] * 200)
    assert times[-1] - times[-2] == 80


def test_log_lines_say_why_and_count(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=watchdog.__name__)
    run(["Stub process 'm_0_0' is not healthy."] * 3 + [None] + ["again"] * 3)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors[0] == (
        "watchdog: restarting Triton (restart 1): 3 consecutive probes failed: Stub process 'm_0_0' is not healthy."
    )
    assert errors[1].startswith("watchdog: Triton restart 2 held back ")


# --- the container healthcheck mode ---------------------------------------------------------------------------
@pytest.fixture
def target(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A process with a command name of its own, standing in for the container's tritonserver."""
    name = f"wd{uuid.uuid4().hex[:12]}"  # /proc/<pid>/comm keeps 15 characters
    binary = tmp_path / name
    shutil.copy(shutil.which("sleep") or "/bin/sleep", binary)
    process = subprocess.Popen([str(binary), "600"])
    yield name, process
    process.kill()
    process.wait()


def test_healthcheck_ends_the_server_after_k_failures_once_it_was_healthy(
    fake: FakeTriton, target: tuple[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    name, process = target
    argv = ["--url", fake.url, "--model", "m", "--end-after", "2", "--target", name, "--state", str(tmp_path / "s")]
    fake.infer = 500
    # still starting (never healthy yet): unhealthy, but never ended, however often it fails
    assert [watchdog.main(argv) for _ in range(4)] == [1, 1, 1, 1]
    assert process.poll() is None
    fake.infer = 200
    assert watchdog.main(argv) == 0
    fake.infer = 500
    assert watchdog.main(argv) == 1
    assert process.poll() is None
    assert watchdog.main(argv) == 1  # the second failure in a row: SIGTERM
    assert process.wait(timeout=10) == -15


def test_healthcheck_probes_every_model_of_the_repository(fake: FakeTriton, tmp_path: Path) -> None:
    for model in ("a", "b"):
        (tmp_path / model).mkdir()
        (tmp_path / model / "config.pbtxt").write_text("")
    (tmp_path / ".staging-1").mkdir()  # no config: not a model
    assert watchdog.main(["--url", fake.url, "--repository", str(tmp_path)]) == 0
    assert len(fake.bodies) == 2
    assert watchdog.main(["--url", fake.url, "--repository", str(tmp_path / "empty")]) == 1


@pytest.mark.parametrize(
    ("select", "healthy"),
    [
        pytest.param(["--repository"], True, id="repository-skips-it"),
        pytest.param(["--model", "a"], False, id="named-model-fails"),
    ],
)
def test_a_model_that_is_not_loaded_fails_only_a_probe_that_names_it(
    fake: FakeTriton, tmp_path: Path, select: list[str], healthy: bool
) -> None:
    """One model of many that failed to load (or is loading) is not what a restart heals: the repository's
    healthcheck passes, so neither compose nor the kubelet restarts the Triton the other models are served by."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.pbtxt").write_text("")
    fake.ready = 400
    argv = ["--url", fake.url, *(arg if arg != "--repository" else f"--repository={tmp_path}" for arg in select)]
    assert watchdog.main(argv) == (0 if healthy else 1)
    assert fake.bodies == []  # no inference sent to a model that is not ready


@pytest.mark.parametrize(
    "ready",
    [
        pytest.param(None, id="nothing-listening"),
        pytest.param(500, id="server-error"),
    ],
)
def test_a_triton_that_does_not_answer_fails_even_the_repository_healthcheck(
    fake: FakeTriton, tmp_path: Path, ready: int | None
) -> None:
    """Only Triton's own "not ready" (a 4xx) passes for a model that is not loaded: a Triton down, hung or failing
    is what the healthcheck exists for."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.pbtxt").write_text("")
    if ready is None:
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{free.getsockname()[1]}"
    else:
        fake.ready, url = ready, fake.url
    assert watchdog.main(["--url", url, f"--repository={tmp_path}", "--timeout", "1"]) == 1


def _top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    return imported - {"__future__"}


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(chart_files.STANDALONE, id="standalone-copy"),
        pytest.param(chart_files.SHARED, id="shared-probe-module"),
    ],
)
def test_what_runs_in_tritons_image_needs_only_the_standard_library(path: Path) -> None:
    imported = _top_level_imports(path)
    assert imported <= sys.stdlib_module_names, imported - sys.stdlib_module_names


def test_the_source_imports_nothing_of_ours_but_the_shared_probe_module() -> None:
    assert _top_level_imports(Path(watchdog.__file__)) - sys.stdlib_module_names == {"nexusml"}
    assert chart_files.SHARED_IMPORT in Path(watchdog.__file__).read_text()


def test_the_standalone_script_runs_alone() -> None:
    """It is mounted into NVIDIA's Triton image (compose) and shipped in a ConfigMap (chart)."""
    result = subprocess.run(
        [sys.executable, "-I", chart_files.STANDALONE, "--url", "http://127.0.0.1:9", "--model", "m", "--timeout", "1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1 and result.stderr.startswith("unhealthy: model m is not ready"), result.stderr
