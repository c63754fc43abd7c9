"""Tenants: the keys file and its refusals, API_KEYS, token buckets on a fake clock, reload, and the app's
behaviour (401, 429 rate_limited before the body is read, /v1/tenants, the access log) on aiohttp's test server
with an upstream that is never reached."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from nexusml.core.errors import SettingsError
from nexusml.core.settings import load
from nexusml.triton.server import TritonServer
from proxy.app import create_app
from proxy.buckets import SharedBuckets
from proxy.errors import RateLimited
from proxy.schema import ModelSchema, TensorSchema
from proxy.settings import ProxySettings
from proxy.state import STATE
from proxy.tenants import (
    DEFAULT_TENANT,
    TENANCY,
    RateLimit,
    Tenancy,
    Tenant,
    api_keys_table,
    digest,
    read_keys_file,
)
from tests.proxy.conftest import ROW, MakeClient, holding_upstream, in_flight

KEYS_FILE = """\
tenants:
  team-a:
    keys: ["key-a-2026-12", "key-a-old"]
    weight: 3
    priority: high
    rate_limit:
      requests_per_s: 100
      requests_burst: 200
      rows_per_s: 5000
      rows_burst: 10000
  team-b:
    keys: ["key-b"]
  ops:
    keys: ["key-ops"]
    admin: true
    priority: low
"""
SECRETS = ("key-a-2026-12", "key-a-old", "key-b", "key-ops", "s3cret-1", "s3cret-2")


def write(path: Path, text: str) -> Path:
    """Replace `path` whole, as a Kubernetes Secret volume does (a new file, renamed into place)."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(text)
    os.replace(fresh, path)
    return path


def tenancy(path: Path, text: str, **options: Any) -> Tenancy:
    return Tenancy(read_keys_file(write(path, text)), path, **options)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the keys file ------------------------------------------------------------------------------------------
def test_keys_file_yaml(tmp_path: Path) -> None:
    table = read_keys_file(write(tmp_path / "keys.yaml", KEYS_FILE))
    a, b, ops = table.tenants
    assert a == Tenant("team-a", 3.0, "high", False, RateLimit(100, 200), RateLimit(5000, 10000))
    assert b == Tenant("team-b") and b.level == 2
    assert ops == Tenant("ops", priority="low", admin=True)
    assert table.keys == {"team-a": 2, "team-b": 1, "ops": 1}


def test_keys_file_json_and_lookup_by_digest(tmp_path: Path) -> None:
    document = {"tenants": {"t": {"keys": ["k1", "k2"], "rate_limit": {"requests_per_s": 0.5}}}}
    found = Tenancy(read_keys_file(write(tmp_path / "keys.json", json.dumps(document))))
    tenant = found.tenant_for("k2")
    assert tenant is not None and tenant is found.tenant_for("k1")
    assert tenant.requests == RateLimit(0.5, 1.0)  # the burst defaults to the rate, at least 1
    assert found.tenant_for("k3") is None and found.tenant_for("") is None and found.tenant_for("k") is None
    assert found.required
    assert all(key not in repr(found.table) for key in ("k1", "k2"))  # held as digests only


