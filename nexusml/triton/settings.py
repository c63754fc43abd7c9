"""Settings of `nexus triton`: the bundled tritonserver and the ports it listens on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nexusml.core.errors import SettingsError
from nexusml.core.settings import env


@dataclass(frozen=True)
class TritonSettings:
    """`nexus triton`: the tritonserver shipped in nvidia-pytriton, on the project's repository."""

    repository: Path = env("MODEL_REPOSITORY", Path("model_repository"), "Triton model repository", Path)
    host: str = env("TRITON_HOST", "127.0.0.1", "address Triton binds (HTTP and gRPC)")
    http_port: int = env("TRITON_HTTP_PORT", 8000, "Triton HTTP port", int, minimum=1, maximum=65535)
    grpc_port: int = env("TRITON_GRPC_PORT", 8001, "Triton gRPC port", int, minimum=1, maximum=65535)
    metrics_port: int = env("TRITON_METRICS_PORT", 8002, "Triton metrics port", int, minimum=1, maximum=65535)
    startup_timeout_s: float = env("TRITON_STARTUP_TIMEOUT_S", 180.0, "seconds to wait for readiness", float, minimum=1)
    exit_timeout_s: int = env(
        "TRITON_EXIT_TIMEOUT_S", 30, "seconds Triton drains in-flight requests on stop", int, minimum=0
    )
    log_verbose: int = env("TRITON_LOG_VERBOSE", 0, "Triton's --log-verbose level", int, minimum=0)
    admin_key: str | None = env(
        "TRITON_ADMIN_KEY",
        None,
        "value of the nexus-admin-key header Triton's repository API wants (`nexus up` makes one); unset: open",
        secret=True,
    )

    def validate(self) -> None:
        ports = [self.http_port, self.grpc_port, self.metrics_port]
        if len(set(ports)) != len(ports):
            raise SettingsError(f"TRITON_HTTP_PORT, TRITON_GRPC_PORT, TRITON_METRICS_PORT must differ: {ports}")
