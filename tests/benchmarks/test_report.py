"""Ratios, the headline concurrency, the bottleneck heuristic and the Markdown rendering."""

from __future__ import annotations

import pytest

from benchmarks import report
from benchmarks.monitor import ProcessCpu, bottleneck


def run(path: str, conc: int, throughput: float | None, status: str = "ok") -> dict:
    return {"path": path, "concurrency": conc, "throughput": throughput, "status": status}


RUNS = [
    run("naive", 64, 1400.0),
    run("proxy_nobatch", 64, 1000.0),
    run("proxy_batch", 64, 7000.0),
    run("triton_nobatch", 64, 1650.0),
    run("triton_batch", 64, 12000.0),
    run("naive", 1, 1000.0),
    run("proxy_batch", 1, 20.0),
    run("proxy_nobatch", 1, 0.0, status="failed"),
]


@pytest.mark.parametrize(
    ("name", "conc", "ceiling", "expected"),
    [
        pytest.param("c/a", 64, None, 5.0, id="c-over-a"),
        pytest.param("c/b", 64, None, 7.0, id="c-over-b"),
        pytest.param("proxy/direct (batching on)", 64, None, 7000 / 12000, id="proxy-over-direct"),
        pytest.param("direct on/off", 64, None, 12000 / 1650, id="direct-on-off"),
        pytest.param("served/ceiling (c)", 64, 14000.0, 0.5, id="served-over-ceiling"),
        pytest.param("served/ceiling (c)", 64, None, None, id="no-ceiling"),
        pytest.param("c/a", 1, None, 0.02, id="low-concurrency"),
        pytest.param("c/b", 1, None, None, id="failed-denominator"),
        pytest.param("c/a", 8, None, None, id="not-measured"),
    ],
)
def test_ratio_table(name, conc, ceiling, expected):
    ratios = report.compute_ratios(RUNS, [1, 8, 64], ceiling, 64, report.TARGETS["cpu"])
    value = ratios["by_concurrency"][name][str(conc)]
    assert value == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    ("numerator", "denominator", "expected"),
    [
        pytest.param(10.0, 2.0, 5.0, id="plain"),
        pytest.param(None, 2.0, None, id="no-numerator"),
        pytest.param(1.0, 0.0, None, id="zero-denominator"),
        pytest.param(1.0, None, None, id="no-denominator"),
    ],
)
def test_ratio(numerator, denominator, expected):
    assert report.ratio(numerator, denominator) == expected


def test_headline_against_targets():
    ratios = report.compute_ratios(RUNS, [1, 64], None, 64, report.TARGETS["cpu"])
    head = ratios["headline"]
    assert ratios["headline_concurrency"] == 64
    assert head["c/a"] == {"value": pytest.approx(5.0), "target": 2.4, "met": True}
    assert head["c/b"]["met"] is True
    assert head["proxy/direct (batching on)"]["met"] is None


@pytest.mark.parametrize(
    ("swept", "wanted", "expected"),
    [
        pytest.param([1, 8, 32, 64, 128], 64, 64, id="swept"),
        pytest.param([1, 4], 64, 4, id="largest-below"),
        pytest.param([128, 256], 64, 128, id="all-above"),
    ],
)
def test_pick_headline(swept, wanted, expected):
    assert report.pick_headline(swept, wanted) == expected


def cpu(role: str, name: str, pct: float, cores: int) -> ProcessCpu:
    return ProcessCpu(role, name, 1, pct, cores)


@pytest.mark.parametrize(
    ("processes", "gpu", "starts_with"),
    [
        pytest.param([cpu("server", "python -m benchmarks.naive_server", 97, 1)], None, "server (", id="one-core"),
        pytest.param(
            [cpu("server", "tritonserver", 120, 2), cpu("loadgen", "perf_analyzer", 70, 2)],
            None,
            "machine CPU",
            id="machine",
        ),
        pytest.param([cpu("server", "tritonserver", 20, 2)], None, "no CPU saturated", id="waiting"),
        pytest.param([cpu("server", "tritonserver", 20, 2)], 93.0, "GPU", id="gpu"),
        pytest.param([cpu("loadgen", "wrk", 99, 1)], None, "loadgen (wrk)", id="loadgen"),
    ],
)
def test_bottleneck(processes, gpu, starts_with):
    assert bottleneck(processes, 2, gpu).startswith(starts_with)