def tenant_file(**fields: Any) -> str:
    return json.dumps({"tenants": {"team-a": {"keys": ["s3cret-1"], **fields}}})


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        pytest.param("k.yaml", "[1, 2]", "one top-level field, tenants", id="not-a-mapping"),
        pytest.param("k.yaml", "tenants: {}\nextra: 1\n", "one top-level field, tenants", id="unknown-top-level"),
        pytest.param("k.yaml", "", "one top-level field, tenants", id="empty-file"),
        pytest.param("k.yaml", "tenants: {}\n", "at least one tenant", id="no-tenants"),
        pytest.param("k.yaml", "tenants:\n  'a b':\n    keys: [x]\n", "tenant 'a b': a name is", id="bad-name"),
        pytest.param("k.yaml", "tenants:\n  yes:\n    keys: [x]\n", "tenant True: a name is", id="name-not-a-string"),
        pytest.param("k.yaml", "tenants:\n  t: [x]\n", "entry #1 is not a mapping", id="tenant-not-mapping"),
        pytest.param("k.json", tenant_file(wieght=2), "tenant 'team-a': unknown field 'wieght'", id="unknown-field"),
        pytest.param("k.yaml", "tenants:\n  t: {weight: 2}\n", "tenant 't': keys: expected a list", id="no-keys"),
        pytest.param("k.yaml", "tenants:\n  t: {keys: []}\n", "tenant 't': keys: expected a list", id="keys-empty"),
        pytest.param("k.yaml", "tenants:\n  t: {keys: s3cret-1}\n", "keys: expected a list", id="keys-a-string"),
        pytest.param("k.yaml", "tenants:\n  t: {keys: [12345]}\n", "keys: key #1 must be a string", id="key-number"),
        pytest.param("k.yaml", "tenants:\n  t: {keys: ['s3cret 1']}\n", "key #1 must be a string", id="key-space"),
        pytest.param(
            "k.yaml", "tenants:\n  t: {keys: [s3cret-1, s3cret-1]}\n", "'t': keys: key #2 is listed twice", id="dup"
        ),
        pytest.param(
            "k.yaml",
            "tenants:\n  t: {keys: [s3cret-2]}\n  u: {keys: [x, s3cret-2]}\n",
            "tenant 'u': keys: key #2 is also a key of tenant 't'",
            id="key-of-two-tenants",
        ),
        pytest.param("k.json", tenant_file(weight=0), "tenant 'team-a': weight: expected a number > 0", id="weight-0"),
        pytest.param("k.json", tenant_file(weight=-1), "weight: expected a number > 0, not -1", id="weight-negative"),
        pytest.param("k.json", tenant_file(weight=True), "weight: expected a number > 0", id="weight-bool"),
        pytest.param("k.json", tenant_file(weight="3"), "weight: expected a number > 0", id="weight-string"),
        pytest.param("k.json", tenant_file(priority="urgent"), "priority: 'urgent' is not one of", id="priority"),
        pytest.param("k.json", tenant_file(admin="yes"), "'team-a': admin: expected true or false", id="admin"),
        pytest.param("k.json", tenant_file(rate_limit=5), "rate_limit: expected a mapping", id="limit-not-mapping"),
        pytest.param(
            "k.json", tenant_file(rate_limit={"rps": 5}), "rate_limit: unknown field 'rps'", id="limit-unknown-field"
        ),
        pytest.param(
            "k.json",
            tenant_file(rate_limit={"rows_burst": 5}),
            "rate_limit: rows_burst: set rows_per_s too",
            id="burst-without-rate",
        ),
        pytest.param(
            "k.json",
            tenant_file(rate_limit={"requests_per_s": 0}),
            "rate_limit: requests_per_s: expected a number > 0",
            id="rate-zero",
        ),
        pytest.param(
            "k.json",
            tenant_file(rate_limit={"requests_per_s": 5, "requests_burst": 0.5}),
            "requests_burst: expected at least 1",
            id="burst-below-one",
        ),
        pytest.param(
            "k.yaml",
            "tenants:\n  t: {keys: [s3cret-1]}\n  t: {keys: [s3cret-2]}\n",
            "not valid YAML: a name appears twice in one mapping at line 3",
            id="yaml-tenant-twice",
        ),
        pytest.param(
            "k.json",
            '{"tenants": {"t": {"keys": ["s3cret-1"]}, "t": {"keys": ["s3cret-2"]}}}',
            "not valid JSON: a name appears twice",
            id="json-tenant-twice",
        ),
        pytest.param("k.yaml", "tenants:\n  t: {keys: [s3cret-1\n", "not valid YAML", id="broken-yaml"),
        pytest.param("k.yaml", "[" * 5000 + "]" * 5000, "not valid YAML: nested too deeply", id="yaml-too-deep"),
        pytest.param("k.json", '{"tenants": {"t": {"keys": ["s3cret-1"]', "not valid JSON", id="broken-json"),
    ],
)
def test_keys_file_refusals_name_file_tenant_and_field(tmp_path: Path, name: str, text: str, expected: str) -> None:
    path = write(tmp_path / name, text)
    with pytest.raises(SettingsError) as caught:
        read_keys_file(path)
    message = str(caught.value)
    assert message.startswith(f"API_KEYS_FILE {path}: "), message
    assert expected in message, message
    assert not any(secret in message for secret in SECRETS), message
    error = caught.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)  # none chained


