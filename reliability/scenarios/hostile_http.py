"""Hostile HTTP: slow-loris clients, oversized headers and bodies, and property-based fuzzing.

Pass criteria: malformed HTTP of 10 kinds (bad request lines, conflicting or invalid lengths, bad chunks, too
many or too long headers, bad header bytes, bad Transfer-Encoding) is answered 4xx with the JSON error envelope,
and logs no traceback, nothing at ERROR, at most one line per request, and no more lines a second than the rate
limit lets through however many arrive (`proxy.protocol`); every line of the proxy's log (LOG_FORMAT=json) is JSON;
fuzzing the OpenAPI document (schemathesis) gives no 5xx and no hang;
hundreds of slow-loris connections (a request head, or a body, one byte at a time) do not starve normal
traffic (all its requests still answered 200) and are dropped by the read timeouts (`HEADER_TIMEOUT_S`,
`BODY_TIMEOUT_S`); oversized headers and bodies are refused before the client has sent them whole, and a
client that sends an oversized body whole anyway (64 MiB, Content-Length or chunked) reads the 413, not a reset;
slow bodies outnumbering `MAX_IN_FLIGHT` take no in-flight slot;
[timing] normal traffic's p99 moves less than 25% under slow-loris.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from proxy.protocol import LINES_PER_S
from reliability import procinfo
from reliability.bed import Bed, demo_workload
from reliability.load import LoadStats, wrk_loop
from reliability.result import ScenarioResult

_HEAD = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
# Ten kinds of malformed HTTP; `<PAUSE>` splits what is sent in two writes (a body that breaks after its head).
MALFORMED: dict[str, bytes] = {
    "not_http": b"GARBAGE\r\n\r\n",
    "bad_version": b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
    "length_and_chunked": _HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "invalid_length": _HEAD + b"Content-Length: 12abc\r\n\r\n",
    "bad_chunk": _HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "chunk_broken_after_head": _HEAD + b'Transfer-Encoding: chunked\r\n\r\n3\r\n{"i<PAUSE>zz\r\n0\r\n\r\n',
    "too_many_headers": b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(2000)) + b"\r\n",
    "long_header": b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
    "bad_header_bytes": b"GET /healthz HTTP/1.1\r\nX-A\x01b: v\r\nX-C: \xff\x00\r\n\r\n",
    "bad_transfer_encoding": _HEAD + b"Transfer-Encoding: gzip, chunked, x\r\n\r\n",
}


@dataclass(frozen=True)
class Config:
    loris: int = 200
    loris_interval_s: float = 0.5
    max_in_flight: int = 16  # fewer than the slow bodies (loris / 2): they must not hold slots
    whole_body_mib: int = 64
    header_timeout_s: float = 2.0
    body_timeout_s: float = 2.0
    normal_s: float = 1.0  # seconds of normal traffic (wrk) alone, then again beside the slow-loris connections
    normal_concurrency: int = 4
    fuzz_examples: int = 25
    malformed: int = 1000  # malformed requests, the kinds of MALFORMED in turn, sent back to back
    drop_bound_s: float = 60.0  # generous bound for "dropped", not a speed verdict

    @classmethod
    def long(cls, duration_s: float) -> Config:
        return cls(loris=500, header_timeout_s=5.0, body_timeout_s=5.0, normal_s=2.0, fuzz_examples=200)


@dataclass
class Loris:
    kind: str  # "head" or "body"
    opened: float = 0.0
    dropped_after_s: float | None = None
    answer: bytes = b""
    sent: int = 0
    errors: list[str] = field(default_factory=list)


async def _loris(port: int, loris: Loris, interval_s: float, bound_s: float) -> None:
    """Open a connection and send a request one byte at a time until the server drops it."""
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 26\r\n"
    payload = head + b"X-Pad: " + b"a" * 4000 if loris.kind == "head" else head + b"\r\n" + b"1" * 26
    start = 0 if loris.kind == "head" else len(head) + 2
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as err:
        loris.errors.append(f"connect: {err}")
        return
    loris.opened = time.monotonic()
    if start:
        writer.write(payload[:start])
    try:
        for index in range(start, len(payload)):
            if time.monotonic() - loris.opened > bound_s:
                break
            writer.write(payload[index : index + 1])
            await writer.drain()
            loris.sent += 1
            with contextlib.suppress(TimeoutError):
                data = await asyncio.wait_for(reader.read(65536), interval_s)
                loris.answer += data
                if not data:
                    break  # EOF: dropped
        else:
            return
        loris.dropped_after_s = time.monotonic() - loris.opened
    except (ConnectionError, OSError):
        loris.dropped_after_s = time.monotonic() - loris.opened
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _refused_early(port: int, head: bytes, body_chunks: int, chunk: bytes) -> tuple[int, int, int]:
    """Send `head` then up to `body_chunks` chunks, stopping when the server answers.

    Returns (status, bytes sent, bytes we would have sent in total); 0 when no answer came.
    """
    total = len(head) + body_chunks * len(chunk)
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setblocking(True)
        pieces = [head[i : i + 4096] for i in range(0, len(head), 4096)] + [chunk] * body_chunks
        answer = b""
        for piece in pieces:
            sock.settimeout(0.05)
            try:
                answer += sock.recv(65536)
            except TimeoutError:
                pass
            except OSError:
                break
            if answer:
                break
            sock.settimeout(10)
            try:
                sock.sendall(piece)
            except OSError:
                break
            sent += len(piece)
        sock.settimeout(10)
        with contextlib.suppress(OSError):
            answer = _status_line(sock, answer)
    try:
        status = int(answer.split(b" ", 2)[1])
    except (IndexError, ValueError):
        status = 0
    return status, sent, total


def _sent_whole(port: int, head: bytes, body: bytes, repeat: int) -> str:
    """Send `head` and `body` x `repeat` without looking for an answer (as most HTTP clients do), then read it.

    Returns the answer's status, or what went wrong instead ("reset while sending", ...).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(head)
            for _ in range(repeat):
                sock.sendall(body)
        except OSError as err:
            return f"{type(err).__name__} while sending"
        try:
            answer = _status_line(sock)
        except OSError as err:
            return f"{type(err).__name__} while reading"
    return answer.split(b"\r\n", 1)[0].decode(errors="replace") or "closed without an answer"


