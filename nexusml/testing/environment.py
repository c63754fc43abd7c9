"""Free ports, a clean environment for the child processes a harness starts, and where perf_analyzer is."""

from __future__ import annotations

import os
import shutil
import site
import socket
import sys
from pathlib import Path

# Variables of ours or boto3's that would make a child reach something other than what the harness started.
_OURS = ("AWS_", "MODEL_", "BATCH_", "PROXY_", "TRITON_", "NEXUS_", "WATCH_", "RESIDENCY_", "PINNED_")
_SINGLE = ("PORT", "HOST", "DEVICE")


# Every port `nexus up` opens, by the setting that moves it.
STACK_PORT_SETTINGS = (
    "LOCAL_S3_PORT",
    "TRITON_HTTP_PORT",
    "TRITON_GRPC_PORT",
    "TRITON_METRICS_PORT",
    "PORT",
    "WATCH_METRICS_PORT",
    "RESIDENCY_PORT",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stack_ports() -> dict[str, str]:
    """A free port for each port `nexus up` opens, as the environment that moves them there."""
    return {name: str(free_port()) for name in STACK_PORT_SETTINGS}


def base_environment() -> dict[str, str]:
    """This process's environment (PATH, locale, ...) without settings of ours or any AWS credentials.

    The harness's one read of `os.environ`: children need the parent's PATH and library paths, and must not
    inherit a developer's AWS account or a setting meant for another stack.
    """
    return {k: v for k, v in os.environ.items() if not k.startswith(_OURS) and k not in _SINGLE}


def perf_analyzer_path() -> str | None:
    """tritonclient 2.51 installs perf_analyzer beside this interpreter; else the PATH's, if any."""
    found = Path(sys.executable).parent / "perf_analyzer"
    return str(found) if found.exists() else shutil.which("perf_analyzer")


def perf_analyzer_env(base: dict[str, str]) -> dict[str, str]:
    """perf_analyzer links libcudart.so.12 even without a GPU: point it at nvidia-cuda-runtime-cu12's copy."""
    env = dict(base)
    dirs = [Path(p) / "nvidia" / "cuda_runtime" / "lib" for p in site.getsitepackages()]
    found = [str(d) for d in dirs if d.is_dir()]
    env["LD_LIBRARY_PATH"] = ":".join(filter(None, [*found, base.get("LD_LIBRARY_PATH", "")]))
    return env
