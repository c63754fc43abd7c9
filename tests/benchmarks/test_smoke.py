"""The whole pipeline at tiny settings: real moto S3, sync, Triton, proxy, naive server, wrk, perf_analyzer,
locust; checks that the JSON, the Markdown table and the plots are written. No timing thresholds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
    (model,) = results["models"]
    assert model["key"] == "demo_mlp"
    assert {"demo_mlp", "demo_mlp_nobatch"} <= set(model["triton_configs"])
    assert "dynamic_batching" in model["triton_configs"]["demo_mlp"]
    assert "dynamic_batching" not in model["triton_configs"]["demo_mlp_nobatch"]
    assert model["ceiling"]["samples_per_s"] > 0

    runs = model["runs"]
    assert {(r["path"], r["concurrency"]) for r in runs} == {
        (path, conc) for path in ALL_PATHS if path != "ceiling" for conc in (1, 4)
    }
    # A path may be "not available" (no wrk, proxy not runnable) but nothing may fail outright.
    assert all(r["status"] in ("ok", "not available") for r in runs), [r.get("note") for r in runs]
    direct = [r for r in runs if r["path"].startswith("triton_")]
    assert all(r["status"] == "ok" and r["throughput"] > 0 for r in direct)
    assert all(r["avg_batch"] is not None and "server" in r["cpu"] for r in direct)
    assert "c/a" in model["ratios"]["headline"] and model["ratios"]["headline_concurrency"] == 4

    table = (out / "results.md").read_text()
    assert "| path | tool | conc. | req/s |" in table
    assert "(d) Triton direct, batching on" in table
    for name in ("demo_mlp_throughput.png", "demo_mlp_latency.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
