"""`nexus up` (`make run`): the whole data plane on one machine, in the order compose and Helm use.

local S3 + demo model (only when no S3 is configured) -> `nexus sync` -> Triton -> proxy.
Each step is its own process with its own settings, as in the container deployments; a step that fails
stops the job with that step's exit code, and SIGINT/SIGTERM stop the servers in reverse order.
"""

from __future__ import annotations

import logging
import subprocess
import sys

from nexusml import metadata
from nexusml.errors import ServerError
from nexusml.process import ManagedProcess, wait_for_signal
from nexusml.s3local import LocalS3
from nexusml.settings import StackSettings
from nexusml.triton import TritonServer

log = logging.getLogger(__name__)

LOCAL_BUCKET = "nexus-models"


def _step(name: str, argv: list[str], env: dict[str, str]) -> None:
    log.info("%s: %s", name, " ".join(argv))
    code = subprocess.call([sys.executable, "-m", "nexusml.cli", *argv], env=env)
    if code != 0:
        raise SystemExit(code)


def up(settings: StackSettings, environ: dict[str, str]) -> int:
    env = dict(environ)
    running: list[ManagedProcess] = []
    try:
        if settings.local_s3:
            s3 = LocalS3(settings.local_s3_port, env)
            s3.start()
            running.append(s3)
            env.update(s3.client_environment())
            env["MODEL_BUCKET"] = LOCAL_BUCKET
            log.info("no S3 configured: local S3 at %s, publishing the demo model", s3.endpoint_url)
            _step("publish demo model", ["publish-demo"], env)
        _step("sync", ["sync"], env)
        triton = TritonServer(settings.triton, env)
        triton.start()
        running.append(triton)
        meta = metadata.load(settings.meta_path)
        print(
            f"\n{meta.name} v{meta.version} served by Triton on {triton.http_url} (gRPC {triton.grpc_url})", flush=True
        )
        died = wait_for_signal(running)
        if died is not None:
            raise ServerError(f"{died.name} exited unexpectedly with code {died.process.returncode}")
        return 0
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        for process in reversed(running):
            process.stop()
