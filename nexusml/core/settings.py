"""Settings: one frozen object per process, read from the environment once, at start-up.

Each field declares its variable, default, documentation and bounds with `env(...)`; `load(cls, environ)`
builds the object and stops with a `SettingsError` naming the variable when a value is unusable. Only the
command-line entry points pass `os.environ` in; everything else receives a settings object.

Every variable is declared once. One that several processes read is a `Setting` made by `declare(...)` in the
lowest layer all its readers may import (here: the metadata path, the model repository, Triton's address, the
log level, Triton's shared-memory key; Triton's admin key in `nexusml.triton.settings`), and each reader binds it
to a field of its own with `Setting.field()`, so attribute names stay each process's while name, default, doc and
bounds are one.
A renamed variable keeps its old spelling in `aliases`: still read, with one deprecation line; the new name
wins when both are set.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from nexusml.core.errors import SettingsError
from nexusml.core.memory import parse_bytes

T = TypeVar("T")

log = logging.getLogger(__name__)

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("expected one of 1/0, true/false, yes/no, on/off")


def parse_int_list(raw: str) -> tuple[int, ...]:
    """'4,8,16' -> (4, 8, 16); an empty list is allowed and means 'none'."""
    return tuple(int(part) for part in raw.split(",") if part.strip())


def parse_names(raw: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in raw.split(",") if name.strip())


def parse_endpoint(raw: str) -> str:
    """An S3 endpoint URL: http(s)://host[:port] (botocore would fail later with a bare traceback)."""
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected http://host[:port] or https://host[:port]")
    parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    return raw


def parse_bucket(raw: str) -> str:
    if not _BUCKET.fullmatch(raw):
        raise ValueError("not an S3 bucket name (3-63 of a-z, 0-9, '.', '-')")
    return raw


def parse_server_url(raw: str) -> str:
    """Accept `grpc://host:port`, `http://host:port` or a bare `host:port` (gRPC)."""
    url = raw if "://" in raw else f"grpc://{raw}"
    parts = urlsplit(url)
    if parts.scheme not in ("grpc", "http"):
        raise ValueError("scheme must be grpc:// or http://")
    if not parts.hostname or parts.port is None:
        raise ValueError("expected scheme://host:port")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("no path, query or fragment allowed")
    return url.rstrip("/")


@dataclass(frozen=True)
class EnvVar:
    """How one environment variable becomes one field."""

    name: str
    doc: str
    parse: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    aliases: tuple[str, ...] = ()  # former spellings, still read, each with a deprecation line

    def convert(self, raw: str, name: str | None = None) -> Any:
        """The value of `raw`; errors name `name`, the variable it was read from (this one or an alias)."""
        name = name or self.name
        text = raw.strip()
        if self.choices is not None and text.lower() not in self.choices:
            raise SettingsError(f"{name}={raw!r}: expected one of {', '.join(self.choices)}")
        try:
            value = self.parse(text.lower() if self.choices else text)
        except ValueError as err:
            raise SettingsError(f"{name}={raw!r}: not a valid value ({err})") from err
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, int | float) and not isinstance(item, bool):
                if self.minimum is not None and item < self.minimum:
                    raise SettingsError(f"{name}={raw!r}: must be >= {self.minimum:g}")
                if self.maximum is not None and item > self.maximum:
                    raise SettingsError(f"{name}={raw!r}: must be <= {self.maximum:g}")
        return value

    def lookup(self, environ: Mapping[str, str], warned: set[str]) -> tuple[str, str] | None:
        """(variable, raw value) of the first one set, this name before its aliases; None when none is set.

        An alias that is set logs one deprecation line per name in `warned` (one `load`, so one per process).
        """
        found = None
        for name in (self.name, *self.aliases):
            raw = environ.get(name)
            if raw is None or not raw.strip():
                continue
            if name != self.name and name not in warned:
                warned.add(name)
                wins = f"; {found[0]} is set and wins" if found else ""
                log.warning("%s is deprecated: set %s instead%s", name, self.name, wins)
            found = found or (name, raw)
        return found


@dataclass(frozen=True)
class Setting:
    """One variable declared once, bound by `field()` to a field of every settings class that reads it."""

    var: EnvVar
    default: Any
    secret: bool = False

    def field(self) -> Any:
        """A dataclass field reading this variable; a `secret` one is left out of the repr (logs)."""
        return field(default=self.default, repr=not self.secret, metadata={"env": self.var})


def declare(
    name: str,
    default: Any,
    doc: str,
    parse: Callable[[str], Any] = str,
    *,
    secret: bool = False,
    aliases: tuple[str, ...] = (),
    **bounds: Any,
) -> Setting:
    """Declare the variable `name` (default, doc, parser, bounds, former names) for every process that reads it."""
    return Setting(EnvVar(name, doc, parse, aliases=aliases, **bounds), default, secret)