def test_markdown_lists_every_run_and_the_ratios():
    model = {
        "key": "demo_mlp",
        "description": "demo MLP",
        "ceiling": {
            "samples_per_s": 14000.0,
            "best_batch": 64,
            "threads": 2,
            "device": "cpu",
            "precision": "fp32",
            "by_batch": {"1": 900.0, "64": 14000.0},
        },
        "runs": [
            {
                **run("naive", 64, 1400.0),
                "tool": "wrk",
                "p50_ms": 40.0,
                "p95_ms": 50.0,
                "p99_ms": 60.0,
                "errors": 0,
                "cpu": {"server": 99.0, "loadgen": 20.0},
                "gpu_util_pct": None,
                "bottleneck": "server",
            },
            {**run("proxy_nobatch", 64, None, status="not available"), "note": "proxy not available: boom"},
        ],
        "locust": None,
        "ratios": report.compute_ratios(RUNS, [64], 14000.0, 64, report.TARGETS["cpu"]),
    }
    text = report.markdown({"machine": {"nproc": 2, "cpu_model": "x", "ram_gb": 1, "gpus": []}, "models": [model]})
    assert "| (a) naive aiohttp server | wrk | 64 | 1,400 | 40.00 | 50.00 | 60.00 |" in text
    assert "not available" in text and "proxy not available: boom" in text
    assert "| c/b | 7.00x | >= 5x | yes |" in text


def large(path: str, conc: int, throughput: float, cpu_pct: float, cpu_ms: float, status: str = "ok") -> dict:
    return {
        **run(path, conc, throughput, status),
        "tool": "wrk",
        "cpu": {"server": 150.0, "proxy": cpu_pct},
        "cpu_ms_per_request": {"server": 100.0, "proxy": cpu_ms},
        "duration_s": 10.0,
        "window_s": 10.0,
    }


LARGE_RUNS = [
    large("proxy_large_json", 1, 6.0, 30.0, 50.0),
    large("proxy_large_binary", 1, 8.0, 2.0, 2.5),
    large("proxy_large_json", 4, 7.0, 35.0, 50.0),
    large("proxy_large_binary", 4, 9.0, 6.0, 6.0),
    large("proxy_large_json", 8, 7.0, 35.0, 50.0),
    large("proxy_large_binary", 8, 0.0, 0.0, 0.0, status="failed"),
]
# Triton's own HTTP endpoint fed the same binary requests: no proxy in its points.
TRITON_LARGE_RUNS = [
    {**run("triton_large_binary", 1, 10.0), "tool": "wrk", "cpu": {"server": 120.0}, "duration_s": 10.0},
    {**run("triton_large_binary", 4, 9.0), "tool": "wrk", "cpu": {"server": 160.0}, "duration_s": 10.0},
    run("triton_large_binary", 8, None, status="failed"),
]


@pytest.mark.parametrize(
    ("conc", "triton", "vs_triton"),
    [
        pytest.param(1, 10.0, 0.8, id="proxy-slower"),
        pytest.param(4, 9.0, 1.0, id="parity"),
        pytest.param(8, None, None, id="triton-failed"),
        pytest.param(16, None, None, id="not-measured"),
    ],
)
def test_large_input_proxy_binary_over_triton(conc, triton, vs_triton):
    row = report.large_input(LARGE_RUNS + TRITON_LARGE_RUNS, [1, 4, 8, 16])["by_concurrency"][str(conc)]
    assert row["triton_req_s"] == triton
    assert row["vs_triton"] == (None if vs_triton is None else pytest.approx(vs_triton))


