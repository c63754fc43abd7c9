"""Child server processes: start, wait for an HTTP readiness URL, stop with SIGTERM then SIGKILL.

Children must not outlive the process that started them: one killed hard (SIGKILL, the OOM killer) cannot
stop them, and they would keep their ports (a leftover local S3 on :9000 stops the next `make run`). So each
child asks the kernel for a signal when its parent dies (`guarded`), and a start that finds its port
taken says who holds it (`port_holder`).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nexusml.core import logs
from nexusml.core.errors import ServerError

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

# What a child receives when this process dies. SIGTERM, not SIGKILL: each of our children stops in bounded
# time on SIGTERM (tritonserver within --exit-timeout-secs, the proxy within SHUTDOWN_GRACE_S, moto and the
# benchmark servers at once) and cleans up what it owns on the way: tritonserver its Python-backend stubs,
# the proxy its worker processes, which a SIGKILL would leave to fend for themselves. The cost: a child that
# ignores SIGTERM would outlive us; none of ours does.
PARENT_DEATH_SIGNAL = signal.SIGTERM


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError):
        return False


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's prctl, or None where there is none (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def die_with_parent(parent: int) -> None:
    """Ask the kernel for `PARENT_DEATH_SIGNAL` when this process's parent dies; `parent` is its pid.

    Called first thing by a child that runs our code (the exec guard below, a proxy worker). The parent may
    already have died before this call; then the child has been re-parented and no signal will ever come, so
    it exits instead of starting a server nobody will stop.
    """
    prctl = _prctl()
    if prctl is None:  # not Linux: no parent-death signal; the supervisor's own stop is all there is
        return
    if prctl(PR_SET_PDEATHSIG, int(PARENT_DEATH_SIGNAL), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        os._exit(1)


def child_options() -> dict[str, Any]:
    """Popen keyword arguments for our children: a session of their own, so they get no terminal signals
    (Ctrl-C) and the supervisor alone decides when and in which order they stop (see `supervising`)."""
    return {"start_new_session": True}


def guarded(argv: list[str], max_file_bytes: int | None = None) -> list[str]:
    """`argv` run through `nexusml.core.exec_guard`, which sets the parent-death signal (and, for tests, a
    file-size limit) in the child itself and then execs `argv` in its place.

    Not subprocess's `preexec_fn`: that runs Python in the forked child before exec, which gRPC's fork
    handlers abort when the parent has gRPC loaded, and subprocess documents it as unsafe with threads
    (docs/decisions.md). The cost is one Python start-up per child. The kernel sends the signal when the
    *thread* that started the child ends, not the process: start it from the main thread, or with `spawn`.
    """
    guard = [sys.executable, "-m", "nexusml.core.exec_guard", "--parent", str(os.getpid())]
    if max_file_bytes is not None:
        guard += ["--max-file-bytes", str(max_file_bytes)]
    return [*guard, "--", *argv]


_spawner_lock = threading.Lock()
_spawner: tuple[int, ThreadPoolExecutor] | None = None


def _spawner_thread() -> ThreadPoolExecutor:
    """One thread per process that forks children for other threads; its worker never ends before exit.

    Keyed by pid: a forked copy of this process has no such thread and makes its own.
    """
    global _spawner
    with _spawner_lock:
        if _spawner is None or _spawner[0] != os.getpid():
            _spawner = (os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="nexus-spawner"))
        return _spawner[1]


def spawn(argv: list[str], **popen: Any) -> subprocess.Popen[bytes]:
    """`argv`, `guarded`, in a session of its own, started from a thread that lives as long as we do.

    A server started from a short-lived thread (a `threading.Thread`, `asyncio.to_thread`) would otherwise
    get the parent-death signal as soon as that thread ends. The main thread, which ends only with the
    process, forks itself: were it to wait on another thread, a signal there (`Stopped`) could leave the new
    child running with no handle for the supervisor to stop it by.
    """
    command = guarded(argv)
    if threading.current_thread() is threading.main_thread():
        return subprocess.Popen(command, **popen, **child_options())
    return _spawner_thread().submit(lambda: subprocess.Popen(command, **popen, **child_options())).result()


def call(argv: list[str], name: str, env: dict[str, str]) -> int:
    """Run the one-shot `argv` (already `guarded`) in a session of its own to its end; its exit code. Its
    output is ours, relayed as JSON under `name` when this process logs JSON."""
    if not logs.json_output():
        return subprocess.call(argv, env=env, **child_options())
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **child_options()) as child:
        assert child.stdout is not None
        relaying = logs.relay(child.stdout, name)
        try:
            code = child.wait()
        except BaseException:
            child.kill()  # a stop (`Stopped`) ends the step, as subprocess.call does
            raise
        finally:
            relaying.join()
    return code


def port_in_use(host: str, port: int) -> bool:
    """Whether a server already listens where a child would bind `host:port`.

    Probed by binding there: the kernel's own answer, wildcard listeners included. SO_REUSEADDR so that
    connections of a server stopped moments ago (TIME_WAIT) do not count, as they do not for the servers,
    and no SO_REUSEPORT so that a leftover proxy (which binds with it) counts.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror:
        return False  # the child will fail on the name itself, with its own message
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            return err.errno == errno.EADDRINUSE
    return False


