"""Child server processes: start, wait for an HTTP readiness URL, stop with SIGTERM then SIGKILL."""

from __future__ import annotations

import logging
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nexusml.core.errors import ServerError

log = logging.getLogger(__name__)


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError):
        return False


class ManagedProcess:
    """One server child. Its output goes to `log_file` when given, else to ours."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        ready_url: str,
        startup_timeout_s: float,
        stop_timeout_s: float,
        log_file: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.ready_url = ready_url
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log.info("starting %s: %s", self.name, " ".join(self.argv))
        output = self.log_file.open("ab") if self.log_file else None
        try:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT if output else None,
                start_new_session=True,  # the supervisor alone decides when and in which order it stops
            )
        except OSError as err:
            self.stop()  # releases what a subclass prepared for the start (Triton's backend folder)
            raise ServerError(f"cannot start {self.name}: {err}") from err
        finally:
            if output:
                output.close()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ready(self) -> bool:
        return http_ok(self.ready_url)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                code = self.process.returncode if self.process else None
                raise ServerError(f"{self.name} exited with code {code} before it was ready")
            if self.ready():
                return
            time.sleep(0.2)
        raise ServerError(f"{self.name} not ready at {self.ready_url} after {self.startup_timeout_s:g} s")

    def stop(self) -> int | None:
        """SIGTERM, wait up to the stop timeout, then SIGKILL; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %g s; killing it", self.name, self.stop_timeout_s)
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> ManagedProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Stopped(Exception):
    """SIGINT or SIGTERM arrived while supervising."""


def _raise_stopped(signum: int, _frame: object) -> None:
    raise Stopped(signal.Signals(signum).name)


@contextmanager
def supervising() -> Iterator[None]:
    """SIGINT/SIGTERM raise `Stopped` in the main thread for the duration.

    So a signal during a start-up step (a sync, a server becoming ready) interrupts it too, and the
    caller's `finally` stops what was started. Children run in sessions of their own (see `start`), so a
    Ctrl-C on the terminal reaches only the supervisor, which then stops them in order.
    """
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def wait_for_exit(processes: list[ManagedProcess]) -> ManagedProcess:
    """Block until one of `processes` exits and return it; a signal arrives as `Stopped`."""
    while True:
        for process in processes:
            if not process.alive():
                return process
        time.sleep(0.2)


def stop_all(processes: list[ManagedProcess]) -> None:
    """Stop in reverse start order; further signals are ignored meanwhile (each stop is bounded)."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for process in reversed(processes):
            process.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