def test_a_key_written_as_a_tenant_name_is_not_echoed(tmp_path: Path) -> None:
    """`key: tenant` instead of `tenant: {keys: [key]}`: the refusal (logged on reload) must not show the key."""
    path = tmp_path / "keys.yaml"
    path.write_text("tenants:\n  sk-live-abc123: team-a\n")
    with pytest.raises(SettingsError) as refused:
        read_keys_file(path)
    assert "sk-live-abc123" not in str(refused.value) and "entry #1" in str(refused.value)


def test_a_key_with_a_lone_surrogate_is_a_key_like_any_other(tmp_path: Path) -> None:
    """JSON can spell a lone surrogate (\\ud800); it must load and match, not raise while hashed."""
    path = tmp_path / "keys.json"
    path.write_text('{"tenants": {"t": {"keys": ["k-\\ud800"]}}}')
    table = read_keys_file(path)
    assert table.by_digest[digest("k-\ud800")].name == "t"


def test_keys_file_missing(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"keys\.yaml: cannot read it: No such file"):
        read_keys_file(tmp_path / "keys.yaml")


def test_api_keys_are_tenants_by_position() -> None:
    table = Tenancy(api_keys_table(("s3cret-1", "s3cret-2", "s3cret-1")))
    assert [tenant.name for tenant in table.table.tenants] == ["key-1", "key-2", "key-3"]
    assert table.tenant_for("s3cret-2") == Tenant("key-2", admin=True)
    assert table.tenant_for("s3cret-1") == Tenant("key-1", admin=True)  # a key listed twice: its first position
    assert table.tenant_for("nope") is None


def test_no_keys_is_one_open_tenant() -> None:
    open_ = Tenancy.from_settings((), None, 1, lambda: None)
    assert not open_.required and open_.table.tenants == (DEFAULT_TENANT,)
    open_.admit(DEFAULT_TENANT, 0.0)  # no limits: nothing to refuse


# --- token buckets ----------------------------------------------------------------------------------------
LIMITED = """\
tenants:
  team-a:
    keys: [s3cret-1]
    rate_limit: {requests_per_s: 2, requests_burst: 3, rows_per_s: 10, rows_burst: 20}
  team-b:
    keys: [s3cret-2]
"""


def refused(tenancy: Tenancy, tenant: Tenant, now: float) -> RateLimited:
    with pytest.raises(RateLimited) as caught:
        tenancy.admit(tenant, now)
    return caught.value


def test_requests_bucket_burst_then_refill(tmp_path: Path) -> None:
    limited = tenancy(tmp_path / "keys.yaml", LIMITED)
    a = limited.tenant_for("s3cret-1")
    assert a is not None
    for _ in range(3):  # the burst
        limited.admit(a, 100.0)
    err = refused(limited, a, 100.0)
    assert (err.code, err.cause, err.retry_after) == ("rate_limited", "rate_requests", 1)
    assert str(err) == "tenant team-a is over its rate limit of 2 requests/s; retry in 0.50 s"
    err = refused(limited, a, 100.25)  # a quarter of the way back: half a token
    assert str(err).endswith("retry in 0.25 s") and err.retry_after == 1
    limited.admit(a, 100.5)  # one token refilled
    refused(limited, a, 100.5)  # and spent; a refusal took nothing:
    limited.admit(a, 101.0)
    for _ in range(3):  # a long pause refills up to the burst, not beyond
        limited.admit(a, 200.0)
    refused(limited, a, 200.0)
    b = limited.tenant_for("s3cret-2")
    assert b is not None
    for _ in range(100):  # the other tenant has no limits
        limited.admit(b, 200.0)


