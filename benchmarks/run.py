"""`python -m benchmarks`: every path side by side, one machine, one model artifact, one run.

    python -m benchmarks                                  # full run: concurrency 1,8,32,64,128, 10 s each
    python -m benchmarks --concurrency 1,8,64 --duration 5 --out benchmarks/results/mine
    python -m benchmarks --quick                          # seconds: small model, concurrency 1,4, 2 s windows

Order per model: the in-process ceiling (e) first, on an idle machine; then (a) the naive server, (b) and
(c) the proxy with batching off and on (wrk; plus one locust run on (c)), (f) for a model with an image
input, one 3x224x224 row through the proxy as JSON and as a binary v2 request and the same binary request
straight to Triton's own HTTP endpoint, side by side, with the proxy's CPU per request (wrk; a companion
model is added for it when the run's models have no image input), and (d) Triton alone: its own HTTP
endpoint fed the JSON form of (c)'s request (wrk), and gRPC with batching off and on (perf_analyzer). Each
point is a closed loop at one concurrency; around it the runner reads Triton's statistics (average executed
batch, failures), the CPU of every process and, with a GPU, NVML's utilisation. A path that cannot run (no
proxy, no wrk) is recorded as "not available" and the run goes on. Output: `results.json`, `results.md`
(a headline summary of the targets first) and PNG plots in the results folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import platform
import shutil
import signal
import sys
import time
import traceback
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks import loadgen, report
from benchmarks.models import ModelCase, ceiling, mlp_case, resnet50_case, tiny_image_case
from benchmarks.monitor import CpuWindow, GpuSampler, Nvml, bottleneck, by_role
from benchmarks.parsing import (
    LoadResult,
    ParseError,
    average_batch,
    backend_stages,
    first_output,
    logged_errors,
    served_precision,
    stage_breakdown,
    triton_counts,
)
from benchmarks.stack import BenchStack, ProxyUnavailable
from nexusml.core.process import ManagedProcess

log = logging.getLogger("benchmarks")

ROOT = Path(__file__).resolve().parents[1]
FULL = {"concurrency": "1,8,32,64,128", "duration": 10.0, "warmup": 2.0, "hidden": 1024, "layers": 3}
QUICK = {"concurrency": "1,4", "duration": 2.0, "warmup": 0.5, "hidden": 64, "layers": 2}
# (f) runs each swept concurrency capped at this (unless --large-concurrency): ResNet-50 on a CPU serves a few
# requests per second, so more connections only queue, and wrk's 10 s timeout would start counting errors.
LARGE_MAX_CONCURRENCY = 4
V2_HEADER_LENGTH = "Inference-Header-Content-Length"
# One request of (f): (endpoint, body, content type, extra headers).
LargeRequest = tuple[str, str | bytes, str, dict[str, str]]
# (f)'s path straight to Triton: the proxy's binary request, byte for byte, to Triton's own HTTP endpoint.
TRITON_LARGE = "triton_large_binary"


def machine() -> dict[str, Any]:
    cpu_model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gb = None
    try:
        import psutil

        ram_gb = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "ram_gb": ram_gb,
        "gpus": Nvml().names,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def _stages(log_file: Path | None, model: str) -> dict[str, float] | None:
    """The backend's stage timings of `model` so far, from Triton's log."""
    if log_file is None:
        return None
    try:
        return backend_stages(log_file.read_text(errors="replace"), model)
    except OSError:
        return None


def _stats(url: str, model: str) -> tuple[int, int, int] | None:
    try:
        with urllib.request.urlopen(f"{url}/v2/models/{model}/stats", timeout=5) as response:
            return triton_counts(json.loads(response.read()), model)
    except (OSError, ValueError):
        return None


@dataclasses.dataclass(frozen=True)
class TritonSnapshot:
    """Triton's (inferences, executions, failures) of a model and its backend's stage seconds, at one moment."""

    counts: tuple[int, int, int] | None
    stages: dict[str, float] | None


def _logged_since(server_log: Path, offset: int) -> dict[str, int]:
    """The error answers the proxy logged after byte `offset` of its log."""
    with server_log.open("rb") as handle:
        handle.seek(offset)
        return logged_errors(handle.read().decode(errors="replace"))


def _log_point(record: dict[str, Any], result: LoadResult) -> None:
    log.info(
        "%-15s c=%-4d %9.0f req/s  p50 %7.2f  p99 %7.2f ms  batch %s  errors %d  [%s]",
        record["path"],
        record["concurrency"],
        result.throughput,
        result.p50_ms or 0,
        result.p99_ms or 0,
        "-" if record["avg_batch"] is None else f"{record['avg_batch']:.1f}",
        record["errors"],
        record["bottleneck"],
    )


class Runner:
    def __init__(self, args: argparse.Namespace, out: Path) -> None:
        self.args = args
        self.out = out
        self.raw = out / "raw"
        self.raw.mkdir(parents=True, exist_ok=True)
        self.nvml = Nvml()
        self.nproc = os.cpu_count() or 1
        self.stack: BenchStack | None = None
        budget = getattr(args, "time_budget_s", None)
        self.deadline = time.monotonic() + budget if budget else None

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    # ------------------------------------------------------------------------------------ one point

    def measure(
        self,
        path: str,
        concurrency: int,
        roles: dict[str, int],
        triton_model: str | None,
        load: Any,
        server_log: Path | None = None,
    ) -> dict[str, Any]:
        """Run `load()` (-> loadgen.Run) with CPU, GPU and Triton statistics read around it. When the point
        counts errors and `server_log` is the proxy's log, the record says which answers they were."""
        record: dict[str, Any] = {"path": path, "concurrency": concurrency, "tool": report.TOOLS.get(path, "")}
        if self.out_of_time():
            return {**record, "status": "skipped", "note": "--time-budget-s spent"}
        log_offset = _size(server_log)
        before = self._triton_snapshot(triton_model)
        window = CpuWindow(roles)
        gpu = GpuSampler(self.nvml)
        window.start()
        started = time.monotonic()
        gpu.start()
        try:
            run = load()
        except Exception as err:  # one point failing (a tool crashed, could not start) must not end the run
            gpu.stop()
            window.stop()
            note = str(err) if isinstance(err, loadgen.LoadError) else f"{type(err).__name__}: {err}"
            log.warning("%s @%d failed: %s", path, concurrency, note)
            return {**record, "status": "failed", "note": note}
        util, peak = gpu.stop()
        processes = window.stop(run.name, run.cores)
        wall = time.monotonic() - started
        record.update(self._point(run.result, before, self._triton_snapshot(triton_model)))
        record.update(
            {
                "cpu": by_role(processes),
                # Everything the machine did, ours or not: much above the sum of `cpu`, something else ran.
                "machine_cpu_pct": round(window.machine_busy_pct(), 1),
                "untracked_cpu_pct": round(window.machine_busy_pct() - sum(p.cpu_pct for p in processes), 1),
                "processes": [p.to_dict() for p in processes],
                "gpu_util_pct": util,
                "gpu_util_peak_pct": peak,
                "bottleneck": bottleneck(processes, self.nproc, util),
                "cpu_ms_per_request": _cpu_ms_per_request(processes, run.result, wall),
                "window_s": round(wall, 4),
            }
        )
        if record["errors"] and server_log is not None:
            record["error_causes"] = _logged_since(server_log, log_offset)
            log.warning(
                "%s c=%d: %d errors; the proxy logged %s", path, concurrency, record["errors"], record["error_causes"]
            )
        _log_point(record, run.result)
        return record

    def _triton_snapshot(self, triton_model: str | None) -> TritonSnapshot:
        """Triton's counters and the backend's stage timings of `triton_model` now (None where not read)."""
        assert self.stack is not None and self.stack.triton is not None
        if not triton_model:
            return TritonSnapshot(None, None)
        triton = self.stack.triton
        return TritonSnapshot(_stats(triton.http_url, triton_model), _stages(triton.log_file, triton_model))

    @staticmethod
    def _point(result: LoadResult, before: TritonSnapshot, after: TritonSnapshot) -> dict[str, Any]:
        """The load generator's figures, with what Triton counted between the two snapshots."""
        errors = result.errors
        counts = before.counts is not None and after.counts is not None
        if counts and result.tool == "perf_analyzer":
            errors += after.counts[2] - before.counts[2]  # type: ignore[index]
        return {
            **result.to_dict(),
            "status": "ok",
            "errors": errors,
            "avg_batch": average_batch(before.counts, after.counts) if counts else None,  # type: ignore[arg-type]
            "triton_executions": (after.counts[1] - before.counts[1]) if counts else None,  # type: ignore[index]
            "backend_stages": stage_breakdown(before.stages, after.stages)
            if before.stages is not None and after.stages is not None
            else None,
        }

    def _unavailable(
        self, path: str, note: str, concurrencies: list[int] | None = None, status: str = "not available"
    ) -> list[dict[str, Any]]:
        log.warning("%s: %s: %s", path, status, note)
        return [
            {"path": path, "concurrency": c, "tool": report.TOOLS[path], "status": status, "note": note}
            for c in (concurrencies or self.args.concurrencies)
        ]

    # ------------------------------------------------------------------------------------- HTTP paths

    def http_path(
        self,
        case: ModelCase,
        path: str,
        server: ManagedProcess,
        url: str,
        roles: dict[str, int],
        triton_model: str | None,
        endpoint: str = "/predict",
        body: str | None = None,
    ) -> list[dict[str, Any]]:
        body = body or case.body()
        workdir = self.raw / f"{case.key}-{path}"
        workdir.mkdir(exist_ok=True)
        if loadgen.wrk_path() is None:
            return self._unavailable(path, "wrk is not installed (Debian package wrk)")
        try:
            if self.args.warmup > 0 and not self.out_of_time():
                warm = min(8, max(self.args.concurrencies))
                loadgen.wrk(f"{url}{endpoint}", body, warm, self.args.warmup, workdir, "warmup")
        except loadgen.LoadError as err:
            log.warning("%s warm-up failed: %s", path, err)
        records = []
        for conc in self.args.concurrencies:

            def load(conc: int = conc) -> loadgen.Run:
                return loadgen.wrk(f"{url}{endpoint}", body, conc, self.args.duration, workdir, f"c{conc}")

            records.append(self.measure(path, conc, roles, triton_model, load, server.log_file))
        return records

    def run_case(self, case: ModelCase) -> dict[str, Any]:
        assert self.stack is not None and self.stack.triton is not None
        model: dict[str, Any] = {
            "key": case.key,
            "description": case.description,
            "triton_configs": {
                name: self.stack.configs[name] for name in (case.key, case.nobatch_key) if name in self.stack.configs
            },
            "runs": [],
            "locust": None,
            "ceiling": None,
        }
        runs: list[dict[str, Any]] = model["runs"]
        paths = applicable(case, self.args.paths)
        if "ceiling" in paths:
            model["ceiling"] = self._ceiling(case)
        runs += self.baseline_paths(case, paths)
        runs += self.proxy_paths(case, paths, model)
        if any(path in paths for path in report.LARGE_PATHS):
            runs += self.large_input_paths(case, paths, model)
        runs += self.triton_paths(case, paths)
        model["ratios"] = self._ratios(paths, runs, model["ceiling"])
        return model

    def _ceiling(self, case: ModelCase) -> dict[str, Any] | None:
        """(e): the model in-process, no server; None when it fails (the served figures still count)."""
        assert self.stack is not None
        args = self.args
        log.info("%s: in-process ceiling", case.key)
        try:
            return ceiling(
                self.stack.model_file(case),
                case.input_shape,
                batches=args.ceiling_batches,
                seconds=args.ceiling_seconds,
                threads=(1,) if args.device == "cuda" else tuple(sorted({1, args.ceiling_threads or self.nproc})),
                device=args.device,
                precision=served_precision(self.stack.configs[case.key]),
            )
        except Exception as err:  # a ceiling failure must not lose the served figures
            log.warning("ceiling failed: %s", err)
            return None

    def _ratios(self, paths: list[str], runs: list[dict[str, Any]], found: dict[str, Any] | None) -> Any:
        concs = self.args.concurrencies
        headline = report.pick_headline(concs, self.args.headline_concurrency)
        ceiling_value = found["samples_per_s"] if found else None
        targets = report.TARGETS["gpu" if self.args.device == "cuda" else "cpu"]
        # (f) alone (a companion, or `--paths` naming only it) has no throughput ratio: no empty table for it.
        if set(paths) <= set(report.LARGE_PATHS):
            return None
        return report.compute_ratios(runs, concs, ceiling_value, headline, targets)

    def baseline_paths(self, case: ModelCase, paths: list[str]) -> list[dict[str, Any]]:
        """(a) and (a2): one forward per request, no batching, no Triton."""
        assert self.stack is not None
        runs: list[dict[str, Any]] = []
        for path, module in (("naive", "naive_server"), ("fastapi", "fastapi_server")):
            if path not in paths:
                continue
            server, url = self.stack.start_naive(case, threads=self.args.naive_threads, module=module)
            try:
                runs += self.http_path(case, path, server, url, {"server": server.process.pid}, None)  # type: ignore[union-attr]
            finally:
                self.stack.stop_child(server)
        return runs

    def _coalesce_extra(self) -> dict[str, str]:
        """The proxy as (c) runs it: its own coalescing default, or `--proxy-coalesce`."""
        if self.args.proxy_coalesce == "default":
            return {}
        return {"PROXY_COALESCE": "true" if self.args.proxy_coalesce == "on" else "false"}

    def proxy_paths(self, case: ModelCase, paths: list[str], model: dict[str, Any]) -> list[dict[str, Any]]:
        """(b) is batching off everywhere: the proxy's own coalescing too. (c) is the project's defaults: the
        proxy as configured by default (or --proxy-coalesce), Triton's dynamic batcher on. (c2) is (c)'s proxy
        driven by the Open Inference Protocol's JSON form: side by side, same config."""
        proxy_extra = {"proxy_nobatch": {"PROXY_COALESCE": "false"}, "proxy_batch": self._coalesce_extra()}
        model["proxy"] = {}
        runs: list[dict[str, Any]] = []
        for path, triton_model in (("proxy_nobatch", case.nobatch_key), ("proxy_batch", case.key)):
            v2 = path == "proxy_batch" and "proxy_v2" in paths
            if path not in paths and not v2:
                continue
            runs += self._proxy_path(case, path, triton_model, proxy_extra[path], paths, model)
        return runs

    def _proxy_path(
        self,
        case: ModelCase,
        path: str,
        triton_model: str,
        extra: dict[str, str],
        paths: list[str],
        model: dict[str, Any],
    ) -> list[dict[str, Any]]:
        """One proxy started for `path`: its wrk points, (c2)'s beside (c)'s, and the locust run on (c)."""
        assert self.stack is not None and self.stack.triton is not None
        args = self.args
        model["proxy"][path] = proxy_settings(self.stack.proxy_env(triton_model, args.proxy_workers, 0, extra))
        locust = path == "proxy_batch" and path in paths and bool(args.locust_users)
        try:
            proxy, url = self.stack.start_proxy(triton_model, args.proxy_workers, len(case.body()), extra)
        except ProxyUnavailable as err:
            if path == "proxy_batch" and args.locust_users:
                model["locust"] = {
                    "path": "locust",
                    "concurrency": args.locust_users,
                    "tool": "locust",
                    "status": "not available",
                    "note": f"proxy not available: {err}",
                }
            return self._unavailable(path, f"proxy not available: {err}")
        runs: list[dict[str, Any]] = []
        try:
            roles = {"server": self.stack.triton.process.pid, "proxy": proxy.process.pid}  # type: ignore[union-attr]
            if path in paths:
                runs += self.http_path(case, path, proxy, url, roles, triton_model)
            if path == "proxy_batch" and "proxy_v2" in paths:
                endpoint = f"/v2/models/{case.key}/infer"
                runs += self.http_path(case, "proxy_v2", proxy, url, roles, triton_model, endpoint, case.triton_body())
            if locust:
                model["locust"] = self._locust(case, url, roles, triton_model)
        finally:
            self.stack.stop_child(proxy)
        return runs

    def _locust(self, case: ModelCase, url: str, roles: dict[str, int], triton_model: str) -> dict[str, Any]:
        args = self.args
        users = args.locust_users
        workdir = self.raw / f"{case.key}-locust"
        workdir.mkdir(exist_ok=True)

        def swarm() -> loadgen.Run:
            return loadgen.locust(url, case.body(), users, args.locust_duration, workdir, "locust", _child_env())

        record = self.measure("locust", users, roles, triton_model, swarm)
        record["tool"] = "locust"
        return record

    def triton_paths(self, case: ModelCase, paths: list[str]) -> list[dict[str, Any]]:
        """(d): Triton's own HTTP endpoint driven exactly like the proxy (wrk, JSON), the proxy's overhead
        target; then Triton over gRPC with batching off and on (perf_analyzer)."""
        assert self.stack is not None and self.stack.triton is not None
        triton = self.stack.triton
        triton_pid = triton.process.pid  # type: ignore[union-attr]
        runs: list[dict[str, Any]] = []
        if "triton_http" in paths:
            url = f"http://{triton.settings.host}:{triton.settings.http_port}"
            endpoint = f"/v2/models/{case.key}/infer"
            runs += self.http_path(
                case, "triton_http", triton, url, {"server": triton_pid}, case.key, endpoint, case.triton_body()
            )
        for path, triton_model in (("triton_nobatch", case.nobatch_key), ("triton_batch", case.key)):
            if path not in paths:
                continue
            if loadgen.perf_analyzer_path() is None:
                runs += self._unavailable(path, "perf_analyzer is not installed")
                continue
            runs += self._perf_points(case, path, triton_model, triton_pid)
        return runs

    def _perf_points(self, case: ModelCase, path: str, triton_model: str, triton_pid: int) -> list[dict[str, Any]]:
        assert self.stack is not None
        args = self.args
        grpc = self.stack.grpc_address()
        workdir = self.raw / f"{case.key}-{path}"
        workdir.mkdir(exist_ok=True)
        runs = []
        for conc in args.concurrencies:

            def load(conc: int = conc) -> loadgen.Run:
                return loadgen.perf_analyzer(
                    triton_model,
                    grpc,
                    conc,
                    args.duration,
                    workdir,
                    f"c{conc}",
                    _child_env(),
                    shape=case.shape_arg(),
                )

            runs.append(self.measure(path, conc, {"server": triton_pid}, triton_model, load))
        return runs

    # ------------------------------------------------------------------------------- (f) large input

    def large_input_paths(self, case: ModelCase, paths: list[str], model: dict[str, Any]) -> list[dict[str, Any]]:
        """(f): one image-sized row through one proxy (batching on, as (c)) as JSON and as binary v2, and the
        binary request as it is straight to Triton's own HTTP endpoint (`triton_large_binary`: the same model,
        the same body bytes and `Inference-Header-Content-Length`), the proxy's counterpart for images.

        One proxy serves both proxy paths, and the points alternate JSON, binary, Triton at each concurrency,
        so all see the same machine (other load on a shared box drifts over minutes). Before measuring, each
        body is sent once and the answers compared: a body the proxy (or Triton) rejects or misreads is
        reported as such instead of as a throughput of errors. Fills `model["large_input"]` with the sizes,
        that check and the side-by-side summary (`report.large_input`).
        """
        assert self.stack is not None and self.stack.triton is not None
        args = self.args
        concs: list[int] = args.large_concurrencies
        chosen = [path for path in report.LARGE_PATHS if path in paths]
        json_body = case.body()
        binary_body, header_length = case.v2_binary_body()
        binary: LargeRequest = (
            f"/v2/models/{case.key}/infer",
            binary_body,
            "application/octet-stream",
            {V2_HEADER_LENGTH: str(header_length)},
        )
        requests = {
            "proxy_large_json": ("/predict", json_body, "application/json", {}),
            "proxy_large_binary": binary,
            TRITON_LARGE: binary,
        }
        large: dict[str, Any] = {
            "input_shape": list(case.input_shape),
            "body_bytes": {"json": len(json_body.encode()), "binary": len(binary_body)},
        }
        model["large_input"] = large
        runs: list[dict[str, Any]] = []
        idle: float | None = None
        if loadgen.wrk_path() is None:
            for path in chosen:
                runs += self._unavailable(path, "wrk is not installed (Debian package wrk)", concs)
        elif self.out_of_time():
            for path in chosen:
                runs += self._unavailable(path, "--time-budget-s spent", concs, "skipped")
        else:
            runs, idle = self._large_points(case, chosen, requests, large)
        large.update(report.large_input(runs, concs, idle))
        return runs

    def _large_points(
        self,
        case: ModelCase,
        chosen: list[str],
        requests: dict[str, LargeRequest],
        large: dict[str, Any],
    ) -> tuple[list[dict[str, Any]], float | None]:
        """The points of (f), and the proxy's CPU % at rest (measured after the warm-up, for net figures)."""
        assert self.stack is not None and self.stack.triton is not None
        args = self.args
        concs: list[int] = args.large_concurrencies
        extra = self._coalesce_extra()  # the proxy as (c) runs it
        json_bytes = large["body_bytes"]["json"]
        large["proxy"] = proxy_settings(self.stack.proxy_env(case.key, args.proxy_workers, json_bytes, extra))
        try:
            proxy, url = self.stack.start_proxy(case.key, args.proxy_workers, json_bytes, extra)
        except ProxyUnavailable as err:
            refused = [run for path in chosen for run in self._unavailable(path, f"proxy not available: {err}", concs)]
            return refused, None
        try:
            triton = self.stack.triton
            server = {"server": triton.process.pid}  # type: ignore[union-attr]
            roles = {path: {**server, "proxy": proxy.process.pid} for path in chosen}  # type: ignore[union-attr]
            roles[TRITON_LARGE] = server  # the proxy idles meanwhile: its CPU is no part of Triton's point
            urls = {path: url for path in chosen}
            urls[TRITON_LARGE] = f"http://{triton.settings.host}:{triton.settings.http_port}"
            logs = {path: proxy.log_file for path in chosen}
            logs[TRITON_LARGE] = None
            refused = self._check_large(urls, chosen, requests, large)
            ready = [path for path in chosen if path not in refused]
            workdirs = {path: self.raw / f"{case.key}-{path}" for path in ready}
            for path in ready:
                workdirs[path].mkdir(exist_ok=True)
                self._large_warmup(path, urls[path], requests[path], workdirs[path])
            proxied = any(path != TRITON_LARGE for path in ready)
            idle = self._idle_cpu_pct(proxy.process.pid) if proxied else None  # type: ignore[union-attr]
            runs: list[dict[str, Any]] = []
            for conc in concs:
                for path in chosen:
                    if path in refused:
                        runs += self._unavailable(path, refused[path], [conc], "failed")
                        continue
                    load = partial(self._large_wrk, urls[path], requests[path], conc, workdirs[path], f"c{conc}")
                    runs.append(self.measure(path, conc, roles[path], case.key, load, logs[path]))
            return runs, idle
        finally:
            self.stack.stop_child(proxy)

    def _large_wrk(
        self, url: str, request: LargeRequest, concurrency: int, workdir: Path, tag: str, duration_s: float = 0.0
    ) -> loadgen.Run:
        endpoint, body, content_type, headers = request
        return loadgen.wrk(
            f"{url}{endpoint}",
            body,
            concurrency,
            duration_s or self.args.duration,
            workdir,
            tag,
            content_type=content_type,
            headers=headers,
        )

    def _large_warmup(self, path: str, url: str, request: LargeRequest, workdir: Path) -> None:
        if self.args.warmup <= 0 or self.out_of_time():
            return
        try:
            self._large_wrk(url, request, max(self.args.large_concurrencies), workdir, "warmup", self.args.warmup)
        except loadgen.LoadError as err:
            log.warning("%s warm-up failed: %s", path, err)

    def _idle_cpu_pct(self, pid: int) -> float | None:
        """The proxy's CPU % with no requests, over one point's length (its timers and housekeeping): what the
        net CPU per request of (f) leaves out. None when the time budget is spent."""
        if self.out_of_time():
            return None
        window = CpuWindow({"proxy": pid})
        window.start()
        time.sleep(self.args.duration)
        return sum(proc.cpu_pct for proc in window.stop())

    def _check_large(
        self,
        urls: dict[str, str],
        chosen: list[str],
        requests: dict[str, LargeRequest],
        large: dict[str, Any],
    ) -> dict[str, str]:
        """Send each large body once (to `urls[path]`); returns {path: why} for those not answered, and records
        in `large["check"]` the statuses and whether the answers agree (`compare_answers`)."""
        refused: dict[str, str] = {}
        answers: dict[str, list[float]] = {}
        statuses: dict[str, int] = {}
        for path in chosen:
            endpoint, body, content_type, headers = requests[path]
            data = body.encode() if isinstance(body, str) else body
            who = "Triton" if path == TRITON_LARGE else "the proxy"
            status, answer_headers, answer = _post(
                f"{urls[path]}{endpoint}", data, {"Content-Type": content_type, **headers}
            )
            statuses[path] = status
            if status != 200:
                refused[path] = f"{who} answered {status} to the body: {answer[:300].decode(errors='replace')}"
                continue
            try:
                answers[path] = first_output(answer, answer_headers.get(V2_HEADER_LENGTH.lower()))
            except ParseError as err:
                refused[path] = f"unreadable answer: {err}"
        check: dict[str, Any] = {"status": statuses, **compare_answers(answers)}
        if refused:
            check["note"] = "; ".join(f"{path}: {why}" for path, why in refused.items())
        large["check"] = check
        return refused


