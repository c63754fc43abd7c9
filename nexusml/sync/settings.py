"""Settings of the sync side: where models come from (S3) and how `nexus sync` writes them.

Declared with `nexusml.core.settings.env`; the metadata path and the model repository are the shared
declarations of `nexusml.core.settings`, which the proxy, Triton and the watcher read too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nexusml.core import catalog
from nexusml.core.errors import SettingsError
from nexusml.core.settings import (
    META_PATH,
    MODEL_REPOSITORY,
    env,
    nested,
    parse_bool,
    parse_bucket,
    parse_endpoint,
    parse_int_list,
)


@dataclass(frozen=True)
class S3Settings:
    """Where models are read from (and, for the demo publisher, written to)."""

    endpoint_url: str | None = env(
        "AWS_ENDPOINT_URL", None, "S3-compatible endpoint (MinIO, moto); unset means AWS itself", parse_endpoint
    )
    model_bucket: str | None = env(
        "MODEL_BUCKET", None, "bucket for artifact locations given as a bare key in the metadata", parse_bucket
    )
    connect_timeout_s: float = env("S3_CONNECT_TIMEOUT_S", 5.0, "TCP connect timeout", float, minimum=0.1)
    read_timeout_s: float = env("S3_READ_TIMEOUT_S", 30.0, "socket read timeout", float, minimum=0.1)
    max_attempts: int = env(
        "S3_MAX_ATTEMPTS",
        5,
        "attempts per S3 call (botocore 'standard' retry mode)",
        int,
        minimum=1,
        maximum=20,
    )
    access_key_id: str | None = env(
        "AWS_ACCESS_KEY_ID", None, "access key; unset: boto3's chain (shared profile, instance or pod role)"
    )
    secret_access_key: str | None = env(
        "AWS_SECRET_ACCESS_KEY", None, "secret key, with AWS_ACCESS_KEY_ID", secret=True
    )
    session_token: str | None = env("AWS_SESSION_TOKEN", None, "session token of temporary credentials", secret=True)
    region: str | None = env(
        "AWS_REGION", None, "region (MinIO wants one); unset: boto3's chain (AWS_DEFAULT_REGION, profile)"
    )


@dataclass(frozen=True)
class SyncSettings:
    """`nexus sync`: metadata -> S3 -> model repository."""

    meta_path: Path = META_PATH.field()
    repository: Path = MODEL_REPOSITORY.field()
    meta_uri: str | None = env(
        "WATCH_META_URI",
        None,
        "s3://bucket/key of the one model's metadata for `nexus watch` to follow (ETag polling); or "
        "s3://bucket/prefix/ of many models' (`*.json` objects): then `nexus sync` and `nexus watch` mirror them into "
        "the NEXUS_META_PATH directory first; unset: NEXUS_META_PATH alone (a file or a directory of them)",
    )
    batch_size: int | None = env(
        "BATCH_SIZE", None, "max_batch_size (default: metadata hint, else 32)", int, minimum=1, maximum=4096
    )
    batch_timeout_ms: float | None = env(
        "BATCH_TIMEOUT_MS",
        None,
        "dynamic batcher's max queue delay in ms (default: metadata hint, else 50)",
        float,
        minimum=0,
        maximum=60_000,
    )
    preferred_batch_sizes: tuple[int, ...] | None = env(
        "PREFERRED_BATCH_SIZES",
        None,
        "comma list (default: metadata hint, else powers of two from 4 to BATCH_SIZE)",
        parse_int_list,
        minimum=1,
    )
    dynamic_batching: bool = env(
        "DYNAMIC_BATCHING", True, "false leaves out dynamic_batching: each request runs alone", parse_bool
    )
    device: str = env(
        "DEVICE", "auto", "cuda -> KIND_GPU, cpu -> KIND_CPU, auto detects", choices=("auto", "cuda", "cpu")
    )
    instance_count: int = env(
        "INSTANCE_COUNT", 2, "model instances per device (each a Python-backend process)", int, minimum=1, maximum=64
    )
    min_instance_count: int | None = env(
        "MIN_INSTANCE_COUNT",
        None,
        "instances a model is synced with when lower than INSTANCE_COUNT: `nexus watch` then scales each model "
        "between the two by its queueing (SCALE_UP_QUEUE_MS, SCALE_DOWN_IDLE_S); unset: INSTANCE_COUNT, fixed",
        int,
        minimum=1,
        maximum=64,
    )
    torch_threads: int = env("TORCH_THREADS", 1, "torch intra-op threads per instance", int, minimum=1, maximum=256)
    precision: str = env(
        "PRECISION",
        "auto",
        "forward pass in fp32, fp16 or bf16 (these two only when the metadata allows them); auto: on a GPU the "
        "first reduced precision the metadata allows, else fp32",
        choices=("auto", "fp32", "fp16", "bf16"),
    )
    stage_log_interval_s: float = env(
        "STAGE_LOG_INTERVAL_S",
        0.0,
        "seconds between the backend's per-stage timing lines in Triton's log (0: none)",
        float,
        minimum=0,
    )
    max_queue_size: int | None = env(
        "MAX_QUEUE_SIZE",
        None,
        "requests Triton queues before rejecting (default 8 x BATCH_SIZE)",
        int,
        minimum=1,
    )
    queue_timeout_ms: float = env(
        "QUEUE_TIMEOUT_MS", 2000.0, "a request waiting longer in Triton's queue is rejected", float, minimum=1
    )
    keep_versions: int = env(
        "KEEP_VERSIONS", 2, "versions kept on disk: the synced one plus the newest others", int, minimum=1
    )
    max_artifact_bytes: int = env(
        "MAX_ARTIFACT_BYTES", 8 << 30, "cap on the download and on an archive's unpacked size", int, minimum=1
    )
    s3: S3Settings = nested(S3Settings)

    @property
    def instance_range(self) -> tuple[int, int]:
        """(instances of an idle model, of a busy one): equal unless MIN_INSTANCE_COUNT < INSTANCE_COUNT."""
        low = self.instance_count if self.min_instance_count is None else self.min_instance_count
        return low, self.instance_count

    def validate(self) -> None:
        if self.meta_uri and self.meta_uri.endswith("/"):
            check_prefix(self.meta_uri, self.meta_path)
        if self.min_instance_count is not None and self.min_instance_count > self.instance_count:
            raise SettingsError(
                f"MIN_INSTANCE_COUNT={self.min_instance_count} exceeds INSTANCE_COUNT={self.instance_count}"
            )
        if self.preferred_batch_sizes and self.batch_size is not None:
            too_big = [size for size in self.preferred_batch_sizes if size > self.batch_size]
            if too_big:
                raise SettingsError(f"PREFERRED_BATCH_SIZES={too_big} exceed BATCH_SIZE={self.batch_size}")


def check_prefix(uri: str, directory: Path) -> None:
    """Refuse an S3 prefix of many models (`WATCH_META_URI` ending with a slash) that cannot be mirrored into
    `directory` (NEXUS_META_PATH), or whose key a URI parser would cut short."""
    if "#" in uri or "?" in uri:
        raise SettingsError(f"WATCH_META_URI={uri}: '#' and '?' end a URI's path; a prefix cannot hold them here")
    if directory.exists() and not directory.is_dir():
        raise SettingsError(
            f"WATCH_META_URI={uri} is a prefix of many models: NEXUS_META_PATH={directory} must name a directory to "
            "mirror them into, not a file"
        )
    if not directory.exists() and directory.name.endswith(catalog.SUFFIX):
        raise SettingsError(
            f"WATCH_META_URI={uri} is a prefix of many models: NEXUS_META_PATH={directory} looks like one model's "
            "file; name the directory to mirror them into"
        )
