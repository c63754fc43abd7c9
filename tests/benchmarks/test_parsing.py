"""Result parsing: wrk's JSON line and Lua script (binary bodies included), perf_analyzer's CSV, locust's
stats CSV, Triton's statistics, the proxy's answers and its logged errors."""

from __future__ import annotations

import ast
import http.server
import json
import shutil
import struct
import subprocess
import threading
from pathlib import Path

import pytest

from benchmarks.parsing import (
    BACKEND_STAGES,
    WRK_MARKER,
    ParseError,
    average_batch,
    backend_stages,
    concurrency_of,
    first_output,
    logged_errors,
    lua_string,
    parse_locust_stats,
    parse_perf_analyzer_csv,
    parse_wrk,
    served_precision,
    stage_breakdown,
    triton_counts,
    wrk_script,
)

WRK_OK = (
    "Running 10s test @ http://127.0.0.1:1/predict\n  1 threads and 64 connections\n"
    + WRK_MARKER
    + '{"duration_us": 10000000, "requests": 50000, "bytes": 1, "errors": {"connect": 0, "read": 0, "write": 0,'
    ' "status": 0, "timeout": 0}, "latency_us": {"min": 100, "max": 90000, "mean": 1250.5, "stdev": 10.0,'
    ' "p50": 1000, "p90": 2000, "p95": 2500, "p99": 4000}}\n'
)
WRK_ERRORS = (
    WRK_MARKER
    + '{"duration_us": 2000000, "requests": 1000, "bytes": 1, "errors": {"connect": 3, "read": 0, "write": 0,'
    ' "status": 200, "timeout": 7}, "latency_us": {"min": 1, "max": 2, "mean": 1.0, "stdev": 0.0,'
    ' "p50": 500, "p90": 600, "p95": 700, "p99": 800}}'
)
WRK_NOTHING = (
    WRK_MARKER + '{"duration_us": 1000000, "requests": 0, "bytes": 0, "errors": {"connect": 64, "read": 0, "write": 0,'
    ' "status": 0, "timeout": 0}, "latency_us": {"min": 0, "max": 0, "mean": 0, "stdev": 0,'
    ' "p50": 0, "p90": 0, "p95": 0, "p99": 0}}'
)


@pytest.mark.parametrize(
    ("stdout", "throughput", "errors", "p50", "p99", "detail"),
    [
        pytest.param(WRK_OK, 5000.0, 0, 1.0, 4.0, {}, id="clean-run"),
        pytest.param(WRK_ERRORS, 400.0, 210, 0.5, 0.8, {"connect": 3, "status": 200, "timeout": 7}, id="errors"),
        pytest.param(WRK_NOTHING, 0.0, 64, None, None, {"connect": 64}, id="nothing-answered"),
    ],
)
def test_parse_wrk(stdout, throughput, errors, p50, p99, detail):
    result = parse_wrk(stdout)
    assert result.tool == "wrk"
    assert result.throughput == pytest.approx(throughput)
    assert result.errors == errors
    assert result.p50_ms == (None if p50 is None else pytest.approx(p50))
    assert result.p99_ms == (None if p99 is None else pytest.approx(p99))
    assert result.error_detail == detail


@pytest.mark.parametrize(
    "stdout",
    [
        pytest.param("Running 10s test\nRequests/sec: 100\n", id="no-marker"),
        pytest.param(WRK_MARKER + "{not json", id="bad-json"),
        pytest.param(WRK_MARKER + '{"duration_us": 0, "requests": 1, "errors": {}, "latency_us": {}}', id="zero"),
        pytest.param(WRK_MARKER + '{"requests": 1}', id="missing-keys"),
    ],
)
def test_parse_wrk_rejects(stdout):
    with pytest.raises(ParseError):
        parse_wrk(stdout)


def test_wrk_script_posts_the_body_and_prints_the_marker():
    script = wrk_script('{"input": [1, 2, 3, 4, 5]}')
    assert 'wrk.method = "POST"' in script
    assert 'wrk.body = "{\\"input\\": [1, 2, 3, 4, 5]}"' in script
    assert WRK_MARKER in script
    assert "latency:percentile(99)" in script