def compare_answers(answers: dict[str, list[float]]) -> dict[str, Any]:
    """Whether every path's first output matches the first path's (within 1e-3 of the larger of 1 and its
    largest value): `agree` (None with fewer than two answers), the largest difference, and a note when the
    lengths differ."""
    if len(answers) < 2:
        return {"agree": None, "max_abs_diff": None}
    (first, reference), *others = answers.items()
    scale = max((abs(a) for a in reference), default=0.0)
    diff = 0.0
    for path, values in others:
        if len(values) != len(reference):
            note = f"{len(reference)} outputs by {first}, {len(values)} by {path}"
            return {"agree": False, "max_abs_diff": None, "note": note}
        diff = max([diff, *(abs(a - b) for a, b in zip(reference, values, strict=True))])
    return {"agree": diff <= 1e-3 * max(1.0, scale), "max_abs_diff": diff}


def proxy_settings(env: dict[str, str]) -> dict[str, Any]:
    """The proxy's coalescing settings as its own settings class reads them from `env` (for the report)."""
    try:
        from nexusml.core.settings import load
        from proxy.settings import ProxySettings

        settings = load(ProxySettings, env)
        return {
            "coalesce": settings.coalesce,
            "coalesce_max_rows": settings.coalesce_max_rows,
            "coalesce_max_batches": settings.coalesce_max_batches,
            "coalesce_max_wait_ms": settings.coalesce_max_wait_ms,
            "workers": settings.worker_count,
        }
    except Exception as err:  # the proxy is someone else's moving target: never fail the run over it
        return {"error": str(err)}


