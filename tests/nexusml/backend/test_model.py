"""The Python-backend model (nexusml/backend/model.py): its memory report in this process, with Triton's stub module
faked; stage timings, precision and padding inside a real Triton."""

from __future__ import annotations

import ast
import atexit
import dataclasses
import importlib
import importlib.util
import json
import os
import re
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import torch

from nexusml.command import demo
from nexusml.core.errors import NexusError
from nexusml.core.metadata import ModelMetadata, PrecisionHints
from nexusml.sync.triton_config import from_pbtxt, instance_count
from nexusml.testing.artifacts import put
from nexusml.testing.models import DEMO_SPEC, PublishedModel, sync_into
from nexusml.testing.polling import wait_until
from nexusml.testing.servers import start_triton, triton_infer
from nexusml.triton.server import TritonServer
from proxy.stacked import PADDING_PARAMETER
from tests.nexusml.conftest import MODEL_FILE, BackendLogger

ROWS = np.array([[1, 2, 3, 4, 5], [0.5, -1, 2, 0, 3]], dtype=np.float32)


ARGS = {
    "model_name": "alpha",
    "model_version": "3",
    "model_instance_name": "alpha_0_1",
    "model_repository": "{root}/repository/alpha",
}


def _report(backend: types.ModuleType, tmp_path: Path, root: Path, interval_s: float, made: bool = True) -> Any:
    """alpha_0_1's report under `root`, whose repository directory the watcher made (`made`) or not."""
    args = {key: value.format(root=tmp_path) for key, value in ARGS.items()}
    if made:
        backend.report_dir(tmp_path / "repository", root).mkdir(parents=True, exist_ok=True)
    return backend.MemoryReport(args, torch.device("cpu"), BackendLogger, root=root, interval_s=interval_s)


@pytest.fixture
def report(backend: types.ModuleType, tmp_path: Path) -> Iterator[Any]:
    """alpha's instance alpha_0_1 reporting under `tmp_path / "shm"`, not refreshed during a test."""
    made = _report(backend, tmp_path, tmp_path / "shm", interval_s=3600)
    yield made
    made.stop()


def _wait_for(path: Path) -> dict[str, Any]:
    assert wait_until(path.exists, 30, interval_s=0.01), f"{path} was not written again"
    return json.loads(path.read_text())


def test_an_instance_reports_its_memory_before_initialize_returns(
    report: Any, backend: types.ModuleType, tmp_path: Path
) -> None:
    directory = backend.report_dir(tmp_path / "repository", tmp_path / "shm")
    assert report.path == directory / "alpha@alpha_0_1.json"
    written = json.loads(report.path.read_text())
    assert written.pop("written") <= time.time()
    assert written.pop("host_bytes") >= written.pop("private_bytes") > 2**20
    assert written == {"model": "alpha", "version": "3", "instance": "alpha_0_1", "pid": os.getpid(), "device_bytes": 0}
    # the watcher runs as another process: it must be able to read the file
    assert report.path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in directory.iterdir()] == ["alpha@alpha_0_1.json"]  # no temporary file left
    assert BackendLogger.warnings == []


def test_the_report_is_refreshed_until_stopped_then_removed(backend: types.ModuleType, tmp_path: Path) -> None:
    report = _report(backend, tmp_path, tmp_path / "shm", interval_s=0.01)
    first = json.loads(report.path.read_text())
    report.path.unlink()
    assert _wait_for(report.path)["written"] > first["written"]
    report.stop()
    assert not report.path.exists()
    assert not report.thread.is_alive()


def test_stopping_leaves_the_report_another_process_wrote(report: Any) -> None:
    """Triton loads a model's next version before it finalizes the last: the same instance name, another stub."""
    report.stop()
    theirs = {"model": "alpha", "version": "4", "instance": "alpha_0_1", "pid": os.getpid() + 1}
    report.path.write_text(json.dumps(theirs))
    report.stop()
    assert json.loads(report.path.read_text()) == theirs


