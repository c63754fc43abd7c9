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
    "overload": "Driven by wrk, which kept its schedule until all 512 connections waited for an answer (the -1 "
    "arrivals it skipped): the latencies are the proxy's. A rejection is not cheap there: the proxy reads a request's "
    "body before it admits or rejects it (a MAX_IN_FLIGHT place is taken only once the body is in, so slow "
    "uploads hold none; the parse comes after the place), and every answer, accepted or rejected, waits its "
    "turn on the proxy's one event loop (the bed runs the proxy with ACCESS_LOG=off). At twice the capacity, "
    "with Triton on the same 2 cores and other processes beside them (CPU column), rejections saturate that "
    "loop: the rejections' p99 is its queue, and the 200s fall far below the capacity (the 200 count against "
    "capacity_per_s). Refusing before the body is read would close the connection (an unread body cannot be "
    "skipped on keep-alive), and reconnecting costs the client more. Memory grows with the connections open "
    "at once (the generator's 512: fds and connections in memory_after): per-connection buffers, given back "
    "when they close (the soak ends where it started).",
    "python-stub-dies": "Triton 2.51 never answers the requests of the batch whose stub died: the trigger and the "
    "requests batched with it wait until the proxy's deadline (REQUEST_TIMEOUT_MS) and are answered 504 "
    "deadline_exceeded (the 504 count and the max latency above); the requests after it get 503/502 at once. With "
    "8 clients (the short form, where the test asserts it) the trigger is mostly answered 502/503, and 504 when "
    "the stub died holding its batch. A clean error either "
    "way, never a 200 or a 500; the deadline bounds the wait.",
    "slow-backend-http": "Triton's HTTP frontend (2.51) does not cancel a request whose client went away: every "
    "abandoned slow call keeps the model's only instance busy to its end, so normal requests queued behind them "
    "meet their deadline (504). gRPC, the default upstream, cancels them (see slow-backend-grpc). Use gRPC, or "
    "more instances, for models that can be slow.",
    "soak": "Driven by wrk at 70% of the capacity measured in the run's first seconds, on a machine other "
    "processes shared (CPU column): when they took more CPU than during that measurement, the stack's capacity "
    "fell under the offered rate and the proxy answered the excess 429 with Retry-After (MAX_IN_FLIGHT), as it "
    "should. No wrong bodies, no 5xx, and memory, file descriptors and connections end where they started.",
    "many-models": "Where it fails within the budget, it is the hot model's p99 while another model loads, near the "
    "bound. A stub starts (torch imported, the model read: about two CPU-seconds) in a session of its own at the "
    "lowest CPU weight, on the 30-50 % of a core the others leave (sampled per process every 0.25 s), and the hot "
    "model's p50 holds; what is left are short bursts as a load starts or a cold model's queued requests are "
    "served, on 2 cores shared by the proxy, Triton and the load generator. Six runs on this machine: x0.81, "
    "x1.38 and x1.43 (pass), x1.53, x1.71 and x1.75; while a stub started in Triton's session: x2.0-4.0 "
    "(docs/decisions.md). A cold request waits for an eviction and that load (the cold-load p50/p99 in the "
    "figures); no request failed.",
    "many-models-all-resident": "A model added while the others serve costs its load: the watcher starts a "
    "candidate stub to smoke-test it, then the served model's stubs (INSTANCE_COUNT of them), about two CPU-seconds "
    "each (as in model-update). On 2 cores shared with Triton, the proxy, the load generator and other processes "
    "(CPU column), the hot model's p99 during those seconds follows that CPU, not the other models' batches: the "
    "same run has measured x0.3 to x3.5 of its steady p99. Functional criteria (no failed or wrong answer, the "
    "broken model isolated, the new model served without a restart) do not depend on it.",
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
    "noisy-neighbour": "On 2 cores the proxy's one worker is the bottleneck of a 256-connection flood (100% of a "
    "core, Triton about 15%): every request the proxy works on takes its turns on its event loop, first come first "
    "served, so the light tenant waits there behind whatever is in progress. MAX_ACTIVE (32) holds the flood to "
    "its share of the predictions in progress, its excess parked unparsed: weights 3:1 then serve 3.02-3.03:1 and "
    "the light tenant's p99 is x3.2-4.4 of its own (x15.6 without pacing), its rate 19-23% of its own (4%), at the "
    "flood's cost: 2,383-2,508 served a second in all against 3,569 without pacing. 32 in transit still make a "
    "request wait about 15 ms on the loop. Where the model path is the limit (COALESCE_MAX_ROWS=2, "
    "COALESCE_MAX_BATCHES=1), the light p99 stayed at 1.5x. Rate limits and key removal hold on either.",
    "hostile-http": "The normal traffic is wrk in a process of its own; what moves its p99 is the proxy's: each "
    "byte of the 500 slow connections wakes its one event loop (about 1,000 wake-ups a second), and the slow "
    "clients run on the same 2 cores (and other processes: CPU column). Every normal request was answered 200 and "
    "every slow connection was dropped at its read timeout.",
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
    if "cold_load_p50_ms" in f:
        return f"cold loads p50 {f['cold_load_p50_ms']} / p99 {f['cold_load_p99_ms']} ms"
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
