"""A local Triton Inference Server without Docker: the tritonserver 2.51 shipped in `nvidia-pytriton`.

The wheel carries the server binary, its shared libraries, the Python backend and one backend stub per
Python version. Triton wants a backend folder laid out as `<dir>/python/{libtriton_python.so,
triton_python_backend_utils.py, triton_python_backend_stub}`, so one is assembled from symlinks for the
running interpreter. The stub finds this virtual environment's packages (torch, numpy) only when the
venv's `bin/` leads `PATH`, so the server is started with that `PATH`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from nexusml.core import catalog, logs, memory
from nexusml.core.errors import ServerError
from nexusml.core.probe import not_loaded
from nexusml.core.process import ManagedProcess
from nexusml.core.settings import SHM_HEADER
from nexusml.triton.settings import TritonSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TritonDistribution:
    """Where the pieces of the bundled server lie in site-packages."""

    binary: Path
    libraries: Path
    python_backend: Path
    stub: Path

    @classmethod
    def find(cls) -> TritonDistribution:
        spec = importlib.util.find_spec("pytriton")
        if spec is None or spec.origin is None:
            raise ServerError("nvidia-pytriton is not installed: run `make venv`")
        server = Path(spec.origin).parent / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        found = cls(
            binary=server / "bin" / "tritonserver",
            libraries=server.parent.parent / "nvidia_pytriton.libs",
            python_backend=server / "backends" / "python",
            stub=server / "python_backend_stubs" / version / "triton_python_backend_stub",
        )
        missing = [str(p) for p in (found.binary, found.libraries, found.python_backend, found.stub) if not p.exists()]
        if missing:
            raise ServerError(f"incomplete tritonserver in nvidia-pytriton (Python {version}): missing {missing}")
        return found

    def backend_directory(self, root: Path) -> Path:
        """Assemble `<root>/python/` for Triton's --backend-directory."""
        python = root / "python"
        python.mkdir(parents=True, exist_ok=True)
        for source in (*self.python_backend.glob("*.so"), *self.python_backend.glob("*.py"), self.stub):
            link = python / source.name
            if not link.exists():
                link.symlink_to(source)
        return root


# The headers Triton's restricted APIs want (compose and the chart name the same). The admin key (TRITON_ADMIN_KEY)
# opens the repository API to the watcher; the shared-memory key (TRITON_SHM_KEY, header SHM_HEADER, declared in
# nexusml.core.settings for the proxy) opens the shared-memory API to the proxy alone: a client able to register
# regions could make Triton read or write any shared memory it can open. Over gRPC Triton expects each header with
# the prefix `triton-grpc-protocol-`.
ADMIN_HEADER = "nexus-admin-key"


def restricted_flags(key: str, apis: str = "model-repository,logging,trace", header: str = ADMIN_HEADER) -> list[str]:
    """Triton's flags that make `apis` answer only requests carrying `header: key`.

    Triton 2.51 takes several such flags, each group of APIs with its own header and key (tested)."""
    return [
        f"--http-restricted-api={apis}:{header}={key}",
        f"--grpc-restricted-protocol={apis}:{header}={key}",
    ]


def command(settings: TritonSettings, dist: TritonDistribution, backend_dir: Path) -> list[str]:
    """Explicit model control: Triton loads every model of the repository at start-up (the sync removed any
    stale candidate), and later only what the watcher asks for, through the repository API. With
    MODEL_MEMORY_BUDGET it loads only PINNED_MODELS at start: the watcher loads the others within the budget.

    With one model (`NEXUS_META_PATH` a file), a model that fails to load ends Triton (`--exit-on-error`) and it is
    not ready without its models (`--strict-readiness`): the orchestrator restarts it, which heals a failure of
    the moment. With a directory of models, one broken model must not take the others down, and with a budget
    Triton is ready with models deliberately not loaded, so in both cases the two flags are false (a port that
    cannot be bound still ends the server: measured); each model's readiness is then the proxy's to check, and
    `TritonServer.start` says which models did not load and why."""
    budget = settings.memory_budget is not None
    strict = "false" if budget or catalog.is_directory(settings.meta_path) else "true"
    loads = [f"--load-model={name}" for name in settings.pinned] if budget else ["--load-model=*"]
    return [
        str(dist.binary),
        f"--model-repository={settings.repository.resolve()}",
        f"--backend-directory={backend_dir}",
        f"--http-address={settings.host}",
        f"--grpc-address={settings.host}",
        f"--http-port={settings.http_port}",
        f"--grpc-port={settings.grpc_port}",
        f"--metrics-port={settings.metrics_port}",
        "--model-control-mode=explicit",
        *loads,
        f"--strict-readiness={strict}",
        f"--exit-on-error={strict}",
        "--disable-auto-complete-config",
        f"--exit-timeout-secs={settings.exit_timeout_s}",
        f"--log-verbose={settings.log_verbose}",
        "--allow-sagemaker=false",
        "--allow-vertex-ai=false",
        *(restricted_flags(settings.admin_key) if settings.admin_key else []),
        *(restricted_flags(settings.shm_key, "shared-memory", SHM_HEADER) if settings.shm_key else []),
    ]