def test_retry_after_is_the_buckets_wait_rounded_up(tmp_path: Path) -> None:
    slow = tenancy(tmp_path / "keys.json", tenant_file(rate_limit={"requests_per_s": 0.4}))
    a = slow.tenant_for("s3cret-1")
    assert a is not None
    slow.admit(a, 0.0)
    assert refused(slow, a, 0.0).retry_after == 3  # 2.5 s until one token
    assert refused(slow, a, 0.6).retry_after == 2  # 1.9 s
    assert refused(slow, a, 2.4).retry_after == 1  # 0.1 s: at least 1


def test_rows_are_charged_after_the_parse_and_their_debt_refuses(tmp_path: Path) -> None:
    clock = Clock()
    limited = tenancy(tmp_path / "keys.yaml", LIMITED, clock=clock)
    a = limited.tenant_for("s3cret-1")
    assert a is not None
    limited.admit(a, clock.now)
    limited.charge_rows(a, 60)  # 20 in the bucket: 40 in debt
    err = refused(limited, a, clock.now)
    assert (err.cause, err.retry_after) == ("rate_rows", 4)
    assert str(err) == "tenant team-a is over its rate limit of 10 rows/s; retry in 4.00 s"
    clock.now += 3.0
    assert refused(limited, a, clock.now).retry_after == 1
    clock.now += 1.0  # paid back
    limited.admit(a, clock.now)
    limited.charge_rows(a, 1)  # never raises, even in debt
    limited.charge_rows(a, 1000)
    assert refused(limited, a, clock.now).retry_after == 101


def test_charge_refills_before_it_takes(tmp_path: Path) -> None:
    """After a pause the bucket is full: a charge must not vanish into the refill's cap at the burst."""
    clock = Clock()
    limited = tenancy(tmp_path / "keys.yaml", LIMITED, clock=clock)
    a = limited.tenant_for("s3cret-1")
    assert a is not None
    limited.admit(a, clock.now)
    clock.now += 1000.0
    limited.charge_rows(a, 30)  # the full 20, then 10 in debt
    assert refused(limited, a, clock.now).retry_after == 1
    clock.now += 1.0
    limited.admit(a, clock.now)


def test_workers_take_a_tenants_limits_from_the_same_buckets(tmp_path: Path) -> None:
    """Two workers (two tenancies on one shared table): the limit is the pod's, wherever the requests land."""
    table = SharedBuckets(tmp_path / "buckets")
    one, two = (tenancy(tmp_path / "keys.yaml", LIMITED, buckets=table) for _ in range(2))
    a = one.tenant_for("s3cret-1")
    assert a is not None
    one.admit(a, 0.0)
    one.admit(a, 0.0)
    two.admit(a, 0.0)  # the burst of 3 is used up between them
    err = refused(one, a, 0.0)
    assert str(err).endswith("2 requests/s; retry in 0.50 s")
    refused(two, a, 0.0)
    two.admit(a, 0.5)
    one.charge_rows(a, 30, 0.5)  # rows in debt on one worker hold the other back too
    assert refused(two, a, 1.0).cause == "rate_rows"


