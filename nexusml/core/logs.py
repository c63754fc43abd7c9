"""How every process of ours logs: one line per record, as text or as one JSON object (`LOG_FORMAT`).

A JSON line always has `time`, `level`, `logger` and `message`, and `request_id`, `model`, `version`, `tenant`
when the record knows them (`log.info(..., extra={"request_id": ...})`), so log pipelines (Loki,
Elasticsearch, CloudWatch) read every process's lines with the same field names. A record's `fields`
(`extra={"fields": {...}}`) are merged in as they are: the proxy's access lines are records like any other.
A traceback stays inside its line, as `traceback`.

Children's output is relayed line by line (`relay`) when their parent logs JSON, so a supervisor's one
stream stays one format: a line that is already a JSON object passes as it is, a Triton line
(`I1206 15:45:09.453 1234 file.cc:123] message`) keeps its own level and message, anything else is a message
of the child's logger at INFO.

Secrets: a value given to `hide` is replaced by `***` in every line formatted afterwards (the admin key in a
command line, say); nothing is scanned until something is hidden.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO, Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MASK = "***"
# Known context a record may carry (`extra=`); each becomes a field of the same name.
CONTEXT_FIELDS = ("request_id", "model", "version", "tenant")

_hidden: set[str] = set()
_format = "text"  # this process's LOG_FORMAT, once `configure` has run
_TRITON_LINE = re.compile(r"([IWEF])\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [^\]\s]+\] ?(.*)")
_TRITON_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}


def _dumps(value: dict[str, Any]) -> str:
    return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))


def hide(secret: str | None) -> None:
    """Mask `secret` in every line formatted from now on (empty values are ignored)."""
    if secret:
        _hidden.add(secret)


def masked(text: str) -> str:
    """`text` with every hidden value replaced by `MASK`."""
    for secret in _hidden:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def command_line(argv: Iterable[str]) -> str:
    """`argv` as one loggable line, hidden values masked."""
    return masked(" ".join(argv))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "relayed", False):  # a child's line that was already one of ours
            return masked(record.msg)
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": masked(record.getMessage()) if _hidden else record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        fields = record.__dict__.get("fields")
        if fields:
            line.update(fields)
        if record.exc_info:
            line["traceback"] = masked(self.formatException(record.exc_info))
        text = _dumps(line)  # masked again: a hidden value among the fields
        return masked(text) if _hidden else text


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, then the record's fields as JSON; a traceback on the lines after."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "relayed", False):
            return masked(record.msg)
        text = super().format(record)
        fields = record.__dict__.get("fields")
        if fields:
            text = f"{text} {_dumps(fields)}"
        return masked(text) if _hidden else text


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


class FieldsFormatter(logging.Formatter):
    """A record's `fields` alone, as one JSON object: lines that are data in either format (access lines)."""

    def format(self, record: logging.LogRecord) -> str:
        return _dumps(record.__dict__.get("fields") or {})


def configure(level: str, log_format: str, stream: IO[str] | None = None, bare: tuple[str, ...] = ()) -> None:
    """This process's one handler: every record, `level` and above, in `log_format` on `stream` (stderr).

    In text format, the loggers named in `bare` write their records' `fields` alone, as JSON (`FieldsFormatter`).
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    if log_format == "json":  # Python's warnings and uncaught exceptions as records too, not bare lines
        logging.captureWarnings(True)
        sys.excepthook = _log_uncaught
        threading.excepthook = lambda hook: _log_uncaught(hook.exc_type, hook.exc_value, hook.exc_traceback)
    for name in bare:
        logger = logging.getLogger(name)
        logger.propagate = log_format == "json"
        if log_format == "json":
            logger.handlers[:] = []
        else:
            fields_handler = logging.StreamHandler(stream or sys.stderr)
            fields_handler.setFormatter(FieldsFormatter())
            logger.handlers[:] = [fields_handler]
    global _format
    _format = log_format


def _log_uncaught(kind: type[BaseException], value: BaseException | None, trace: Any) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value or kind(), trace)
        return
    logging.getLogger("nexus").critical("uncaught %s", kind.__name__, exc_info=(kind, value, trace))


def json_output() -> bool:
    """Whether this process logs JSON, so its children's output must be relayed (`relay`) to stay one format."""
    return _format == "json"


def say(text: str, logger: str = "nexus") -> None:
    """A message for the person at the terminal: printed on stdout as it is, or with LOG_FORMAT=json a record
    like any other, so that every line stays one JSON object."""
    if json_output():
        for line in text.strip("\n").splitlines():
            logging.getLogger(logger).info("%s", line)
    else:
        print(text, flush=True)


def child_record(logger: str, raw: str, level: int = logging.INFO) -> logging.LogRecord:
    """A record for one line a child wrote: kept whole when it is already a JSON object; Triton's own level
    and message for a Triton line (2.51 writes the message as a JSON string: it is unquoted); else the line as
    a message at `level` (the level of the Triton line it continues, such as a table's rows)."""
    if raw.startswith("{") and raw.endswith("}"):
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            record = logging.LogRecord(logger, logging.INFO, "", 0, raw, None, None)
            record.relayed = True
            return record
    message = raw
    triton = _TRITON_LINE.fullmatch(raw)
    if triton is not None:
        level, message = _TRITON_LEVELS[triton.group(1)], triton.group(2).strip()
        if len(message) > 1 and message.startswith('"') and message.endswith('"'):
            try:
                message = str(json.loads(message))
            except ValueError:
                message = message[1:-1]
    return logging.LogRecord(logger, level, "", 0, message, None, None)


def relay(stream: IO[bytes], logger: str) -> threading.Thread:
    """Log every line a child writes to `stream` as records of `logger` (`child_record`), until it closes."""
    target = logging.getLogger(logger)

    def pump() -> None:
        level = logging.INFO
        with stream:
            for raw in stream:
                text = raw.decode(errors="replace").rstrip("\r\n")
                if text.strip():
                    record = child_record(logger, text, level)
                    level = record.levelno if _TRITON_LINE.fullmatch(text) else level
                    target.handle(record)

    thread = threading.Thread(target=pump, name=f"relay-{logger}", daemon=True)
    thread.start()
    return thread


class RateLimit:
    """At most `per_second` lines in each second; the lines held back are counted (`take_suppressed`), for one
    summary line, so a flood of hostile requests costs a bounded number of lines, not disk."""

    def __init__(self, per_second: int, clock: Any = time.monotonic) -> None:
        self.per_second = per_second
        self.clock = clock
        self.window = -1
        self.used = 0
        self.suppressed = 0

    def allow(self) -> bool:
        """Whether to log this line; when not, it is counted as held back."""
        window = int(self.clock())
        if window != self.window:
            self.window, self.used = window, 0
        if self.used >= self.per_second:
            self.suppressed += 1
            return False
        self.used += 1
        return True

    def take_suppressed(self) -> int:
        """How many lines were held back since the last call."""
        held, self.suppressed = self.suppressed, 0
        return held
