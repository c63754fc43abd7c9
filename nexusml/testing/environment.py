"""Free ports, a clean environment for the child processes a harness starts, and where perf_analyzer is."""

from __future__ import annotations

import os
import shutil
import site
import socket
import sys
from contextlib import ExitStack
from pathlib import Path

# Variables of ours or boto3's that would make a child reach something other than what the harness started.
_OURS = ("AWS_", "MODEL_", "BATCH_", "PROXY_", "TRITON_", "NEXUS_", "WATCH_", "RESIDENCY_", "PINNED_")
_SINGLE = ("PORT", "HOST", "DEVICE")


# Every port tritonserver opens, by the setting that moves it.
TRITON_PORT_SETTINGS = ("TRITON_HTTP_PORT", "TRITON_GRPC_PORT", "TRITON_METRICS_PORT")

# Every port `nexus up` opens, by the setting that moves it.
STACK_PORT_SETTINGS = (
    "LOCAL_S3_PORT",
    *TRITON_PORT_SETTINGS,
    "PORT",
    "WATCH_METRICS_PORT",
    "RESIDENCY_PORT",
)


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports.

    All sockets stay bound until every port is chosen: the kernel may hand a port it just freed out again,
    and two settings of one stack on the same port fail its start.
    """
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def free_port() -> int:
    return free_ports(1)[0]


def port_settings(names: tuple[str, ...]) -> dict[str, str]:
    """A distinct free port for each setting in `names`, as the environment that moves them there."""
    return dict(zip(names, map(str, free_ports(len(names))), strict=True))


def stack_ports() -> dict[str, str]:
    """A distinct free port for each port `nexus up` opens."""
    return port_settings(STACK_PORT_SETTINGS)


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