# --- reload -----------------------------------------------------------------------------------------------
def test_reload_applies_a_changed_file_at_once(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    follows = tenancy(path, LIMITED)
    assert not follows.poll()  # unchanged
    a = follows.tenant_for("s3cret-1")
    assert a is not None
    for _ in range(3):
        follows.admit(a, 0.0)
    write(path, LIMITED.replace("keys: [s3cret-2]", "keys: [s3cret-3]"))
    assert follows.poll()
    assert follows.tenant_for("s3cret-2") is None  # the removed key stops matching
    assert follows.tenant_for("s3cret-3") == Tenant("team-b")
    refused(follows, a, 0.0)  # team-a's limits did not change: its bucket did not refill with the reload
    write(path, LIMITED.replace("requests_per_s: 2,", "requests_per_s: 5,"))
    assert follows.poll()
    a = follows.tenant_for("s3cret-1")
    assert a is not None and a.requests == RateLimit(5, 3)
    follows.admit(a, 0.0)  # new limits: a new bucket


def test_a_broken_file_keeps_the_table_with_one_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "keys.yaml"
    errors: list[None] = []
    follows = tenancy(path, LIMITED, on_reload_error=lambda: errors.append(None))
    write(path, LIMITED.replace("keys: [s3cret-2]", "keys: [s3cret-1]"))  # a key of two tenants
    with caplog.at_level(logging.DEBUG, logger="proxy"):
        assert not follows.poll()
        assert not follows.poll()  # not read again until it changes
    [line] = caplog.records
    assert line.levelno == logging.ERROR
    assert "tenant 'team-b': keys: key #1 is also a key of tenant 'team-a'" in line.getMessage()
    assert "keeping the 2 tenants in force" in line.getMessage()
    assert not any(secret in caplog.text for secret in SECRETS)
    assert len(errors) == 1
    assert follows.tenant_for("s3cret-2") == Tenant("team-b")  # the old table
    path.unlink()  # gone: the old table still
    assert not follows.poll() and len(errors) == 2
    assert follows.tenant_for("s3cret-2") == Tenant("team-b")
    write(path, LIMITED)
    assert follows.poll()


# --- what /v1/tenants shows -------------------------------------------------------------------------------
def test_snapshot_shares_and_never_a_key(tmp_path: Path) -> None:
    clock = Clock()
    shown = tenancy(tmp_path / "keys.yaml", KEYS_FILE, clock=clock)
    a, b = shown.tenant_for("key-a-old"), shown.tenant_for("key-b")
    assert a is not None and b is not None
    assert [t["share"] for t in shown.snapshot()] == [{"requests": None, "rows": None}] * 3
    for _ in range(3):
        shown.charge_rows(a, 2)
    shown.charge_rows(b, 4)
    snapshot = shown.snapshot()
    assert snapshot[0] == {
        "name": "team-a",
        "weight": 3.0,
        "priority": "high",
        "admin": False,
        "keys": 2,
        "rate_limit": {"requests_per_s": 100, "requests_burst": 200, "rows_per_s": 5000, "rows_burst": 10000},
        "fair_share": 0.6,
        "share": {"requests": 0.75, "rows": 0.6},
    }
    assert snapshot[1]["share"] == {"requests": 0.25, "rows": 0.4} and snapshot[1]["rate_limit"] is None
    assert snapshot[2]["share"] == {"requests": 0.0, "rows": 0.0} and snapshot[2]["admin"]
    assert not any(secret in json.dumps(snapshot) for secret in SECRETS)
    clock.now += 15  # one window on: still counted
    assert shown.snapshot()[0]["share"]["requests"] == 0.75
    clock.now += 10  # two: forgotten
    assert shown.snapshot()[0]["share"]["requests"] is None


# --- settings ---------------------------------------------------------------------------------------------
def test_api_keys_and_a_keys_file_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="API_KEYS and API_KEYS_FILE are both set") as caught:
        load(ProxySettings, {"API_KEYS": "s3cret-1", "API_KEYS_FILE": str(tmp_path / "keys.yaml")})
    assert "s3cret-1" not in str(caught.value)


def test_a_broken_keys_file_stops_start_up(tmp_path: Path) -> None:
    path = write(tmp_path / "keys.yaml", tenant_file(weight=0))
    settings = load(ProxySettings, {"API_KEYS_FILE": str(path)})
    with pytest.raises(SettingsError, match="tenant 'team-a': weight"):
        create_app(settings)


# --- the app ----------------------------------------------------------------------------------------------
UNREACHABLE = "http://127.0.0.1:9"  # discard: nothing answers, and nothing here needs an answer
SCHEMA = ModelSchema(
    "demo", ("1",), "python", 8, (TensorSchema("INPUT__0", "FP32", (5,)),), (TensorSchema("OUTPUT__0", "FP32", (2,)),)
)
APP_KEYS = """\
tenants:
  team-a:
    keys: [s3cret-1]
    rate_limit: {requests_per_s: 0.001}
  ops:
    keys: [s3cret-2]
    admin: true
"""


