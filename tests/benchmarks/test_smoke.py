"""The whole pipeline at tiny settings: real moto S3, sync, Triton, proxy, naive server, wrk, perf_analyzer,
locust; checks that the JSON, the Markdown table and the plots are written. No timing thresholds. Also the
runner's choices that need no servers: which models and concurrencies the large-input paths get, and the
binary request they send."""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import report, run
from benchmarks.models import mlp_case, resnet50_case, tiny_image_case
from benchmarks.run import ALL_PATHS

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_quick_run_writes_json_markdown_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--concurrency", "1,4", "--duration", "2", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=230,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    assert results["machine"]["nproc"] >= 1
    model, image = results["models"]
    assert model["key"] == "demo_mlp"
    assert {"demo_mlp", "demo_mlp_nobatch"} <= set(model["triton_configs"])
    assert "dynamic_batching" in model["triton_configs"]["demo_mlp"]
    assert "dynamic_batching" not in model["triton_configs"]["demo_mlp_nobatch"]
    assert model["ceiling"]["samples_per_s"] > 0

    runs = model["runs"]
    assert {(r["path"], r["concurrency"]) for r in runs} == {
        (path, conc) for path in ALL_PATHS if path not in ("ceiling", *report.LARGE_PATHS) for conc in (1, 4)
    }
    # A path may be "not available" (no wrk, proxy not runnable) but nothing may fail outright.
    assert all(r["status"] in ("ok", "not available") for r in runs), [r.get("note") for r in runs]
    direct = [r for r in runs if r["path"].startswith("triton_")]
    assert all(r["status"] == "ok" and r["throughput"] > 0 for r in direct)
    assert all(r["avg_batch"] is not None and "server" in r["cpu"] for r in direct)
    assert "c/a" in model["ratios"]["headline"] and model["ratios"]["headline_concurrency"] == 4

    # (f): the MLP has no image input, so a tiny 3x224x224 companion carries the large-input paths alone.
    assert image["key"] == "tiny_image" and image["ratios"] is None and image["ceiling"] is None
    assert set(image["triton_configs"]) == {"tiny_image"}
    large = image["runs"]
    assert {(r["path"], r["concurrency"]) for r in large} == {(p, c) for p in report.LARGE_PATHS for c in (1, 4)}
    # Every point answered; a few errors on a loaded CI machine are a measurement (wrk's counts, and which
    # answers they were), not a pipeline failure: the v2 and /predict contracts have their own tests.
    shown = ("path", "concurrency", "status", "note", "requests", "error_detail", "error_causes")
    bad = [
        {key: r.get(key) for key in shown}
        for r in large
        if r["status"] != "ok" or r["throughput"] <= 0 or r["errors"] * 10 > r["requests"]
    ]
    assert not bad, bad
    proxied = [r for r in large if r["path"] != "triton_large_binary"]
    assert all(r["cpu_ms_per_request"]["proxy"] > 0 for r in proxied)
    assert all("proxy" not in r["cpu"] for r in large if r["path"] == "triton_large_binary")
    summary = image["large_input"]
    assert summary["body_bytes"]["json"] > 2**19 and summary["body_bytes"]["binary"] > 3 * 224 * 224 * 4
    # The proxy's JSON and binary answers and Triton's own answer to the binary body: one output.
    assert summary["check"]["agree"] is True, summary["check"]
    assert set(summary["check"]["status"]) == set(report.LARGE_PATHS)
    assert summary["proxy_idle_cpu_pct"] is not None
    assert all(row["cpu_ratio"] is not None for row in summary["by_concurrency"].values())
    assert all(row["binary_proxy_cpu_ms_net"] is not None for row in summary["by_concurrency"].values())
    assert all(row["vs_triton"] is not None for row in summary["by_concurrency"].values())
    assert summary["met"] in (True, False)

    headline = {item["key"]: item for item in results["summary"]}
    assert set(headline) == set(report.SUMMARY_TARGETS)
    assert all(item["value"] is not None for item in headline.values()), headline

    table = (out / "results.md").read_text()
    assert "| path | tool | conc. | req/s |" in table
    assert "(d) Triton direct, batching on" in table
    assert "**Large input through the proxy (f)**" in table and "binary / JSON, net" in table
    assert table.index("## Headline summary") < table.index("### ")
    for name in ("demo_mlp_throughput.png", "demo_mlp_latency.png", "tiny_image_throughput.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def args(*argv: str):
    return run.resolve(run.parser().parse_args(list(argv)))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param((), [1, 4], id="full-sweep-capped"),
        pytest.param(("--quick",), [1, 4], id="quick"),
        pytest.param(("--concurrency", "1,2"), [1, 2], id="low-sweep-kept"),
        pytest.param(("--concurrency", "64,128"), [4], id="high-sweep-capped"),
        pytest.param(("--large-concurrency", "8"), [8], id="explicit"),
    ],
)
def test_large_input_concurrencies(argv, expected):
    assert args(*argv).large_concurrencies == expected


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(("--quick",), [("demo_mlp", False), ("tiny_image", True)], id="quick-tiny-companion"),
        pytest.param((), [("demo_mlp", False), ("resnet50", True)], id="full-resnet50-companion"),
        pytest.param(("--model", "mlp,resnet50"), [("demo_mlp", False), ("resnet50", False)], id="resnet50-served"),
        pytest.param(("--paths", "proxy_batch"), [("demo_mlp", False)], id="no-large-path"),
        pytest.param(("--paths", "proxy_large_binary"), [("resnet50", True)], id="large-only"),
    ],
)
def test_cases_add_a_companion_for_the_large_input_paths(argv, expected):
    assert [(case.key, case.large_only) for case in run.cases(args(*argv))] == expected


