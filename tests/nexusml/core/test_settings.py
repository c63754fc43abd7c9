"""Settings from the environment: defaults, and bad values rejected with the variable named."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from nexusml.command.cli import exit_code
from nexusml.command.stack import StackSettings
from nexusml.core.errors import AccessDenied, SettingsError
from nexusml.core.settings import EnvVar, LogSettings, load, variables
from nexusml.sync import storage
from nexusml.sync.settings import S3Settings, SyncSettings
from nexusml.triton.settings import TritonSettings
from nexusml.updates.watch import WatchSettings
from proxy.settings import ProxySettings
from tests.conftest import settings_classes


def test_defaults() -> None:
    settings = load(SyncSettings, {})
    assert settings.meta_path == Path(".nexus_meta.json")
    assert settings.repository == Path("model_repository")
    assert settings.batch_size is None  # resolved later: metadata hint, else 32
    assert settings.device == "auto"
    assert settings.s3.endpoint_url is None
    assert settings.s3.max_attempts == 5


def test_values_are_parsed() -> None:
    settings = load(
        SyncSettings,
        {"BATCH_SIZE": "64", "BATCH_TIMEOUT_MS": "2.5", "DEVICE": "CUDA", "PREFERRED_BATCH_SIZES": "8, 16,64"},
    )
    assert (settings.batch_size, settings.batch_timeout_ms, settings.device) == (64, 2.5, "cuda")
    assert settings.preferred_batch_sizes == (8, 16, 64)


def test_empty_value_keeps_default() -> None:
    assert load(SyncSettings, {"BATCH_SIZE": " "}).batch_size is None


@pytest.mark.parametrize(
    ("cls", "environ", "variable"),
    [
        pytest.param(SyncSettings, {"BATCH_SIZE": "abc"}, "BATCH_SIZE", id="batch-size-not-int"),
        pytest.param(SyncSettings, {"BATCH_SIZE": "0"}, "BATCH_SIZE", id="batch-size-zero"),
        pytest.param(SyncSettings, {"BATCH_SIZE": "1e9"}, "BATCH_SIZE", id="batch-size-float"),
        pytest.param(SyncSettings, {"BATCH_TIMEOUT_MS": "-1"}, "BATCH_TIMEOUT_MS", id="timeout-negative"),
        pytest.param(SyncSettings, {"BATCH_TIMEOUT_MS": "soon"}, "BATCH_TIMEOUT_MS", id="timeout-not-number"),
        pytest.param(SyncSettings, {"DEVICE": "tpu"}, "DEVICE", id="device-unknown"),
        pytest.param(SyncSettings, {"PREFERRED_BATCH_SIZES": "4,x"}, "PREFERRED_BATCH_SIZES", id="preferred-bad"),
        pytest.param(
            SyncSettings,
            {"BATCH_SIZE": "8", "PREFERRED_BATCH_SIZES": "4,16"},
            "PREFERRED_BATCH_SIZES",
            id="preferred-over-batch-size",
        ),
        pytest.param(SyncSettings, {"S3_MAX_ATTEMPTS": "0"}, "S3_MAX_ATTEMPTS", id="attempts-zero"),
        pytest.param(SyncSettings, {"AWS_ENDPOINT_URL": "minio:9000"}, "AWS_ENDPOINT_URL", id="endpoint-no-scheme"),
        pytest.param(SyncSettings, {"AWS_ENDPOINT_URL": "http://h:port"}, "AWS_ENDPOINT_URL", id="endpoint-port"),
        pytest.param(SyncSettings, {"MODEL_BUCKET": "Bad_Bucket"}, "MODEL_BUCKET", id="bucket-name"),
        pytest.param(TritonSettings, {"TRITON_HTTP_PORT": "70000"}, "TRITON_HTTP_PORT", id="port-range"),
        pytest.param(TritonSettings, {"TRITON_HTTP_PORT": "8001"}, "TRITON_GRPC_PORT", id="ports-collide"),
        pytest.param(StackSettings, {"LOCAL_S3_PORT": "x"}, "LOCAL_S3_PORT", id="stack-port"),
        pytest.param(LogSettings, {"LOG_LEVEL": "loud"}, "LOG_LEVEL", id="log-level"),
        pytest.param(
            WatchSettings, {"MODEL_SERVER_URL": "http://triton:8000"}, "MODEL_SERVER_URL", id="watcher-wants-grpc"
        ),
        pytest.param(WatchSettings, {"TRITON_URL": "triton"}, "TRITON_URL", id="watcher-alias-no-port"),
    ],
)
def test_bad_values_name_the_variable(cls: type, environ: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError, match=variable) as caught:
        load(cls, environ)
    assert "\n" not in str(caught.value)


def test_local_s3_only_when_nothing_configured() -> None:
    assert load(StackSettings, {}).local_s3
    assert not load(StackSettings, {"AWS_ENDPOINT_URL": "http://minio:9000"}).local_s3
    assert not load(StackSettings, {"MODEL_BUCKET": "models"}).local_s3


def test_every_variable_is_documented() -> None:
    doc = (Path(__file__).parents[3] / "docs" / "settings.md").read_text()
    for cls in (SyncSettings, TritonSettings, StackSettings, LogSettings):
        for var, _default in variables(cls):
            assert f"`{var.name}`" in doc, f"{var.name} missing from docs/settings.md"


def test_each_variable_is_declared_once() -> None:
    """A name read by several processes is one declaration (one default, doc and bound), not several copies."""
    declared: dict[str, EnvVar] = {}
    for cls in settings_classes():
        for var, _default in variables(cls):
            assert declared.setdefault(var.name, var) is var, f"{var.name} is declared more than once"
    shared = {"NEXUS_META_PATH", "MODEL_REPOSITORY", "TRITON_ADMIN_KEY", "MODEL_SERVER_URL", "LOG_LEVEL"}
    assert shared <= set(declared)
    assert not {alias for var in declared.values() for alias in var.aliases} & set(declared)


@pytest.mark.parametrize(
    ("environ", "url", "deprecations"),
    [
        pytest.param({"MODEL_SERVER_URL": "grpc://a:1"}, "grpc://a:1", [], id="new-name"),
        pytest.param(
            {"TRITON_URL": "grpc://b:2"},
            "grpc://b:2",
            ["TRITON_URL is deprecated: set MODEL_SERVER_URL instead"],
            id="alias",
        ),
        pytest.param(
            {"MODEL_SERVER_URL": "grpc://a:1", "TRITON_URL": "grpc://b:2"},
            "grpc://a:1",
            ["TRITON_URL is deprecated: set MODEL_SERVER_URL instead; MODEL_SERVER_URL is set and wins"],
            id="both-new-wins",
        ),
        pytest.param(
            {"MODEL_SERVER_URL": " ", "TRITON_URL": "grpc://b:2"},
            "grpc://b:2",
            ["TRITON_URL is deprecated: set MODEL_SERVER_URL instead"],
            id="empty-new-name",
        ),
        pytest.param({"TRITON_URL": ""}, "grpc://127.0.0.1:8001", [], id="empty-alias"),
        pytest.param({}, "grpc://127.0.0.1:8001", [], id="neither"),
    ],
)
def test_a_former_name_is_read_with_one_deprecation_line(
    environ: dict[str, str], url: str, deprecations: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """`nexus up` reads MODEL_SERVER_URL twice (proxy and watcher settings): still one line per load."""
    with caplog.at_level(logging.WARNING, logger="nexusml.core.settings"):
        settings = load(StackSettings, environ)
    assert settings.proxy.model_server_url == settings.watch.triton_url == url
    assert [r.getMessage() for r in caplog.records if r.name == "nexusml.core.settings"] == deprecations


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        pytest.param({"TRITON_URL": "grpc://no-port"}, "TRITON_URL", id="bad-alias-names-the-alias"),
        pytest.param(
            {"MODEL_SERVER_URL": "grpc://no-port", "TRITON_URL": "grpc://b:2"}, "MODEL_SERVER_URL", id="bad-new-name"
        ),
    ],
)
def test_a_bad_value_names_the_variable_it_was_read_from(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError, match=f"^{variable}="):
        load(WatchSettings, environ)


@pytest.mark.parametrize(
    ("environ", "level"),
    [
        pytest.param({}, "info", id="default"),
        pytest.param({"LOG_LEVEL": "DEBUG"}, "debug", id="any-case"),
        pytest.param({"LOG_LEVEL": "warning"}, "warning", id="warning"),
    ],
)
def test_one_log_level_for_every_process(environ: dict[str, str], level: str) -> None:
    assert load(LogSettings, environ).log_level == level
    assert load(ProxySettings, environ).log_level == level


def test_s3_credentials_come_from_the_settings_and_stay_out_of_logs() -> None:
    environ = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_SESSION_TOKEN": "t0ken"}
    settings = load(S3Settings, {**environ, "AWS_REGION": "eu-west-1"})
    assert "s3cr3t" not in repr(settings) and "t0ken" not in repr(settings)
    credentials = storage.client(settings)._request_signer._credentials
    assert (credentials.access_key, credentials.secret_key, credentials.token) == ("AKIAEXAMPLE", "s3cr3t", "t0ken")
    assert storage.client(settings).meta.region_name == "eu-west-1"


def test_half_set_credentials_are_an_access_error() -> None:
    """As boto3's chain would say with a key and no secret: exit 5, "no usable AWS credentials"."""
    with pytest.raises(AccessDenied, match="no usable AWS credentials") as caught:
        storage.client(load(S3Settings, {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE"}))
    assert exit_code(caught.value) == 5
