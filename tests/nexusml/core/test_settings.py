"""Settings from the environment: defaults, and bad values rejected with the variable named."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexusml.command.cli import exit_code
from nexusml.command.stack import StackSettings
from nexusml.core.errors import AccessDenied, SettingsError
from nexusml.core.settings import load, variables
from nexusml.sync import storage
from nexusml.sync.settings import S3Settings, SyncSettings
from nexusml.triton.settings import TritonSettings


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


def test_every_variable_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).parents[3] / "README.md").read_text()
    for cls in (SyncSettings, TritonSettings, StackSettings):
        for var, _default in variables(cls):
            assert f"`{var.name}`" in readme, f"{var.name} missing from the README's settings tables"


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