def test_large_input_without_triton_points_has_no_ratio_to_it():
    row = report.large_input(LARGE_RUNS, [1])["by_concurrency"]["1"]
    assert row["triton_req_s"] is None and row["vs_triton"] is None


@pytest.mark.parametrize(
    ("conc", "cpu_ratio", "met"),
    [
        pytest.param(1, 0.05, True, id="at-the-target"),
        pytest.param(4, 0.12, False, id="above-the-target"),
        pytest.param(8, None, None, id="binary-failed"),
        pytest.param(16, None, None, id="not-measured"),
    ],
)
def test_large_input_ratio_of_proxy_cpu_per_request(conc, cpu_ratio, met):
    summary = report.large_input(LARGE_RUNS, [1, 4, 8, 16])
    row = summary["by_concurrency"][str(conc)]
    assert row["cpu_ratio"] == (None if cpu_ratio is None else pytest.approx(cpu_ratio))
    assert row["met"] is met
    assert summary["target"] == pytest.approx(1 / 20)


@pytest.mark.parametrize(
    ("concurrencies", "met"),
    [
        pytest.param([1], True, id="all-met"),
        pytest.param([1, 4], False, id="one-missed"),
        pytest.param([8, 16], None, id="nothing-measured"),
    ],
)
def test_large_input_met_overall(concurrencies, met):
    assert report.large_input(LARGE_RUNS, concurrencies)["met"] is met


def test_cpu_ms_per_request_needs_an_ok_point():
    assert report.cpu_ms_per_request(LARGE_RUNS[0]) == 50.0
    assert report.cpu_ms_per_request(LARGE_RUNS[0], "server") == 100.0
    assert report.cpu_ms_per_request(LARGE_RUNS[-1]) is None
    assert report.cpu_ms_per_request(run("proxy_batch", 1, 5.0)) is None
    assert report.cpu_ms_per_request(None) is None


@pytest.mark.parametrize(
    ("index", "idle_pct", "expected"),
    [
        pytest.param(1, 1.0, 2.5 - 1.0 * 10 * 10 / 80, id="binary-less-idle"),
        pytest.param(0, 1.0, 50.0 - 1.0 * 10 * 10 / 60, id="json-less-idle"),
        pytest.param(1, 50.0, 0.0, id="never-negative"),
        pytest.param(1, None, None, id="idle-not-measured"),
        pytest.param(5, 1.0, None, id="failed-point"),
    ],
)
def test_net_cpu_ms_per_request(index, idle_pct, expected):
    value = report.net_cpu_ms_per_request(LARGE_RUNS[index], idle_pct)
    assert value == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    ("conc", "idle_pct", "gross", "net", "met"),
    [
        pytest.param(1, 1.0, 0.05, 1.25 / (50 - 10 / 6), True, id="both-meet"),
        pytest.param(4, 3.0, 0.12, (6 - 30 / 9) / (50 - 30 / 7), False, id="both-miss"),
        pytest.param(4, 5.2, 0.12, (6 - 52 / 9) / (50 - 52 / 7), True, id="net-decides"),
        pytest.param(4, None, 0.12, None, False, id="gross-without-idle"),
    ],
)
def test_large_input_target_is_read_on_the_net_ratio_when_idle_was_measured(conc, idle_pct, gross, net, met):
    row = report.large_input(LARGE_RUNS, [conc], idle_pct)["by_concurrency"][str(conc)]
    assert row["cpu_ratio"] == pytest.approx(gross)
    assert row["cpu_ratio_net"] == (None if net is None else pytest.approx(net))
    assert row["met"] is met


