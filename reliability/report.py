"""RELIABILITY.md: one table of every scenario with its figures, then each criterion with its verdict."""

from __future__ import annotations

import json
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import psutil

from reliability.result import ScenarioResult

# Causes found for criteria that failed on the reference machine, printed under the failing scenario.
CAUSES = {
    "overload": "The load generator (Python, aiohttp) runs on the same 2 cores as the proxy and Triton and at 2x "
    "capacity saturates itself (the -1 answers are arrivals it could not even send): the rejection latency it "
    "measures includes its own event-loop queueing, and the proxy's in-process 429 path cannot be separated "
    "from it here. Memory rises once while the in-flight limit fills (buffers of 64 concurrent bodies), then is "
    "flat; the soak's series shows the same plateau.",
    "slow-backend-http": "Triton's HTTP frontend (2.51) does not cancel a request whose client went away: every "
    "abandoned slow call keeps the model's only instance busy to its end, so normal requests queued behind them "
    "meet their deadline (504). gRPC, the default upstream, cancels them (see slow-backend-grpc). Use gRPC, or "
    "more instances, for models that can be slow.",
    "soak": "The offered rate is 70% of the capacity measured in the first seconds of the run, with the Python "
    "load generator on the same 2 cores as the proxy and Triton. Sustained over minutes the three together "
    "serve less than that short measurement: the generator itself falls behind (the -1 arrivals) and the "
    "proxy answers the excess with correct 429s (MAX_IN_FLIGHT). No wrong bodies, no 5xx, and memory, file "
    "descriptors and connections end where they started. Measuring 70% needs the load generator on other cores.",
    "model-update": "Measured per 250 ms: latency rises during the whole swap, with stalls of 150-250 ms "
    "when the candidate model's stub has started (torch imported, the model loaded) and when the reload starts "
    "the served model's two new instance stubs. Each stub start costs about 1 CPU-second (measured without "
    "load: 3 new stubs, 1.0-1.1 s each, in a 2.2 s swap), so a swap wants both of these 2 cores for about 2 s, "
    "the CPU the proxy, Triton and the load generator need. At half of the capacity a stall leaves about 300 "
    "requests waiting: in some runs that passed the proxy's MAX_IN_FLIGHT (256) and the excess was answered 429 "
    "with Retry-After (a few to 111 of 82,000; none in others); never a wrong body, a 5xx or an answer from a "
    "broken version, and version 2 took over within the swap's own duration. A failing version costs one stub "
    "start (smaller stalls). Outside swaps the p99 is about 10-20 ms; the short pytest form offers 25% of the "
    "capacity and asserts no failed request.",
    "hostile-http": "500 slow-loris connections each cost the proxy's one event loop a little work per byte, and "
    "the normal traffic's client shares the same 2 cores: its p99 moved from a few ms to about 11 ms, all 200. "
    "Every slow connection was dropped at its read timeout.",
}


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    ram = psutil.virtual_memory().total / 2**30
    return f"{nproc} cores ({cpu}), {ram:.0f} GiB RAM, {platform.platform()}, Python {platform.python_version()}"


def _cell(value: object) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    return str(value).replace("|", "/")


def _memory(result: ScenarioResult) -> str:
    f = result.figures
    for before, after in (("memory_before", "memory_after"), ("memory_after_warmup", "memory_end")):
        if before in f and after in f:
            return f"{f[before]['rss_mb']} → {f[after]['rss_mb']} MB"
    if "proxy_after" in f:
        return f"after: {f['proxy_after']['rss_mb']} MB"
    return "-"


def _recovery(result: ScenarioResult) -> str:
    f = result.figures
    suffixes = {
        "recovery_after_ready_s": " after ready",
        "recovery_s": " after the crash",
        "exit_after_signal_s": " (exit)",
        "write_to_first_v2_s": " from the metadata write to version 2 answering",
    }
    for key, suffix in suffixes.items():
        if key in f:
            return f"{f[key]} s{suffix}"
    return "-"


def _cpu(result: ScenarioResult) -> str:
    if not result.cpu:
        return "-"
    return f"{result.cpu['ours']} / {result.cpu['others']} (of {100 * result.cpu['cores']})"


def to_markdown(results: list[ScenarioResult], command: str, skipped: list[str], elapsed_s: float) -> str:
    lines = [
        "# Reliability and security: figures from the last run",
        "",
        "Written by `python -m reliability`. The short forms of the same scenarios run in",
        "`pytest tests/reliability` and assert only functional criteria; the timing criteria (marked *timing*)",
        "are measured here, on a shared machine where the load generator, the proxy and Triton compete for",
        "the same cores, so read them as this run's figures, not as guarantees. The scenarios that saturate",
        "the stack (overload, soak, the hostile scenario's normal traffic) are driven by wrk with every answer",
        "checked; the others by a Python client, for the per-request timeline they judge. The CPU column is",
        "what the machine spent while each scenario ran (100% per core): ours (the servers, the generators)",
        "and other processes'.",
        "",
        f"- **Command:** `{command}`",
        f"- **Machine:** {machine()}",
        f"- **Date:** {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; run took {elapsed_s:.0f} s",
        "",
        "| scenario | verdict | requests | answers by status | p99 / max ms | recovery | proxy memory "
        "| CPU % ours / others |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        failed = [c for c in r.criteria if not c.passed]
        verdict = "pass" if not failed else "**FAIL**: " + "; ".join(c.name for c in failed)
        load = r.load
        lines.append(
            f"| {r.name} | {verdict} | {load.sent if load else '-'} | {_cell(load.by_status) if load else '-'} | "
            f"{f'{load.p99_ms} / {load.max_ms}' if load else '-'} | {_recovery(r)} | {_memory(r)} | {_cpu(r)} |"
        )
    for name in skipped:
        lines.append(f"| {name} | not run | - | - | - | - | - | - |")
    lines += ["", "Status 0 = no HTTP answer (connection refused after the listener closed); -1 = the load", ""]
    lines[-2] += " generator itself was saturated and skipped an arrival (never sent, not an answer)."
    for r in results:
        lines += ["", f"## {r.name}", "", f"Settings: `{json.dumps(r.settings)}`", ""]
        lines += ["| criterion | kind | verdict | measured |", "|---|---|---|---|"]
        for c in r.criteria:
            verdict = "pass" if c.passed else "**FAIL**"
            lines.append(f"| {c.name} | {'timing' if c.timing else 'functional'} | {verdict} | {_cell(c.detail)} |")
        if r.load:
            lines += ["", "Load: " + ", ".join(f"{k} {_cell(v)}" for k, v in r.load.as_dict().items())]
        lines += ["", "Figures:", ""]
        lines += [f"- {k}: {_cell(v)}" for k, v in r.figures.items()]
        for note in r.notes:
            lines += ["", f"Note: {note}"]
        causes = [c for c in r.criteria if not c.passed]
        if causes:
            lines += ["", f"Cause: {CAUSES.get(r.name, 'not analysed yet')}"]
    return "\n".join(lines) + "\n"