def _status_line(sock: socket.socket, answer: bytes = b"") -> bytes:
    """Read until the answer's first line is in (or the server closes)."""
    while b"\r\n" not in answer:
        data = sock.recv(65536)
        if not data:
            break
        answer += data
    return answer


def fuzz(url: str, examples: int, timeout_s: float = 10.0) -> dict[str, int]:
    """schemathesis over `proxy/openapi.yaml`: every operation, `examples` cases each, with a timeout.

    Reuses the schema and checks of `nexusml.testing.openapi`; returns counts by status, with
    `hang` for a call that did not answer within `timeout_s` and `failed_check` for a check failure.
    """
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import NonInteractiveExampleWarning  # noqa: F401

    from nexusml.testing.openapi import CHECKS, schema

    counts: dict[str, int] = {}
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: object) -> None:
            if case.headers:  # type: ignore[attr-defined]
                case.headers.pop("X-Request-Timeout-Ms", None)  # type: ignore[attr-defined]
            try:
                response = case.call(base_url=url, timeout=timeout_s)  # type: ignore[attr-defined]
            except Exception as err:  # a timeout is a hang; anything else a broken connection
                key = "hang" if "timeout" in type(err).__name__.lower() or "Timeout" in str(err) else "no_answer"
                counts[key] = counts.get(key, 0) + 1
                return
            counts[str(response.status_code)] = counts.get(str(response.status_code), 0) + 1
            try:
                case.validate_response(response, checks=CHECKS)  # type: ignore[attr-defined]
            except Exception as err:
                counts["failed_check"] = counts.get("failed_check", 0) + 1
                failures.append(f"{case.operation.label}: {str(err)[:200]}")  # type: ignore[attr-defined]

        check()
    if failures:
        counts["first_failure"] = 0
        print("schemathesis failures:", *failures[:5], sep="\n  ")
    return counts