def test_markdown_shows_where_a_batch_time_goes():
    stages = {"inputs": 0.1, "forward": 0.3}
    point = {
        **run("triton_batch", 64, 5000.0),
        "avg_batch": 16.0,
        "backend_stages": {"batches": 40, "ms_per_batch": stages, "share": {"inputs": 0.25, "forward": 0.75}},
    }
    text = "\n".join(report._stage_lines({"runs": [point, run("naive", 64, 1.0)]}))
    assert "| path | conc. | batches | avg batch | inputs | forward |" in text
    assert "| (d) Triton direct, batching on | 64 | 40 | 16.0 | 0.100 (25 %) | 0.300 (75 %) |" in text


def test_markdown_shows_the_large_input_paths_side_by_side():
    runs = LARGE_RUNS[:4] + TRITON_LARGE_RUNS[:2]
    model = {
        "key": "resnet50",
        "description": "ResNet-50",
        "ceiling": None,
        "runs": [{**r, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0, "errors": 0, "gpu_util_pct": None} for r in runs],
        "locust": None,
        "ratios": None,
        "large_input": {
            "input_shape": [3, 224, 224],
            "body_bytes": {"json": 752640, "binary": 602300},
            "check": {"status": {}, "agree": True, "max_abs_diff": 0.0},
            **report.large_input(runs, [1, 4], idle_pct=1.0),
        },
    }
    text = report.markdown({"machine": {"nproc": 2, "cpu_model": "x", "ram_gb": 1, "gpus": []}, "models": [model]})
    assert "**Large input through the proxy (f)**: one 3x224x224 FP32 row" in text
    assert "(752,640 bytes)" in text and "(602,300 bytes, outputs binary too); the two answers agree" in text
    assert "net = less the proxy's idle CPU, 1.00 % at rest" in text
    assert "Target: binary <= 1/20 of JSON (0.05x)" in text
    assert (
        "| 1 | 6.0 | 8.0 | 10.0 | 0.80x | 30.0 | 2.0 | 50.00 / 48.33 | 2.50 / 1.25 | 0.050x (1/20) | 0.026x (1/39) "
        "| yes |" in text
    )
    assert (
        "| 4 | 7.0 | 9.0 | 9.0 | 1.00x | 35.0 | 6.0 | 50.00 / 48.57 | 6.00 / 4.89 | 0.120x (1/8) | 0.101x (1/10) "
        "| **no** |" in text
    )
    assert "| (f) proxy, image input as binary v2 (/v2/.../infer) | wrk | 4 | 9 |" in text
    assert "| (f) Triton HTTP direct, the same binary v2 request | wrk | 4 | 9 |" in text
    assert "Headline ratios" not in text


# One run's worth of recorded points: the demo MLP (small requests) and the tiny image companion (f).
SMALL_RUNS = [
    run("naive", 64, 2000.0),
    run("triton_http", 64, 6000.0),
    run("proxy_batch", 64, 5400.0),
    {**run("proxy_batch", 1, 450.0), "p50_ms": 2.2},
]


def summary_results(
    small_runs: list[dict], large_runs: list[dict], idle_pct: float | None, large_concurrencies: list[int]
) -> dict:
    small = {
        "key": "demo_mlp",
        "runs": small_runs,
        "ratios": report.compute_ratios(small_runs, [1, 64], None, 64, report.TARGETS["cpu"]),
    }
    image = {
        "key": "tiny_image",
        "runs": large_runs,
        "ratios": None,
        "large_input": report.large_input(large_runs, large_concurrencies, idle_pct),
    }
    return {"models": [small, image]}


def by_key(items: list[dict]) -> dict[str, dict]:
    return {item["key"]: item for item in items}


