"""`python -m reliability` (`make soak`): the long forms of every scenario, figures into RELIABILITY.md."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from benchmarks.monitor import CpuWindow
from reliability.bed import Bed, standalone_bed
from reliability.report import to_markdown
from reliability.result import ScenarioResult
from reliability.scenarios import (
    hostile_http,
    many_models,
    model_update,
    noisy_neighbour,
    overload,
    shm_restart,
    sigterm,
    slow_backend,
    soak,
    stub_crash,
    sync_faults,
    triton_kill,
)

Runner = Callable[[Bed, argparse.Namespace], list[ScenarioResult]]


SCENARIOS: dict[str, Runner] = {
    "overload": lambda bed, a: [overload.run(bed, overload.Config.long(a.duration))],
    "triton-killed": lambda bed, a: [triton_kill.run(bed, triton_kill.Config.long(a.duration))],
    "shm-triton-restart": lambda bed, a: [shm_restart.run(bed, shm_restart.Config.long(a.duration))],
    "python-stub-dies": lambda bed, a: [stub_crash.run(bed, stub_crash.Config.long(a.duration))],
    "slow-backend": lambda bed, a: [
        slow_backend.run(bed, slow_backend.Config.long(a.duration, protocol)) for protocol in ("grpc", "http")
    ],
    "sigterm": lambda bed, a: [
        sigterm.run(bed, sigterm.Config.long(a.duration, t)) for t in ("proxy", "triton", "make-run")
    ],
    "sync-faults": lambda bed, a: [sync_faults.run(bed, sync_faults.Config.long(a.duration))],
    "hostile-http": lambda bed, a: [hostile_http.run(bed, hostile_http.Config.long(a.duration))],
    "model-update": lambda bed, a: [model_update.run(bed, model_update.Config.long(a.duration))],
    "many-models": lambda bed, a: [many_models.run(bed, many_models.Config.long(a.duration))],
    "many-models-all-resident": lambda bed, a: [many_models.run(bed, many_models.Config.long_all_resident(a.duration))],
    "noisy-neighbour": lambda bed, a: [noisy_neighbour.run(bed, noisy_neighbour.Config.long(a.duration))],
    "soak": lambda bed, a: [soak.run(bed, soak.Config.long(a.soak_minutes))],
}


def _run_one(name: str, bed: Bed, args: argparse.Namespace) -> list[ScenarioResult]:
    """One scenario's results, each with the CPU the machine spent meanwhile: ours (this process and its
    children: the bed's servers, wrk) and everything else's. On a shared machine the timing verdicts are
    read against the second."""
    window = CpuWindow({"ours": os.getpid()})
    window.start()
    try:
        found = SCENARIOS[name](bed, args)
    except Exception as err:  # one broken scenario must not lose the others' figures
        traceback.print_exc()
        failed = ScenarioResult(name)
        failed.check("scenario ran to the end", False, f"{type(err).__name__}: {err}")
        found = [failed]
    ours = sum(proc.cpu_pct for proc in window.stop("wrk", 1))
    machine = window.machine_busy_pct()
    for result in found:
        result.cpu = {"ours": round(ours), "others": round(max(machine - ours, 0.0)), "cores": os.cpu_count() or 1}
        print(result.explain(), flush=True)
    return found


def _unwritable(out: Path) -> str | None:
    """Why the report could not be written at `out`, found before any scenario runs (they take minutes)."""
    if out.is_dir():
        return "is a folder; name the report file"
    if not out.parent.is_dir():
        return f"folder {out.parent} does not exist"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability", description=__doc__)
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), help="run only these (repeatable)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per scenario phase (default 20)")
    parser.add_argument("--soak-minutes", type=float, default=10.0, help="length of the soak (default 10; 0 skips it)")
    parser.add_argument("--out", type=Path, default=Path("RELIABILITY.md"), help="report to write")
    parser.add_argument("--workdir", type=Path, default=None, help="where servers keep files (default: a temp folder)")
    args = parser.parse_args(argv)
    if problem := _unwritable(args.out):
        parser.error(f"--out {args.out}: {problem}")
    names = args.scenario or list(SCENARIOS)
    skipped = []
    if args.soak_minutes <= 0 and "soak" in names:
        names.remove("soak")
        skipped.append("soak (--soak-minutes 0)")
    command = "python -m reliability " + shlex.join(argv if argv is not None else sys.argv[1:])
    started = time.monotonic()
    results: list[ScenarioResult] = []
    with tempfile.TemporaryDirectory(prefix="nexus-reliability-") as temp:
        workdir = args.workdir or Path(temp)
        with standalone_bed(workdir) as bed:
            for name in names:
                print(f"== {name}", flush=True)
                results += _run_one(name, bed, args)
                args.out.write_text(to_markdown(results, command, skipped, time.monotonic() - started))
    print(f"wrote {args.out}")
    return 0 if all(r.passed for r in results) else 1