@pytest.mark.parametrize(
    ("case", "paths"),
    [
        pytest.param(mlp_case(), [p for p in ALL_PATHS if p not in report.LARGE_PATHS], id="mlp"),
        pytest.param(resnet50_case(), list(ALL_PATHS), id="resnet50"),
        pytest.param(dataclasses.replace(tiny_image_case(), large_only=True), [*report.LARGE_PATHS], id="companion"),
    ],
)
def test_applicable_paths(case, paths):
    assert run.applicable(case, list(ALL_PATHS)) == paths


@pytest.mark.parametrize(
    ("batched", "shape"),
    [pytest.param(True, [1, 3, 224, 224], id="batched"), pytest.param(False, [3, 224, 224], id="nobatch")],
)
def test_v2_binary_body_is_the_json_row_in_raw_bytes(batched, shape):
    case = tiny_image_case()
    body, length = case.v2_binary_body(batched)
    header = json.loads(body[:length])
    (tensor,) = header["inputs"]
    assert tensor == {
        "name": "INPUT__0",
        "shape": shape,
        "datatype": "FP32",
        "parameters": {"binary_data_size": 3 * 224 * 224 * 4},
    }
    assert header["parameters"] == {"binary_data_output": True}
    assert len(body) == length + 3 * 224 * 224 * 4
    values = struct.unpack(f"<{3 * 224 * 224}f", body[length:])
    flat = json.loads(case.body())["input"]
    assert math.prod([len(flat), len(flat[0]), len(flat[0][0])]) == len(values)
    assert list(values[:10]) == flat[0][0][:10] and list(values[-10:]) == flat[-1][-1][-10:]


@pytest.mark.parametrize(
    ("answers", "agree", "diff"),
    [
        pytest.param({}, None, None, id="nothing"),
        pytest.param({"proxy_large_json": [1.0, 2.0]}, None, None, id="one-answer"),
        pytest.param(
            {"proxy_large_json": [1.0, 2.0], "proxy_large_binary": [1.0, 2.0], "triton_large_binary": [1.0, 2.0]},
            True,
            0.0,
            id="all-same",
        ),
        pytest.param(
            {"proxy_large_json": [1.0, 200.0], "proxy_large_binary": [1.1, 200.0]}, True, 0.1, id="within-scale"
        ),
        pytest.param(
            {"proxy_large_json": [1.0, 2.0], "proxy_large_binary": [1.0, 2.0], "triton_large_binary": [1.5, 2.0]},
            False,
            0.5,
            id="triton-differs",
        ),
        pytest.param({"proxy_large_json": [1.0, 2.0], "triton_large_binary": [1.0]}, False, None, id="lengths"),
    ],
)
def test_compare_answers(answers, agree, diff):
    check = run.compare_answers(answers)
    assert check["agree"] is agree
    assert check["max_abs_diff"] == (None if diff is None else pytest.approx(diff))
