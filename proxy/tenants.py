"""Tenants: who a request is for, by its API key, and what that tenant may use of the model.

A tenant has a `weight` (its share of the model when several wait for it), a `priority` class (served first
within the proxy, and carried to Triton as its priority level) and optional rate limits. Every request is some
tenant's: the key's, or `DEFAULT_TENANT` when the proxy has no keys or the path is open.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

# Priority classes and the Triton priority level each is sent with (1 is served first).
LEVELS = {"high": 1, "normal": 2, "low": 3}


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket's shape: `per_s` tokens refilled each second, at most `burst` held."""

    per_s: float
    burst: float


@dataclass(frozen=True, slots=True)
class Tenant:
    """One team using the proxy; keyed by `name` everywhere (metrics, logs, queues), never by its key."""

    name: str
    weight: float = 1.0
    priority: str = "normal"
    admin: bool = False
    requests: RateLimit | None = None
    rows: RateLimit | None = None

    @property
    def level(self) -> int:
        """Triton's priority level for this tenant's requests (1 first)."""
        return LEVELS[self.priority]


DEFAULT_TENANT = Tenant("default")
TENANT = web.RequestKey("tenant", Tenant)