def test_a_report_that_cannot_be_written_is_logged_once_and_never_fails_the_model(
    backend: types.ModuleType, tmp_path: Path
) -> None:
    report = _report(backend, tmp_path, tmp_path / "shm", interval_s=0.01, made=True)
    report.stop()
    report.path.mkdir()  # the report's name taken by a directory: the rename fails
    BackendLogger.warnings.clear()
    report = _report(backend, tmp_path, tmp_path / "shm", interval_s=0.01)
    for _ in range(3):
        report.write()
    report.stop()
    assert len(BackendLogger.warnings) == 1, BackendLogger.warnings
    assert BackendLogger.warnings[0].startswith(f"memory report {report.path} not written: ")


def test_without_the_watchers_directory_nothing_is_measured(backend: types.ModuleType, tmp_path: Path) -> None:
    report = _report(backend, tmp_path, tmp_path / "shm", interval_s=0.01, made=False)
    report.stop()
    assert not (tmp_path / "shm").exists()
    assert BackendLogger.warnings == []


RSS = 25 * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize(
    ("rollup", "expected"),
    [
        pytest.param(
            "Rss:  2048 kB\nPss:  1234 kB\nShared_Clean: 9 kB\nPrivate_Clean: 100 kB\nPrivate_Dirty: 900 kB\n",
            (1234 * 1024, 1000 * 1024),
            id="pss-and-private",
        ),
        pytest.param(None, (RSS, RSS), id="no-smaps-rollup-rss"),
        pytest.param("Rss: 2048 kB\n", (RSS, RSS), id="no-pss-line-rss"),
    ],
)
def test_host_bytes_are_the_pss_and_private_else_the_rss(
    backend: types.ModuleType, tmp_path: Path, rollup: str | None, expected: tuple[int, int]
) -> None:
    rollup_file, statm = tmp_path / "smaps_rollup", tmp_path / "statm"
    if rollup is not None:
        rollup_file.write_text(rollup)
    statm.write_text("1000 25 10 1 0 30 0\n")  # size, resident, shared... in pages
    assert backend.own_host_bytes(rollup_file, statm) == expected


