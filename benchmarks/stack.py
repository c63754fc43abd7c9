"""The servers a benchmark run needs, built through the project's own pipeline.

local S3 (moto) -> each model published as the control plane would -> `nexus sync` twice per model into one
repository: `<name>` with the project's batching defaults and `<name>_nobatch` (same artifact, a copy of
the metadata under another name, synced with `DYNAMIC_BATCHING=false`) -> one Triton serving both ->
the proxy (`python -m proxy`) and the naive server, started per path and stopped after it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from benchmarks.models import ModelCase
from nexusml.core.errors import NexusError
from nexusml.core.metadata import ModelMetadata
from nexusml.core.process import ManagedProcess
from nexusml.core.settings import load
from nexusml.s3local import CREDENTIALS, LocalS3
from nexusml.sync import storage
from nexusml.sync.pipeline import sync
from nexusml.sync.settings import S3Settings, SyncSettings, TritonSettings
from nexusml.sync.triton import TritonServer

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "nexus-bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_environment() -> dict[str, str]:
    """This process's environment without anything pointing at a real AWS account or another stack."""
    drop = ("AWS_", "MODEL_", "BATCH_", "PROXY_", "TRITON_")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop) and k not in ("PORT", "HOST", "DEVICE")}


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
        env = base_environment()
        s3 = LocalS3(free_port(), env, log_file=self.workdir / "moto.log")
        s3.start()
        saved = {name: os.environ.get(name) for name in CREDENTIALS}
        os.environ.update(CREDENTIALS)  # boto3 reads credentials from this process's environment
        try:
            s3_env = {**env, **s3.client_environment(), "MODEL_BUCKET": BUCKET}
            client = storage.client(load(S3Settings, s3_env))
            client.create_bucket(Bucket=BUCKET)
            for case in self.cases:
                meta = case.publish(client, BUCKET, self.workdir / "export", s3.endpoint_url)
                self._sync(meta, s3_env, batching=True)
                if self.nobatch_copies:
                    self._sync(dataclasses.replace(meta, name=case.nobatch_key), s3_env, batching=False)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            s3.stop()  # everything is in the repository now

    def start_triton(self) -> None:
        env = base_environment()
        self.triton = TritonServer(
            load(
                TritonSettings,
                {
                    "MODEL_REPOSITORY": str(self.repository),
                    "TRITON_HTTP_PORT": str(free_port()),
                    "TRITON_GRPC_PORT": str(free_port()),
                    "TRITON_METRICS_PORT": str(free_port()),
                    "TRITON_EXIT_TIMEOUT_S": "5",
                    "TRITON_STARTUP_TIMEOUT_S": "300",
                },
            ),
            env,
            log_file=self.workdir / "triton.log",
        )
        self.triton.start()

    def _sync(self, meta: ModelMetadata, s3_env: dict[str, str], batching: bool) -> None:
        env = {
            **s3_env,
            **self.sync_env,
            "MODEL_REPOSITORY": str(self.repository),
            "DEVICE": self.device,
            "DYNAMIC_BATCHING": "true" if batching else "false",
        }
        sync(meta, load(SyncSettings, env))
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

    def start_naive(self, case: ModelCase, threads: int = 1) -> tuple[ManagedProcess, str]:
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "benchmarks.naive_server",
            "--model-file",
            str(self.model_file(case)),
            "--port",
            str(port),
            "--threads",
            str(threads),
            "--device",
            "cuda" if self.device == "cuda" else "cpu",
        ]
        env = {**base_environment(), "PYTHONPATH": str(ROOT)}
        process = ManagedProcess(
            "naive server",
            argv,
            env,
            ready_url=f"http://127.0.0.1:{port}/healthz",
            startup_timeout_s=120,
            stop_timeout_s=10,
            log_file=self.workdir / "naive.log",
        )
        return self._start(process), f"http://127.0.0.1:{port}"

    def proxy_env(self, model: str, port: int, workers: int, body_bytes: int, extra: dict[str, str]) -> dict[str, str]:
        assert self.triton is not None
        return {
            **base_environment(),
            "PYTHONPATH": str(ROOT),
            "MODEL_SERVER_URL": self.triton.grpc_url,
            "MODEL_NAME": model,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "PROXY_WORKERS": str(workers),
            "ACCESS_LOG": "false",
            "LOG_LEVEL": "warning",
            "MAX_IN_FLIGHT": "4096",
            "MAX_BODY_BYTES": str(max(1 << 20, 2 * body_bytes)),
            **extra,
        }

    def start_proxy(
        self, model: str, workers: int = 1, body_bytes: int = 0, extra: dict[str, str] | None = None
    ) -> tuple[ManagedProcess, str]:
        """`python -m proxy` for `model` over gRPC; raises `ProxyUnavailable` when it cannot start."""
        if not (ROOT / "proxy" / "__main__.py").exists():
            raise ProxyUnavailable("proxy/ has no __main__.py")
        assert self.triton is not None
        port = free_port()
        env = self.proxy_env(model, port, workers, body_bytes, extra or {})
        process = ManagedProcess(
            f"proxy ({model})",
            [sys.executable, "-m", "proxy"],
            env,
            ready_url=f"http://127.0.0.1:{port}/readyz",
            startup_timeout_s=60,
            stop_timeout_s=25,
            log_file=self.workdir / f"proxy-{model}.log",
        )
        try:
            return self._start(process), f"http://127.0.0.1:{port}"
        except NexusError as err:
            tail = _tail(self.workdir / f"proxy-{model}.log")
            raise ProxyUnavailable(f"{err}{': ' + tail if tail else ''}") from err

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


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])