async def tenant_app(proxy_client: MakeClient, **env: str) -> TestClient:
    """A proxy whose upstream is never reached, serving `SCHEMA` so bodies get parsed."""
    client = await proxy_client(
        UNREACHABLE,
        MODEL_NAME=SCHEMA.name,
        PROXY_COALESCE="0",
        PROXY_WORKERS="1",
        UPSTREAM_CONNECT_TIMEOUT_S="0.05",
        **env,
    )
    client.server.app[STATE].model(SCHEMA.name).serve(SCHEMA)
    return client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


@pytest.mark.asyncio
async def test_unknown_key_is_401(proxy_client: MakeClient, tmp_path: Path) -> None:
    client = await tenant_app(proxy_client, API_KEYS_FILE=str(write(tmp_path / "keys.yaml", APP_KEYS)))
    for headers in ({}, bearer("s3cret-3"), {"X-API-Key": "s3cret"}):
        response = await client.post("/predict", data=b"{}", headers=headers)
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "unauthorized"
    assert (await client.get("/healthz")).status == 200  # open paths need none


@pytest.mark.asyncio
async def test_rate_limited_before_the_body_is_read(proxy_client: MakeClient, tmp_path: Path) -> None:
    """The second request's body is not JSON: read, it would be 400 invalid_json as the first is; it is refused
    with 429 before that, its Retry-After from the tenant's bucket (1000 s for a token), not RETRY_AFTER_S."""
    client = await tenant_app(proxy_client, API_KEYS_FILE=str(write(tmp_path / "keys.yaml", APP_KEYS)))
    first = await client.post("/predict", data=b"not json", headers=bearer("s3cret-1"))
    assert (first.status, (await first.json())["error"]["code"]) == (400, "invalid_json")
    second = await client.post("/predict", data=b"not json", headers=bearer("s3cret-1"))
    body = await second.json()
    assert (second.status, body["error"]["code"]) == (429, "rate_limited"), body
    assert body["error"]["message"].startswith("tenant team-a is over its rate limit of 0.001 requests/s; retry in")
    assert 1 < int(second.headers["Retry-After"]) <= 1000
    v2 = await client.post("/v2/models/demo/versions/1/infer", data=b"not json", headers=bearer("s3cret-1"))
    assert v2.status == 429 and (await v2.json())["error"].startswith("rate_limited: tenant team-a")
    other = await client.post("/predict", data=b"not json", headers=bearer("s3cret-2"))
    assert other.status == 400  # another tenant's limit is not this one's
    assert (await client.get("/v1/models", headers=bearer("s3cret-1"))).status != 429  # predictions only
    metrics = await (await client.get("/metrics")).text()
    assert 'nexus_proxy_tenant_rejected_total{cause="rate_requests",tenant="team-a"} 2.0' in metrics


@pytest.mark.asyncio
async def test_tenants_endpoint_is_for_admins(proxy_client: MakeClient, tmp_path: Path) -> None:
    client = await tenant_app(proxy_client, API_KEYS_FILE=str(write(tmp_path / "keys.yaml", APP_KEYS)))
    response = await client.get("/v1/tenants", headers=bearer("s3cret-2"))
    assert response.status == 200
    body = await response.json()
    assert [tenant["name"] for tenant in body["tenants"]] == ["team-a", "ops"]
    assert body["tenants"][0]["rate_limit"] == {"requests_per_s": 0.001, "requests_burst": 1.0}
    assert body["worker"] == 0 and body["window_s"] > 0
    text = await response.text()
    assert not any(secret in text for secret in SECRETS)
    refused = await client.get("/v1/tenants", headers=bearer("s3cret-1"))
    assert (refused.status, (await refused.json())["error"]["code"]) == (403, "forbidden")
    assert (await client.get("/v1/tenants")).status == 401
    keys = await tenant_app(proxy_client, API_KEYS="s3cret-1,s3cret-2")
    response = await keys.get("/v1/tenants", headers=bearer("s3cret-2"))  # every API_KEYS key is admin
    assert [tenant["name"] for tenant in (await response.json())["tenants"]] == ["key-1", "key-2"]
    open_ = await tenant_app(proxy_client)
    response = await open_.get("/v1/tenants")  # no keys: open, like /v1/models
    assert [tenant["name"] for tenant in (await response.json())["tenants"]] == ["default"]


