"""SIGTERM under load, for the proxy and for Triton; and `make run` stopped by signals to its process group.

Pass criteria under load: requests in flight finish (200) or fail cleanly (503 with Retry-After, or a
refused connection once the listener is closed: nothing was sent), never a 500 or a hang; readiness
goes false first (a keep-alive connection opened before the signal reads `/readyz` 503 while a request is
still in flight); the process exits 0.

`make run` (target "make-run") is started in a session of its own, as systemd or a CI runner start a job, and
stopped by a SIGTERM to its whole process group: after it is ready (then a SIGINT to the group while it drains)
and at a random moment of its start-up. GNU make passes the SIGTERM on to `nexus up`, which so gets two; make
itself then ends by the signal, as it always does. Pass criteria: `nexus up` exits 0 (make reports no `Error`
for it), one "stopping" line from it per stop, no traceback, and no process of the run or bound port left.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from nexusml.core.process import http_ok, port_in_use
from nexusml.testing.environment import base_environment, stack_ports
from nexusml.testing.servers import ProxyProcess, held_request
from nexusml.triton.server import TritonServer
from reliability.bed import Bed, demo_workload
from reliability.load import Sample, summarize, while_running
from reliability.result import ScenarioResult

BODY = b'{"input": [1, 2, 3, 4, 5]}'


@dataclass(frozen=True)
class Config:
    target: str = "proxy"  # or "triton", or "make-run"
    before_s: float = 1.5
    concurrency: int = 16
    grace_s: float = 10.0
    stops: int = 2  # make-run: `make run` started and stopped this many times
    during_start_up: int = 1  # make-run: of which this many at a random moment of the start-up
    seed: int = 25

    @classmethod
    def long(cls, duration_s: float, target: str = "proxy") -> Config:
        if target == "make-run":
            return cls(target=target, stops=10, during_start_up=3)
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
    if config.target == "make-run":
        rng = random.Random(config.seed)
        moments = ["start-up"] * config.during_start_up + ["ready"] * (config.stops - config.during_start_up)
        # Every other stop also gets a SIGINT to the group while it drains (the first after ready, by default).
        stops = [stop_make_run(log_dir / str(i), m, rng, second=i % 2 == 1) for i, m in enumerate(moments)]
        _judge_make_run(result, stops)
        return result
    # Triton's own drain gets the grace the proxy has: on a loaded machine its shutdown once used the whole 5 s of the
    # test harness's default exit timeout, and a Triton that runs out of it ends with code 1.
    triton = (
        bed.triton(bed.demo_repository, log_dir, TRITON_EXIT_TIMEOUT_S=str(int(config.grace_s)))
        if config.target == "triton"
        else bed.shared_triton()
    )
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


# `make run` from this checkout.
REPOSITORY = Path(__file__).resolve().parents[2]
RUN_MARK = "SIGTERM_SCENARIO_RUN"  # in the environment of every process of one run, to find any left over


@dataclass
class MakeRunStop:
    """One `make run` stopped by a SIGTERM to its process group: when, and what it said and left."""

    moment: str  # "ready" (a random moment after) or "start-up" (a random moment before, mostly)
    second_signal: bool  # a SIGINT to the group 0.5 s after the SIGTERM, while it drains
    ready_at_signal: bool
    make_status: int | None  # None: it did not end in time, and was killed
    output: str
    left: list[str]
    bound_ports: list[int]


def start_make_run(work: Path) -> tuple[subprocess.Popen[bytes], dict[str, str], str]:
    """`make run` in a session of its own, with the environment the stack's tests give `nexus up`; its
    process, its ports and the mark its processes carry. Refuses a stale virtualenv: make would reinstall it."""
    stale = subprocess.run(["make", "-q", ".venv/.installed-run"], cwd=REPOSITORY, capture_output=True)
    if stale.returncode != 0:
        raise RuntimeError("`make run` would reinstall the virtualenv first: run `make run` once by hand")
    work.mkdir(parents=True, exist_ok=True)
    ports = stack_ports()
    mark = uuid.uuid4().hex
    env = {
        **base_environment(),
        **ports,
        "DEVICE": "cpu",
        "TRITON_EXIT_TIMEOUT_S": "5",
        "NEXUS_META_PATH": str(work / ".nexus_meta.json"),
        "MODEL_REPOSITORY": str(work / "model_repository"),
        RUN_MARK: mark,
    }
    with (work / "make-run.log").open("wb") as log:
        process = subprocess.Popen(
            ["make", "run"], cwd=REPOSITORY, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return process, ports, mark


def stop_make_run(work: Path, moment: str, rng: random.Random, second: bool) -> MakeRunStop:
    """Start `make run`, SIGTERM its process group at `moment` (and SIGINT it while it drains if `second`),
    wait for it to end, and see what is left."""
    process, ports, mark = start_make_run(work)
    ready_url = f"http://127.0.0.1:{ports['PORT']}/readyz"
    deadline = time.monotonic() + (rng.uniform(0.5, 8.0) if moment == "start-up" else 240)
    while time.monotonic() < deadline and process.poll() is None and not (moment == "ready" and http_ok(ready_url)):
        time.sleep(0.05)
    if moment == "ready":
        time.sleep(rng.uniform(0.0, 3.0))
    ready = http_ok(ready_url)
    os.killpg(process.pid, signal.SIGTERM)
    if second:
        time.sleep(0.5)  # draining: the watcher and the proxy are being stopped
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
    try:
        status: int | None = process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        status = None
    output = (work / "make-run.log").read_text(errors="replace")
    bound = [int(port) for port in ports.values() if port_in_use("127.0.0.1", int(port))]
    return MakeRunStop(moment, second, ready, status, output, left_behind(mark), bound)


def left_behind(mark: str, settle_s: float = 5.0) -> list[str]:
    """Live processes whose environment carries `mark` (zombies have none), once given `settle_s` to end."""
    needle = f"{RUN_MARK}={mark}".encode()
    deadline = time.monotonic() + settle_s
    while True:
        found = []
        for entry in Path("/proc").iterdir():
            with contextlib.suppress(OSError):
                if entry.name.isdigit() and needle in (entry / "environ").read_bytes().split(b"\0"):
                    command = (entry / "cmdline").read_bytes()[:80].replace(b"\0", b" ").decode(errors="replace")
                    found.append(f"{entry.name} {command}")
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _judge_make_run(result: ScenarioResult, stops: list[MakeRunStop]) -> None:
    def count(predicate: Callable[[MakeRunStop], bool]) -> int:
        return sum(1 for stop in stops if predicate(stop))

    def stopping_lines(stop: MakeRunStop) -> int:
        return sum("nexusml.command.stack" in line and "stopping" in line for line in stop.output.splitlines())

    up_failed = count(lambda s: "make: *** [" in s.output or s.make_status is None)
    tracebacks = count(lambda s: "Traceback" in s.output)
    lines = [stopping_lines(stop) for stop in stops]
    statuses = sorted({str(stop.make_status) for stop in stops})
    result.figures.update(
        stops=len(stops),
        ready_at_signal=count(lambda s: s.ready_at_signal),
        make_statuses=statuses,
        stopping_lines=lines,
        left=[stop.left for stop in stops if stop.left],
        bound_ports=[stop.bound_ports for stop in stops if stop.bound_ports],
    )
    result.check("nexus up exits 0 (make reports no Error)", up_failed == 0, f"{up_failed} of {len(stops)} not")
    allowed = {0, -signal.SIGTERM, -signal.SIGINT}
    result.check("make ends by the signal or 0", count(lambda s: s.make_status not in allowed) == 0, f"{statuses}")
    result.check("no traceback", tracebacks == 0, f"{tracebacks} of {len(stops)} outputs")
    result.check("one stopping line per stop", set(lines) <= {1}, f"{lines}")
    result.check("no process left", count(lambda s: bool(s.left)) == 0, f"{result.figures['left']}")
    result.check("no port left bound", count(lambda s: bool(s.bound_ports)) == 0, f"{result.figures['bound_ports']}")
    failed = [stop.output for stop in stops if "Traceback" in stop.output or "make: *** [" in stop.output]
    result.notes.extend(output[-3000:] for output in failed[:1])