def _size(path: Path | None) -> int:
    try:
        return path.stat().st_size if path is not None else 0
    except OSError:
        return 0


def _child_env() -> dict[str, str]:
    return dict(os.environ)


def _cpu_ms_per_request(processes: list[Any], result: LoadResult, wall_s: float) -> dict[str, float] | None:
    """CPU milliseconds per successful request, per role: what a request costs each process, whatever the rate.

    wrk points only: their CPU window is the load itself, so CPU-seconds over the window / successful requests
    is exact; perf_analyzer's window also holds its own warm-up trials and locust's its ramp.
    """
    ok = round(result.throughput * result.duration_s)
    if result.tool != "wrk" or ok <= 0:
        return None
    seconds: dict[str, float] = {}
    for proc in processes:
        seconds[proc.role] = seconds.get(proc.role, 0.0) + proc.cpu_pct / 100 * wall_s
    return {role: round(1000 * value / ok, 4) for role, value in seconds.items()}


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """One POST: (status, headers with lower-case names, body), an error status included; status 0 when nothing
    answered."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()
    except OSError as err:
        return 0, {}, str(err).encode()


def applicable(case: ModelCase, paths: list[str]) -> list[str]:
    """The requested paths that `case` runs: (f) needs an image input, and a companion runs (f) alone."""
    if case.large_only:
        return [path for path in paths if path in report.LARGE_PATHS]
    if not case.image_input:
        return [path for path in paths if path not in report.LARGE_PATHS]
    return list(paths)


# ------------------------------------------------------------------------------------------------ CLI

ALL_PATHS = (
    "ceiling",
    "naive",
    "fastapi",
    "proxy_nobatch",
    "proxy_batch",
    "proxy_v2",
    *report.LARGE_PATHS,
    "triton_http",
    "triton_nobatch",
    "triton_batch",
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke run (seconds, not minutes)")
    p.add_argument("--concurrency", help=f"comma list (default {FULL['concurrency']}; --quick {QUICK['concurrency']})")
    p.add_argument(
        "--large-concurrency",
        help=f"comma list for the large-input paths (default: each --concurrency capped at {LARGE_MAX_CONCURRENCY})",
    )
    p.add_argument("--duration", type=float, help="seconds measured per point (default 10; --quick 2)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up per HTTP path (default 2; --quick 0.5)")
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results/<UTC timestamp>)")
    p.add_argument("--model", default="mlp", help="comma list of mlp, resnet50 (default mlp)")
    p.add_argument("--hidden", type=int, help="demo MLP hidden width (default 1024; --quick 64)")
    p.add_argument("--layers", type=int, help="demo MLP hidden layers (default 3; --quick 2)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="DEVICE for sync, naive server, ceiling")
    p.add_argument("--paths", default=",".join(ALL_PATHS), help=f"comma subset of {','.join(ALL_PATHS)}")
    p.add_argument(
        "--proxy-workers", type=int, default=0, help="PROXY_WORKERS (default 0: the proxy picks from the CPU count)"
    )
    p.add_argument(
        "--proxy-coalesce",
        choices=("default", "on", "off"),
        default="default",
        help="PROXY_COALESCE for (c) (default: the proxy's own default); (b) always runs with it off",
    )
    p.add_argument("--naive-threads", type=int, default=1, help="torch threads of the naive server (default 1)")
    p.add_argument("--batch-size", type=int, help="BATCH_SIZE for the batching model (default: the project's)")
    p.add_argument("--batch-delay-ms", type=float, help="BATCH_TIMEOUT_MS (default: the project's)")
    p.add_argument("--instances", type=int, help="INSTANCE_COUNT for both Triton models (default: the project's)")
    p.add_argument("--locust-users", type=int, help="users of the locust run on (c) (default: headline; 0 skips)")
    p.add_argument("--locust-duration", type=float, help="seconds of the locust run (default --duration)")
    p.add_argument("--headline-concurrency", type=int, default=64, help="where the headline ratios are read")
    p.add_argument("--ceiling-threads", type=int, help="torch threads tried besides 1 (default: all cores)")
    p.add_argument("--ceiling-seconds", type=float, help="seconds per batch size for the ceiling")
    p.add_argument("--time-budget-s", type=float, help="after this many seconds, remaining points are skipped")
    p.add_argument("--keep-work", action="store_true", help="keep the model repository and artifacts")
    return p


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    base = QUICK if args.quick else FULL
    args.concurrencies = [int(c) for c in str(args.concurrency or base["concurrency"]).split(",") if c.strip()]
    if args.large_concurrency:
        args.large_concurrencies = [int(c) for c in str(args.large_concurrency).split(",") if c.strip()]
    else:
        args.large_concurrencies = sorted({min(c, LARGE_MAX_CONCURRENCY) for c in args.concurrencies})
    args.duration = args.duration or base["duration"]
    args.warmup = base["warmup"] if args.warmup is None else args.warmup
    args.hidden = args.hidden or base["hidden"]
    args.layers = args.layers or base["layers"]
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = set(args.paths) - set(ALL_PATHS)
    if unknown:
        raise SystemExit(f"unknown paths: {sorted(unknown)}")
    args.models = [m.strip() for m in args.model.split(",") if m.strip()]
    headline = report.pick_headline(args.concurrencies, args.headline_concurrency)
    args.locust_users = headline if args.locust_users is None else args.locust_users
    args.locust_duration = args.locust_duration or args.duration
    args.ceiling_seconds = args.ceiling_seconds or (0.3 if args.quick else 1.0)
    args.ceiling_batches = (1, 8, 32) if args.quick else (1, 8, 32, 64, 128, 256)
    if args.out is None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        args.out = ROOT / "benchmarks" / "results" / stamp
    return args


def cases(args: argparse.Namespace) -> list[ModelCase]:
    """The models of `--model`, less those no chosen path applies to, plus a companion for (f) when chosen and
    no model has an image input: ResNet-50, or with `--quick` a tiny model of the same 3x224x224 input."""
    found = []
    for name in args.models:
        if name == "mlp":
            found.append(mlp_case(args.hidden, args.layers))
        elif name == "resnet50":
            found.append(resnet50_case())
        else:
            raise SystemExit(f"unknown model {name!r}: expected mlp or resnet50")
    if any(path in args.paths for path in report.LARGE_PATHS) and not any(case.image_input for case in found):
        found.append(dataclasses.replace(tiny_image_case() if args.quick else resnet50_case(), large_only=True))
    return [case for case in found if applicable(case, args.paths)]


def sync_env(args: argparse.Namespace) -> dict[str, str]:
    env = {"STAGE_LOG_INTERVAL_S": "1"}  # the backend's stage timings per point (`backend_stages`)
    if args.batch_size:
        env["BATCH_SIZE"] = str(args.batch_size)
    if args.batch_delay_ms is not None:
        env["BATCH_TIMEOUT_MS"] = str(args.batch_delay_ms)
    if args.instances:
        env["INSTANCE_COUNT"] = str(args.instances)
    return env


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the `finally` blocks that stop every child server


def _header(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """results.json before any point: the command, the machine and the settings; models are appended."""
    return {
        "schema": 1,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks " + " ".join(argv),
        "machine": machine(),
        "settings": {
            "concurrency": args.concurrencies,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "quick": args.quick,
            "device": args.device,
            "proxy_workers": args.proxy_workers,
            "proxy_coalesce": args.proxy_coalesce,
            "naive_threads": args.naive_threads,
            "sync_env": sync_env(args),
            "locust_users": args.locust_users,
            "paths": args.paths,
            "large_concurrency": args.large_concurrencies,
            "time_budget_s": args.time_budget_s,
        },
        "models": [],
    }


def main(argv: list[str] | None = None) -> int:
    # A background job starts with SIGINT ignored; make both SIGINT and SIGTERM stop the run cleanly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = resolve(parser().parse_args(argv))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    started = time.monotonic()
    results = _header(args, sys.argv[1:] if argv is None else argv)
    runner = Runner(args, out)
    code = 0
    try:
        work.mkdir(exist_ok=True)
        # The `_nobatch` copies serve (b) and (d off) only: a run without them skips their sync and Triton load.
        nobatch = any(path in args.paths for path in ("proxy_nobatch", "triton_nobatch"))
        with BenchStack(
            work, cases(args), device=args.device, sync_env=sync_env(args), nobatch_copies=nobatch
        ) as stack:
            runner.stack = stack
            for case in stack.cases:
                results["models"].append(runner.run_case(case))
    except (Exception, KeyboardInterrupt, SystemExit) as err:
        interrupted = isinstance(err, SystemExit | KeyboardInterrupt)
        log.error("benchmark run %s:\n%s", "interrupted" if interrupted else "failed", traceback.format_exc())
        results["error"] = traceback.format_exc().strip().splitlines()[-1]
        code = 130 if interrupted else 1
    finally:
        results["elapsed_s"] = round(time.monotonic() - started, 1)
        if not args.keep_work:
            for name in ("model_repository", "export"):
                shutil.rmtree(work / name, ignore_errors=True)
        if results["models"]:
            files = report.write_all(results, out)
            print(report.markdown(results))
            for name, path in files.items():
                print(f"{name}: {path}")
        else:
            (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