@pytest.mark.parametrize(
    ("data", "literal"),
    [
        pytest.param(b"abc {}", '"abc {}"', id="printable"),
        pytest.param(b'"\\', '"\\034\\092"', id="quote-and-backslash"),
        pytest.param(b"\x00" + b"1", '"\\0001"', id="nul-then-digit"),
        pytest.param(b"\n\x7f\xff", '"\\010\\127\\255"', id="control-and-high"),
        pytest.param(b"", '""', id="empty"),
    ],
)
def test_lua_string(data, literal):
    assert lua_string(data) == literal


def test_wrk_script_for_a_binary_body_sets_its_headers():
    script = wrk_script(
        b"{}\x00\x01", "/v2/models/m/infer", "application/octet-stream", {"Inference-Header-Content-Length": "2"}
    )
    assert 'wrk.path = "/v2/models/m/infer"' in script
    assert 'wrk.body = "{}\\000\\001"' in script
    assert 'wrk.headers["Content-Type"] = "application/octet-stream"' in script
    assert 'wrk.headers["Inference-Header-Content-Length"] = "2"' in script


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_wrk_sends_a_binary_body_byte_for_byte(tmp_path: Path) -> None:
    body = b'{"inputs":[]}' + bytes(range(256)) * 64 + b'\\"1\x000'
    seen: list[tuple[bool, str | None]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            data = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((data == body, self.headers.get("Inference-Header-Content-Length")))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        script = tmp_path / "post.lua"
        script.write_text(wrk_script(body, "/x", "application/octet-stream", {"Inference-Header-Content-Length": "13"}))
        url = f"http://127.0.0.1:{server.server_port}/x"
        done = subprocess.run(["wrk", "-t1", "-c1", "-d1s", "-s", str(script), url], capture_output=True, text=True)
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr
    assert seen and set(seen) == {(True, "13")}


def _binary_answer(values: list[float], datatype: str = "FP32") -> tuple[bytes, str]:
    data = struct.pack(f"<{len(values)}f", *values)
    entry = {"name": "OUTPUT__0", "datatype": datatype, "shape": [1, len(values)]}
    header = json.dumps({"outputs": [{**entry, "parameters": {"binary_data_size": len(data)}}]}).encode()
    return header + data, str(len(header))


@pytest.mark.parametrize(
    ("body", "header_length", "expected"),
    [
        pytest.param(b'{"output": [[0.5, -1.0], [2.0, 3.0]]}', None, [0.5, -1.0, 2.0, 3.0], id="predict"),
        pytest.param(b'{"outputs": [{"name": "O", "data": [1, 2.5]}]}', None, [1.0, 2.5], id="v2-json"),
        pytest.param(*_binary_answer([0.25, -2.0, 7.5]), [0.25, -2.0, 7.5], id="v2-binary"),
    ],
)
def test_first_output(body, header_length, expected):
    assert first_output(body, header_length) == expected


@pytest.mark.parametrize(
    ("body", "header_length"),
    [
        pytest.param(b"not json", None, id="not-json"),
        pytest.param(b'{"error": "overloaded"}', None, id="error-answer"),
        pytest.param(_binary_answer([1.0])[0][:-2], _binary_answer([1.0])[1], id="truncated"),
        pytest.param(*_binary_answer([1.0], "FP16"), id="not-fp32"),
        pytest.param(b"{}", "x", id="bad-header-length"),
    ],
)
def test_first_output_rejects(body, header_length):
    with pytest.raises(ParseError):
        first_output(body, header_length)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", {}, id="empty"),
        pytest.param(
            "2026-11-28 02:00:00,000 INFO proxy: serving tiny_image\n"
            '{"request_id": "a-1", "status": 504, "code": "deadline_exceeded", "ms": 10000.1}\n'
            '{"request_id": "a-2", "status": 504, "code": "deadline_exceeded", "ms": 10000.2}\n'
            '{"request_id": "a-3", "status": 499}\n',
            {"504 deadline_exceeded": 2, "499": 1},
            id="access-lines-counted-by-status-and-code",
        ),
        pytest.param('{"status": "x"}\n{not json\n[1, 2]\n', {}, id="not-access-lines"),
    ],
)
def test_logged_errors(text, expected):
    assert logged_errors(text) == expected


