"""Children die with their parent, however it dies; a start-up on a taken port names the process holding it.

Real processes and sockets: a parent Python process that starts a `ManagedProcess` (Python's own http.server)
and is then SIGKILLed, and a listening socket of this test in the way of a child.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nexusml.core.errors import ServerError
from nexusml.core.process import (
    ManagedProcess,
    Stopped,
    http_ok,
    port_holder,
    spawn,
    stop_signals_held,
    supervising,
)
from nexusml.testing.environment import base_environment, free_port
from nexusml.testing.polling import wait_until

pytestmark = pytest.mark.integration

# Starts an http.server child through ManagedProcess, from the main thread or from a thread that ends once
# it is ready, prints the child's pid, and waits to be killed.
PARENT = """
import sys, threading, time
from nexusml.core.process import ManagedProcess

port, where = int(sys.argv[1]), sys.argv[2]
child = ManagedProcess(
    "http server",
    [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
    {},
    ready_url=f"http://127.0.0.1:{port}/",
    startup_timeout_s=60,
    stop_timeout_s=5,
)
if where == "main":
    child.start()
else:
    starter = threading.Thread(target=child.start)
    starter.start()
    starter.join()
print(child.process.pid, flush=True)
time.sleep(600)
"""


def http_server(port: int) -> ManagedProcess:
    return ManagedProcess(
        "http server",
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        base_environment(),
        ready_url=f"http://127.0.0.1:{port}/",
        startup_timeout_s=60,
        stop_timeout_s=5,
    )


def running(pid: int) -> bool:
    """Exists and is not a zombie (an orphan's new parent may be slow to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until_gone(pid: int, bound_s: float = 60) -> bool:
    return wait_until(lambda: not running(pid), bound_s)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A socket of this test listening on a free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


@pytest.mark.parametrize(
    "where",
    [
        pytest.param("main", id="started-from-the-main-thread"),
        pytest.param("thread", id="started-from-another-thread"),
    ],
)
def test_a_child_dies_when_its_parent_is_killed_hard(where: str) -> None:
    port = free_port()
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(port), where], env=base_environment(), stdout=subprocess.PIPE, text=True
    )
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert http_ok(f"http://127.0.0.1:{port}/")
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert wait_until_gone(child), f"child {child} outlived its SIGKILLed parent"
        assert not http_ok(f"http://127.0.0.1:{port}/")
    finally:
        parent.kill()
        parent.wait()
        if child and running(child):
            os.kill(child, signal.SIGKILL)


def test_a_child_started_from_a_thread_that_ended_keeps_running() -> None:
    """The parent-death signal follows the thread that forked: `spawn` forks from one that lives on."""
    server = http_server(free_port())
    starter = threading.Thread(target=server.start)
    starter.start()
    starter.join()
    try:
        task = Path(f"/proc/self/task/{starter.native_id}")
        deadline = time.monotonic() + 60
        while task.exists() and time.monotonic() < deadline:  # the kernel signals at the OS thread's exit
            time.sleep(0.05)
        assert not task.exists()
        # A pending SIGTERM (default action) ends the child before it can answer anything more.
        assert http_ok(server.ready_url)
        assert server.alive()
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("setting", "hint"),
    [
        pytest.param("DEMO_PORT", "; stop it or set DEMO_PORT", id="with-the-setting-that-chose-the-port"),
        pytest.param(None, "; stop it", id="without-a-setting"),
    ],
)
def test_a_taken_port_names_its_holder_before_starting(listener: socket.socket, setting: str | None, hint: str) -> None:
    port = listener.getsockname()[1]
    server = http_server(port)
    server.port_setting = setting
    with pytest.raises(ServerError) as raised:
        server.start()
    message = str(raised.value)
    assert message.startswith(f"cannot start http server: port {port} is already in use by pid {os.getpid()} (")
    assert message.endswith(hint)
    assert "\n" not in message
    assert server.process is None, "the child was started anyway"


def test_port_holder_names_the_listening_process(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    assert port_holder(port).startswith(f"pid {os.getpid()} (python")
    listener.close()
    assert port_holder(port) == "another process"


@pytest.mark.usefixtures("stop_signal_handlers")
def test_a_signal_while_a_log_line_is_written_still_stops() -> None:
    """Logging handlers catch `Exception` around their write: `Stopped` must get through (it is a BaseException)."""

    class Signalling(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the signal's handler runs here, inside the write, as it can in a real one
            except Exception:
                self.handleError(record)

    logger = logging.getLogger("nexus-test-stopped")
    logger.propagate = False
    logger.addHandler(Signalling())
    with supervising(), pytest.raises(Stopped):
        logger.warning("a line")


@pytest.mark.usefixtures("stop_signal_handlers")
def test_a_second_signal_while_the_first_is_handled_raises_nothing() -> None:
    """GNU make passes a SIGTERM sent to its process group on to `nexus up`, which so gets two: the second,
    landing while the first was handled (its log line), once ended the stop with a second `Stopped`."""
    handled = []
    with supervising():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs here
        except Stopped as first:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)  # a handler still in would raise here, inside this `except`
            handled.append(str(first))
    assert handled == ["SIGTERM"]


@pytest.mark.usefixtures("stop_signal_handlers")
@pytest.mark.parametrize(
    "leave",
    [pytest.param(Stopped("SIGTERM"), id="stopped"), pytest.param(ServerError("a child died"), id="failure")],
)
def test_a_process_leaving_supervision_by_an_exception_ignores_stop_signals(leave: BaseException) -> None:
    """Leaving by a stop or a failure begins the process's stop: a signal on the way out changes nothing."""
    with pytest.raises(type(leave)), supervising():
        raise leave
    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.default_int_handler)
    os.kill(os.getpid(), signal.SIGINT)  # would raise KeyboardInterrupt with the previous handler
    os.kill(os.getpid(), signal.SIGTERM)  # would end the test run with the default action
    time.sleep(0.2)


@pytest.mark.usefixtures("stop_signal_handlers")
def test_a_supervised_block_that_ends_normally_gets_the_previous_handlers_back() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with supervising():
        pass
    assert {sig: signal.getsignal(sig) for sig in before} == before


@pytest.mark.usefixtures("stop_signal_handlers")
def test_a_child_started_while_the_stop_signals_are_held_can_still_be_stopped() -> None:
    """A blocked signal stays blocked across an exec: the guard unblocks the stop signals for the child."""
    with stop_signals_held():
        child = spawn([sys.executable, "-c", "import time; time.sleep(60)"], env=base_environment())
    child.terminate()
    assert child.wait(timeout=30) == -signal.SIGTERM
