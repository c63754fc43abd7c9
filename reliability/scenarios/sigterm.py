"""SIGTERM under load, for the proxy and for Triton.

Pass criteria: requests in flight finish (200) or fail cleanly (503 with Retry-After, or a
refused connection once the listener is closed: nothing was sent), never a 500 or a hang; readiness
goes false first (a keep-alive connection opened before the signal reads `/readyz` 503 while a request is
still in flight); the process exits 0.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from nexusml.core.process import http_ok
from nexusml.testing.servers import ProxyProcess, held_request
from nexusml.triton.server import TritonServer
from reliability.bed import Bed, demo_workload
from reliability.load import Sample, summarize, while_running
from reliability.result import ScenarioResult

BODY = b'{"input": [1, 2, 3, 4, 5]}'


@dataclass(frozen=True)
class Config:
    target: str = "proxy"  # or "triton"
    before_s: float = 1.5
    concurrency: int = 16
    grace_s: float = 10.0

    @classmethod
    def long(cls, duration_s: float, target: str = "proxy") -> Config:
        return cls(target=target, before_s=duration_s / 2, concurrency=64)


def _raw(port: int, request: bytes, timeout_s: float = 30) -> tuple[int, bytes]:
    """Send `request` on a fresh connection; the status line's code and the raw answer (0 if none)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.sendall(request)
            return _read_status(sock)
    except OSError:
        return 0, b""


def _read_status(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    try:
        return int(data.split(b" ", 2)[1]), data
    except (IndexError, ValueError):
        return 0, data


@dataclass
class Observed:
    """What the signalling thread saw: when it signalled and the process exited, and what it read meanwhile."""

    marks: dict[str, float] = field(default_factory=dict)
    seen: dict[str, object] = field(default_factory=dict)

    @property
    def exit_after_signal_s(self) -> float:
        return self.marks["exited"] - self.marks["signal"]


def _terminate_proxy(config: Config, proxy: ProxyProcess, observed: Observed) -> None:
    """SIGTERM the proxy with a kept-alive connection and a request in flight, then read both."""
    marks, seen = observed.marks, observed.seen
    time.sleep(config.before_s)
    keep_alive = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
    held = held_request(proxy.port, BODY)
    time.sleep(0.3)
    marks["signal"] = time.monotonic()
    proxy.signal(signal.SIGTERM)
    time.sleep(0.3)
    keep_alive.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    status, raw = _read_status(keep_alive)
    seen["readyz_while_draining"] = status
    seen["connection_close_while_draining"] = b"connection: close" in raw.lower()
    keep_alive.close()
    held.sendall(BODY[10:])
    seen["held_request"] = _read_status(held)[0]
    held.close()
    seen["exit_code"] = proxy.wait(config.grace_s + 30)
    marks["exited"] = time.monotonic()


def _terminate_triton(config: Config, triton: TritonServer, proxy: ProxyProcess, observed: Observed) -> None:
    """SIGTERM Triton, reading its readiness until it exits, then the proxy's."""
    marks, seen = observed.marks, observed.seen
    assert triton.process is not None
    time.sleep(config.before_s)
    marks["signal"] = time.monotonic()
    triton.process.send_signal(signal.SIGTERM)
    ready_answers = []
    while triton.process.poll() is None:
        ready_answers.append(http_ok(f"{triton.http_url}/v2/health/ready", timeout=1))
        time.sleep(0.02)
    seen["triton_ready_while_stopping"] = sorted(set(ready_answers))
    seen["exit_code"] = triton.process.wait(config.grace_s + 30)
    marks["exited"] = time.monotonic()
    end = time.monotonic() + 5
    answers = []
    while time.monotonic() < end and 503 not in answers:
        answers.append(proxy.get("/readyz")[0])
        time.sleep(0.2)
    seen["proxy_readyz_after"] = sorted(set(answers))
    time.sleep(0.5)


def run(bed: Bed, config: Config = Config()) -> ScenarioResult:
    result = ScenarioResult(f"sigterm-{config.target}", settings=config.__dict__.copy())
    log_dir = bed.path(f"sigterm-{config.target}")
    triton = bed.triton(bed.demo_repository, log_dir) if config.target == "triton" else bed.shared_triton()
    proxy = bed.proxy(
        log_dir,
        MODEL_SERVER_URL=triton.grpc_url,
        SHUTDOWN_GRACE_S=str(config.grace_s),
        BODY_TIMEOUT_S=str(config.grace_s * 3),
    )
    assert proxy.process is not None and triton.process is not None
    observed = Observed()
    action: Callable[[], None] = (
        partial(_terminate_proxy, config, proxy, observed)
        if config.target == "proxy"
        else partial(_terminate_triton, config, triton, proxy, observed)
    )
    work = demo_workload(proxy.url, timeout_s=config.grace_s + 30)
    samples = while_running(action, work, config.concurrency, config.before_s + config.grace_s + 90)
    _judge(result, config, samples, observed)
    return result


def _judge(result: ScenarioResult, config: Config, samples: list[Sample], observed: Observed) -> None:
    stats = summarize(samples)
    result.load = stats
    seen = observed.seen
    after_signal = [s for s in samples if s.started >= observed.marks["signal"]]
    result.figures.update(
        {key: str(value) for key, value in seen.items()},
        exit_after_signal_s=round(observed.exit_after_signal_s, 2),
        answers_after_signal={str(k): v for k, v in summarize(after_signal).by_status.items()},
        client_failures=stats.by_code,
    )
    http_answers = {int(s) for s in stats.by_status} - {0}
    allowed = {200, 503} if config.target == "proxy" else {200, 503, 504}
    result.check("answers only 200/503 (no 500)", http_answers <= allowed, f"{stats.by_status} {stats.by_code}")
    client_side = {s.code for s in samples if s.status == 0}
    result.check(
        "failures are clean (refused, never a hang or a reset mid-request)",
        client_side <= {"refused"},
        f"client-side failures {sorted(client_side)}",
    )
    result.check("no 200 with a wrong body", stats.wrong_bodies == 0, f"{stats.wrong_bodies}")
    result.check(
        "429/503 carry Retry-After",
        stats.rejections_without_retry_after == 0,
        f"{stats.rejections_without_retry_after}",
    )
    result.check("exit code 0", seen.get("exit_code") == 0, f"exit code {seen.get('exit_code')}")
    if config.target == "proxy":
        _judge_draining(result, seen)
    else:
        result.check(
            "the proxy's /readyz turns false",
            503 in seen.get("proxy_readyz_after", []),  # type: ignore[operator]
            f"{seen.get('proxy_readyz_after')}",
        )
    result.check(
        "exits within the grace period",
        observed.exit_after_signal_s <= config.grace_s + 1,
        f"{observed.exit_after_signal_s:.2f} s",
        timing=True,
    )


def _judge_draining(result: ScenarioResult, seen: dict[str, object]) -> None:
    result.check(
        "readiness false first (503 on a kept-alive connection while draining)",
        seen.get("readyz_while_draining") == 503,
        f"/readyz answered {seen.get('readyz_while_draining')}",
    )
    result.check(
        "answers while draining say Connection: close",
        seen.get("connection_close_while_draining") is True,
        f"{seen.get('connection_close_while_draining')}",
    )
    result.check("the request in flight finishes", seen.get("held_request") == 200, f"{seen.get('held_request')}")