@pytest.mark.asyncio
async def test_access_log_names_the_tenant_never_the_key(
    proxy_client: MakeClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = await tenant_app(
        proxy_client, API_KEYS_FILE=str(write(tmp_path / "keys.yaml", APP_KEYS)), ACCESS_LOG="all"
    )
    with caplog.at_level(logging.DEBUG):
        await client.post("/predict", data=b"not json", headers=bearer("s3cret-1"))
        await client.post("/predict", data=b"not json", headers={"X-API-Key": "s3cret-1"})
        await client.post("/predict", data=b"not json", headers=bearer("s3cret-3"))
        await client.get("/healthz", headers=bearer("s3cret-2"))
    lines = [record.fields for record in caplog.records if record.name == "proxy.access"]  # type: ignore[attr-defined]
    assert [(line["tenant"], line["status"]) for line in lines] == [
        ("team-a", 400),
        ("team-a", 429),
        ("default", 401),
        ("default", 200),
    ]
    assert not any(secret in caplog.text or secret in json.dumps(lines) for secret in SECRETS)


@pytest.mark.asyncio
async def test_a_removed_key_stops_working_after_a_poll(proxy_client: MakeClient, tmp_path: Path) -> None:
    path = write(tmp_path / "keys.yaml", APP_KEYS)
    client = await tenant_app(proxy_client, API_KEYS_FILE=str(path), API_KEYS_POLL_S="0.05")
    assert client.server.app[TENANCY].path == path
    assert (await client.get("/v1/tenants", headers=bearer("s3cret-2"))).status == 200
    write(path, APP_KEYS.replace("s3cret-2", "s3cret-4"))
    for _ in range(500):  # bounded: until the worker's poll has seen the change
        if (await client.get("/v1/tenants", headers=bearer("s3cret-2"))).status == 401:
            break
        await asyncio.sleep(0.01)
    assert (await client.get("/v1/tenants", headers=bearer("s3cret-2"))).status == 401
    assert (await client.get("/v1/tenants", headers=bearer("s3cret-4"))).status == 200


@pytest.mark.integration
@pytest.mark.asyncio
async def test_a_tenant_over_its_share_of_max_active_waits_unparsed_and_is_then_served(
    proxy_client: MakeClient, triton: TritonServer
) -> None:
    """MAX_ACTIVE=2 with two tenants present: team B's request and A's first take the places (A is below its
    share of one), A's second waits for one; every request is answered once the upstream answers, the wait is in
    the pace metric, and no place is left held."""
    client = await proxy_client(triton.grpc_url, PROXY_COALESCE="0", MAX_ACTIVE="2", API_KEYS="key-a,key-b")
    release = await holding_upstream(client)
    state = client.server.app[STATE]
    light = asyncio.create_task(client.post("/predict", json={"input": ROW}, headers=bearer("key-b")))
    await in_flight(client, 1)
    flood = [asyncio.create_task(client.post("/predict", json={"input": ROW}, headers=bearer("key-a")))]
    await in_flight(client, 2)
    flood.append(asyncio.create_task(client.post("/predict", json={"input": ROW}, headers=bearer("key-a"))))
    await in_flight(client, 3)
    assert state.pacer.active == 2 and len(state.pacer.tenants["key-1"].queue) == 1
    release.set()
    assert [(await task).status for task in (light, *flood)] == [200, 200, 200]
    assert state.pacer.active == 0 and not state.pacer.tenants
    metrics = await (await client.get("/metrics")).text()
    assert 'nexus_proxy_tenant_pace_wait_seconds_count{tenant="key-1"} 1.0' in metrics
    assert 'nexus_proxy_tenant_pace_wait_seconds_count{tenant="key-2"}' not in metrics