def env(name: str, default: Any, doc: str, parse: Callable[[str], Any] = str, **options: Any) -> Any:
    """Declare a settings field read from the variable `name`, which this class alone reads (options: `declare`'s)."""
    return declare(name, default, doc, parse, **options).field()


def nested(cls: type) -> Any:
    """Declare a field that is itself a settings object read from the same environment."""
    return field(default=None, metadata={"nested": cls})


def load(cls: type[T], environ: Mapping[str, str]) -> T:
    """Build `cls` from `environ`; unset or empty variables keep their defaults."""
    return _load(cls, environ, set())


def _load(cls: type[T], environ: Mapping[str, str], warned: set[str]) -> T:
    values: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if "nested" in f.metadata:
            values[f.name] = _load(f.metadata["nested"], environ, warned)
            continue
        spec: EnvVar = f.metadata["env"]
        found = spec.lookup(environ, warned)
        if found is not None:
            name, raw = found
            values[f.name] = spec.convert(raw, name)
    instance = cls(**values)
    validate = getattr(instance, "validate", None)
    if validate is not None:
        validate()
    return instance


def variables(cls: type) -> list[tuple[EnvVar, Any]]:
    """Every variable `cls` reads (nested classes included), with its default: the source of docs/settings.md."""
    found: list[tuple[EnvVar, Any]] = []
    for f in fields(cls):
        if "nested" in f.metadata:
            found.extend(variables(f.metadata["nested"]))
        else:
            found.append((f.metadata["env"], None if f.default is MISSING else f.default))
    return found


# Variables read by several processes, declared once here because `proxy` stands on core alone.
META_PATH = declare(
    "NEXUS_META_PATH",
    Path(".nexus_meta.json"),
    "the control plane's metadata: one file (one model), or a directory whose every `*.json` is one model's; "
    "what `nexus sync` installs, `nexus watch` follows and, when MODEL_NAME is empty, the proxy serves "
    "(skipped if absent)",
    Path,
)
MODEL_REPOSITORY = declare(
    "MODEL_REPOSITORY",
    Path("model_repository"),
    "Triton's model repository: written by `nexus sync` and `nexus watch`, served by `nexus triton`",
    Path,
)
MODEL_SERVER_URL = declare(
    "MODEL_SERVER_URL",
    "grpc://127.0.0.1:8001",
    "Triton's address as its clients reach it; grpc://host:port (default) or http://host:port picks the proxy's "
    "upstream protocol; the watcher wants grpc://",
    parse_server_url,
    aliases=("TRITON_URL",),
)
# The header Triton's shared-memory API wants when `nexus triton` restricts it (compose and the chart name the same).
SHM_HEADER = "nexus-shm-key"
SHM_KEY = declare(
    "TRITON_SHM_KEY",
    None,
    "value of the nexus-shm-key header Triton's shared-memory API wants (`nexus up` makes one and gives it to the "
    "proxy alone); unset: open",
    secret=True,
)
MEMORY_BUDGET = declare(
    "MODEL_MEMORY_BUDGET",
    None,
    "memory the loaded models may hold together (their stubs' PSS, and device memory on a GPU), in bytes with an "
    "optional unit (1500MiB, 8GiB); models then load on their first request and the least recently used idle one "
    "is unloaded to make room (`nexus watch` decides); unset: every model stays loaded",
    parse_bytes,
)
PINNED_MODELS = declare(
    "PINNED_MODELS",
    (),
    "with MODEL_MEMORY_BUDGET: comma-separated models loaded at start and never unloaded to make room",
    parse_names,
)
# The header the residency API (`nexus watch` within MODEL_MEMORY_BUDGET) wants when RESIDENCY_KEY is set.
RESIDENCY_HEADER = "nexus-residency-key"
RESIDENCY_KEY = declare(
    "RESIDENCY_KEY",
    None,
    "value of the nexus-residency-key header the watcher's residency API wants, sent by the proxy (`nexus up` makes "
    "one and gives it to those two alone); unset: open",
    secret=True,
)
LOG_LEVEL = declare(
    "LOG_LEVEL",
    "info",
    "log level of every command (`nexus --log-level` sets it too); at debug the proxy logs every request",
    choices=("debug", "info", "warning", "error"),
)
LOG_FORMAT = declare(
    "LOG_FORMAT",
    "text",
    "how every command writes its log: text (one readable line per record), or json (one JSON object per line, "
    "the same fields from every process; `nexus up` relays its children's lines, Triton's included, as JSON)",
    choices=("text", "json"),
)


@dataclass(frozen=True)
class LogSettings:
    """What every `nexus` command reads before its own settings: how much it logs, and in which format."""

    log_level: str = LOG_LEVEL.field()
    log_format: str = LOG_FORMAT.field()
