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
    assert head["c/a"] == {"value": pytest.approx(5.0), "target": 3.0, "met": True}
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