PA_HEADER = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
    "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency"
)


@pytest.mark.parametrize(
    ("text", "window", "expected"),
    [
        pytest.param(
            PA_HEADER + "\n64,12218.5,2,458,3000,49,598,338,5,5100,6000,6500,9000\n",
            9.0,
            [(64, 12218.5, 5.1, 6.5, 9.0, 4.45, 109966)],
            id="one-row-2.51",
        ),
        pytest.param(
            PA_HEADER
            + ",Avg latency\n1,1650,1,2,3,4,5,6,7,500,600,700,800,610\n8,2000,1,2,3,4,5,6,7,4000,1,2,5000,4100\n",
            3.0,
            [(1, 1650.0, 0.5, 0.7, 0.8, 0.61, 4950), (8, 2000.0, 4.0, 0.002, 5.0, 4.1, 6000)],
            id="two-rows-with-avg-column",
        ),
    ],
)
def test_parse_perf_analyzer_csv(text, window, expected):
    results = parse_perf_analyzer_csv(text, window)
    assert concurrency_of(text) == [row[0] for row in expected]
    assert len(results) == len(expected)
    for result, (_, throughput, p50, p95, p99, mean, requests) in zip(results, expected, strict=True):
        assert result.tool == "perf_analyzer"
        assert result.throughput == pytest.approx(throughput)
        assert (result.p50_ms, result.p95_ms, result.p99_ms) == pytest.approx((p50, p95, p99))
        assert result.mean_ms == pytest.approx(mean)
        assert result.requests == requests
        assert result.errors == 0


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param(PA_HEADER + "\n", id="header-only"),
        pytest.param("Concurrency,p50 latency\n1,100\n", id="no-throughput"),
        pytest.param(PA_HEADER + "\n1,fast,1,2,3,4,5,6,7,8,9,10,11\n", id="not-a-number"),
    ],
)
def test_parse_perf_analyzer_rejects(text):
    with pytest.raises(ParseError):
        parse_perf_analyzer_csv(text, 1.0)


LOCUST_HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
    "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
)


@pytest.mark.parametrize(
    ("rows", "requests", "errors", "throughput", "duration", "p95"),
    [
        pytest.param(
            [
                "POST,/predict,5000,0,6,6.6,3,44,35.0,500.0,0.0,6,7,7,8,8,9,10,19,44,44,44",
                ",Aggregated,5000,0,6,6.6,3,44,35.0,500.0,0.0,6,7,7,8,8,9,10,19,44,44,44",
            ],
            5000,
            0,
            500.0,
            10.0,
            9.0,
            id="clean",
        ),
        pytest.param(
            [",Aggregated,1000,100,6,6.6,3,44,35.0,200.0,20.0,6,7,7,8,8,12,10,19,44,44,44"],
            1000,
            100,
            180.0,
            5.0,
            12.0,
            id="failures",
        ),
        pytest.param(
            [",Aggregated,0,0,0,0,0,0,0,0.0,0.0,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A"],
            0,
            0,
            0.0,
            3.0,
            None,
            id="no-requests",
        ),
    ],
)
def test_parse_locust_stats(rows, requests, errors, throughput, duration, p95):
    result = parse_locust_stats("\n".join([LOCUST_HEADER, *rows]), duration_s=3.0)
    assert (result.requests, result.errors) == (requests, errors)
    assert result.throughput == pytest.approx(throughput)
    assert result.duration_s == pytest.approx(duration)
    assert result.p95_ms == (None if p95 is None else pytest.approx(p95))


