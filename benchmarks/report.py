"""Results -> ratios, a Markdown table, PNG plots and `results.json`, all under one results folder.

The results document (`results.json`) is the source of everything else; `python -m benchmarks.report
<folder>` re-renders the table and plots from it.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

PATHS: dict[str, str] = {
    "naive": "(a) naive aiohttp server",
    "fastapi": "(a2) FastAPI + uvicorn (the design's baseline)",
    "proxy_nobatch": "(b) proxy -> Triton, batching off",
    "proxy_batch": "(c) proxy -> Triton, batching on",
    "proxy_v2": "(c2) proxy -> Triton, batching on, v2 JSON (/v2/.../infer)",
    "triton_nobatch": "(d) Triton direct, batching off",
    "triton_batch": "(d) Triton direct, batching on",
    "triton_http": "(d) Triton HTTP/JSON direct, batching on",
    "proxy_large_json": "(f) proxy, image input as JSON (/predict)",
    "proxy_large_binary": "(f) proxy, image input as binary v2 (/v2/.../infer)",
    "triton_large_binary": "(f) Triton HTTP direct, the same binary v2 request",
}
TOOLS = {
    "naive": "wrk",
    "fastapi": "wrk",
    "proxy_nobatch": "wrk",
    "proxy_batch": "wrk",
    "proxy_v2": "wrk",
    "triton_nobatch": "perf_analyzer",
    "triton_batch": "perf_analyzer",
    "triton_http": "wrk",
    "proxy_large_json": "wrk",
    "proxy_large_binary": "wrk",
    "triton_large_binary": "wrk",
}
# (f): one image-sized row through the proxy (batching on) as JSON and as a binary v2 request, and the same binary
# request straight to Triton's own HTTP endpoint, side by side.
LARGE_PATHS = ("proxy_large_json", "proxy_large_binary", "triton_large_binary")
LARGE_KINDS = {"json": "proxy_large_json", "binary": "proxy_large_binary", "triton": "triton_large_binary"}
# The target: a binary v2 request of a 3x224x224 FP32 tensor costs the proxy <= 1/20 of the CPU per request
# of the same request as JSON. A ceiling, unlike the throughput targets (floors).
LARGE_CPU_TARGET = 1 / 20
# name: (numerator path, denominator path or "ceiling", target or None)
RATIOS: dict[str, tuple[str, str]] = {
    "c/a": ("proxy_batch", "naive"),
    "c/a2 (FastAPI)": ("proxy_batch", "fastapi"),
    "c/b": ("proxy_batch", "proxy_nobatch"),
    "v2 JSON / predict (c2/c)": ("proxy_v2", "proxy_batch"),
    "proxy/direct (batching on)": ("proxy_batch", "triton_batch"),
    "proxy/direct (batching off)": ("proxy_nobatch", "triton_nobatch"),
    "proxy/Triton HTTP (c / d http)": ("proxy_batch", "triton_http"),
    "direct on/off": ("triton_batch", "triton_nobatch"),
    "served/ceiling (c)": ("proxy_batch", "ceiling"),
    "direct/ceiling (d on)": ("triton_batch", "ceiling"),
}
TARGETS = {
    # The Open Inference Protocol's JSON form within 15 % of /predict's throughput (c2/c).
    "cpu": {"c/b": 5.0, "c/a": 2.4, "proxy/Triton HTTP (c / d http)": 0.8, "v2 JSON / predict (c2/c)": 0.85},
    "gpu": {"c/b": 10.0, "c/a": 10.0, "served/ceiling (c)": 0.5},
}


# ---------------------------------------------------------------------------------------------- ratios


def throughput_of(runs: list[dict[str, Any]], path: str, concurrency: int) -> float | None:
    for run in runs:
        if run["path"] == path and run["concurrency"] == concurrency and run.get("status") == "ok":
            value = run.get("throughput")
            return float(value) if value else None
    return None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def compute_ratios(
    runs: list[dict[str, Any]],
    concurrencies: list[int],
    ceiling: float | None,
    headline: int,
    targets: dict[str, float],
) -> dict[str, Any]:
    """Every ratio at every concurrency, and the headline ones (at `headline` connections) vs targets."""
    table: dict[str, dict[str, float | None]] = {}
    for name, (top, bottom) in RATIOS.items():
        row: dict[str, float | None] = {}
        for conc in concurrencies:
            denominator = ceiling if bottom == "ceiling" else throughput_of(runs, bottom, conc)
            row[str(conc)] = ratio(throughput_of(runs, top, conc), denominator)
        table[name] = row
    head: dict[str, Any] = {}
    for name in RATIOS:
        value = table[name].get(str(headline))
        target = targets.get(name)
        head[name] = {
            "value": value,
            "target": target,
            "met": None if target is None or value is None else value >= target,
        }
    return {"headline_concurrency": headline, "headline": head, "by_concurrency": table}


def cpu_ms_per_request(run: dict[str, Any] | None, role: str = "proxy") -> float | None:
    """CPU milliseconds `role` spent per successful request in one point (recorded by the runner for wrk points)."""
    if run is None or run.get("status") != "ok":
        return None
    value = (run.get("cpu_ms_per_request") or {}).get(role)
    return None if value is None else float(value)


def net_cpu_ms_per_request(run: dict[str, Any] | None, idle_pct: float | None, role: str = "proxy") -> float | None:
    """`cpu_ms_per_request` less what `role` spends with no requests at all (`idle_pct`, its CPU % at rest).

    At a few requests per second (ResNet-50 on a CPU) the proxy's own ticks (event loop, metrics, health)
    are most of its CPU, so the gross figure measures the clock, not the request; at hundreds per second
    the two agree. Never below zero.
    """
    gross = cpu_ms_per_request(run, role)
    if gross is None or idle_pct is None or run is None or not run.get("window_s"):
        return None
    ok = round(run["throughput"] * run["duration_s"])
    return max(gross - idle_pct * 10 * run["window_s"] / ok, 0.0)


def large_input(runs: list[dict[str, Any]], concurrencies: list[int], idle_pct: float | None = None) -> dict[str, Any]:
    """(f) side by side at each concurrency: req/s, the proxy's CPU % and CPU ms per request (gross, and net of
    its idle CPU when `idle_pct` was measured), the ratio binary / JSON against `LARGE_CPU_TARGET`, Triton's
    rate fed the same binary request and the proxy's binary rate over it (`vs_triton`).

    `met` is read on the net ratio when there is one (the request's own cost), else on the gross one; overall,
    every measured concurrency must meet it.
    """
    found = {(r["path"], r["concurrency"]): r for r in runs if r.get("status") == "ok"}
    rows: dict[str, dict[str, Any]] = {}
    for conc in concurrencies:
        row: dict[str, Any] = {}
        for kind in ("json", "binary"):
            run = found.get((LARGE_KINDS[kind], conc))
            row[f"{kind}_req_s"] = run["throughput"] if run else None
            row[f"{kind}_proxy_cpu_pct"] = (run.get("cpu") or {}).get("proxy") if run else None
            row[f"{kind}_proxy_cpu_ms"] = cpu_ms_per_request(run)
            row[f"{kind}_proxy_cpu_ms_net"] = net_cpu_ms_per_request(run, idle_pct)
        triton = found.get((LARGE_KINDS["triton"], conc))
        row["triton_req_s"] = triton["throughput"] if triton else None
        row["vs_triton"] = ratio(row["binary_req_s"], row["triton_req_s"])
        row["cpu_ratio"] = ratio(row["binary_proxy_cpu_ms"], row["json_proxy_cpu_ms"])
        row["cpu_ratio_net"] = ratio(row["binary_proxy_cpu_ms_net"], row["json_proxy_cpu_ms_net"])
        value = row["cpu_ratio_net"] if row["cpu_ratio_net"] is not None else row["cpu_ratio"]
        row["met"] = None if value is None else value <= LARGE_CPU_TARGET
        rows[str(conc)] = row
    measured = [row["met"] for row in rows.values() if row["met"] is not None]
    return {
        "target": LARGE_CPU_TARGET,
        "proxy_idle_cpu_pct": idle_pct,
        "met": all(measured) if measured else None,
        "by_concurrency": rows,
    }


def pick_headline(concurrencies: list[int], wanted: int = 64) -> int:
    """`wanted` when swept, else the largest swept concurrency not above it (else the smallest)."""
    if wanted in concurrencies:
        return wanted
    below = [c for c in concurrencies if c <= wanted]
    return max(below) if below else min(concurrencies)


# ------------------------------------------------------------------------------------ headline summary

# A lone request through the proxy (path c at 1 connection) should take the model's time plus the hops.
LONE_P50_TARGET_MS = 2.5
# Where the summary reads (f): the image model at this many connections (else the largest swept below it).
LARGE_HEADLINE_CONCURRENCY = 8
# The summary's figures: key -> (label, unit, comparison, target). Each is read from one run, side by side
# with its counterpart: the throughput ratios from points measured in the same run, the CPU per request net
# of the proxy's idle CPU where that was measured.
SUMMARY_TARGETS: dict[str, tuple[str, str, str, float]] = {
    "binary_cpu_ms": ("(f) proxy CPU per request, binary v2 image", "ms", "<=", 0.3),
    "binary_vs_triton": ("(f) proxy / Triton HTTP, binary v2 images (req/s)", "x", ">=", 1.0),
    "json_cpu_ms": ("(f) proxy CPU per request, JSON image", "ms", "<=", 6.0),
    "small_vs_triton_http": (
        "proxy / Triton HTTP, small JSON requests (c / d http)",
        "x",
        ">=",
        TARGETS["cpu"]["proxy/Triton HTTP (c / d http)"],
    ),
    "small_vs_naive": ("proxy / naive aiohttp server (c/a)", "x", ">=", TARGETS["cpu"]["c/a"]),
    "lone_p50_ms": ("a lone request through the proxy (c, 1 connection), p50", "ms", "<=", LONE_P50_TARGET_MS),
}


def _point(model: dict[str, Any], path: str, concurrency: int) -> dict[str, Any] | None:
    for run in model.get("runs", []):
        if run["path"] == path and run["concurrency"] == concurrency and run.get("status") == "ok":
            return run
    return None


def _small_figures(model: dict[str, Any]) -> dict[str, tuple[float | None, str]]:
    ratios = model.get("ratios") or {}
    head = ratios.get("headline") or {}
    conc = ratios.get("headline_concurrency")
    where = f"{model['key']}, {conc} connections"
    lone = _point(model, "proxy_batch", 1)
    return {
        "small_vs_triton_http": ((head.get("proxy/Triton HTTP (c / d http)") or {}).get("value"), where),
        "small_vs_naive": ((head.get("c/a") or {}).get("value"), where),
        "lone_p50_ms": (lone.get("p50_ms") if lone else None, f"{model['key']}, 1 connection"),
    }


def _large_figures(model: dict[str, Any]) -> dict[str, tuple[float | None, str]]:
    rows = model["large_input"].get("by_concurrency") or {}
    if not rows:
        return {}
    conc = pick_headline([int(c) for c in rows], LARGE_HEADLINE_CONCURRENCY)
    row = rows[str(conc)]
    where = f"{model['key']}, {conc} connections"
    figures: dict[str, tuple[float | None, str]] = {"binary_vs_triton": (row.get("vs_triton"), where)}
    for kind in ("binary", "json"):
        net = row.get(f"{kind}_proxy_cpu_ms_net")
        value = net if net is not None else row.get(f"{kind}_proxy_cpu_ms")
        figures[f"{kind}_cpu_ms"] = (value, where + (", net of idle" if net is not None else ", gross"))
    return figures


def summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline figures against their targets, in `SUMMARY_TARGETS`' order: the small requests from the
    first model with proxy and baseline ratios, (f) from the first model with large-input figures. A figure
    the run did not measure has value None and `met` None."""
    figures: dict[str, tuple[float | None, str]] = {}
    models = results.get("models", [])
    small = next((m for m in models if m.get("ratios") and _point(m, "proxy_batch", 1) is not None), None)
    small = small or next((m for m in models if m.get("ratios")), None)
    if small is not None:
        figures.update(_small_figures(small))
    large = next((m for m in models if m.get("large_input")), None)
    if large is not None:
        figures.update(_large_figures(large))
    items = []
    for key, (label, unit, op, target) in SUMMARY_TARGETS.items():
        value, where = figures.get(key, (None, "not measured"))
        met = None if value is None else (value <= target if op == "<=" else value >= target)
        items.append(
            {"key": key, "label": label, "unit": unit, "op": op, "target": target, "value": value, "where": where}
            | {"met": met}
        )
    return items


def summary_lines(items: list[dict[str, Any]]) -> list[str]:
    """The headline summary as a Markdown table."""
    lines = [
        "## Headline summary",
        "",
        "Each figure beside its counterpart from this run (ratios of points measured side by side).",
        "",
        "| figure | measured | target | met | read at |",
        "|---|--:|--:|---|---|",
    ]
    for item in items:
        unit = item["unit"]
        value = item["value"]
        shown = "-" if value is None else (f"{value:.2f}x" if unit == "x" else f"{value:.3g} ms")
        target = f"{item['op']} {item['target']:g}{'x' if unit == 'x' else ' ms'}"
        met = {True: "yes", False: "**no**", None: "-"}[item["met"]]
        lines.append(f"| {item['label']} | {shown} | {target} | {met} | {item['where']} |")
    return [*lines, ""]


# -------------------------------------------------------------------------------------------- Markdown


def _num(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _ratio_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _cpu_text(cpu: dict[str, float] | None) -> str:
    if not cpu:
        return "-"
    order = ["server", "proxy", "loadgen"]
    return " / ".join(f"{role} {cpu[role]:.0f}" for role in order if role in cpu)


def _other_text(run: dict[str, Any]) -> str:
    value = run.get("untracked_cpu_pct")
    return "-" if value is None else f"{max(value, 0):.0f}"


def _felt_lines(model: dict[str, Any]) -> list[str]:
    """What a user feels, per path: throughput under load and the latency of a lone request."""
    ratios = model.get("ratios") or {}
    busy = ratios.get("headline_concurrency")
    runs = {(run["path"], run["concurrency"]): run for run in model["runs"] if run.get("status") == "ok"}
    if busy is None or not runs:
        return []
    lines = [
        f"**What a user feels**: req/s at {busy} connections; p50 / p99 of a lone request (1 connection). "
        f"Target for (c): p50 <= {LONE_P50_TARGET_MS:g} ms.",
        "",
        f"| path | req/s at {busy} | lone p50 ms | lone p99 ms |",
        "|---|--:|--:|--:|",
    ]
    for path, label in PATHS.items():
        loaded, lone = runs.get((path, busy)), runs.get((path, 1))
        if loaded is None and lone is None:
            continue
        lines.append(
            f"| {label} | {_num(loaded['throughput']) if loaded else '-'} | "
            f"{_num(lone['p50_ms'], 2) if lone else '-'} | {_num(lone['p99_ms'], 2) if lone else '-'} |"
        )
    return [*lines, ""]


def _fraction_text(value: float | None) -> str:
    """A small ratio both ways: `0.031x (1/32)`."""
    if value is None:
        return "-"
    return f"{value:.3f}x (1/{1 / value:.0f})" if value > 0 else f"{value:.3f}x"


def _large_lines(model: dict[str, Any]) -> list[str]:
    """(f): the same image-sized row as JSON and as binary v2, and what each costs the proxy per request."""
    large = model.get("large_input")
    if not large:
        return []
    sizes = large.get("body_bytes") or {}
    check = large.get("check") or {}
    shape = "x".join(str(d) for d in large.get("input_shape") or [])
    agree = check.get("agree")
    answers = {True: "the two answers agree", False: "**the two answers differ**", None: "answers not compared"}[agree]
    if check.get("note"):
        answers += f" ({check['note']})"
    target = large["target"]
    idle = large.get("proxy_idle_cpu_pct")
    idle_text = (
        "not measured: the ratio is read on gross figures"
        if idle is None
        else f"{idle:.2f} % at rest (measured with no requests before the points); the target is read on the "
        "ratio net of it, the request's own cost"
    )
    lines = [
        f"**Large input through the proxy (f)**: one {shape} FP32 row, as JSON to `/predict` "
        f"({_num(sizes.get('json'))} bytes) and as a binary v2 request to `/v2/models/{model['key']}/infer` "
        f"({_num(sizes.get('binary'))} bytes, outputs binary too); {answers}. Proxy CPU per request = the proxy's "
        f"CPU-seconds / successful requests (gross); net = less the proxy's idle CPU, {idle_text}. "
        f"Target: binary <= 1/{1 / target:.0f} of JSON ({target:g}x). Triton binary: the same binary request "
        "posted straight to Triton's own HTTP endpoint, same model, same run; proxy / Triton = req/s binary over it.",
        "",
        "| conc. | req/s JSON | req/s binary | req/s Triton binary | proxy / Triton, binary | proxy CPU % JSON | "
        "proxy CPU % binary | proxy CPU ms/req JSON (gross / net) | proxy CPU ms/req binary (gross / net) | "
        "binary / JSON, gross | binary / JSON, net | met |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for conc, row in large["by_concurrency"].items():
        met = {True: "yes", False: "**no**", None: "-"}[row["met"]]
        lines.append(
            f"| {conc} | {_num(row['json_req_s'], 1)} | {_num(row['binary_req_s'], 1)} | "
            f"{_num(row.get('triton_req_s'), 1)} | {_ratio_text(row.get('vs_triton'))} | "
            f"{_num(row['json_proxy_cpu_pct'], 1)} | {_num(row['binary_proxy_cpu_pct'], 1)} | "
            f"{_num(row['json_proxy_cpu_ms'], 2)} / {_num(row.get('json_proxy_cpu_ms_net'), 2)} | "
            f"{_num(row['binary_proxy_cpu_ms'], 2)} / {_num(row.get('binary_proxy_cpu_ms_net'), 2)} | "
            f"{_fraction_text(row['cpu_ratio'])} | {_fraction_text(row.get('cpu_ratio_net'))} | {met} |"
        )
    return [*lines, ""]


def _stage_lines(model: dict[str, Any]) -> list[str]:
    """Where a batch's time goes inside model.py, per point that ran the model (`backend_stages` of each run)."""
    runs = [r for r in model["runs"] if r.get("status") == "ok" and r.get("backend_stages")]
    if not runs:
        return []
    stages = list(runs[0]["backend_stages"]["ms_per_batch"])
    lines = [
        "**Where a batch's time goes in the backend** (model.py's `nexus_backend_stages` lines in Triton's log, "
        "ms per batch, share of the batch's time in brackets; on a GPU the copies and the forward are timed by "
        "CUDA events):",
        "",
        "| path | conc. | batches | avg batch | " + " | ".join(stages) + " |",
        "|---|--:|--:|--:|" + "--:|" * len(stages),
    ]
    for run in runs:
        breakdown = run["backend_stages"]
        cells = [f"{breakdown['ms_per_batch'][s]:.3f} ({breakdown['share'][s] * 100:.0f} %)" for s in stages]
        lines.append(
            f"| {PATHS.get(run['path'], run['path'])} | {run['concurrency']} | {breakdown['batches']} | "
            f"{_num(run.get('avg_batch'), 1)} | " + " | ".join(cells) + " |"
        )
    return [*lines, ""]


def model_markdown(model: dict[str, Any]) -> str:
    lines = [f"### {model['description']}", ""]
    ceiling = model.get("ceiling")
    if ceiling:
        lines.append(
            f"Compute ceiling (e): **{_num(ceiling['samples_per_s'])} samples/s** in-process at batch "
            f"{ceiling['best_batch']} ({ceiling['threads']} torch threads, {ceiling['device']}, "
            f"{ceiling['precision']}); by batch: "
            + ", ".join(f"{b}: {_num(v)}" for b, v in ceiling["by_batch"].items())
            + "."
        )
        lines.append("")
    lines += _felt_lines(model)
    lines += _large_lines(model)
    lines += _stage_lines(model)
    lines += [
        "| path | tool | conc. | req/s | p50 ms | p95 ms | p99 ms | avg batch | errors | CPU % server / proxy / "
        "loadgen | other CPU % | GPU % | limited by |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|---|",
    ]
    lines += [_run_row(run) for run in model["runs"] + ([model["locust"]] if model.get("locust") else [])]
    if model.get("ratios"):
        lines += _ratio_lines(model["ratios"])
    return "\n".join(lines)


def _run_row(run: dict[str, Any]) -> str:
    """One point as a row of the per-model table (a point that did not run says why)."""
    label = PATHS.get(run["path"], run["path"])
    if run.get("status") != "ok":
        return (
            f"| {label} | {run.get('tool', '')} | {run['concurrency']} | {run.get('status')} | | | | | | | | | "
            f"{(run.get('note') or '').replace('|', '/')[:160]} |"
        )
    gpu = run.get("gpu_util_pct")
    cells = [
        label,
        run["tool"],
        str(run["concurrency"]),
        _num(run["throughput"]),
        _num(run["p50_ms"], 2),
        _num(run["p95_ms"], 2),
        _num(run["p99_ms"], 2),
        _num(run.get("avg_batch"), 1),
        str(run.get("errors", 0)),
        _cpu_text(run.get("cpu")),
        _other_text(run),
        "n/a" if gpu is None else f"{gpu:.0f}",
        (run.get("bottleneck") or "").replace("|", "/"),
    ]
    return "| " + " | ".join(cells) + " |"


def _ratio_lines(ratios: dict[str, Any]) -> list[str]:
    """The headline ratios with their targets, then every ratio at every concurrency."""
    conc = ratios["headline_concurrency"]
    lines = [
        "",
        f"**Headline ratios at {conc} connections**",
        "",
        "| ratio | value | target | met |",
        "|---|--:|--:|---|",
    ]
    for name, item in ratios["headline"].items():
        target = "-" if item["target"] is None else f">= {item['target']:g}x"
        met = {True: "yes", False: "**no**", None: "-"}[item["met"]]
        lines.append(f"| {name} | {_ratio_text(item['value'])} | {target} | {met} |")
    concs = list(next(iter(ratios["by_concurrency"].values())).keys())
    lines += ["", "Ratios by concurrency:", "", "| ratio | " + " | ".join(concs) + " |"]
    lines.append("|---|" + "--:|" * len(concs))
    for name, row in ratios["by_concurrency"].items():
        lines.append(f"| {name} | " + " | ".join(_ratio_text(row[c]) for c in concs) + " |")
    return lines


def markdown(results: dict[str, Any]) -> str:
    machine = results.get("machine", {})
    gpu = ", ".join(machine.get("gpus") or []) or "none"
    head = [
        "# NexusML benchmark results",
        "",
        f"- created: {results.get('created', '')}",
        f"- command: `{results.get('command', '')}`",
        f"- machine: {machine.get('nproc')} cores ({machine.get('cpu_model')}), {machine.get('ram_gb')} GiB RAM, "
        f"GPU: {gpu}",
        f"- settings: {json.dumps(results.get('settings', {}), sort_keys=True)}",
        "",
        "CPU % is CPU time / wall time x 100 (100 = one core; the machine has "
        f"{machine.get('nproc')} x 100). Throughput counts successful responses only. "
        "'other CPU %' is what the rest of the machine used meanwhile (high means a disturbed figure). "
        "'limited by' is a heuristic over the CPU each process spent (see `benchmarks/monitor.py`).",
        "",
    ]
    head += summary_lines(summary(results))
    body = [model_markdown(model) for model in results.get("models", [])]
    return "\n".join(head) + "\n" + "\n\n".join(body) + "\n"


# ----------------------------------------------------------------------------------------------- plots


def _concurrency_axis(ax: Any, runs: list[dict[str, Any]]) -> None:
    """A log2 x axis labelled with the concurrencies actually measured."""
    from matplotlib.ticker import NullFormatter, NullLocator

    concs = sorted({r["concurrency"] for r in runs})
    ax.set_xscale("log", base=2)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    if concs:
        ax.set_xticks(concs)
        ax.set_xticklabels([str(c) for c in concs])


def plots(results: dict[str, Any], out: Path) -> list[Path]:
    """Per model: throughput vs concurrency (every path, ceiling as a line) and p50/p95/p99 vs concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    for model in results.get("models", []):
        runs = [r for r in model["runs"] if r.get("status") == "ok"]
        paths = [p for p in PATHS if any(r["path"] == p for r in runs)]

        fig, ax = plt.subplots(figsize=(8, 5))
        for path in paths:
            points = sorted((r["concurrency"], r["throughput"]) for r in runs if r["path"] == path)
            ax.plot([c for c, _ in points], [t for _, t in points], marker="o", label=PATHS[path])
        ceiling = model.get("ceiling")
        if ceiling:
            ax.axhline(
                ceiling["samples_per_s"],
                color="grey",
                linestyle="--",
                label=f"(e) in-process ceiling, batch {ceiling['best_batch']}",
            )
        _concurrency_axis(ax, runs)
        ax.set_xlabel("concurrency (closed-loop connections)")
        ax.set_yscale("log")  # the ceiling is often 10x the served paths: a linear axis flattens them
        ax.set_ylabel("requests / s (log)")
        ax.set_title(f"Throughput: {model['description']}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path_png = out / f"{model['key']}_throughput.png"
        fig.savefig(path_png, dpi=110)
        plt.close(fig)
        written.append(path_png)

        fig, axes = plt.subplots(1, 3, figsize=(14, 4.5), sharey=True)
        for ax, pct in zip(axes, ("p50_ms", "p95_ms", "p99_ms"), strict=True):
            for path in paths:
                points = sorted(
                    (r["concurrency"], r[pct]) for r in runs if r["path"] == path and r.get(pct) is not None
                )
                ax.plot([c for c, _ in points], [v for _, v in points], marker="o", label=PATHS[path])
            _concurrency_axis(ax, runs)
            ax.set_yscale("log")
            ax.set_xlabel("concurrency")
            ax.set_title(pct.replace("_ms", " latency (ms)"))
            ax.grid(True, alpha=0.3)
        axes[0].set_ylabel("ms")
        axes[0].legend(fontsize=7)
        fig.suptitle(f"Latency: {model['description']}", fontsize=10)
        fig.tight_layout()
        path_png = out / f"{model['key']}_latency.png"
        fig.savefig(path_png, dpi=110)
        plt.close(fig)
        written.append(path_png)
    return written


def write_all(results: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    results["summary"] = summary(results)
    json_path = out / "results.json"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md_path = out / "results.md"
    md_path.write_text(markdown(results))
    files = {"json": json_path, "markdown": md_path}
    for png in plots(results, out):
        files[png.stem] = png
    return files


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m benchmarks.report <results folder>", file=sys.stderr)
        return 2
    out = Path(args[0])
    results = json.loads((out / "results.json").read_text())
    for name, path in write_all(results, out).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
