"""One log format for every process: JSON lines with the common fields, children's lines relayed, secrets masked."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from nexusml.core import logs
from nexusml.core.settings import LogSettings, load

COMMON = {"time", "level", "logger", "message"}


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """This process's logging, into a string, restored afterwards (hidden values, format and hooks too)."""
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    root = logging.getLogger()
    handlers, level, hidden, log_format = root.handlers[:], root.level, set(logs._hidden), logs._format
    yield io.StringIO()
    root.handlers[:] = handlers
    root.setLevel(level)
    logs._hidden.clear()
    logs._hidden.update(hidden)
    logs._format = log_format
    logging.captureWarnings(False)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_log_format_is_text_by_default_and_json_when_asked() -> None:
    assert load(LogSettings, {}).log_format == "text"
    assert load(LogSettings, {"LOG_FORMAT": "JSON"}).log_format == "json"


def test_a_json_line_has_the_common_fields_and_the_known_context(captured: io.StringIO) -> None:
    logs.configure("info", "json", captured)
    log = logging.getLogger("nexus.test")
    log.info("hello %s", "world", extra={"request_id": "r-1", "model": "demo_mlp", "version": 2})
    log.debug("not at info")
    (line,) = lines(captured)
    assert line.keys() >= COMMON
    assert (line["level"], line["logger"], line["message"]) == ("INFO", "nexus.test", "hello world")
    assert (line["request_id"], line["model"], line["version"]) == ("r-1", "demo_mlp", 2)
    assert "tenant" not in line


def test_a_traceback_stays_inside_its_line(captured: io.StringIO) -> None:
    logs.configure("info", "json", captured)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("nexus.test").exception("failed")
    (line,) = lines(captured)
    assert line["level"] == "ERROR" and "ValueError: boom" in str(line["traceback"])


def test_an_uncaught_exception_is_one_json_line() -> None:
    script = "from nexusml.core import logs; logs.configure('info', 'json'); raise ValueError('boom')"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    (line,) = [json.loads(raw) for raw in result.stderr.splitlines()]
    assert line["level"] == "CRITICAL" and "ValueError: boom" in line["traceback"]


def test_fields_merge_into_the_json_line_and_are_the_whole_bare_text_line(captured: io.StringIO) -> None:
    access = logging.getLogger("test.access")
    logs.configure("info", "json", captured, bare=("test.access",))
    access.info("GET /x 404", extra={"fields": {"request_id": "a-1", "status": 404}})
    (line,) = lines(captured)
    assert line.keys() >= COMMON and (line["status"], line["request_id"]) == (404, "a-1")
    text = io.StringIO()
    logs.configure("info", "text", text, bare=("test.access",))
    access.info("GET /x 404", extra={"fields": {"request_id": "a-1", "status": 404}})
    assert json.loads(text.getvalue()) == {"request_id": "a-1", "status": 404}
    access.handlers[:] = []
    access.propagate = True


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_hidden_value_never_appears(captured: io.StringIO, log_format: str) -> None:
    logs.configure("info", log_format, captured)
    logs.hide("s3cr3t-key")
    logs.hide('quo"ted\\key')  # JSON escapes it: masked before encoding
    logging.getLogger("nexus.test").info("a key: %s", 'quo"ted\\key')
    argv = ["tritonserver", "--http-restricted-api=model-repository:nexus-admin-key=s3cr3t-key"]
    logging.getLogger("nexus.test").info("starting: %s", logs.command_line(argv))
    logging.getLogger("nexus.test").handle(logs.child_record("child", '{"message": "key s3cr3t-key"}'))
    output = captured.getvalue()
    assert "s3cr3t-key" not in output and "quo" not in output
    assert output.count(logs.MASK) == 3


@pytest.mark.parametrize(
    ("raw", "level", "message", "relayed"),
    [
        pytest.param(
            "I1206 15:45:09.453 1234 server.cc:677] Started GRPCInferenceService at 0.0.0.0:8001",
            "INFO",
            "Started GRPCInferenceService at 0.0.0.0:8001",
            False,
            id="triton-info",
        ),
        pytest.param(
            'I1206 17:07:15.747470 22763 grpc_server.cc:2558] "Started \\"GRPC\\" at 0.0.0.0:18124"',
            "INFO",
            'Started "GRPC" at 0.0.0.0:18124',
            False,
            id="triton-2.51-quoted",
        ),
        pytest.param(
            "W1206 15:45:09.453123 77 pinned_memory_manager.cc:273] Unable to allocate pinned system memory",
            "WARNING",
            "Unable to allocate pinned system memory",
            False,
            id="triton-warning",
        ),
        pytest.param("E1206 15:45:09.453 1 model.cc:1] failed", "ERROR", "failed", False, id="triton-error"),
        pytest.param("F1206 15:45:09.453 1 main.cc:9] fatal", "CRITICAL", "fatal", False, id="triton-fatal"),
        pytest.param("+-------+---------+", "INFO", "+-------+---------+", False, id="triton-table"),
        pytest.param('{"time": "t", "level": "INFO", "logger": "proxy", "message": "m"}', "", "", True, id="ours"),
        pytest.param("{not json}", "INFO", "{not json}", False, id="braces-not-json"),
    ],
)
def test_a_childs_line_becomes_one_json_line(raw: str, level: str, message: str, relayed: bool) -> None:
    formatted = logs.JsonFormatter().format(logs.child_record("tritonserver", raw))
    line = json.loads(formatted)
    if relayed:
        assert formatted == raw
    else:
        assert (line["level"], line["logger"], line["message"]) == (level, "tritonserver", message)


def test_relay_logs_every_line_of_a_child(captured: io.StringIO) -> None:
    """Each line its own record; a Triton table's rows keep the level of the line they belong to."""
    logs.configure("info", "json", captured)
    script = (
        "print('plain'); print('W1206 15:45:09.453 1 a.cc:1] table:'); print('| row |'); print();"
        "print('I1206 15:45:09.453 1 a.cc:2] \"triton says\"'); import sys; sys.stderr.write('x\\n')"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert child.stdout is not None
    logs.relay(child.stdout, "child").join(timeout=30)
    child.wait()
    assert [(line["level"], line["message"]) for line in lines(captured)] == [
        ("INFO", "plain"),
        ("WARNING", "table:"),
        ("WARNING", "| row |"),
        ("INFO", "triton says"),
        ("INFO", "x"),
    ]


def test_say_prints_in_text_and_logs_in_json(captured: io.StringIO, capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("info", "text", captured)
    logs.say("ready\nnext line")
    assert capsys.readouterr().out == "ready\nnext line\n"
    logs.configure("info", "json", captured)
    logs.say("ready\nnext line")
    assert [line["message"] for line in lines(captured)] == ["ready", "next line"]
    assert capsys.readouterr().out == ""


def test_rate_limit_lets_n_a_second_through_and_counts_the_rest() -> None:
    now = [100.0]
    limit = logs.RateLimit(3, clock=lambda: now[0])
    assert [limit.allow() for _ in range(5)] == [True] * 3 + [False] * 2
    now[0] += 1
    assert [limit.allow() for _ in range(4)] == [True] * 3 + [False]
    assert limit.take_suppressed() == 3
    assert limit.take_suppressed() == 0