@dataclass
class LorisPhase:
    """Normal traffic alone, then beside the slow-loris connections; the proxy's usage around them."""

    baseline: LoadStats
    during: LoadStats
    lorises: list[Loris]
    peak_connections: int
    before: procinfo.Usage
    after: procinfo.Usage

    def kind(self, kind: str) -> list[Loris]:
        return [lo for lo in self.lorises if lo.kind == kind]

    def dropped(self, kind: str) -> list[Loris]:
        return [lo for lo in self.kind(kind) if lo.dropped_after_s is not None]

    def slowest_drop_s(self, kind: str) -> float:
        return max((lo.dropped_after_s or 0 for lo in self.kind(kind)), default=0)

    @property
    def body_408(self) -> int:
        return sum(1 for lo in self.kind("body") if lo.answer.startswith(b"HTTP/1.1 408"))

    @property
    def shift_pct(self) -> float:
        if not self.baseline.p99_ms:
            return 0.0
        return (self.during.p99_ms - self.baseline.p99_ms) / self.baseline.p99_ms * 100


def run(bed: Bed, config: Config = Config()) -> ScenarioResult:
    result = ScenarioResult("hostile-http", settings=config.__dict__.copy())
    proxy = bed.proxy(
        bed.path("hostile"),
        MODEL_SERVER_URL=bed.shared_triton().grpc_url,
        HEADER_TIMEOUT_S=str(config.header_timeout_s),
        BODY_TIMEOUT_S=str(config.body_timeout_s),
        MAX_BODY_BYTES=str(64 << 10),
        MAX_IN_FLIGHT=str(config.max_in_flight),
        LOG_FORMAT="json",
    )
    assert proxy.process is not None and proxy.log_file is not None
    phase = _slow_loris_phase(config, proxy.url, proxy.port, proxy.process.pid, bed.path("hostile"))
    result.load = phase.during
    refused, whole = _oversized(config, proxy.port)
    malformed = _malformed_phase(proxy.port, proxy.log_file, config.malformed)
    fuzzed = fuzz(proxy.url, config.fuzz_examples)
    alive = proxy.get("/healthz")[0] == 200
    _loris_figures(result, config, phase)
    result.figures.update(
        {key: f"{status} after {sent} of {total} bytes" for key, (status, sent, total) in refused.items()}
    )
    result.figures.update(whole)
    result.figures.update(
        fuzz_statuses=fuzzed, memory_before=phase.before.as_dict(), memory_after=phase.after.as_dict()
    )
    result.figures.update(malformed.figures())
    _judge_loris(result, config, phase)
    _judge_oversized(result, config, refused)
    _judge_malformed(result, malformed, proxy.log_file)
    server_errors = {k: v for k, v in fuzzed.items() if k.startswith("5") or k in ("hang", "no_answer")}
    result.check("fuzzing: no 5xx, no hang", not server_errors, f"{fuzzed}")
    result.check("fuzzing: answers match the OpenAPI document", "failed_check" not in fuzzed, f"{fuzzed}")
    result.check("the proxy is still alive", alive, "")
    _judge_loris_timing(result, config, phase)
    return result


def _slow_loris_phase(config: Config, url: str, port: int, pid: int, log_dir: Path) -> LorisPhase:
    """Normal traffic alone (the baseline), then beside `config.loris` slow-loris connections. The normal
    traffic is wrk (`wrk_loop`), a process of its own: run from this event loop, beside the slow connections'
    coroutines, its latencies were this loop's queueing as much as the proxy's."""
    work = demo_workload(url, timeout_s=30)
    baseline, _ = wrk_loop(work, config.normal_concurrency, config.normal_s, log_dir, "normal-baseline")
    before = procinfo.usage(pid)

    async def under_loris() -> tuple[list[Loris], LoadStats, int]:
        lorises = [Loris("head" if i % 2 == 0 else "body") for i in range(config.loris)]
        tasks = [
            asyncio.create_task(_loris(port, loris, config.loris_interval_s, config.drop_bound_s)) for loris in lorises
        ]
        await asyncio.sleep(min(config.header_timeout_s, config.body_timeout_s) / 2)
        peak = procinfo.usage(pid).connections
        during, _ = await asyncio.to_thread(
            wrk_loop, work, config.normal_concurrency, config.normal_s, log_dir, "normal-under-loris"
        )
        await asyncio.gather(*tasks)
        return lorises, during, peak

    lorises, during, peak = asyncio.run(under_loris())
    return LorisPhase(baseline, during, lorises, peak, before, procinfo.usage(pid))


