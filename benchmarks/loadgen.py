"""Running the load generators: wrk (HTTP paths, and with every answer checked for the reliability
scenarios), perf_analyzer (Triton direct), locust (HTTP, user-style).

Each runner is a closed loop at a fixed concurrency for a fixed time, runs as a waited child process (so
its CPU time is exact), keeps its raw output beside the results, and returns a parsed `LoadResult`.
A runner raises `LoadError` with the tool's last words when the tool fails.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.parsing import (
    LoadResult,
    ParseError,
    parse_locust_stats,
    parse_perf_analyzer_csv,
    parse_wrk,
    wrk_script,
)
from benchmarks.wrk_checked import CheckedSummary, checked_script, parse_checked
from nexusml.testing.environment import perf_analyzer_env, perf_analyzer_path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


class LoadError(RuntimeError):
    """A load generator failed or printed nothing usable."""


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())


def wrk_path() -> str | None:
    return shutil.which("wrk")


def locust_path() -> str | None:
    found = BIN / "locust"
    return str(found) if found.exists() else shutil.which("locust")


@dataclass(frozen=True)
class Run:
    """One finished load-generator run."""

    result: LoadResult
    name: str  # the process, as named in CPU reports
    cores: int  # cores it can use


def wrk(
    url: str,
    body: str | bytes,
    concurrency: int,
    duration_s: float,
    workdir: Path,
    tag: str,
    threads: int = 1,
    timeout_s: float = 10.0,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> Run:
    """`wrk -c N` POSTing `body` to `url` for `duration_s`; one thread is plenty on loopback (C, epoll).

    `body` is JSON text, or bytes (a binary v2 request, with its `Inference-Header-Content-Length` in
    `headers`). The script is written once per `workdir`: every point of a path sends the same body.
    """
    script = workdir / "post.lua"
    if not script.exists():
        script.write_text(wrk_script(body, urlsplit(url).path or "/", content_type, headers))
    threads = max(1, min(threads, concurrency))
    stdout = _run_wrk(url, script, threads, concurrency, duration_s, timeout_s, workdir / f"{tag}.wrk.txt")
    try:
        return Run(parse_wrk(stdout), "wrk", threads)
    except ParseError as err:
        raise LoadError(f"{err}: {_tail(stdout)}") from err


def wrk_checked(
    url: str,
    bodies: list[str],
    expected: list[list[float]],
    connections: int,
    duration_s: float,
    workdir: Path,
    tag: str,
    rate: float = 0.0,
    headers: dict[str, str] | None = None,
    timeout_s: float = 10.0,
    threads: int = 1,
) -> CheckedSummary:
    """wrk POSTing `bodies` round-robin to `url`, every answer checked (`wrk_checked.checked_script`): a closed
    loop of `connections`, or with `rate` (requests per second in all) an open loop paced by its threads."""
    threads = max(1, min(threads, connections))
    script = workdir / f"{tag}.lua"
    path = urlsplit(url).path or "/"
    script.write_text(checked_script(bodies, expected, path, headers, rate / threads if rate > 0 else 0.0))
    stdout = _run_wrk(url, script, threads, connections, duration_s, timeout_s, workdir / f"{tag}.wrk.txt")
    try:
        return parse_checked(stdout)
    except ParseError as err:
        raise LoadError(f"{err}: {_tail(stdout)}") from err


def _run_wrk(
    url: str, script: Path, threads: int, connections: int, duration_s: float, timeout_s: float, output: Path
) -> str:
    """wrk with `script` as a waited child; its output kept in `output`; its stdout returned."""
    exe = wrk_path()
    if exe is None:
        raise LoadError("wrk is not installed (Debian package wrk)")
    argv = [
        exe,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={timeout_s:g}s",
        "-s",
        str(script),
        url,
    ]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60)
    except subprocess.TimeoutExpired as err:
        raise LoadError(f"wrk did not finish within {duration_s + 60:g} s") from err
    output.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise LoadError(f"wrk exited {done.returncode}: {_tail(done.stderr or done.stdout)}")
    return done.stdout + done.stderr


def perf_analyzer(
    model: str,
    grpc_address: str,
    concurrency: int,
    duration_s: float,
    workdir: Path,
    tag: str,
    environ: dict[str, str],
    shape: str | None = None,
) -> Run:
    """perf_analyzer over gRPC at one concurrency, batch 1, for about `duration_s` of measurement.

    Three time windows of `duration_s / 3` each. The stability check is switched off in effect (a
    threshold of 100000 %), so the run ends after those three windows instead of failing with "Failed to
    obtain stable measurement": on a 2-core box the load generator competes with the server, and with the
    project's default batching delay single requests stall ~0.5 s in Triton's queue at low concurrency,
    so windows differ by more than 100 %. The figure is the mean of the three windows; each window's
    numbers stay in the raw output beside the results.
    """
    exe = perf_analyzer_path()
    if exe is None:
        raise LoadError("perf_analyzer is not installed (tritonclient==2.51.0 wheel)")
    window_ms = max(500, round(duration_s * 1000 / 3))
    csv_path = workdir / f"{tag}.perf.csv"
    argv = [exe, *_perf_analyzer_args(model, grpc_address, concurrency, window_ms, csv_path, shape)]
    limit = duration_s * 4 + 60
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=limit, env=perf_analyzer_env(environ))
    except subprocess.TimeoutExpired as err:
        raise LoadError(f"perf_analyzer did not finish within {limit:g} s") from err
    (workdir / f"{tag}.perf.txt").write_text(done.stdout + done.stderr)
    if done.returncode != 0 or not csv_path.exists():
        raise LoadError(f"perf_analyzer exited {done.returncode}: {_tail(done.stdout + done.stderr)}")
    try:
        results = parse_perf_analyzer_csv(csv_path.read_text(), window_ms * 3 / 1000)
    except ParseError as err:
        raise LoadError(str(err)) from err
    return Run(results[-1], "perf_analyzer", 0)


def _perf_analyzer_args(
    model: str, grpc_address: str, concurrency: int, window_ms: int, csv_path: Path, shape: str | None
) -> list[str]:
    args = ["-m", model, "-u", grpc_address, "-i", "grpc", "-b", "1"]
    args += ["--concurrency-range", f"{concurrency}:{concurrency}", "--measurement-mode", "time_windows"]
    args += ["-p", str(window_ms), "--stability-percentage", "100000", "--max-trials", "3", "-f", str(csv_path)]
    return args + (["--shape", shape] if shape else [])


def locust(
    url: str,
    body: str,
    users: int,
    duration_s: float,
    workdir: Path,
    tag: str,
    environ: dict[str, str],
) -> Run:
    """locust headless with `benchmarks/locustfile.py`: `users` users, all started at once, no think time."""
    exe = locust_path()
    if exe is None:
        raise LoadError("locust is not installed")
    prefix = workdir / tag
    argv = [
        exe,
        "-f",
        str(ROOT / "benchmarks" / "locustfile.py"),
        "--headless",
        "--host",
        url,
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{max(1, round(duration_s))}s",
        "--stop-timeout",
        "2",
        "--csv",
        str(prefix),
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    body_file = workdir / f"{tag}.body.json"
    body_file.write_text(body)  # a file: an image request's body is far beyond the environment's size limit
    env = {**environ, "BENCH_BODY_FILE": str(body_file)}
    env.pop("BENCH_BODY", None)
    limit = duration_s + 90
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=limit, env=env)
    except subprocess.TimeoutExpired as err:
        raise LoadError(f"locust did not finish within {limit:g} s") from err
    (workdir / f"{tag}.locust.txt").write_text(done.stdout + done.stderr)
    stats = Path(f"{prefix}_stats.csv")
    if not stats.exists():
        raise LoadError(f"locust exited {done.returncode} without stats: {_tail(done.stderr or done.stdout)}")
    try:
        # locust exits 1 when any request failed; the failures are in the stats and reported as errors.
        return Run(parse_locust_stats(stats.read_text(), duration_s), "locust", 1)
    except ParseError as err:
        raise LoadError(str(err)) from err