def _model_stages() -> tuple[str, ...]:
    """model.py's `STAGES`, read from its source: it imports Triton's stub module, so it cannot be imported here."""
    for node in ast.parse(MODEL_FILE.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "STAGES" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise AssertionError(f"no STAGES in {MODEL_FILE}")


def _logged_stages(log: str, model: str) -> dict[str, float]:
    """The `nexus_backend_stages` lines of `model`: each instance's last (cumulative) line, summed over instances."""
    latest: dict[str, dict[str, float]] = {}
    for found in re.finditer(
        rf"nexus_backend_stages model={model} version=\S+ pid=(\d+) ((?:\w+=[0-9.eE+-]+ ?)+)", log
    ):
        latest[found.group(1)] = {key: float(value) for key, value in (p.split("=") for p in found.group(2).split())}
    return {key: sum(values.get(key, 0.0) for values in latest.values()) for key in ("batches", *_model_stages())}


def _outputs(server: TritonServer, model: str) -> list[np.ndarray]:
    result = triton_infer(server, model, ROWS)
    return [result.as_numpy(f"OUTPUT__{i}") for i in range(DEMO_SPEC.heads)]


@pytest.fixture(scope="module")
def precision_repository(demo_model: PublishedModel, s3_env: dict[str, str], tmp_path_factory: Any) -> Path:
    """The demo model as `demo_fp32` and, with the metadata allowing bf16, as `demo_bf16` (PRECISION=bf16)."""
    repository = tmp_path_factory.mktemp("precision") / "model_repository"
    meta = demo_model.meta
    timed = {"BATCH_TIMEOUT_MS": "1", "STAGE_LOG_INTERVAL_S": "0.2"}
    sync_into(dataclasses.replace(meta, name="demo_fp32"), s3_env, repository, **timed)
    allowed = dataclasses.replace(meta, name="demo_bf16", precision=PrecisionHints(("bf16",), 0.05))
    return sync_into(allowed, s3_env, repository, PRECISION="bf16", **timed)


@pytest.mark.integration
def test_reduced_precision_answers_within_its_tolerance(precision_repository: Path, tmp_path: Path) -> None:
    """bf16 runs on a CPU too, so the GPU's reduced-precision path is exercised here end to end; and every
    stage of a batch is timed and logged (STAGE_LOG_INTERVAL_S), which is what `make bench` reads."""
    server = start_triton(precision_repository, tmp_path)
    try:
        reference = demo.reference_outputs(DEMO_SPEC, ROWS.tolist())
        full, reduced = _outputs(server, "demo_fp32"), _outputs(server, "demo_bf16")
        time.sleep(0.3)
        _outputs(server, "demo_fp32")  # the first execute after the interval logs the totals
    finally:
        server.stop()
    log = (tmp_path / "triton.log").read_text()
    assert "demo_bf16 v1: model.pt loaded on cpu (bf16)" in log
    stages = _logged_stages(log, "demo_fp32")
    assert stages["batches"] >= 2
    assert all(stages[stage] > 0 for stage in _model_stages()), stages
    for want, exact, approximate in zip(reference, full, reduced, strict=True):
        np.testing.assert_allclose(exact, want, rtol=1e-5, atol=1e-6)
        assert approximate.dtype == np.float32
        assert np.abs(approximate - want).max() <= 0.05 * np.abs(want).max()
        assert not np.array_equal(approximate, exact)  # it did run in bf16


class Fp32Only(torch.nn.Module):
    """The demo's interface with a weight traced in as a constant, which `.to(bf16)` leaves in fp32."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(x @ torch.ones(DEMO_SPEC.width, DEMO_SPEC.outputs) for _ in range(DEMO_SPEC.heads))


def _fp32_only(meta: ModelMetadata, s3_client: Any, tmp_path: Path) -> ModelMetadata:
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(Fp32Only(), torch.zeros(2, DEMO_SPEC.width)), str(path))
    uri, sha, size = put(s3_client, "fp32-only/model.pt", path.read_bytes())
    return dataclasses.replace(meta, artifact=dataclasses.replace(meta.artifact, uri=uri, sha256=sha, size=size))


@pytest.mark.parametrize(
    ("tolerance", "fp32_only", "logged"),
    [
        pytest.param(1e-9, False, "output OUTPUT__0 in bf16 differs from fp32 by", id="drifts-too-far"),
        pytest.param(0.05, True, "the precision check's batch fails in bf16: RuntimeError: ", id="fails-in-bf16"),
    ],
)
@pytest.mark.integration
def test_a_precision_the_model_cannot_keep_is_refused_at_load(
    demo_model: PublishedModel,
    s3_env: dict[str, str],
    s3_client: Any,
    tmp_path: Path,
    tolerance: float,
    fp32_only: bool,
    logged: str,
) -> None:
    meta = _fp32_only(demo_model.meta, s3_client, tmp_path) if fp32_only else demo_model.meta
    allowed = dataclasses.replace(meta, precision=PrecisionHints(("bf16",), tolerance))
    repository = sync_into(allowed, s3_env, tmp_path / "model_repository", PRECISION="bf16")
    with pytest.raises(NexusError):
        start_triton(repository, tmp_path).stop()
    assert logged in (tmp_path / "triton.log").read_text()


def test_a_load_runs_at_idle_priority_and_leaves_the_caller_as_it_was(backend: types.ModuleType) -> None:
    policy = backend.at_idle_priority(lambda: os.sched_getscheduler(0))
    assert policy == os.SCHED_IDLE
    assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the stub's own thread, which runs the inferences


def test_a_load_that_fails_raises_in_the_callers_thread(backend: types.ModuleType) -> None:
    def broken() -> None:
        raise NexusError("weights unreadable")

    with pytest.raises(NexusError, match="weights unreadable"):
        backend.at_idle_priority(broken)


@pytest.mark.integration
def test_a_stub_serves_in_a_session_of_its_own_at_the_normal_weight(
    backend: types.ModuleType, precision_repository: Path, tmp_path: Path
) -> None:
    """Each stub left Triton's session as it started (where the kernel's autogroups are on), and weighs as any
    session once loaded: at the lowest weight it would serve slower than every other process on the host."""
    enabled = backend.AUTOGROUP_ENABLED
    autogroups = enabled.exists() and enabled.read_text().strip() == "1"  # absent: a kernel built without them
    server = start_triton(precision_repository, tmp_path)
    try:
        assert server.process is not None
        stubs = psutil.Process(server.process.pid).children()
        assert len(stubs) >= 2, stubs  # one per instance of demo_fp32 and demo_bf16
        for stub in stubs:
            session = os.getsid(stub.pid)
            assert (session == stub.pid) if autogroups else (session == os.getsid(server.process.pid))
            if autogroups:  # asked for in the last warmup; retried past the kernel's rate limit, 0.11 s apart
                autogroup = Path(f"/proc/{stub.pid}/autogroup")
                restored = wait_until(lambda at=autogroup: at.read_text().endswith(" nice 0\n"), 5, interval_s=0.05)
                assert restored, autogroup.read_text()
    finally:
        server.stop()
    log = (tmp_path / "triton.log").read_text()
    assert "CPU weight" not in log
    # Nothing but Triton's warmup ran: each instance counted exactly the executions the backend waits for.
    for model in ("demo_fp32", "demo_bf16"):
        config = from_pbtxt((precision_repository / model / "config.pbtxt").read_text())
        assert _logged_stages(log, model)["batches"] == instance_count(config) * backend.warmup_executions(config)


@pytest.mark.parametrize(
    ("warmup", "executions"),
    [
        pytest.param(None, 0, id="no-warmup"),
        pytest.param([{"name": "batch_1", "batch_size": 1}], 1, id="count-absent-is-once"),
        pytest.param([{"name": "batch_1", "batch_size": 1, "count": 0}], 1, id="count-0-is-once"),
        pytest.param(
            [{"name": "batch_1", "batch_size": 1}, {"name": "batch_4", "batch_size": 4, "count": 3}],
            4,
            id="counts-add-up",
        ),
        pytest.param([{"name": "batch_0", "count": 2}], 0, id="no-batch-size-skipped"),
    ],
)
def test_the_warmup_executions_are_read_from_the_config(
    backend: types.ModuleType, warmup: list[dict[str, Any]] | None, executions: int
) -> None:
    config = {} if warmup is None else {"model_warmup": warmup}
    assert backend.warmup_executions(config) == executions


def test_a_stub_asks_for_the_normal_weight_once_its_last_warmup_has_run(
    backend: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Triton's warmup, the first passes through the model, runs at the lowest weight the load started at."""
    asked: list[str] = []
    monkeypatch.setattr(backend, "restore_group_weight", lambda logger, model, ending: asked.append(model))
    instance = object.__new__(backend.TritonPythonModel)
    instance.clock = backend.StageClock(torch.device("cpu"), "", 0)
    instance.logger, instance.name, instance.ending = BackendLogger, "alpha", threading.Event()
    instance.warmups_left = 2  # the config's two warmup executions
    instance.execute([])
    assert asked == []
    instance.execute([])
    assert asked == ["alpha"]
    instance.execute([])
    assert asked == ["alpha"]


