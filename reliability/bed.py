"""The test bed every scenario runs on: local S3 with the demo model published, a synced repository,
and helpers to start private tritonservers and proxies on free loopback ports.

The pieces are the project's shared harness (`nexusml.testing`: `start_triton`, `publish`, `sync_into`,
`ProxyProcess`), reused rather than rewritten: under pytest the
`bed` fixture builds a `Bed` from the session fixtures; `python -m reliability` builds one with
`standalone_bed`, which starts the same servers without pytest. Everything started is stopped by
`Bed.close()`, so no tritonserver, moto or proxy process is left behind.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nexusml.command import demo
from nexusml.testing.models import DEMO_SPEC, TEST_BUCKET, PublishedModel, publish, sync_into
from nexusml.testing.servers import (
    ProxyProcess,
    restart_triton,
    s3_client,
    s3_environment,
    start_local_s3,
    start_triton,
)
from nexusml.triton.server import TritonServer
from reliability import procinfo
from reliability.load import Workload
from reliability.models import expected_output


@dataclass
class Bed:
    workdir: Path
    s3_env: dict[str, str]
    s3_client: Any
    demo_model: PublishedModel
    demo_repository: Path
    shared: TritonServer | None = None
    tritons: list[TritonServer] = field(default_factory=list)
    proxies: list[ProxyProcess] = field(default_factory=list)

    def path(self, name: str) -> Path:
        """A fresh folder for one scenario's files (repositories, logs)."""
        base = self.workdir / name
        index = 0
        while (base.parent / f"{base.name}-{index}").exists():
            index += 1
        target = base.parent / f"{base.name}-{index}"
        target.mkdir(parents=True)
        return target

    def shared_triton(self) -> TritonServer:
        """The Triton on the demo repository that scenarios which do not stop it share."""
        if self.shared is None:
            self.shared = self.triton(self.demo_repository, self.path("shared-triton"))
        return self.shared

    def triton(self, repository: Path, log_dir: Path, **extra: str) -> TritonServer:
        server = start_triton(repository, log_dir, **extra)
        self.tritons.append(server)
        return server

    def restart_triton(self, server: TritonServer, log_dir: Path) -> TritonServer:
        """A new tritonserver with the same settings (ports, repository) as `server`, as an orchestrator would."""
        fresh = restart_triton(server, log_dir)
        self.tritons.append(fresh)
        return fresh

    def kill_triton(self, server: TritonServer) -> None:
        """SIGKILL tritonserver; its Python stubs notice the parent is gone and are reaped here."""
        assert server.process is not None
        stubs = procinfo.children(server.process.pid)
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()
        procinfo.reap(stubs)

    def proxy(self, log_dir: Path, **env: str) -> ProxyProcess:
        settings = {"ACCESS_LOG": "off", **env}
        process = ProxyProcess(log_dir / f"proxy-{len(self.proxies)}.log", **settings)
        self.proxies.append(process)
        process.start()
        return process

    def close(self) -> None:
        for process in self.proxies:
            process.stop()
        for server in self.tritons:
            children = procinfo.children(server.process.pid) if server.alive() and server.process else []
            server.stop()
            procinfo.reap(children)


def demo_workload(url: str, count: int = 64, seed: int = 7, **extra: Any) -> Workload:
    """Rows for the demo MLP with their reference outputs computed in-process (torch, same weights)."""
    rows = np.random.default_rng(seed).normal(size=(count, DEMO_SPEC.width)).round(3).tolist()
    expected = demo.reference_outputs(DEMO_SPEC, rows)[0].tolist()
    return Workload(url, rows, expected, **extra)


def faulty_workload(url: str, count: int = 64, seed: int = 7, **extra: Any) -> Workload:
    """Rows for the test models of `reliability.models`; first values kept negative (no trigger, no sleep)."""
    rows = np.random.default_rng(seed).uniform(-5, 5, size=(count, 5)).round(3)
    rows[:, 0] = -np.abs(rows[:, 0]) - 0.5
    listed = rows.tolist()
    return Workload(url, listed, [expected_output(row) for row in listed], **extra)


@contextmanager
def standalone_bed(workdir: Path) -> Iterator[Bed]:
    """The bed without pytest: moto S3, the demo model published and synced, all on free ports."""
    workdir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        s3 = start_local_s3(workdir / "moto.log")
        stack.callback(s3.stop)
        s3_env = s3_environment(s3, TEST_BUCKET)
        client = s3_client(s3_env)
        (workdir / "demo").mkdir(exist_ok=True)
        model = publish(DEMO_SPEC, client, workdir / "demo")
        repository = sync_into(model.meta, s3_env, workdir / "model_repository", BATCH_TIMEOUT_MS="2")
        bed = Bed(workdir, s3_env, client, model, repository)
        stack.callback(bed.close)
        yield bed