def _oversized(config: Config, port: int) -> tuple[dict[str, tuple[int, int, int]], dict[str, str]]:
    """Oversized requests: a header, a body (Content-Length, chunked) refused early as (status, bytes sent, bytes
    in all); and bodies sent whole anyway, with the first line of what the client then read."""
    big_header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
    body_head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n"
    )
    chunked_head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    refused = {
        "oversized_header": _refused_early(port, big_header, 0, b""),
        "oversized_body": _refused_early(port, body_head, 256, b"[" * 65536),
        "oversized_chunked": _refused_early(port, chunked_head, 256, b"10000\r\n" + b"[" * 65536 + b"\r\n"),
    }
    piece = b"[" * (1 << 20)
    length_head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {config.whole_body_mib << 20}\r\n\r\n".encode()
    )
    whole = {
        "whole_oversized_body": _sent_whole(port, length_head, piece, config.whole_body_mib),
        "whole_oversized_chunked": _sent_whole(
            port, chunked_head, f"{len(piece):x}\r\n".encode() + piece + b"\r\n", config.whole_body_mib
        ),
    }
    return refused, whole


@dataclass
class MalformedPhase:
    """Malformed requests sent, how they were answered, and what the proxy logged meanwhile."""

    sent: int
    statuses: dict[str, int]
    enveloped: int  # answers that are `{"error": {"code", "message"}}`
    seconds: float
    lines: list[dict[str, object]]  # the proxy's log lines written meanwhile, parsed
    unparsed: list[str]  # log lines that are not JSON objects

    def figures(self) -> dict[str, object]:
        suppressed = sum(int(str(line.get("suppressed", 0))) for line in self.lines)
        return {
            "malformed_sent": self.sent,
            "malformed_statuses": self.statuses,
            "malformed_enveloped": self.enveloped,
            "malformed_log_lines": len(self.lines) + len(self.unparsed),
            "malformed_lines_per_request": round((len(self.lines) + len(self.unparsed)) / max(self.sent, 1), 3),
            "malformed_lines_suppressed": suppressed,
            "malformed_tracebacks": sum("traceback" in line or "Traceback" in str(line) for line in self.lines),
            "malformed_error_lines": sum(line.get("level") in ("ERROR", "CRITICAL") for line in self.lines),
            "malformed_seconds": round(self.seconds, 2),
        }


