"""Slow backend: a test model that sleeps longer than the proxy's deadline.

Pass criteria: every slow request answers 504 `deadline_exceeded`; the model sees the
cancellation (it records `cancelled` markers: nothing slow runs to its end); afterwards the proxy has no
prediction in flight, holds no more upstream connections than before, and normal requests all succeed.
Clients that go away: with a long deadline and `MAX_IN_FLIGHT` slow requests whose clients then
close their connections, the proxy frees every slot and cancels the upstream calls (the model sees it)
long before the deadline, and a normal request is answered 200, not 429.
[timing] the 504 arrives within 100 ms of the deadline.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from nexusml.testing.polling import wait_until
from nexusml.testing.servers import ProxyProcess
from reliability import procinfo
from reliability.bed import Bed, faulty_workload
from reliability.load import LoadStats, Workload, closed_loop, summarize
from reliability.models import add_faulty_model
from reliability.result import ScenarioResult


@dataclass(frozen=True)
class Config:
    protocol: str = "grpc"
    deadline_ms: int = 500
    sleep_s: float = 3.0
    slow_requests: int = 8
    normal_requests: int = 100
    gone_clients: int = 4  # also the second proxy's MAX_IN_FLIGHT
    gone_deadline_ms: int = 60_000

    @classmethod
    def long(cls, duration_s: float, protocol: str = "grpc") -> Config:
        return cls(protocol=protocol, slow_requests=32, normal_requests=1000)


def _in_flight(proxy: ProxyProcess) -> int:
    value = proxy.metric("nexus_proxy_in_flight")
    return -1 if value is None else int(value)


def _upstream_connections(pid: int, port: int) -> int:
    import psutil

    return sum(
        1
        for c in psutil.Process(pid).net_connections("tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


def _clients_go_away(bed: Bed, url: str, log_dir: Path, markers: Path, config: Config) -> dict[str, object]:
    """Fill every in-flight slot with slow requests, close their connections, then ask for one more."""
    proxy = bed.proxy(
        log_dir,
        MODEL_SERVER_URL=url,
        MODEL_NAME="sleepy",
        REQUEST_TIMEOUT_MS=str(config.gone_deadline_ms),
        MAX_IN_FLIGHT=str(config.gone_clients),
    )
    started_before = sum(1 for p in markers.iterdir() if p.name.startswith("started"))
    cancelled_before = sum(1 for p in markers.iterdir() if p.name.startswith("cancelled"))
    sockets = []
    for i in range(config.gone_clients):
        body = f'{{"input": [{config.gone_deadline_ms / 1000 + i * 0.01}, 1, 1, 1, 1]}}'.encode()
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        sockets.append(sock)
    full = wait_until(lambda: _in_flight(proxy) == config.gone_clients, 30)
    for sock in sockets:
        sock.close()
    # Bounds, not verdicts on speed: the deadline is a minute away, so anything freed within 20 s was freed
    # because the clients went away.
    freed = wait_until(lambda: _in_flight(proxy) == 0, 20)

    def cancelled() -> int:
        return sum(1 for p in markers.iterdir() if p.name.startswith("cancelled")) - cancelled_before

    seen_cancelled = wait_until(lambda: cancelled() > 0, 20)
    status, _ = proxy.get("/healthz")
    after = summarize(asyncio.run(closed_loop(faulty_workload(proxy.url, timeout_s=30), 1, 30, max_requests=5)))
    started = sum(1 for p in markers.iterdir() if p.name.startswith("started")) - started_before
    return {
        "slots_filled": full,
        "slots_freed": freed,
        "model_started": started,
        "model_cancelled": cancelled(),
        "upstream_cancelled": seen_cancelled,
        "next_requests": after.by_status,
        "alive": status == 200,
    }


@dataclass
class SlowPhase:
    """Slow requests past the deadline, then normal ones: what the clients, the model and the proxy showed."""

    slow: LoadStats
    normal_after: LoadStats
    markers: list[str]  # the model's marker names: started / cancelled / finished
    idle: bool
    in_flight: int
    connections: tuple[int, int, int]  # upstream: before, after the 504s, after the normal load
    proxy_after: dict[str, float]

    def count(self, marker: str) -> int:
        return self.markers.count(marker)

    @property
    def seen(self) -> str:
        return (
            f"started {self.count('started')}, cancelled {self.count('cancelled')}, finished {self.count('finished')}"
        )


def run(bed: Bed, config: Config = Config()) -> ScenarioResult:
    result = ScenarioResult(f"slow-backend-{config.protocol}", settings=config.__dict__.copy())
    log_dir = bed.path("slow")
    markers = log_dir / "markers"
    markers.mkdir()
    add_faulty_model(log_dir / "repository", "sleepy", "sleep", markers)
    triton = bed.triton(log_dir / "repository", log_dir)
    url = triton.grpc_url if config.protocol == "grpc" else triton.http_url
    proxy = bed.proxy(log_dir, MODEL_SERVER_URL=url, MODEL_NAME="sleepy", REQUEST_TIMEOUT_MS=str(config.deadline_ms))
    phase = _slow_phase(config, proxy, markers, int(url.rsplit(":", 1)[1]))
    result.load = phase.slow
    overshoot = phase.slow.max_ms - config.deadline_ms
    before, settled, after = phase.connections
    result.figures.update(
        slow_statuses=phase.slow.by_status,
        max_504_ms=phase.slow.max_ms,
        deadline_overshoot_ms=round(overshoot, 1),
        model_started=phase.count("started"),
        model_cancelled=phase.count("cancelled"),
        model_finished=phase.count("finished"),
        upstream_connections=f"{before} before, {settled} after the 504s, {after} after normal load",
        normal_after=phase.normal_after.by_status,
        proxy_after=phase.proxy_after,
    )
    _judge_slow(result, config, phase)
    if config.protocol == "grpc":
        gone = _clients_go_away(bed, url, log_dir, markers, config)
        result.figures["clients_gone"] = gone
        _judge_gone(result, config, gone)
    result.check("504 within 100 ms of the deadline", overshoot <= 100, f"{overshoot:.0f} ms over", timing=True)
    return result


# How long the model's markers must stay unchanged before it counts as idle: a batch still queued in Triton starts
# within milliseconds of an instance freeing.
_QUIET_S = 1.0


def _slow_phase(config: Config, proxy: ProxyProcess, markers: Path, port: int) -> SlowPhase:
    assert proxy.process is not None
    normal = faulty_workload(proxy.url, timeout_s=30)
    asyncio.run(closed_loop(normal, 4, 30, max_requests=20))  # warm connections
    connections_before = _upstream_connections(proxy.process.pid, port)
    rows = [[config.sleep_s + i * 0.01, 1, 1, 1, 1] for i in range(config.slow_requests)]
    slow = Workload(proxy.url, rows, [[0.0, 0.0]] * len(rows), timeout_s=config.sleep_s + 30)
    slow_stats = summarize(asyncio.run(closed_loop(slow, config.slow_requests, 60, max_requests=config.slow_requests)))

    # The model only notices at its next check; wait for it to have given up on everything it started. Over HTTP
    # nothing is cancelled: batches the proxy gave up on may still wait in Triton's queue and start as soon as an
    # instance frees, so the markers must also stay unchanged for a moment before the model counts as idle.
    def settled() -> bool:
        names = [p.name.split("-")[0] for p in markers.iterdir()]
        return names.count("started") == names.count("cancelled") + names.count("finished")

    give_up = time.monotonic() + config.sleep_s * config.slow_requests + 30
    while time.monotonic() < give_up:
        wait_until(settled, config.sleep_s + 30)
        seen = sorted(p.name for p in markers.iterdir())
        time.sleep(_QUIET_S)
        if settled() and sorted(p.name for p in markers.iterdir()) == seen:
            break
    names = [p.name.split("-")[0] for p in markers.iterdir()]
    idle = wait_until(lambda: _in_flight(proxy) == 0, 30)
    in_flight = _in_flight(proxy)
    connections_settled = _upstream_connections(proxy.process.pid, port)
    after_stats = summarize(asyncio.run(closed_loop(normal, 8, 60, max_requests=config.normal_requests)))
    connections_after = _upstream_connections(proxy.process.pid, port)
    return SlowPhase(
        slow_stats,
        after_stats,
        names,
        idle,
        in_flight,
        (connections_before, connections_settled, connections_after),
        procinfo.usage(proxy.process.pid).as_dict(),
    )


def _judge_slow(result: ScenarioResult, config: Config, phase: SlowPhase) -> None:
    slow, after = phase.slow, phase.normal_after
    result.check(
        "every slow request answers 504 deadline_exceeded",
        slow.by_status == {"504": config.slow_requests} and set(slow.by_code) == {"deadline_exceeded"},
        f"{slow.by_status} {slow.by_code}",
    )
    if config.protocol == "grpc":
        result.check(
            "the upstream call is cancelled (the model saw it)",
            phase.count("started") > 0
            and phase.count("finished") == 0
            and phase.count("cancelled") == phase.count("started"),
            phase.seen,
        )
    else:
        result.notes.append(
            "Triton's HTTP frontend (2.51) does not cancel a request whose client went away: the proxy "
            f"abandons the call and closes that connection, but the model runs on ({phase.seen}). "
            "gRPC, the default upstream, cancels it."
        )
    result.check("no prediction left in flight", phase.idle, f"in flight {phase.in_flight}")
    before, settled, _ = phase.connections
    result.check(
        "connection pool back to normal (no connection held by an abandoned call)",
        settled <= max(before, 1),
        f"upstream connections {before} before, {settled} after the 504s",
    )
    result.check(
        "normal requests succeed afterwards",
        after.by_status == {"200": config.normal_requests} and after.wrong_bodies == 0,
        f"{after.by_status}",
    )


def _judge_gone(result: ScenarioResult, config: Config, gone: dict[str, object]) -> None:
    result.check(
        f"{config.gone_clients} clients that go away free their slots (MAX_IN_FLIGHT {config.gone_clients}) "
        "before their deadline",
        bool(gone["slots_filled"]) and bool(gone["slots_freed"]),
        f"filled {gone['slots_filled']}, freed {gone['slots_freed']}",
    )
    result.check(
        "their upstream calls are cancelled (the model saw it)",
        bool(gone["upstream_cancelled"]),
        f"started {gone['model_started']}, cancelled {gone['model_cancelled']}",
    )
    result.check(
        "the next requests are answered 200, not 429",
        gone["next_requests"] == {"200": 5},
        f"{gone['next_requests']}",
    )
