"""Tenants: who a request is for, by its API key, and what that tenant may use of the model.

A tenant has a `weight` (its share of the model when several wait for it), a `priority` class (served first
within the proxy, and carried to Triton as its priority level) and optional rate limits. Every request is some
tenant's: the key's, or `DEFAULT_TENANT` when the proxy has no keys or the path is open.

Where tenants come from (`Tenancy.from_settings`), one source at a time:
- `API_KEYS_FILE`: a YAML or JSON keys file (a `.json` name is read as JSON, any other as YAML) mapping each
  tenant to its keys, weight, priority, admin flag and rate limits; re-read when it changes
  (`Tenancy.poll`, every `API_KEYS_POLL_S`), so keys rotate without a restart.
- `API_KEYS`: each key its own tenant, named by its position (`key-1`, `key-2`, ...; never by the key), weight
  1, normal priority, no limits, and admin (there are no roles to tell apart).
- neither: `DEFAULT_TENANT` for every request, no auth.

Keys are held only as sha256 digests: a lookup is one hash and one dict lookup, the same work whichever key is
offered and however many there are. Keys are never logged; tenants are, by name.

Rate limits are token buckets, one per limit and tenant, for the whole proxy: with `PROXY_WORKERS` > 1 all
workers take from the same buckets (`proxy.buckets`), however the kernel spread the tenant's connections.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from nexusml.core.errors import SettingsError
from proxy.buckets import Bucket, SharedBuckets, TokenBucket
from proxy.errors import RateLimited

# Priority classes and the Triton priority level each is sent with (1 is served first).
LEVELS = {"high": 1, "normal": 2, "low": 3}

# `share` in `Tenancy.snapshot` covers the predictions of the last one to two of these windows.
SHARE_WINDOW_S = 10.0

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_TENANT_FIELDS = ("keys", "weight", "priority", "admin", "rate_limit")
_LIMIT_FIELDS = ("requests_per_s", "requests_burst", "rows_per_s", "rows_burst")

log = logging.getLogger("proxy")


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


def weighted_share(limit: int, weight: float, weights: Iterable[float]) -> float:
    """A tenant's part of `limit` places: its weight among `weights`, those of the tenants holding or waiting for
    any (its own included). What MAX_IN_FLIGHT's refusals and MAX_ACTIVE's waits both measure a tenant against."""
    return limit * weight / sum(weights)


def digest(key: str) -> bytes:
    """What a key is held and looked up as."""
    return hashlib.sha256(key.encode("utf-8", errors="surrogatepass")).digest()  # any str, lone surrogates too


# --- the table: tenants and their key digests -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Table:
    """One consistent set of tenants: replaced whole on reload, never changed in place."""

    tenants: tuple[Tenant, ...]
    by_digest: Mapping[bytes, Tenant]
    keys: Mapping[str, int]  # tenant name -> how many keys it has (shown; the keys never are)
    source: str  # "file", "API_KEYS" or "none"


def open_table() -> Table:
    """No keys at all: every request is `DEFAULT_TENANT`'s."""
    return Table((DEFAULT_TENANT,), {}, {DEFAULT_TENANT.name: 0}, "none")


def api_keys_table(keys: tuple[str, ...]) -> Table:
    """`API_KEYS`: tenant `key-N` for the N-th key; a key listed twice belongs to its first position."""
    tenants: list[Tenant] = []
    by_digest: dict[bytes, Tenant] = {}
    for position, key in enumerate(keys, start=1):
        tenant = Tenant(f"key-{position}", admin=True)
        tenants.append(tenant)
        by_digest.setdefault(digest(key), tenant)
    return Table(tuple(tenants), by_digest, {tenant.name: 1 for tenant in tenants}, "API_KEYS")


def read_keys_file(path: Path) -> Table:
    """The keys file at `path`, validated whole; `SettingsError` naming the file, the tenant and the field
    (never a key) when anything in it is unusable."""
    where = f"API_KEYS_FILE {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SettingsError(f"{where}: cannot read it: {err.strerror or type(err).__name__}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{where}: not UTF-8") from None
    kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
    try:
        document = json.loads(text, object_pairs_hook=_unique) if kind == "JSON" else yaml.load(text, _StrictLoader)
    except (ValueError, RecursionError, yaml.YAMLError) as err:
        # The parsers' whole messages quote the text they stopped at, which may be a key: only the problem and
        # its position are said, and the exception is not chained.
        raise SettingsError(f"{where}: not valid {kind}: {_problem(err)}") from None
    return parse_keys(document, where)


class _Repeated(ValueError):
    """A name twice in one mapping: the parsers would keep the last silently, and a tenant's keys with it."""


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise _Repeated("a name appears twice in one object")
    return found


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a name that appears twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: its names may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, "a name appears twice in one mapping", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


