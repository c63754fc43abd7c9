"""What the `nexus up` tests share: waiting for the stack a test started to become ready."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from nexusml.core.process import http_ok


def wait_until_ready(process: subprocess.Popen, proxy: str, log_path: Path, timeout_s: float = 180) -> None:
    """Poll the proxy's /readyz until it answers; fail with the log's tail if `nexus up` exits first."""
    deadline = time.monotonic() + timeout_s
    while not http_ok(f"{proxy}/readyz"):
        assert process.poll() is None, log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, "nexus up did not become ready"
        time.sleep(0.5)
