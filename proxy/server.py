"""Run the proxy: `PROXY_WORKERS` uvloop processes sharing one port, graceful on SIGTERM.

One process per worker, each with its own event loop and upstream client, all bound to the same port with
SO_REUSEPORT so the kernel spreads connections over them; this is how a Python server uses more than one
core. The workers add up their metrics through files in a private temporary directory (see
`proxy.metrics`), so a scrape on any worker shows the whole pod, and take from the same rate-limit buckets, a
file in that directory too (`proxy.buckets`). The parent only supervises: it forwards
SIGTERM/SIGINT, and when a worker dies on its own it stops the others and exits with that worker's code,
leaving restarts to the orchestrator.

Shutdown, per worker: readiness turns false first (new predictions on open connections get 503), the
listening socket closes, in-flight requests get up to `SHUTDOWN_GRACE_S` to finish, the upstream client
closes, and the worker exits 0.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing import resource_tracker
from multiprocessing.process import BaseProcess
from pathlib import Path

import uvloop
from aiohttp import web
from prometheus_client import multiprocess as prometheus_multiprocess

from nexusml.core import logs
from nexusml.core.errors import NexusError, ServerError
from nexusml.core.process import (
    STOP_SIGNALS,
    die_with_parent,
    ignore_stop_signals,
    ignore_stop_signals_until_exit,
    release_stop_signals,
    stop_signals_held,
)
from proxy.app import create_app, server_options
from proxy.buckets import BUCKETS_FILE, SharedBuckets
from proxy.metrics import MULTIPROC_DIR_ENV
from proxy.middleware import access_log
from proxy.protocol import ProxyRunner
from proxy.settings import ProxySettings
from proxy.state import STATE

log = logging.getLogger("proxy")
# After the grace period, handlers still running get this long before they are cancelled.
_FINAL_WAIT_S = 1.0


def configure_logging(settings: ProxySettings) -> None:
    """One line per record on stderr, in `LOG_FORMAT` (each worker is a process of its own and sets its own).

    Access lines are data: in text format they stay bare JSON objects, in json format records like the rest."""
    logs.configure(settings.log_level, settings.log_format, bare=(access_log.name,))


async def _serve(settings: ProxySettings, worker: int, buckets: Path | None) -> int:
    stop = asyncio.Event()
    _stop_on_signal(stop)
    try:
        return await _serving(settings, worker, stop, buckets)
    finally:
        ignore_stop_signals_until_exit()  # the worker is ending: its handler must not wake a closed loop


def _stop_on_signal(stop: asyncio.Event) -> None:
    """The first SIGTERM/SIGINT sets `stop`; later ones are ignored (a worker may get two: the supervisor's
    and one sent to the whole group). A plain handler, not the loop's `add_signal_handler`, which would put
    the default action back when the loop closes, where a second signal would kill the worker with it.
    A signal held while this worker started (`stop_signals_held`) arrives once the handler is in."""
    loop = asyncio.get_running_loop()

    def on_signal(_signum: int, _frame: object) -> None:
        ignore_stop_signals()
        loop.call_soon_threadsafe(stop.set)

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)
    release_stop_signals()


async def _serving(settings: ProxySettings, worker: int, stop: asyncio.Event, buckets: Path | None) -> int:
    app = create_app(settings, worker, buckets)
    runner = ProxyRunner(app, shutdown_timeout=_FINAL_WAIT_S, **server_options(settings))
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_port=True, backlog=1024)
    try:
        await site.start()
    except OSError as err:
        await runner.cleanup()
        raise ServerError(f"cannot listen on {settings.host}:{settings.port}: {err}") from err
    log.info("worker %d listening on http://%s:%d", worker, settings.host, settings.port)
    await stop.wait()
    state = app[STATE]
    state.draining = True
    log.info("worker %d stopping: %d predictions in flight", worker, state.in_flight)
    started = time.monotonic()
    await site.stop()
    # aiohttp's own shutdown stops reading from connections at once, which would cut off bodies still
    # arriving; so in-flight predictions are waited for here, with the connections still open.
    while state.in_flight and time.monotonic() - started < settings.shutdown_grace_s:
        await asyncio.sleep(0.05)
    await runner.cleanup()
    log.info("worker %d stopped after %.2f s", worker, time.monotonic() - started)
    return 0


# glibc's malloc: below this size from its heap, and this much free heap kept rather than given back to the kernel.
_MALLOC_MMAP_THRESHOLD = 32 << 20  # the most glibc allows; its own adaptive threshold never goes higher either
_MALLOC_TRIM_THRESHOLD = 64 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


def keep_large_buffers() -> bool:
    """Let freed request-sized buffers be reused instead of unmapped (glibc only; elsewhere nothing changes).

    A large request (a 602 KB binary tensor) allocates several buffers of its size: the body, the gRPC message,
    gRPC's own copy. By default glibc maps each afresh (or gives the heap's top back to the kernel once more than
    twice the adaptive threshold is free), so every page of every buffer is faulted in again on every request
    (measured: docs/decisions.md, "Freed heap is kept for large requests"). With these limits the pages stay, and
    the process keeps at most `_MALLOC_TRIM_THRESHOLD` of free heap.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, _MALLOC_MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, _MALLOC_TRIM_THRESHOLD)
    )


