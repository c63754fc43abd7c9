"""Settings of `nexus triton`: the bundled tritonserver and the address and ports it listens on.

Where Triton listens (`TRITON_HOST`, `TRITON_*_PORT`) is the server's side; where its clients reach it is
`MODEL_SERVER_URL` (`nexusml.core.settings`): the two differ whenever a client is elsewhere (compose's
`triton:8001`, a server bound to 0.0.0.0), and `nexus up` hands its children the URL of the server it started.
The admin key is declared here, the lowest layer both its readers (Triton, the watcher) may import; the
shared-memory key in `nexusml.core.settings`, because the proxy reads it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nexusml.core.errors import SettingsError
from nexusml.core.settings import (
    MEMORY_BUDGET,
    META_PATH,
    MODEL_REPOSITORY,
    PINNED_MODELS,
    SHM_KEY,
    declare,
    env,
)

ADMIN_KEY = declare(
    "TRITON_ADMIN_KEY",
    None,
    "value of the nexus-admin-key header Triton's repository API wants (`nexus up` makes one); unset: open",
    secret=True,
)


@dataclass(frozen=True)
class TritonSettings:
    """`nexus triton`: the tritonserver shipped in nvidia-pytriton, on the project's repository."""

    repository: Path = MODEL_REPOSITORY.field()
    meta_path: Path = META_PATH.field()  # a directory of models makes one model's failed load not stop Triton
    memory_budget: int | None = MEMORY_BUDGET.field()  # with a budget, only the pinned models load at start
    pinned: tuple[str, ...] = PINNED_MODELS.field()
    host: str = env(
        "TRITON_HOST", "127.0.0.1", "address Triton binds (HTTP and gRPC); clients reach it at MODEL_SERVER_URL"
    )
    http_port: int = env("TRITON_HTTP_PORT", 8000, "Triton HTTP port", int, minimum=1, maximum=65535)
    grpc_port: int = env("TRITON_GRPC_PORT", 8001, "Triton gRPC port", int, minimum=1, maximum=65535)
    metrics_port: int = env("TRITON_METRICS_PORT", 8002, "Triton metrics port", int, minimum=1, maximum=65535)
    startup_timeout_s: float = env("TRITON_STARTUP_TIMEOUT_S", 180.0, "seconds to wait for readiness", float, minimum=1)
    exit_timeout_s: int = env(
        "TRITON_EXIT_TIMEOUT_S", 30, "seconds Triton drains in-flight requests on stop", int, minimum=0
    )
    log_verbose: int = env("TRITON_LOG_VERBOSE", 0, "Triton's --log-verbose level", int, minimum=0)
    admin_key: str | None = ADMIN_KEY.field()
    shm_key: str | None = SHM_KEY.field()

    def validate(self) -> None:
        ports = [self.http_port, self.grpc_port, self.metrics_port]
        if len(set(ports)) != len(ports):
            raise SettingsError(f"TRITON_HTTP_PORT, TRITON_GRPC_PORT, TRITON_METRICS_PORT must differ: {ports}")