@pytest.mark.parametrize(
    ("parent", "enabled", "leader", "own", "calls"),
    [
        pytest.param("tritonserver\n", "1\n", False, True, ["setsid"], id="a-stub-triton-started"),
        pytest.param("tritonserver\n", "1\n", True, True, [], id="a-stub-its-bash-moved"),
        pytest.param("pytest\n", "1\n", False, False, [], id="another-process"),
        pytest.param("tritonserver\n", "0\n", False, False, [], id="autogroups-off"),
    ],
)
def test_only_a_stub_that_triton_started_leaves_its_session(
    backend: types.ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    parent: str,
    enabled: str,
    leader: bool,
    own: bool,
    calls: list[str],
) -> None:
    """`leader`: the process already leads a session (nexusml/triton/stub_session.sh made one before it loaded)."""
    made: list[str] = []
    monkeypatch.setattr(backend.os, "setsid", lambda: made.append("setsid"))
    monkeypatch.setattr(backend.os, "getsid", lambda pid: os.getpid() if leader else -1)
    (tmp_path / "comm").write_text(parent)
    (tmp_path / "enabled").write_text(enabled)
    assert backend.own_scheduling_group(tmp_path / "comm", tmp_path / "enabled") is own
    assert made == calls


@pytest.mark.parametrize(
    ("text", "nice"),
    [
        pytest.param("/autogroup-12 nice 19\n", 19, id="lowered"),
        pytest.param("/autogroup-12 nice 0\n", 0, id="normal"),
        pytest.param("", None, id="empty"),
        pytest.param(None, None, id="absent"),
    ],
)
def test_the_sessions_nice_is_read_from_its_autogroup(
    backend: types.ModuleType, tmp_path: Path, text: str | None, nice: int | None
) -> None:
    if text is not None:
        (tmp_path / "autogroup").write_text(text)
    assert backend.group_nice(tmp_path / "autogroup") == nice