def _malformed_answer(port: int, data: bytes) -> tuple[int, bool]:
    """Send one malformed request; (its status, whether its body is our error envelope); 0 for no answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for index, piece in enumerate(data.split(b"<PAUSE>")):
            if index:
                time.sleep(0.02)
            with contextlib.suppress(OSError):
                sock.sendall(piece)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/"):
        return 0, False
    status = int(head.split(b" ", 2)[1])
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return status, False
    return status, isinstance(error, dict) and {"code", "message"} <= error.keys()


def _malformed_phase(port: int, log_file: Path, count: int) -> MalformedPhase:
    """`count` malformed requests, the kinds in turn, back to back; then the log lines they caused."""
    kinds = list(MALFORMED.values())
    offset = log_file.stat().st_size
    started = time.monotonic()
    answers = [_malformed_answer(port, kinds[index % len(kinds)]) for index in range(count)]
    seconds = time.monotonic() - started
    time.sleep(1.5)  # the rate limit's summary of the lines it held back comes when its second is over
    text = log_file.read_bytes()[offset:].decode(errors="replace")
    lines, unparsed = _parsed_lines(text)
    statuses: dict[str, int] = {}
    for status, _ in answers:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return MalformedPhase(count, statuses, sum(ok for _, ok in answers), seconds, lines, unparsed)


def _parsed_lines(text: str) -> tuple[list[dict[str, object]], list[str]]:
    """The log lines of `text` that are JSON objects, parsed, and those that are not."""
    lines: list[dict[str, object]] = []
    unparsed: list[str] = []
    for raw in filter(None, text.splitlines()):
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            lines.append(parsed)
        else:
            unparsed.append(raw)
    return lines, unparsed


def _judge_malformed(result: ScenarioResult, phase: MalformedPhase, log_file: Path) -> None:
    figures = phase.figures()
    answered = all(status.startswith("4") for status in phase.statuses) and phase.enveloped == phase.sent
    result.check("malformed requests: every one 4xx with the error envelope", answered, f"{figures}")
    quiet = figures["malformed_tracebacks"] == 0 and figures["malformed_error_lines"] == 0
    result.check("malformed requests: no traceback, no ERROR line", quiet, f"{figures}")
    result.check(
        "malformed requests: at most one log line each",
        float(str(figures["malformed_lines_per_request"])) <= 1,
        str(figures["malformed_lines_per_request"]),
    )
    bound = (LINES_PER_S + 1) * (int(phase.seconds) + 3)
    result.check(
        f"malformed requests: log lines bounded by the rate limit ({bound} in {phase.seconds:.1f} s)",
        int(str(figures["malformed_log_lines"])) <= bound,
        str(figures["malformed_log_lines"]),
    )
    _, not_json = _parsed_lines(log_file.read_text(errors="replace"))
    result.check("every line of the proxy's log is a JSON object", not not_json, f"{not_json[:3]}")


def _loris_figures(result: ScenarioResult, config: Config, phase: LorisPhase) -> None:
    heads, bodies = phase.kind("head"), phase.kind("body")
    result.figures.update(
        slow_loris_connections=config.loris,
        proxy_connections_peak=phase.peak_connections,
        heads_dropped=f"{len(phase.dropped('head'))}/{len(heads)}",
        bodies_dropped=f"{len(phase.dropped('body'))}/{len(bodies)} ({phase.body_408} answered 408)",
        head_drop_max_s=round(phase.slowest_drop_s("head"), 2),
        body_drop_max_s=round(phase.slowest_drop_s("body"), 2),
        normal_p99_ms_baseline=phase.baseline.p99_ms,
        normal_p99_ms_under_loris=phase.during.p99_ms,
        normal_p99_shift_pct=round(phase.shift_pct, 1),
    )


def _judge_loris(result: ScenarioResult, config: Config, phase: LorisPhase) -> None:
    bodies, dropped_heads, dropped_bodies = phase.kind("body"), phase.dropped("head"), phase.dropped("body")
    result.check(
        f"normal traffic not starved (all 200, correct) by {len(bodies)} slow bodies over MAX_IN_FLIGHT "
        f"{config.max_in_flight}",
        phase.during.sent > 0 and set(phase.during.by_status) == {"200"} and phase.during.wrong_bodies == 0,
        f"{phase.during.by_status}",
    )
    result.check(
        "slow heads dropped by HEADER_TIMEOUT_S", len(dropped_heads) == len(phase.kind("head")), f"{len(dropped_heads)}"
    )
    result.check(
        "slow bodies dropped by BODY_TIMEOUT_S (408)",
        len(dropped_bodies) == len(bodies) and phase.body_408 == len(bodies),
        f"{len(dropped_bodies)} dropped, {phase.body_408} answered 408",
    )


def _judge_oversized(result: ScenarioResult, config: Config, refused: dict[str, tuple[int, int, int]]) -> None:
    for name, key, status_ok in (
        ("oversized header refused before it is sent whole", "oversized_header", lambda s: 400 <= s < 500),
        ("oversized body refused (413) before it is sent whole", "oversized_body", lambda s: s == 413),
        ("oversized chunked body refused (413) before it is sent whole", "oversized_chunked", lambda s: s == 413),
    ):
        status, sent, total = refused[key]
        result.check(name, status_ok(status) and sent < total, result.figures[key])
    for framing, key in (("Content-Length", "whole_oversized_body"), ("chunked", "whole_oversized_chunked")):
        result.check(
            f"a {config.whole_body_mib} MiB body sent whole reads its 413 ({framing})",
            result.figures[key].startswith("HTTP/1.1 413"),
            result.figures[key],
        )


def _judge_loris_timing(result: ScenarioResult, config: Config, phase: LorisPhase) -> None:
    shift = phase.shift_pct
    result.check("normal p99 moves < 25% under slow-loris", shift < 25, f"{shift:.1f}%", timing=True)
    result.check(
        "slow heads dropped near HEADER_TIMEOUT_S",
        phase.slowest_drop_s("head") <= config.header_timeout_s + 2,
        result.figures["head_drop_max_s"],
        timing=True,
    )
    result.check(
        "slow bodies dropped near BODY_TIMEOUT_S",
        phase.slowest_drop_s("body") <= config.body_timeout_s + 2,
        result.figures["body_drop_max_s"],
        timing=True,
    )