ExitCode = Callable[[NexusError], int]


def run_worker(settings: ProxySettings, exit_code: ExitCode, worker: int = 0, buckets: Path | None = None) -> int:
    """One worker process's whole life; returns its exit code (`exit_code` maps a failure to one). `buckets`: the
    rate-limit buckets' file, shared by the workers when there are several (`proxy.buckets`)."""
    configure_logging(settings)
    keep_large_buffers()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(_serve(settings, worker, buckets))
    except NexusError as err:
        log.error("%s", err)
        return exit_code(err)


def _worker_main(settings: ProxySettings, exit_code: ExitCode, worker: int, parent: int, buckets: Path) -> None:
    die_with_parent(parent)  # a SIGKILLed parent must not leave workers holding the port
    sys.exit(run_worker(settings, exit_code, worker, buckets))


def serve(settings: ProxySettings, exit_code: ExitCode) -> int:
    """Run the proxy until SIGTERM/SIGINT; 0 after a clean shutdown, else `exit_code` of the failure.

    `exit_code` is the command layer's table (the proxy does not import it); spawned workers get it pickled by
    name, so it must be a module-level function.
    """
    if settings.worker_count == 1:
        return run_worker(settings, exit_code)
    configure_logging(settings)
    # prometheus-client learns where the workers' metric files go only from this variable, read when a
    # worker imports it; spawned workers inherit this process's environment, so this is the one place the
    # proxy writes the environment. A fresh directory per run: no earlier run's figures get summed in. The
    # rate-limit buckets the workers share are a file there too, made before any worker opens it.
    metrics_dir = tempfile.mkdtemp(prefix="nexus-proxy-metrics-")
    buckets = Path(metrics_dir) / BUCKETS_FILE
    SharedBuckets(buckets).close()
    previous_dir = os.environ.get(MULTIPROC_DIR_ENV)
    os.environ[MULTIPROC_DIR_ENV] = metrics_dir
    context = multiprocessing.get_context("spawn")
    workers: list[BaseProcess] = [
        context.Process(
            target=_worker_main, args=(settings, exit_code, index, os.getpid(), buckets), name=f"proxy-worker-{index}"
        )
        for index in range(settings.worker_count)
    ]
    try:
        return _supervise(workers, settings.port, metrics_dir)
    finally:
        if previous_dir is None:
            os.environ.pop(MULTIPROC_DIR_ENV, None)
        else:
            os.environ[MULTIPROC_DIR_ENV] = previous_dir
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(workers: list[BaseProcess], port: int, metrics_dir: str) -> int:
    """Start the workers and wait for them all; SIGTERM/SIGINT are forwarded, and a worker that dies on its own
    stops the others. Returns the first failed worker's exit code, else 0.

    Stopping happens once: the first signal (or failure) sends each worker one SIGTERM, and further signals
    are ignored. The workers start with the signals held (`stop_signals_held`), so one sent meanwhile reaches
    the supervisor, and a worker, only once the worker's handler is in.
    """
    stopping = False

    def terminate_all() -> None:
        for process in workers:
            if process.is_alive():
                process.terminate()

    def forward(_signum: int, _frame: object) -> None:
        nonlocal stopping
        if stopping:
            return
        ignore_stop_signals()
        stopping = True
        terminate_all()

    previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    try:
        # multiprocessing starts its resource tracker with the first worker, and unblocks the stop signals
        # after it whatever they were: started before the hold, it leaves the hold alone.
        resource_tracker.ensure_running()
        with stop_signals_held():
            for process in workers:
                process.start()
        release_stop_signals()  # also those `nexus proxy` held until its handlers were in
        if stopping:  # stopped before the workers were started (the resource tracker's start unblocks signals)
            terminate_all()
        log.info("proxy: %d workers on port %d", len(workers), port)
        failed = 0
        dead: set[int] = set()
        while any(process.is_alive() for process in workers):
            for process in workers:
                process.join(timeout=0.2)
                if process.pid is not None and not process.is_alive() and process.pid not in dead:
                    dead.add(process.pid)  # its in-flight figure leaves the sum; its counters stay
                    prometheus_multiprocess.mark_process_dead(process.pid, metrics_dir)
                if not process.is_alive() and process.exitcode not in (0, None) and not stopping:
                    log.error("%s exited with code %s; stopping the others", process.name, process.exitcode)
                    failed = failed or int(process.exitcode or 1)
                    forward(signal.SIGTERM, None)
        codes = [process.exitcode for process in workers]
        return failed or next((int(code) for code in codes if code), 0)
    finally:
        if stopping:
            ignore_stop_signals_until_exit()
        else:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