def _listening_sockets(port: int) -> set[str]:
    """`socket:[inode]` links of the TCP sockets listening on `port`, from /proc/net/tcp and tcp6."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()  # sl local_address rem_address st ... inode
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                found.add(f"socket:[{fields[9]}]")
    return found


def _descriptor_links(pid: str) -> set[str]:
    """What the open descriptors of `pid` point at; empty for a process we may not inspect or that ended."""
    links = set()
    try:
        descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return links
    for descriptor in descriptors:
        try:
            links.add(os.readlink(descriptor))
        except OSError:
            continue  # closed meanwhile
    return links


def _command_line(pid: str, limit: int = 80) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [os.path.basename(argv[0].decode(errors="replace"))] + [a.decode(errors="replace") for a in argv[1:] if a]
    text = " ".join(words)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def port_holder(port: int) -> str:
    """Who listens on TCP `port`: "pid 1234 (python -m moto.server ...)", or "another process".

    No dependency: the listening socket's inode from /proc/net/tcp{,6}, then the process with a descriptor
    linked to it in /proc/*/fd, the lowest pid first (a prefork server's parent before its workers). Other
    users' processes are not visible without privileges; they are "another process".
    """
    sockets = _listening_sockets(port)
    if sockets:
        for pid in sorted((entry.name for entry in Path("/proc").iterdir() if entry.name.isdigit()), key=int):
            if sockets.intersection(_descriptor_links(pid)):
                return f"pid {pid} ({_command_line(pid)})"
    return "another process"


@dataclass(eq=False, repr=False)  # repr: argv and env may hold secrets
class ManagedProcess:
    """One server child. Its output goes to `log_file` when given, else to ours: as it is, or with
    LOG_FORMAT=json relayed line by line as JSON (`logs.relay`). Its command line is logged with hidden
    values (`logs.hide`) masked.

    The child listens on the port of `ready_url` (every user's child binds it itself); `port_setting` names
    the setting that chose that port, for the message when it is taken.
    """

    name: str
    argv: list[str]
    env: dict[str, str]
    ready_url: str
    startup_timeout_s: float
    stop_timeout_s: float
    log_file: Path | None = None
    port_setting: str | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def ports(self) -> dict[int, str | None]:
        """The ports the child will listen on, each with the setting that chooses it (None: not a setting)."""
        port = urllib.parse.urlsplit(self.ready_url).port
        return {port: self.port_setting} if port is not None else {}

    def start(self) -> None:
        try:
            self._refuse_taken_ports()
            self.process = self._launch()
            self.wait_ready()
        except BaseException:
            self.stop()  # also releases what a subclass prepared for the start (Triton's backend folder)
            raise

    def _refuse_taken_ports(self) -> None:
        """Fail at once with the holder's name, rather than wait for a child that cannot bind.

        Worse than a failed bind: a child that binds with SO_REUSEPORT (gRPC's default, the proxy's) would
        start beside a leftover server of the same user and share its traffic.
        """
        host = urllib.parse.urlsplit(self.ready_url).hostname or "127.0.0.1"
        for port, setting in self.ports().items():
            if port_in_use(host, port):
                hint = f"stop it or set {setting}" if setting else "stop it"
                raise ServerError(
                    f"cannot start {self.name}: port {port} is already in use by {port_holder(port)}; {hint}"
                )

    def _launch(self) -> subprocess.Popen[bytes]:
        log.info("starting %s: %s", self.name, logs.command_line(self.argv))
        output = self.log_file.open("ab") if self.log_file else None
        relayed = output is None and logs.json_output()
        try:
            if relayed:
                process = spawn(self.argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                assert process.stdout is not None
                logs.relay(process.stdout, self.name)
                return process
            return spawn(self.argv, env=self.env, stdout=output, stderr=subprocess.STDOUT if output else None)
        except (OSError, subprocess.SubprocessError) as err:
            raise ServerError(f"cannot start {self.name}: {err}") from err
        finally:
            if output:
                output.close()

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


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived while supervising.

    A BaseException, like KeyboardInterrupt: the signal can land anywhere, and code that catches `Exception`
    must not swallow it (`logging`'s `handleError` did, and `nexus up` went on starting servers after its
    SIGTERM: docs/decisions.md).
    """


def ignore_stop_signals() -> None:
    """SIGINT and SIGTERM do nothing from now on: this process is stopping, and stops only once.

    A second signal is common: GNU make passes a SIGTERM sent to its process group on to its child, which so
    gets two, and a second one raised inside the handling of the first ended `nexus up` with a traceback
    (docs/decisions.md, "A stop signal is handled once"). A handler that does nothing rather than SIG_IGN: a
    signal that arrived while the first was being handled has already been recorded by the interpreter, which
    would then print "Signal 15 ignored due to race condition" with a traceback, where it now calls this
    handler. Caught signals are reset by an exec, so children started meanwhile are not affected.
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stopping_already)


def _stopping_already(_signum: int, _frame: object) -> None:
    """A stop signal after the first: the stop is under way."""


def ignore_stop_signals_until_exit() -> None:
    """Like `ignore_stop_signals`, and then the kernel's ignore, which also holds while the interpreter exits:
    there Python puts the default action back for its own handlers, and a late second signal (a proxy worker
    drains in a millisecond, and its supervisor's SIGTERM can follow the group's) would end the process with
    it. Signals already recorded are handled first (`pthread_sigmask` runs their handlers), so that none is
    found ignored afterwards."""
    ignore_stop_signals()
    signal.pthread_sigmask(signal.SIG_BLOCK, [])
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _raise_stopped(signum: int, _frame: object) -> None:
    ignore_stop_signals()  # first: a second signal from here on runs a handler that does nothing
    raise Stopped(signal.Signals(signum).name)


@contextmanager
def supervising() -> Iterator[None]:
    """The first SIGINT/SIGTERM raises `Stopped` in the main thread; later ones are ignored.

    So a signal during a start-up step (a sync, a server becoming ready) interrupts it too, and the
    caller's `finally` stops what was started. Children run in sessions of their own (see `child_options`),
    so a Ctrl-C on the terminal reaches only the supervisor, which then stops them in order. Leaving by an
    exception (`Stopped`, a failure) begins the process's stop, so the signals stay ignored; the previous
    handlers come back only when the body ends normally. Catch `Stopped` around the `with`, not inside it:
    a signal may arrive as soon as the handler is in, and one held until then (`stop_signals_held`) does.
    """
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in STOP_SIGNALS}
    try:
        release_stop_signals()
        yield
    except BaseException:
        ignore_stop_signals_until_exit()
        raise
    for sig, handler in previous.items():
        signal.signal(sig, handler)


@contextmanager
def stop_signals_held() -> Iterator[None]:
    """SIGINT/SIGTERM held pending (blocked in this thread) for the duration, and in every process started
    meanwhile, which inherits the mask across exec: such a child unblocks them once its own handlers are in
    (`release_stop_signals`), and only then sees a signal sent while it was starting, rather than dying of it
    (SIGTERM) or raising KeyboardInterrupt from an import (SIGINT)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def release_stop_signals() -> None:
    """Unblock SIGINT/SIGTERM in this thread (see `stop_signals_held`); one held meanwhile arrives now."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def wait_for_exit(processes: list[ManagedProcess]) -> ManagedProcess:
    """Block until one of `processes` exits and return it; a signal arrives as `Stopped`."""
    while True:
        for process in processes:
            if not process.alive():
                return process
        time.sleep(0.2)


def stop_all(processes: list[ManagedProcess]) -> None:
    """Stop in reverse start order. Stopping is final: stop signals are ignored from here on (each stop is
    bounded by its process's stop timeout)."""
    ignore_stop_signals_until_exit()
    for process in reversed(processes):
        process.stop()
