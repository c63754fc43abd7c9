"""The checking wrk script: its Lua, its summary's parser, its histograms; and one real wrk run against a
small local server whose answers are known (right and wrong bodies, 429s with and without Retry-After)."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from benchmarks import loadgen
from benchmarks.parsing import ParseError
from benchmarks.wrk_checked import (
    BUCKETS_PER_E,
    CHECKED_MARKER,
    bucket_ms,
    checked_script,
    histogram_max,
    histogram_percentile,
    parse_checked,
)

BODIES = ['{"input": [1, 2]}', '{"input": [3, 4]}', '{"input": [5, 6]}', '{"input": [7, 8]}']
EXPECTED = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]


def test_script_holds_every_body_and_paces_only_with_a_rate() -> None:
    closed = checked_script(BODIES, EXPECTED, "/predict", {"X-API-Key": "k"})
    assert all(json.dumps(body) in closed for body in BODIES)
    assert '["X-API-Key"] = "k"' in closed
    assert "delay = function" not in closed
    assert "delay = function" in checked_script(BODIES, EXPECTED, rate_per_thread=100.0)


@pytest.mark.parametrize(
    ("bodies", "expected"),
    [
        pytest.param([], [], id="no-body"),
        pytest.param(BODIES, EXPECTED[:1], id="fewer-outputs-than-bodies"),
    ],
)
def test_script_refuses_bodies_without_outputs(bodies: list[str], expected: list[list[float]]) -> None:
    with pytest.raises(ValueError):
        checked_script(bodies, expected)


def test_parse_checked_reads_the_done_line() -> None:
    line = CHECKED_MARKER + json.dumps(
        {
            "duration_us": 2_000_000,
            "requests": 10,
            "errors": {"connect": 1, "read": 0, "write": 0, "timeout": 2},
            "statuses": {"200": 7, "429": 3},
            "codes": {"overloaded": 3},
            "latency": {"accepted": {"1000": 7}, "rejected": {"500": 3}, "other": {}},
            "wrong": 1,
            "without_retry_after": 2,
            "unpaired": 0,
            "behind_schedule": 4,
        }
    )
    summary = parse_checked("Running 2s test\n" + line + "\n")
    assert summary.duration_s == 2.0
    assert summary.statuses == {"200": 7, "429": 3} and summary.codes == {"overloaded": 3}
    assert (summary.wrong_bodies, summary.without_retry_after, summary.behind_schedule) == (1, 2, 4)
    assert summary.latencies() == {1000: 7, 500: 3}
    assert summary.latencies("rejected") == {500: 3}


@pytest.mark.parametrize(
    "stdout",
    [
        pytest.param("Running 1s test\n", id="no-line"),
        pytest.param(CHECKED_MARKER + '{"duration_us": 1}\n', id="fields-missing"),
    ],
)
def test_parse_checked_refuses_what_is_not_a_summary(stdout: str) -> None:
    with pytest.raises(ParseError):
        parse_checked(stdout)


def test_histogram_percentiles_are_nearest_rank_within_a_bucket() -> None:
    ms = {1.0: 98, 10.0: 1, 100.0: 1}
    histogram = {math.floor(math.log(v * 1000) * BUCKETS_PER_E): n for v, n in ms.items()}
    assert histogram_percentile(histogram, 50) == pytest.approx(1.0, rel=0.01)
    assert histogram_percentile(histogram, 99) == pytest.approx(10.0, rel=0.01)
    assert histogram_max(histogram) == pytest.approx(100.0, rel=0.01)
    assert histogram_percentile({}, 99) == 0.0 and histogram_max({}) == 0.0
    assert bucket_ms(0) == pytest.approx(0.001, rel=0.01)


class _Known(BaseHTTPRequestHandler):
    """Row 1 answers right; row 3 a wrong output; row 5 a 429 with Retry-After; row 7 a 429 without."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        first = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["input"][0]
        status, body, extra = 200, {"output": [float(first), float(first + 1)]}, {}
        if first == 3:
            body = {"output": [0.0, 0.0]}
        elif first in (5, 7):
            status, body = 429, {"error": {"code": "overloaded", "message": "busy"}}
            extra = {"Retry-After": "1"} if first == 5 else {}
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {"X-Request-Id": self.headers.get("X-Request-Id", ""), **extra}.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def known_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Known)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/predict"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(loadgen.wrk_path() is None, reason="wrk is not installed (Debian package wrk; make installs it)")
@pytest.mark.parametrize("rate", [pytest.param(0.0, id="closed-loop"), pytest.param(20.0, id="paced")])
def test_wrk_checks_every_answer(known_server: str, tmp_path: Path, rate: float) -> None:
    summary = loadgen.wrk_checked(known_server, BODIES, EXPECTED, 2, 1, tmp_path, "known", rate=rate)
    answered = sum(summary.statuses.values())
    assert answered >= 8 and summary.unpaired == 0
    per_row = answered / 4
    assert summary.statuses["429"] == pytest.approx(per_row * 2, abs=2)
    assert summary.wrong_bodies == pytest.approx(per_row, abs=1)
    assert summary.without_retry_after == pytest.approx(per_row, abs=1)
    assert summary.codes == {"overloaded": summary.statuses["429"]}
    assert sum(summary.latencies("rejected").values()) == summary.statuses["429"]
    assert sum(summary.latencies("accepted").values()) == summary.statuses["200"]
    if rate:
        assert answered <= rate * 1.5 + 4  # paced, not as fast as the server answers
