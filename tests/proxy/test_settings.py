"""`ProxySettings` from the environment: defaults, parsing, and start-up errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexusml.core.errors import SettingsError
from nexusml.core.settings import load
from proxy.settings import ProxySettings, usable_cpus


def test_defaults() -> None:
    settings = load(ProxySettings, {})
    assert settings.model_server_url == "grpc://127.0.0.1:8001"
    assert (settings.upstream_protocol, settings.upstream_address) == ("grpc", "127.0.0.1:8001")
    assert settings.port == 8080 and settings.workers == 0 and settings.coalesce
    assert settings.api_keys == () and "/healthz" in settings.open_endpoints
    assert settings.max_dynamic_dim == 8192
    assert settings.api_keys_file is None and settings.api_keys_poll_s == 1.0


@pytest.mark.parametrize(
    ("workers", "cpus", "count"),
    [
        pytest.param("", 2, 1, id="auto-2-cpus"),
        pytest.param("", 16, 4, id="auto-16-cpus"),
        pytest.param("", 96, 8, id="auto-capped"),
        pytest.param("3", 2, 3, id="explicit"),
    ],
)
def test_worker_count_from_usable_cpus(workers: str, cpus: int, count: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("proxy.settings.usable_cpus", lambda: cpus)
    assert load(ProxySettings, {"PROXY_WORKERS": workers}).worker_count == count


@pytest.mark.parametrize(
    ("cpu_max", "cpus"),
    [
        pytest.param(None, 64, id="no-cgroup-file"),
        pytest.param("max 100000\n", 64, id="no-limit"),
        pytest.param("200000 100000\n", 2, id="limit-2"),
        pytest.param("150000 100000\n", 2, id="limit-rounds-up"),
        pytest.param("garbage\n", 64, id="unreadable"),
    ],
)
def test_usable_cpus_honours_a_container_limit(
    cpu_max: str | None, cpus: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)))
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    assert usable_cpus(path) == cpus


@pytest.mark.parametrize(
    ("url", "protocol", "address"),
    [
        pytest.param("http://triton:8000", "http", "triton:8000", id="http"),
        pytest.param("grpc://triton:8001/", "grpc", "triton:8001", id="grpc-trailing-slash"),
        pytest.param("triton:8001", "grpc", "triton:8001", id="bare-host-port"),
    ],
)
def test_model_server_url_scheme_picks_protocol(url: str, protocol: str, address: str) -> None:
    settings = load(ProxySettings, {"MODEL_SERVER_URL": url})
    assert (settings.upstream_protocol, settings.upstream_address) == (protocol, address)


def test_lists() -> None:
    settings = load(ProxySettings, {"API_KEYS": "a, b,,", "OPEN_ENDPOINTS": "/healthz"})
    assert settings.api_keys == ("a", "b") and settings.open_endpoints == ("/healthz",)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        pytest.param("PORT", "http", id="port-not-int"),
        pytest.param("PORT", "70000", id="port-too-big"),
        pytest.param("MODEL_SERVER_URL", "https://triton:8000", id="url-https"),
        pytest.param("MODEL_SERVER_URL", "grpc://triton", id="url-no-port"),
        pytest.param("MODEL_SERVER_URL", "http://triton:8000/v2", id="url-path"),
        pytest.param("PROXY_WORKERS", "-1", id="workers-negative"),
        pytest.param("PROXY_COALESCE", "maybe", id="coalesce-not-bool"),
        pytest.param("MAX_BODY_BYTES", "-1", id="body-negative"),
        pytest.param("REQUEST_TIMEOUT_MS", "soon", id="timeout-not-number"),
        pytest.param("LOG_LEVEL", "loud", id="log-level"),
        pytest.param("OPEN_ENDPOINTS", "healthz", id="open-endpoint-not-path"),
        pytest.param("COALESCE_MAX_ROWS", "-1", id="coalesce-rows-negative"),
        pytest.param("COALESCE_MAX_WAIT_MS", "soon", id="coalesce-wait-not-a-number"),
        pytest.param("MAX_DYNAMIC_DIM", "0", id="dynamic-dim-zero"),
        pytest.param("MAX_DYNAMIC_DIM", "2000000", id="dynamic-dim-over-metadata-limit"),
        pytest.param("API_KEYS_POLL_S", "0", id="keys-poll-zero"),
        pytest.param("RESIDENCY_URL", "127.0.0.1:9103", id="residency-url-no-scheme"),
        pytest.param("RESIDENCY_URL", "grpc://127.0.0.1:9103", id="residency-url-not-http"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        load(ProxySettings, {variable: value})


def test_api_keys_are_not_echoed_in_errors() -> None:
    with pytest.raises(SettingsError) as caught:
        load(ProxySettings, {"API_KEYS": "good,bad key"})
    assert "bad key" not in str(caught.value)


@pytest.mark.parametrize(
    ("model_name", "default_model", "refused"),
    [
        pytest.param("alpha", "beta", True, id="default-not-the-one-model"),
        pytest.param("alpha", "alpha", False, id="default-the-one-model"),
        pytest.param("", "beta", False, id="default-among-the-catalog"),
    ],
)
def test_default_model_with_model_name(model_name: str, default_model: str, refused: bool) -> None:
    """MODEL_NAME serves one model only: a DEFAULT_MODEL naming another could never answer."""
    env = {"MODEL_NAME": model_name, "DEFAULT_MODEL": default_model}
    if refused:
        with pytest.raises(SettingsError, match="DEFAULT_MODEL"):
            load(ProxySettings, env)
    else:
        assert load(ProxySettings, env).default_model == default_model
