"""Free ports and a clean environment for the child processes a harness starts."""

from __future__ import annotations

import os
import socket

# Variables of ours or boto3's that would make a child reach something other than what the harness started.
_OURS = ("AWS_", "MODEL_", "BATCH_", "PROXY_", "TRITON_", "NEXUS_", "WATCH_")
_SINGLE = ("PORT", "HOST", "DEVICE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_environment() -> dict[str, str]:
    """This process's environment (PATH, locale, ...) without settings of ours or any AWS credentials.

    The harness's one read of `os.environ`: children need the parent's PATH and library paths, and must not
    inherit a developer's AWS account or a setting meant for another stack.
    """
    return {k: v for k, v in os.environ.items() if not k.startswith(_OURS) and k not in _SINGLE}