@pytest.mark.parametrize(
    ("key", "value", "met", "where"),
    [
        pytest.param("small_vs_triton_http", 0.9, True, "demo_mlp, 64 connections", id="small-vs-triton"),
        pytest.param("small_vs_naive", 2.7, True, "demo_mlp, 64 connections", id="small-vs-naive"),
        pytest.param("lone_p50_ms", 2.2, True, "demo_mlp, 1 connection", id="lone"),
        # (f) at the largest swept concurrency not above 8: 4 here.
        pytest.param("binary_vs_triton", 1.0, True, "tiny_image, 4 connections", id="binary-vs-triton"),
        pytest.param("json_cpu_ms", 50 - 100 / 70, False, "tiny_image, 4 connections, net of idle", id="json-cpu"),
        pytest.param("binary_cpu_ms", 6 - 100 / 90, False, "tiny_image, 4 connections, net of idle", id="binary-cpu"),
    ],
)
def test_summary_reads_each_figure_beside_its_counterpart(key, value, met, where):
    results = summary_results(SMALL_RUNS, LARGE_RUNS + TRITON_LARGE_RUNS, 1.0, [1, 4])
    item = by_key(report.summary(results))[key]
    assert item["value"] == pytest.approx(value)
    assert item["met"] is met
    assert item["where"] == where


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param("binary_vs_triton", None, id="binary-and-triton-failed"),
        pytest.param("binary_cpu_ms", None, id="binary-failed"),
        pytest.param("json_cpu_ms", 50 - 100 / 70, id="json-measured"),
    ],
)
def test_summary_reads_large_input_at_8_connections_when_swept(key, value):
    results = summary_results(SMALL_RUNS, LARGE_RUNS + TRITON_LARGE_RUNS, 1.0, [1, 4, 8])
    item = by_key(report.summary(results))[key]
    assert item["value"] == (None if value is None else pytest.approx(value))
    assert item["met"] is (None if value is None else False)
    assert item["where"].startswith("tiny_image, 8 connections")


@pytest.mark.parametrize(
    ("key", "target", "op"),
    [
        pytest.param("binary_cpu_ms", 0.3, "<=", id="binary-cpu"),
        pytest.param("binary_vs_triton", 1.0, ">=", id="binary-vs-triton"),
        pytest.param("json_cpu_ms", 6.0, "<=", id="json-cpu"),
        pytest.param("small_vs_triton_http", 0.8, ">=", id="small-vs-triton"),
        pytest.param("small_vs_naive", 2.4, ">=", id="small-vs-naive"),
        pytest.param("lone_p50_ms", 2.5, "<=", id="lone"),
    ],
)
def test_summary_targets(key, target, op):
    item = by_key(report.summary({"models": []}))[key]
    assert (item["target"], item["op"]) == (target, op)
    assert item["value"] is None and item["met"] is None and item["where"] == "not measured"


def test_summary_reads_gross_cpu_without_an_idle_measure():
    items = by_key(report.summary(summary_results(SMALL_RUNS, LARGE_RUNS + TRITON_LARGE_RUNS, None, [1, 4])))
    assert items["binary_cpu_ms"]["value"] == pytest.approx(6.0)
    assert items["binary_cpu_ms"]["where"] == "tiny_image, 4 connections, gross"
    assert items["binary_vs_triton"]["value"] == pytest.approx(1.0)


def test_markdown_opens_with_the_summary():
    results = {
        "machine": {"nproc": 2, "cpu_model": "x", "ram_gb": 1, "gpus": []},
        **summary_results(SMALL_RUNS, LARGE_RUNS[:4] + TRITON_LARGE_RUNS[:2], 1.0, [1, 4]),
    }
    for model in results["models"]:
        model["description"] = model["key"]
        model["runs"] = [{"tool": "wrk", "p50_ms": None, "p95_ms": None, "p99_ms": None, **r} for r in model["runs"]]
    text = report.markdown(results)
    assert text.index("## Headline summary") < text.index("### demo_mlp")
    assert "| proxy / naive aiohttp server (c/a) | 2.70x | >= 2.4x | yes | demo_mlp, 64 connections |" in text
    assert "| a lone request through the proxy (c, 1 connection), p50 | 2.2 ms | <= 2.5 ms | yes |" in text
    assert "| (f) proxy CPU per request, binary v2 image | 4.89 ms | <= 0.3 ms | **no** | tiny_image, 4 conn" in text
