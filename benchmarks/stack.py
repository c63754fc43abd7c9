"""The servers a benchmark run needs, built through the project's own pipeline.

local S3 (moto) -> each model published as the control plane would -> `nexus sync` twice per model into one
repository: `<name>` with the project's batching defaults and `<name>_nobatch` (same artifact, a copy of
the metadata under another name, synced with `DYNAMIC_BATCHING=false`) -> one Triton serving both ->
the proxy (`nexus proxy`, the harness's `ProxyProcess`) and the naive server, started per path and stopped after it.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

from benchmarks.models import ModelCase
from benchmarks.parsing import served_precision
from nexusml.core.errors import NexusError
from nexusml.core.metadata import ModelMetadata
from nexusml.core.process import ManagedProcess
from nexusml.testing.environment import base_environment, free_port
from nexusml.testing.models import sync_into
from nexusml.testing.servers import ProxyProcess, s3_client, s3_environment, start_local_s3, start_triton
from nexusml.triton.server import TritonServer

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "nexus-bench"


class BenchStack:
    """Everything under `workdir`; `start()` leaves Triton serving every case, `stop()` ends all children."""

    def __init__(
        self,
        workdir: Path,
        cases: list[ModelCase],
        device: str = "cpu",
        sync_env: dict[str, str] | None = None,
        nobatch_copies: bool = True,
    ) -> None:
        self.workdir = workdir
        self.cases = cases
        self.device = device
        self.sync_env = sync_env or {}
        self.nobatch_copies = nobatch_copies
        self.repository = workdir / "model_repository"
        self.metas: dict[str, ModelMetadata] = {}
        self.configs: dict[str, str] = {}
        self.triton: TritonServer | None = None
        self._children: list[ManagedProcess] = []

    def start(self) -> None:
        self.prepare()
        self.start_triton()

    def prepare(self) -> None:
        """Publish every case to a local S3 and sync it into the repository (twice: batching on and off)."""
        s3 = start_local_s3(self.workdir / "moto.log")
        try:
            s3_env = s3_environment(s3, BUCKET)
            client = s3_client(s3_env)
            for case in self.cases:
                meta = case.publish(client, BUCKET, self.workdir / "export", s3.endpoint_url)
                self._sync(meta, s3_env, batching=True)
                if self.nobatch_copies and not case.large_only:  # a companion runs on the batching copy only
                    self._sync(dataclasses.replace(meta, name=case.nobatch_key), s3_env, batching=False)
        finally:
            s3.stop()  # everything is in the repository now

    def start_triton(self) -> None:
        self.triton = start_triton(self.repository, self.workdir, TRITON_STARTUP_TIMEOUT_S="300")

    def _sync(self, meta: ModelMetadata, s3_env: dict[str, str], batching: bool) -> None:
        settings = {**self.sync_env, "DEVICE": self.device, "DYNAMIC_BATCHING": "true" if batching else "false"}
        sync_into(meta, s3_env, self.repository, **settings)
        self.metas[meta.name] = meta
        self.configs[meta.name] = (self.repository / meta.name / "config.pbtxt").read_text()

    def model_file(self, case: ModelCase) -> Path:
        meta = self.metas[case.key]
        return self.repository / meta.name / str(meta.version) / meta.artifact.filename

    def grpc_address(self) -> str:
        assert self.triton is not None
        return f"{self.triton.settings.host}:{self.triton.settings.grpc_port}"

    # ------------------------------------------------------------------------------------ child servers

    def _start(self, process: ManagedProcess) -> ManagedProcess:
        process.start()
        self._children.append(process)
        return process

    def stop_child(self, process: ManagedProcess) -> None:
        process.stop()
        if process in self._children:
            self._children.remove(process)

    def start_naive(
        self, case: ModelCase, threads: int = 1, module: str = "naive_server"
    ) -> tuple[ManagedProcess, str]:
        """A one-forward-per-request baseline: `naive_server` (aiohttp) or `fastapi_server` (FastAPI + uvicorn)."""
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            f"benchmarks.{module}",
            "--model-file",
            str(self.model_file(case)),
            "--port",
            str(port),
            "--threads",
            str(threads),
            "--device",
            "cuda" if self.device == "cuda" else "cpu",
            "--precision",
            served_precision(self.configs[case.key]),
            "--input-shape",
            ",".join(str(dim) for dim in case.input_shape),
        ]
        env = {**base_environment(), "PYTHONPATH": str(ROOT)}
        process = ManagedProcess(
            module.replace("_", " "),
            argv,
            env,
            ready_url=f"http://127.0.0.1:{port}/healthz",
            startup_timeout_s=120,
            stop_timeout_s=10,
            log_file=self.workdir / f"{module}.log",
        )
        return self._start(process), f"http://127.0.0.1:{port}"

    def proxy_env(self, model: str, workers: int, body_bytes: int, extra: dict[str, str]) -> dict[str, str]:
        """The proxy's settings for one path (its port and host are the harness's)."""
        assert self.triton is not None
        return {
            "MODEL_SERVER_URL": self.triton.grpc_url,
            "MODEL_NAME": model,
            "PROXY_WORKERS": str(workers),
            "MAX_IN_FLIGHT": "4096",
            "MAX_BODY_BYTES": str(max(1 << 20, 2 * body_bytes)),
            **extra,
        }

    def start_proxy(
        self, model: str, workers: int = 1, body_bytes: int = 0, extra: dict[str, str] | None = None
    ) -> tuple[ManagedProcess, str]:
        """`nexus proxy` for `model` over gRPC; raises `ProxyUnavailable` when it cannot start."""
        env = self.proxy_env(model, workers, body_bytes, extra or {})
        process = ProxyProcess(self.workdir / f"proxy-{model}.log", stop_timeout_s=25, **env)
        try:
            process.start()
        except NexusError as err:
            raise ProxyUnavailable(str(err)) from err  # one line: the cause and the proxy's last log lines
        self._children.append(process)
        return process, process.url

    def stop(self) -> None:
        for process in reversed(self._children):
            process.stop()
        self._children.clear()
        if self.triton is not None:
            self.triton.stop()
            self.triton = None

    def __enter__(self) -> BenchStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class ProxyUnavailable(RuntimeError):
    """The proxy could not be started: its paths are reported as not available."""
