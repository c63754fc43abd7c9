"""A local S3-compatible endpoint: moto's server on loopback, for running and testing without AWS."""

from __future__ import annotations

import sys
from pathlib import Path

from nexusml.core.process import ManagedProcess

# moto accepts any credentials; these keep boto3's credential chain from looking further.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "nexus-local",
    "AWS_SECRET_ACCESS_KEY": "nexus-local",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class LocalS3(ManagedProcess):
    def __init__(
        self,
        port: int,
        environ: dict[str, str],
        host: str = "127.0.0.1",
        log_file: Path | None = None,
        port_setting: str | None = None,
    ) -> None:
        """`port_setting`: the setting that chose `port` (`nexus up`'s LOCAL_S3_PORT), named when it is taken."""
        self.endpoint_url = f"http://{host}:{port}"
        super().__init__(
            "local S3 (moto)",
            [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
            {**environ, **CREDENTIALS},
            ready_url=f"{self.endpoint_url}/moto-api/",
            startup_timeout_s=30,
            stop_timeout_s=10,
            log_file=log_file,
            port_setting=port_setting,
        )

    def client_environment(self) -> dict[str, str]:
        """What a process needs in its environment to use this endpoint."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint_url}