def _problem(err: Exception) -> str:
    if isinstance(err, _Repeated):
        return str(err)
    if isinstance(err, RecursionError):
        return "nested too deeply"
    if isinstance(err, json.JSONDecodeError):
        return f"{err.msg} at line {err.lineno}, column {err.colno}"
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or type(err).__name__
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def parse_keys(document: Any, where: str) -> Table:
    """A parsed keys document as a table; `where` names the file in every refusal."""
    if not isinstance(document, dict) or set(document) != {"tenants"}:
        raise SettingsError(f"{where}: expected one top-level field, tenants: a mapping of tenant name to tenant")
    entries = document["tenants"]
    if not isinstance(entries, dict) or not entries:
        raise SettingsError(f"{where}: tenants: expected a mapping of at least one tenant name to its settings")
    tenants: list[Tenant] = []
    by_digest: dict[bytes, Tenant] = {}
    counts: dict[str, int] = {}
    for position, (name, entry) in enumerate(entries.items(), start=1):
        if not isinstance(entry, dict):
            # Not `name`: a file written as `key: tenant` would put a key there, and errors are logged.
            raise SettingsError(
                f"{where}: tenants: entry #{position} is not a mapping with keys (and weight, priority, admin, "
                "rate_limit); is a key written where a tenant's name goes?"
            )
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise SettingsError(
                f"{where}: tenant {name!r}: a name is 1 to 63 of A-Z a-z 0-9 . _ - starting with a letter or digit"
            )
        tenant, keys = _tenant(name, entry, f"{where}: tenant {name!r}")
        for position, key in enumerate(keys, start=1):
            held = by_digest.setdefault(digest(key), tenant)
            if held is not tenant:
                raise SettingsError(
                    f"{where}: tenant {name!r}: keys: key #{position} is also a key of tenant {held.name!r}"
                )
        tenants.append(tenant)
        counts[name] = len(keys)
    return Table(tuple(tenants), by_digest, counts, "file")


def _tenant(name: str, entry: Any, where: str) -> tuple[Tenant, list[str]]:
    if not isinstance(entry, dict):
        raise SettingsError(f"{where}: expected a mapping with keys (and weight, priority, admin, rate_limit)")
    unknown = sorted(str(field) for field in set(entry) - set(_TENANT_FIELDS))
    if unknown:
        raise SettingsError(f"{where}: unknown field {unknown[0]!r}; the fields are {', '.join(_TENANT_FIELDS)}")
    keys = entry.get("keys")
    if not isinstance(keys, list) or not keys:
        raise SettingsError(f"{where}: keys: expected a list of at least one key")
    seen: set[str] = set()
    for position, key in enumerate(keys, start=1):
        if not isinstance(key, str) or not key or any(c.isspace() for c in key):
            raise SettingsError(f"{where}: keys: key #{position} must be a string without whitespace (quote it)")
        if key in seen:
            raise SettingsError(f"{where}: keys: key #{position} is listed twice")
        seen.add(key)
    weight = _number(entry.get("weight", 1), f"{where}: weight")
    priority = entry.get("priority", "normal")
    if priority not in LEVELS:
        raise SettingsError(f"{where}: priority: {priority!r} is not one of {', '.join(LEVELS)}")
    admin = entry.get("admin", False)
    if not isinstance(admin, bool):
        raise SettingsError(f"{where}: admin: expected true or false, not {admin!r}")
    requests, rows = _limits(entry.get("rate_limit"), f"{where}: rate_limit")
    return Tenant(name, weight, priority, admin, requests, rows), keys