STUB_SESSION = Path(__file__).with_name("stub_session.sh")
"""Sourced by the bash that starts each Python-backend stub (BASH_ENV): the stub starts in a session of its own at
the lowest CPU weight, before its interpreter loads (the script says why)."""


def environment(dist: TritonDistribution, base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    env["BASH_ENV"] = str(STUB_SESSION)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "/usr/bin:/bin")])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(dist.libraries), env.get("LD_LIBRARY_PATH")]))
    return env


class TritonServer(ManagedProcess):
    """The tritonserver child process, on the settings' repository and ports."""

    def __init__(
        self,
        settings: TritonSettings,
        environ: dict[str, str],
        log_file: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        """`extra_args` follow the launcher's flags, e.g. the deployments' `--*-restricted-*` flags in tests."""
        self.settings = settings
        # The keys are on the command line (Triton reads them nowhere else), which is logged.
        logs.hide(settings.admin_key)
        logs.hide(settings.shm_key)
        self.extra_args = extra_args
        self.dist = TritonDistribution.find()
        self._backend_root: Path | None = None
        super().__init__(
            "tritonserver",
            [],  # built in start(), with the backend folder assembled there
            environment(self.dist, environ),
            ready_url=f"{self.http_url}/v2/health/ready",
            startup_timeout_s=settings.startup_timeout_s,
            stop_timeout_s=settings.exit_timeout_s + 5,
            log_file=log_file,
        )

    @property
    def http_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.settings.host}:{self.settings.grpc_port}"

    def ports(self) -> dict[int, str | None]:
        """All three ports, each with its setting, not only the HTTP one of `ready_url`.

        Otherwise a taken gRPC or metrics port shows only as "exited with code 1" and a line in Triton's log.
        """
        return {
            self.settings.http_port: "TRITON_HTTP_PORT",
            self.settings.grpc_port: "TRITON_GRPC_PORT",
            self.settings.metrics_port: "TRITON_METRICS_PORT",
        }

    def start(self) -> None:
        """Start and wait until Triton answers; every model that did not load is logged, one line each."""
        if not self.settings.repository.is_dir():
            raise ServerError(f"model repository {self.settings.repository} does not exist: run `nexus sync` first")
        self._forget_reports()
        self._backend_root = Path(tempfile.mkdtemp(prefix="nexus-triton-backends-"))
        backend_dir = self.dist.backend_directory(self._backend_root)
        self.argv = [*command(self.settings, self.dist, backend_dir), *self.extra_args]
        super().start()
        try:
            failed = self.unavailable()
        except ServerError as err:  # e.g. the index restricted to a key these settings do not hold
            log.warning("%s", err)
            return
        for name, reason in failed.items():
            log.error("model %s did not load: %s", name, reason)

    def unavailable(self) -> dict[str, str]:
        """The models of the repository Triton could not load, with its reason (from its repository index)."""
        request = urllib.request.Request(f"{self.http_url}/v2/repository/index", data=b"{}", method="POST")
        if self.settings.admin_key:
            request.add_header(ADMIN_HEADER, self.settings.admin_key)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                index = json.loads(response.read())
        except (OSError, ValueError) as err:
            raise ServerError(f"Triton at {self.http_url} did not list its models: {err}") from err
        return not_loaded(index)

    def stop(self) -> int | None:
        code = super().stop()
        self._forget_reports()
        if self._backend_root is not None:
            shutil.rmtree(self._backend_root, ignore_errors=True)
            self._backend_root = None
        return code

    def _forget_reports(self) -> None:
        """Remove the memory reports of this repository's stubs (`nexusml.core.memory`): none runs before this
        server starts or after it stops, and a stub that was killed left its report behind. The directory stays:
        the watcher made it, and the stubs report only while it exists."""
        for report in memory.report_dir(self.settings.repository).glob("*.json"):
            report.unlink(missing_ok=True)