def test_parse_locust_stats_needs_aggregated_row():
    with pytest.raises(ParseError):
        parse_locust_stats(LOCUST_HEADER + "\nPOST,/predict,1,0,6,6.6,3,44,35.0,1.0,0.0,6,7,7,8,8,9,10,19,44,44,44")


STATS = {
    "model_stats": [
        {"name": "other", "inference_count": 1, "execution_count": 1},
        {
            "name": "demo_mlp",
            "inference_count": 6400,
            "execution_count": 200,
            "inference_stats": {"fail": {"count": 3, "ns": 10}},
        },
    ]
}


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        pytest.param((0, 0, 0), (6400, 200, 3), 32.0, id="batched"),
        pytest.param((100, 100, 0), (200, 200, 0), 1.0, id="unbatched"),
        pytest.param((5, 5, 0), (5, 5, 0), None, id="idle"),
    ],
)
def test_average_batch(before, after, expected):
    assert average_batch(before, after) == (None if expected is None else pytest.approx(expected))


def test_triton_counts():
    assert triton_counts(STATS, "demo_mlp") == (6400, 200, 3)
    assert triton_counts(STATS, "other") == (1, 1, 0)
    with pytest.raises(ParseError):
        triton_counts(STATS, "missing")


TRITON_LOG = """I1128 05:27:18 1 model.py:166] "demo v1: model.pt loaded on cpu (fp32)"
I1128 05:27:19 1 model.py:90] "nexus_backend_stages model=m version=1 pid=11 batches=10 inputs=0.1 forward=1.0"
I1128 05:27:19 1 model.py:90] "nexus_backend_stages model=m version=1 pid=12 batches=5 inputs=0.05 forward=0.5"
I1128 05:27:20 1 model.py:90] "nexus_backend_stages model=other version=1 pid=13 batches=9 inputs=9 forward=9"
I1128 05:27:20 1 model.py:90] "nexus_backend_stages model=m version=1 pid=11 batches=20 inputs=0.2 forward=2.0"
"""


def test_backend_stages_takes_each_instance_latest_line():
    assert backend_stages(TRITON_LOG, "m") == pytest.approx({"batches": 25, "inputs": 0.25, "forward": 2.5})
    assert backend_stages("", "m") == {}


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        pytest.param(
            {"forward": 1.0, "batches": 10},
            {"forward": 2.0, "inputs": 0.25, "batches": 110},
            {"batches": 100, "forward": (10.0, 0.8), "inputs": (2.5, 0.2)},
            id="deltas",
        ),
        pytest.param({"batches": 5}, {"batches": 5}, None, id="nothing-ran"),
        pytest.param({}, {"forward": 1.0}, None, id="no-batches-pushed"),
    ],
)
def test_stage_breakdown(before, after, expected):
    breakdown = stage_breakdown(before, after)
    if expected is None:
        assert breakdown is None
        return
    assert breakdown["batches"] == expected.pop("batches")
    for stage, (ms, share) in expected.items():
        assert breakdown["ms_per_batch"][stage] == pytest.approx(ms)
        assert breakdown["share"][stage] == pytest.approx(share)
    assert sum(breakdown["share"].values()) == pytest.approx(1.0)


def test_served_precision_reads_the_generated_config():
    golden = Path(__file__).parents[1] / "nexusml" / "sync" / "golden" / "demo_mlp.config.pbtxt"
    assert served_precision(golden.read_text()) == "fp32"
    assert served_precision(golden.read_text().replace('"fp32"', '"fp16"')) == "fp16"
    assert served_precision('name: "m"') == "fp32"


def test_backend_stages_are_the_models_own() -> None:
    """The bench reads the stages nexusml/backend/model.py times, in its order (read from its source: it
    imports Triton's stub module)."""
    source = (Path(__file__).resolve().parents[2] / "nexusml" / "backend" / "model.py").read_text()
    found = [
        ast.literal_eval(node.value)
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "STAGES" for t in node.targets)
    ]
    assert found == [BACKEND_STAGES]