def _number(value: Any, where: str) -> float:
    """A finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise SettingsError(f"{where}: expected a number > 0, not {value!r}")
    return float(value)


def _limits(entry: Any, where: str) -> tuple[RateLimit | None, RateLimit | None]:
    if entry is None:
        return None, None
    if not isinstance(entry, dict):
        raise SettingsError(f"{where}: expected a mapping of {', '.join(_LIMIT_FIELDS)}")
    unknown = sorted(str(field) for field in set(entry) - set(_LIMIT_FIELDS))
    if unknown:
        raise SettingsError(f"{where}: unknown field {unknown[0]!r}; the fields are {', '.join(_LIMIT_FIELDS)}")
    found: list[RateLimit | None] = []
    for kind in ("requests", "rows"):
        per_s, burst = entry.get(f"{kind}_per_s"), entry.get(f"{kind}_burst")
        if per_s is None:
            if burst is not None:
                raise SettingsError(f"{where}: {kind}_burst: set {kind}_per_s too")
            found.append(None)
            continue
        rate = _number(per_s, f"{where}: {kind}_per_s")
        size = max(1.0, rate) if burst is None else _number(burst, f"{where}: {kind}_burst")
        if size < 1:
            raise SettingsError(f"{where}: {kind}_burst: expected at least 1, not {burst!r}")
        found.append(RateLimit(rate, size))
    return found[0], found[1]


# --- rate limits ------------------------------------------------------------------------------------------
class Account:
    """One tenant's state in this worker: its buckets and what it was admitted in the share windows."""

    __slots__ = ("current", "limits", "previous", "requests", "rows")

    def __init__(self, tenant: Tenant, buckets: SharedBuckets | None) -> None:
        self.limits = (tenant.requests, tenant.rows)
        self.requests = _bucket(tenant.name, "requests", tenant.requests, buckets)
        self.rows = _bucket(tenant.name, "rows", tenant.rows, buckets)
        self.current = [0, 0]  # predictions, rows in the current window
        self.previous = [0, 0]  # and in the window before


def _bucket(name: str, kind: str, limit: RateLimit | None, buckets: SharedBuckets | None) -> Bucket | None:
    """The bucket of one limit: in `buckets`, shared by every worker, when there are several; else this process's."""
    if limit is None:
        return None
    if buckets is not None:
        return buckets.bucket(name, kind, limit.per_s, limit.burst)
    return TokenBucket(limit.per_s, limit.burst)


