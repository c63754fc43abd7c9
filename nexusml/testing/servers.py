"""The servers a test, a benchmark or a reliability scenario runs against, each on free loopback ports.

Each is a `ManagedProcess` (the same class `nexus up` supervises with): started, waited for until ready,
stopped with SIGTERM then SIGKILL.
"""

from __future__ import annotations

import signal
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from nexusml.command.s3local import LocalS3
from nexusml.core.errors import ServerError
from nexusml.core.process import ManagedProcess
from nexusml.core.settings import load
from nexusml.sync import storage
from nexusml.sync.settings import S3Settings
from nexusml.testing.environment import TRITON_PORT_SETTINGS, base_environment, free_port, port_settings
from nexusml.triton.server import TritonServer
from nexusml.triton.settings import TritonSettings

# The README's request, for the demo model's five inputs.
PREDICT_BODY = b'{"input": [1, 2, 3, 4, 5]}'


def held_request(port: int, body: bytes = PREDICT_BODY) -> socket.socket:
    """A prediction whose head and the first 10 bytes of its body are sent: in flight until the rest arrives."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    sock.sendall(head.encode() + body[:10])
    return sock


def finish_request(sock: socket.socket, body: bytes = PREDICT_BODY) -> tuple[int, bytes]:
    """Send the rest of a `held_request`'s body; its status and response body."""
    sock.sendall(body[10:])
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(
        next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    )
    while len(rest) < length:
        rest += sock.recv(65536)
    sock.close()
    return int(head.split()[1]), rest


def start_local_s3(log_file: Path, **extra: str) -> LocalS3:
    """moto's S3 server on a free port (extra variables configure moto, e.g. INITIAL_NO_AUTH_ACTION_COUNT)."""
    server = LocalS3(free_port(), {**base_environment(), **extra}, log_file=log_file)
    server.start()
    return server


def s3_environment(s3: LocalS3, bucket: str) -> dict[str, str]:
    """An environment for child processes (and settings) that reaches `s3`, with `bucket` as MODEL_BUCKET."""
    return {**base_environment(), **s3.client_environment(), "MODEL_BUCKET": bucket}


def s3_client(environ: dict[str, str]) -> Any:
    """A boto3 client for the S3 that `environ` names, with its MODEL_BUCKET created."""
    settings = load(S3Settings, environ)
    client = storage.client(settings)
    if settings.model_bucket:
        client.create_bucket(Bucket=settings.model_bucket)
    return client


def start_triton(repository: Path, log_dir: Path, extra_args: tuple[str, ...] = (), **extra: str) -> TritonServer:
    """The bundled tritonserver on `repository`; `extra` are TRITON_* settings, `extra_args` more flags."""
    env = {
        **base_environment(),
        "MODEL_REPOSITORY": str(repository),
        **port_settings(TRITON_PORT_SETTINGS),
        "TRITON_EXIT_TIMEOUT_S": "5",
        **extra,
    }
    server = TritonServer(load(TritonSettings, env), base_environment(), log_dir / "triton.log", extra_args)
    server.start()
    return server


def restart_triton(server: TritonServer, log_dir: Path) -> TritonServer:
    """A new tritonserver with the settings (ports, repository) of `server`, as an orchestrator would."""
    fresh = TritonServer(server.settings, base_environment(), log_file=log_dir / "triton.log")
    fresh.start()
    return fresh


def triton_infer(server: TritonServer, model: str, rows: np.ndarray) -> Any:
    """One request to Triton's own HTTP endpoint with `rows` as INPUT__0; returns tritonclient's result."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"{server.settings.host}:{server.settings.http_port}")
    tensor = httpclient.InferInput("INPUT__0", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    return client.infer(model, [tensor])


class ProxyProcess(ManagedProcess):
    """`nexus proxy` on a free port, with `env` as its settings; ready when `wait_for` answers 200.

    Runs `python -m nexusml`, so the package must be installed in this interpreter (`make venv` does, editable).
    """

    def __init__(self, log_file: Path, startup_timeout_s: float = 60, stop_timeout_s: float = 30, **env: str) -> None:
        self.port = free_port()
        super().__init__(
            "proxy",
            [sys.executable, "-m", "nexusml", "proxy"],
            {**base_environment(), "PORT": str(self.port), "HOST": "127.0.0.1", **env},
            ready_url=f"{self.url}/readyz",
            startup_timeout_s=startup_timeout_s,
            stop_timeout_s=stop_timeout_s,
            log_file=log_file,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_for: str = "/readyz") -> ProxyProcess:  # type: ignore[override]
        """Start and wait for `wait_for`; a failure names the cause with the end of the proxy's log."""
        self.ready_url = self.url + wait_for
        try:
            super().start()
        except ServerError as err:
            tail = self.tail()
            raise ServerError(f"{err}: {tail}" if tail else str(err)) from err
        return self

    def get(self, path: str) -> tuple[int, bytes]:
        """Status and body of GET `path`; status 0 when nothing answers."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()
        except OSError:
            return 0, b""

    def metric(self, name: str) -> float | None:
        """The sum of the samples of `name` in one scrape of /metrics; None when the scrape fails or lacks it."""
        status, body = self.get("/metrics")
        return metric_sums(body.decode(), (name,))[name] if status == 200 else None

    def tail(self, lines: int = 3) -> str:
        """The last `lines` lines of the proxy's output, on one line."""
        return " | ".join(self.log().strip().splitlines()[-lines:])

    def log(self) -> str:
        """The end of the proxy's output."""
        assert self.log_file is not None
        return self.log_file.read_text(errors="replace")[-4000:] if self.log_file.exists() else ""

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout_s: float = 60) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)


def metric_sums(text: str, names: tuple[str, ...]) -> dict[str, float | None]:
    """Each of `names` summed over its samples (whatever their labels) in one Prometheus text scrape; None for a
    name with no sample in it."""
    found: dict[str, list[float]] = {name: [] for name in names}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in found:
            found[name].append(float(line.rsplit(" ", 1)[1]))
    return {name: sum(values) if values else None for name, values in found.items()}