@pytest.mark.parametrize(
    ("parent", "stub"),
    [
        pytest.param("tritonserver\n", True, id="triton"),
        pytest.param("pytest\n", False, id="another-process"),
        pytest.param(None, False, id="parent-gone"),
    ],
)
def test_only_a_process_triton_started_is_a_stub(
    backend: types.ModuleType, tmp_path: Path, parent: str | None, stub: bool
) -> None:
    if parent is not None:
        (tmp_path / "comm").write_text(parent)
    assert backend.started_by_triton(tmp_path / "comm") is stub


def test_a_process_that_imports_the_backend_keeps_its_own_exit(backend: types.ModuleType) -> None:
    """Tests and tools import this file: only a stub's exit skips the interpreter's teardown (a handler registered
    here would end pytest itself with status 0, whatever its tests did)."""
    before = atexit._ncallbacks()
    spec = importlib.util.spec_from_file_location("nexus_backend_model_again", MODEL_FILE)
    assert spec and spec.loader
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert atexit._ncallbacks() == before
    assert not backend.STUB


def test_a_stub_ends_without_tearing_down_its_interpreter(
    backend: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    ended: list[int] = []

    def exit_now(status: int) -> None:
        ended.append(status)

    monkeypatch.setattr(backend.os, "_exit", exit_now)
    backend.exit_without_teardown()
    assert ended == [0]


def test_a_session_the_kernel_refuses_leaves_the_stub_where_it_was(
    backend: types.ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused() -> None:
        raise PermissionError("a process group leader")

    monkeypatch.setattr(backend.os, "setsid", refused)
    monkeypatch.setattr(backend.os, "getsid", lambda pid: -1)
    (tmp_path / "comm").write_text("tritonserver\n")
    (tmp_path / "enabled").write_text("1\n")
    assert backend.own_scheduling_group(tmp_path / "comm", tmp_path / "enabled") is False


class Autogroup:
    """`/proc/self/autogroup` as the kernel answers an unprivileged writer: EAGAIN for the first `busy` writes."""

    def __init__(self, busy: int, refused: bool = False) -> None:
        self.busy, self.refused, self.written = busy, refused, []

    def write_text(self, text: str) -> None:
        if self.refused:
            raise PermissionError("not allowed")
        if self.busy:
            self.busy -= 1
            raise BlockingIOError("try again")
        self.written.append(text)


@pytest.mark.parametrize(
    ("busy", "refused", "tries", "set_"),
    [
        pytest.param(0, False, 1, True, id="at-once"),
        pytest.param(2, False, 3, True, id="after-the-kernels-rate-limit"),
        pytest.param(3, False, 3, False, id="rate-limited-throughout"),
        pytest.param(0, True, 3, False, id="refused"),
        pytest.param(200, False, None, True, id="until-set"),
    ],
)
def test_the_group_weight_is_set_through_the_kernels_rate_limit(
    backend: types.ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    busy: int,
    refused: bool,
    tries: int | None,
    set_: bool,
) -> None:
    monkeypatch.setattr(backend.time, "sleep", lambda _: None)
    autogroup = Autogroup(busy, refused)
    assert backend.set_group_nice(19, autogroup, tries=tries) is set_
    assert autogroup.written == (["19\n"] if set_ else [])


@pytest.mark.parametrize(
    ("busy", "warned"),
    [
        pytest.param(0, False, id="at-once"),
        pytest.param(3, False, id="from-the-thread-within-its-first-tries"),
        pytest.param(500, True, id="from-the-thread-past-them-said-in-the-log"),
    ],
)
def test_a_stub_asks_for_the_normal_weight_until_it_has_it_without_holding_its_load(
    backend: types.ModuleType, monkeypatch: pytest.MonkeyPatch, busy: int, warned: bool
) -> None:
    waited_in_initialize: list[float] = []
    caller = threading.current_thread()
    monkeypatch.setattr(
        backend.time,
        "sleep",
        lambda s: waited_in_initialize.append(s) if threading.current_thread() is caller else None,
    )
    autogroup = Autogroup(busy=busy)
    backend.restore_group_weight(BackendLogger, "alpha", threading.Event(), autogroup)
    assert waited_in_initialize == []  # one try in the caller, the rest in the thread
    assert wait_until(lambda: autogroup.written, 10, interval_s=0.01), "the weight was never restored"
    assert autogroup.written == ["0\n"]
    warning = "alpha: its stub still has the lowest CPU weight it started at; asking the kernel again"
    assert BackendLogger.warnings == ([warning] if warned else [])


def test_a_stub_that_ends_stops_asking_for_the_normal_weight(
    backend: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once finalize lowered the weight for the exit, a late 0 would undo it."""
    monkeypatch.setattr(backend.time, "sleep", lambda _: None)
    ending = threading.Event()
    ending.set()
    autogroup = Autogroup(busy=1000)
    assert backend.set_group_nice(0, autogroup, None, ending) is False
    assert autogroup.written == []


class Parameters:
    """A request as the backend reads its parameters (`InferenceRequest.parameters()`: a JSON object's text)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def parameters(self) -> str:
        return self.text


@pytest.mark.parametrize(
    ("text", "rows", "expected"),
    [
        pytest.param('{"nexus_padding_rows": 3}', 4, 3, id="padding"),
        pytest.param("{}", 4, 0, id="none"),
        pytest.param("", 4, 0, id="empty"),
        pytest.param('{"priority": 1}', 4, 0, id="other-parameters"),
        pytest.param('{"nexus_padding_rows": 9}', 4, 3, id="at-least-one-real-row"),
        pytest.param('{"nexus_padding_rows": 2}', 0, 0, id="no-rows"),
        pytest.param('{"nexus_padding_rows": -2}', 4, 0, id="negative"),
        pytest.param('{"nexus_padding_rows": "2"}', 4, 0, id="a-string"),
        pytest.param('{"nexus_padding_rows": true}', 4, 0, id="a-boolean"),
        pytest.param('{"nexus_padding_rows": 1.5}', 4, 0, id="a-fraction"),
        pytest.param('["nexus_padding_rows"]', 4, 0, id="not-an-object"),
        pytest.param('{"nexus_padding_rows": ', 4, 0, id="not-json"),
    ],
)
def test_the_padding_a_request_names_is_read_within_its_rows(
    backend: types.ModuleType, text: str, rows: int, expected: int
) -> None:
    assert backend.padding_rows(Parameters(text), rows) == expected


def test_a_request_without_parameters_has_no_padding(backend: types.ModuleType) -> None:
    assert backend.padding_rows(object(), 4) == 0


def test_the_backend_reads_the_padding_parameter_the_proxy_sends(backend: types.ModuleType) -> None:
    assert backend.PADDING_PARAMETER == PADDING_PARAMETER


PADDED = np.array([[1, 2, 3, 4, 5], [0.5, -1, 2, 0, 3], [9, 9, 9, 9, 9], [-7, 3, 0, 1, 2]], dtype=np.float32)


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_rows_a_request_says_are_padding_are_left_out_of_the_forward(triton: TritonServer, protocol: str) -> None:
    """The last two rows are named padding: their outputs are the last real row's, not what they would give."""
    module: Any = importlib.import_module(f"tritonclient.{protocol}")
    url = triton.grpc_url if protocol == "grpc" else triton.http_url
    client = module.InferenceServerClient(url.split("://", 1)[1])
    tensor = module.InferInput("INPUT__0", list(PADDED.shape), "FP32")
    tensor.set_data_from_numpy(PADDED)
    try:
        result = client.infer("demo_mlp", [tensor], parameters={PADDING_PARAMETER: 2})
    finally:
        client.close()
    reference = demo.reference_outputs(DEMO_SPEC, PADDED[:2].tolist())
    for head, want in enumerate(reference):
        got = result.as_numpy(f"OUTPUT__{head}")
        assert got.shape[0] == 4
        np.testing.assert_allclose(got[:2], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got[2:], np.repeat(got[1:2], 2, axis=0))


class Doubling(torch.nn.Module):
    """Twice its input, keeping the row counts of the forwards it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows.append(x.shape[0])
        return x * 2


class StubTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray:
        return self.array


class StubRequest(Parameters):
    def __init__(self, rows: np.ndarray, padding: int) -> None:
        super().__init__(json.dumps({PADDING_PARAMETER: padding}))
        self.tensor = StubTensor("X", rows)


def test_one_forward_runs_every_requests_real_rows_and_each_gets_its_padding_back(
    backend: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub = sys.modules["triton_python_backend_utils"]
    monkeypatch.setattr(stub, "Tensor", StubTensor, raising=False)
    monkeypatch.setattr(stub, "InferenceResponse", lambda output_tensors: output_tensors, raising=False)
    monkeypatch.setattr(stub, "get_input_tensor_by_name", lambda request, name: request.tensor, raising=False)
    instance = object.__new__(backend.TritonPythonModel)
    instance.inputs, instance.outputs = [("X", np.float32)], [("Y", np.float32)]
    instance.device, instance.staging, instance.compute_dtype = torch.device("cpu"), None, torch.float32
    instance.clock = backend.StageClock(torch.device("cpu"), "", 0)
    instance.logger, instance.model = BackendLogger, Doubling()
    instance.preferred = frozenset({2, 3, 4})  # the sizes the proxy pads to
    instance.warmups_left = 0
    rows = np.arange(28, dtype=np.float32).reshape(14, 2)
    first, second, third, fourth = rows[:4], rows[4:6], rows[6:9], rows[9:]
    requests = [StubRequest(first, 3), StubRequest(second, 0), StubRequest(third, 1), StubRequest(fourth, 2)]
    responses = instance.execute(requests)
    assert instance.model.rows == [10]  # 1 + 2 + 2 real rows, and all 5 of a size the proxy never pads to
    expected = [first[[0, 0, 0, 0]], second, third[[0, 1, 1]], fourth]
    for response, want in zip(responses, expected, strict=True):
        np.testing.assert_array_equal(response[0].array, want * 2)
