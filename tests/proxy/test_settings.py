"""`ProxySettings` from the environment: defaults, parsing, and start-up errors that name the variable."""

from __future__ import annotations

import pytest

from nexusml.core.errors import SettingsError
from nexusml.core.settings import load
from proxy.settings import ProxySettings


def test_defaults() -> None:
    settings = load(ProxySettings, {})
    assert settings.model_server_url == "grpc://127.0.0.1:8001"
    assert (settings.upstream_protocol, settings.upstream_address) == ("grpc", "127.0.0.1:8001")
    assert settings.port == 8080 and settings.workers == 1 and settings.coalesce
    assert settings.api_keys == () and "/healthz" in settings.open_endpoints


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
        pytest.param("PROXY_WORKERS", "0", id="workers-zero"),
        pytest.param("PROXY_COALESCE", "maybe", id="coalesce-not-bool"),
        pytest.param("MAX_BODY_BYTES", "-1", id="body-negative"),
        pytest.param("REQUEST_TIMEOUT_MS", "soon", id="timeout-not-number"),
        pytest.param("LOG_LEVEL", "loud", id="log-level"),
        pytest.param("OPEN_ENDPOINTS", "healthz", id="open-endpoint-not-path"),
        pytest.param("COALESCE_MAX_ROWS", "-1", id="coalesce-rows-negative"),
        pytest.param("COALESCE_MAX_WAIT_MS", "soon", id="coalesce-wait-not-a-number"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        load(ProxySettings, {variable: value})


def test_api_keys_are_not_echoed_in_errors() -> None:
    with pytest.raises(SettingsError) as caught:
        load(ProxySettings, {"API_KEYS": "good,bad key"})
    assert "bad key" not in str(caught.value)