def _retry(seconds: float) -> int:
    """Retry-After: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(seconds))


# --- the runtime object -----------------------------------------------------------------------------------
class Tenancy:
    """The tenant table of one worker, its rate limits, and the keys file it follows."""

    def __init__(
        self,
        table: Table,
        path: Path | None = None,
        on_reload_error: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        buckets: SharedBuckets | None = None,
    ) -> None:
        self.buckets = buckets  # the workers' shared rate-limit buckets, when there are several workers
        self.path = path
        self.on_reload_error = on_reload_error
        self.clock = clock  # `charge_rows`'s time; the app sets its event loop's, the clock `admit` is given
        self.table = table
        self.accounts: dict[str, Account] = {}
        self._install(table)
        self._signature = self._stat()
        self._window_end = -math.inf

    @classmethod
    def from_settings(
        cls,
        api_keys: tuple[str, ...],
        keys_file: Path | None,
        on_reload_error: Callable[[], None] = lambda: None,
        buckets: SharedBuckets | None = None,
    ) -> Tenancy:
        """The tenancy the settings describe; a keys file that cannot be used stops start-up (`SettingsError`).
        `buckets`: the rate-limit buckets all workers share, when there are several (`proxy.buckets`)."""
        if keys_file is not None:
            return cls(read_keys_file(keys_file), keys_file, on_reload_error, buckets=buckets)
        return cls(api_keys_table(api_keys) if api_keys else open_table(), buckets=buckets)

    @property
    def required(self) -> bool:
        """Whether requests need a key (there are keys)."""
        return self.table.source != "none"

    def tenant_for(self, offered_key: str) -> Tenant | None:
        """The tenant whose key `offered_key` is, or None."""
        return self.table.by_digest.get(digest(offered_key))

    def admit(self, tenant: Tenant, now: float) -> None:
        """Let a prediction of `tenant` in, before its body is read, or raise `RateLimited`.

        Takes one token from the tenant's requests bucket; refuses while its rows bucket is in debt (rows are
        charged after the parse, `charge_rows`). A refused request takes nothing.
        """
        if tenant.requests is None and tenant.rows is None:
            return
        account = self.accounts.get(tenant.name)
        if account is None:  # removed by a reload since its key was looked up: its new limits are none
            return
        if account.rows is not None:
            _refuse_below(account.rows, 0, 0, now, tenant, "rows")  # in debt: its rows are not paid for yet
        if account.requests is not None:
            _refuse_below(account.requests, 1, 1, now, tenant, "requests")

    def charge_rows(self, tenant: Tenant, rows: int, now: float | None = None) -> None:
        """`rows` of an admitted prediction of `tenant`, its body read: counted for its share and taken from its
        rows bucket (which may go into debt). Never raises."""
        account = self.accounts.get(tenant.name)
        if account is None:
            return
        moment = self.clock() if now is None else now
        if moment >= self._window_end:
            self._roll(moment)
        account.current[0] += 1
        account.current[1] += rows
        if account.rows is not None:
            account.rows.charge(rows, moment)

    def _roll(self, now: float) -> None:
        """Start a new share window; the current one becomes the previous (or none, after a longer pause)."""
        fresh = now >= self._window_end + SHARE_WINDOW_S
        for account in self.accounts.values():
            account.previous = [0, 0] if fresh else account.current
            account.current = [0, 0]
        self._window_end = now + SHARE_WINDOW_S

    # --- reload -----------------------------------------------------------------------------------------
    def _stat(self) -> tuple[int, int, int, int] | None:
        """What tells a changed file: os.stat follows the symlinks Kubernetes swaps in a Secret volume."""
        if self.path is None:
            return None
        try:
            found = os.stat(self.path)
        except OSError:
            return None
        return found.st_mtime_ns, found.st_size, found.st_ino, found.st_dev

    def poll(self) -> bool:
        """Re-read the keys file if it changed; True when a new table is in force. A file that cannot be used
        keeps the table in force, with one ERROR line (naming the cause, never a key) and a count."""
        if self.path is None:
            return False
        signature = self._stat()
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            table = read_keys_file(self.path)
        except SettingsError as err:
            self.on_reload_error()
            log.error("%s; keeping the %d tenants in force", err, len(self.table.tenants))
            return False
        self._install(table)
        log.info("API_KEYS_FILE %s reloaded: tenants %s", self.path, ", ".join(t.name for t in table.tenants))
        return True

    def _install(self, table: Table) -> None:
        """Put `table` in force at once. A tenant whose limits did not change keeps its buckets (a reload is
        not a way to refill them) and its share counts."""
        accounts: dict[str, Account] = {}
        for tenant in table.tenants:
            account = self.accounts.get(tenant.name)
            if account is None or account.limits != (tenant.requests, tenant.rows):
                fresh = Account(tenant, self.buckets)
                if account is not None:
                    fresh.current, fresh.previous = account.current, account.previous
                account = fresh
            accounts[tenant.name] = account
        self.table = table
        self.accounts = accounts

    async def follow(self, poll_s: float) -> None:
        """Poll the keys file every `poll_s` until cancelled."""
        while True:
            await asyncio.sleep(poll_s)
            try:
                self.poll()
            except Exception:  # anything else would end the task, and rotation with it, silently
                log.exception("API_KEYS_FILE %s: unexpected error while checking it", self.path)

    # --- what GET /v1/tenants shows -----------------------------------------------------------------------
    def snapshot(self, now: float | None = None) -> list[dict[str, Any]]:
        """Each tenant's name, weight, priority, admin flag, number of keys, rate limits (as configured, for the
        whole pod), its fair share (its weight over all weights: what it gets when every tenant is busy) and
        its share: the fraction of this worker's predictions (past their body) and of their rows that were
        its, over the last one to two `SHARE_WINDOW_S` windows (None when there were none). Never a key."""
        moment = self.clock() if now is None else now
        if moment >= self._window_end:
            self._roll(moment)
        tenants = self.table.tenants
        totals = [0, 0]
        for account in self.accounts.values():
            for index in (0, 1):
                totals[index] += account.current[index] + account.previous[index]
        weights = sum(tenant.weight for tenant in tenants)
        shown = []
        for tenant in tenants:
            account = self.accounts[tenant.name]
            used = [account.current[index] + account.previous[index] for index in (0, 1)]
            shown.append(
                {
                    "name": tenant.name,
                    "weight": tenant.weight,
                    "priority": tenant.priority,
                    "admin": tenant.admin,
                    "keys": self.table.keys[tenant.name],
                    "rate_limit": _shown_limits(tenant),
                    "fair_share": round(tenant.weight / weights, 4),
                    "share": {
                        "requests": round(used[0] / totals[0], 4) if totals[0] else None,
                        "rows": round(used[1] / totals[1], 4) if totals[1] else None,
                    },
                }
            )
        return shown


def _shown_limits(tenant: Tenant) -> dict[str, float] | None:
    if tenant.requests is None and tenant.rows is None:
        return None
    shown: dict[str, float] = {}
    for kind, limit in (("requests", tenant.requests), ("rows", tenant.rows)):
        if limit is not None:
            shown[f"{kind}_per_s"], shown[f"{kind}_burst"] = limit.per_s, limit.burst
    return shown


def _refuse_below(bucket: Bucket, level: float, amount: float, now: float, tenant: Tenant, unit: str) -> None:
    """Take `amount` from `bucket` if it holds `level` tokens at `now`, else `RateLimited` (cause `rate_<unit>`)."""
    wait = bucket.take(level, amount, now)
    if wait is not None:
        message = f"tenant {tenant.name} is over its rate limit of {bucket.limit:g} {unit}/s; retry in {wait:.2f} s"
        raise RateLimited(message, _retry(wait), f"rate_{unit}")


TENANCY = web.AppKey("tenancy", Tenancy)
