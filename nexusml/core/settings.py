"""Settings: one frozen object per process, read from the environment once, at start-up.

Each field declares its variable, default, documentation and bounds with `env(...)`; `load(cls, environ)`
builds the object and stops with a `SettingsError` naming the variable when a value is unusable. Only the
command-line entry points pass `os.environ` in; everything else receives a settings object.
Names shared by several processes (`BATCH_SIZE`, `DEVICE`, `MODEL_BUCKET`, ...) keep one meaning everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypeVar
from urllib.parse import urlsplit

from nexusml.core.errors import SettingsError

T = TypeVar("T")

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


@dataclass(frozen=True)
class EnvVar:
    """How one environment variable becomes one field."""

    name: str
    doc: str
    parse: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None

    def convert(self, raw: str) -> Any:
        text = raw.strip()
        if self.choices is not None and text.lower() not in self.choices:
            raise SettingsError(f"{self.name}={raw!r}: expected one of {', '.join(self.choices)}")
        try:
            value = self.parse(text.lower() if self.choices else text)
        except ValueError as err:
            raise SettingsError(f"{self.name}={raw!r}: not a valid value ({err})") from err
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, int | float) and not isinstance(item, bool):
                if self.minimum is not None and item < self.minimum:
                    raise SettingsError(f"{self.name}={raw!r}: must be >= {self.minimum:g}")
                if self.maximum is not None and item > self.maximum:
                    raise SettingsError(f"{self.name}={raw!r}: must be <= {self.maximum:g}")
        return value


def env(
    name: str, default: Any, doc: str, parse: Callable[[str], Any] = str, *, secret: bool = False, **bounds: Any
) -> Any:
    """Declare a settings field read from the variable `name`; a `secret` one is left out of the repr (logs)."""
    return field(default=default, repr=not secret, metadata={"env": EnvVar(name, doc, parse, **bounds)})


def nested(cls: type) -> Any:
    """Declare a field that is itself a settings object read from the same environment."""
    return field(default=None, metadata={"nested": cls})


def load(cls: type[T], environ: Mapping[str, str]) -> T:
    """Build `cls` from `environ`; unset or empty variables keep their defaults."""
    values: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if "nested" in f.metadata:
            values[f.name] = load(f.metadata["nested"], environ)
            continue
        spec: EnvVar = f.metadata["env"]
        raw = environ.get(spec.name)
        if raw is not None and raw.strip():
            values[f.name] = spec.convert(raw)
    instance = cls(**values)
    validate = getattr(instance, "validate", None)
    if validate is not None:
        validate()
    return instance


def variables(cls: type) -> list[tuple[EnvVar, Any]]:
    """Every variable `cls` reads, with its default: the source of the README's settings table."""
    found: list[tuple[EnvVar, Any]] = []
    for f in fields(cls):
        if "nested" in f.metadata:
            found.extend(variables(f.metadata["nested"]))
        else:
            found.append((f.metadata["env"], None if f.default is MISSING else f.default))
    return found
