"""S3 access: locate, download (streamed, verified, resumable) and upload artifacts.

Credentials come from the settings (the AWS_* variables), else from boto3's chain (profiles, instance or pod roles);
the endpoint is passed only when one is configured. botocore's 'standard' retry mode retries whole
calls; a stream that breaks halfway is resumed here with a ranged GET pinned to the object's ETag, so an
object replaced mid-download is detected instead of being stitched from two versions.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    IncompleteReadError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from tqdm import tqdm
from urllib3.exceptions import ProtocolError

from nexusml.core.errors import (
    AccessDenied,
    ArtifactNotFound,
    EndpointUnreachable,
    IntegrityError,
    MetadataError,
    NexusError,
    UnsafeArchive,
)
from nexusml.sync.settings import S3Settings

CHUNK_BYTES = 1 << 20
_NOT_FOUND = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}
_DENIED = {
    "403",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
}
_CHANGED = {"412", "PreconditionFailed"}
# A body that breaks after the response started: resumed from the last byte written.
_BROKEN_STREAM = (
    ResponseStreamingError,
    IncompleteReadError,
    ReadTimeoutError,
    ProtocolError,
    ConnectionError,
)


@dataclass(frozen=True)
class ObjectLocation:
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def locate(uri: str, default_bucket: str | None) -> ObjectLocation:
    """`s3://bucket/key`, or a bare key inside `default_bucket` (MODEL_BUCKET)."""
    parsed = urlparse(uri, scheme="s3")
    if parsed.netloc:
        return ObjectLocation(parsed.netloc, parsed.path.lstrip("/"))
    if not default_bucket:
        raise MetadataError(f"$.artifact.uri: {uri!r} is a bare key, so MODEL_BUCKET must be set")
    return ObjectLocation(default_bucket, uri.lstrip("/"))


def client(settings: S3Settings) -> Any:
    config = Config(
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
        retries={"mode": "standard", "max_attempts": settings.max_attempts},
    )
    # Credentials and region come from the settings; left unset, boto3's own chain (profiles, IRSA) applies.
    if bool(settings.access_key_id) != bool(settings.secret_access_key):
        raise AccessDenied("no usable AWS credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY go together")
    session = boto3.session.Session(
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        aws_session_token=settings.session_token,
        region_name=settings.region,
    )
    return session.client("s3", endpoint_url=settings.endpoint_url, config=config)


@contextmanager
def s3_errors(location: ObjectLocation, endpoint: str | None) -> Iterator[None]:
    """Convert botocore's exceptions into the project's, each naming the object."""
    where = endpoint or "AWS S3"
    try:
        yield
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _NOT_FOUND:
            raise ArtifactNotFound(f"{location}: not found (no such bucket or key)") from err
        if code in _DENIED:
            raise AccessDenied(f"{location}: access denied ({code})") from err
        if code in _CHANGED:
            raise IntegrityError(f"{location}: object changed while downloading (ETag no longer matches)") from err
        if status >= 500:
            raise EndpointUnreachable(f"{location}: {where} failed with {status} {code} after retries") from err
        raise NexusError(f"{location}: S3 error {code or status}") from err
    except ParamValidationError as err:
        raise MetadataError(f"{location}: not a valid S3 location ({err})") from err
    except (NoCredentialsError, PartialCredentialsError) as err:
        raise AccessDenied(f"{location}: no usable AWS credentials ({err})") from err
    except BotoCoreError as err:
        raise EndpointUnreachable(f"{location}: cannot reach {where} after retries ({err})") from err


def _write_stream(body: Any, out: BinaryIO, on_chunk: Callable[[bytes], None]) -> None:
    for chunk in body.iter_chunks(CHUNK_BYTES):
        out.write(chunk)
        on_chunk(chunk)


def download(
    s3: Any,
    location: ObjectLocation,
    dest: Path,
    *,
    expected_size: int,
    expected_sha256: str,
    max_bytes: int,
    attempts: int,
    endpoint: str | None = None,
    progress: bool = False,
) -> None:
    """Stream `location` into `dest`, verifying size and sha256; memory use does not grow with size."""
    with s3_errors(location, endpoint):
        head = s3.head_object(Bucket=location.bucket, Key=location.key)
    size, etag = head["ContentLength"], head["ETag"]
    if size != expected_size:
        raise IntegrityError(f"{location}: size mismatch: object has {size} bytes, metadata says {expected_size}")
    if size > max_bytes:
        raise UnsafeArchive(f"{location}: {size} bytes exceeds MAX_ARTIFACT_BYTES={max_bytes}")

    hasher = hashlib.sha256()
    written = 0

    def on_chunk(chunk: bytes) -> None:
        nonlocal written
        hasher.update(chunk)
        written += len(chunk)
        bar.update(len(chunk))
        if written > size:
            raise IntegrityError(f"{location}: object grew past {size} bytes while downloading")

    with (
        dest.open("wb") as out,
        tqdm(total=size, unit="B", unit_scale=True, desc=location.key, disable=not progress) as bar,
    ):
        for attempt in range(1, attempts + 1):
            ranged = {"Range": f"bytes={written}-"} if written else {}
            try:
                with s3_errors(location, endpoint):
                    response = s3.get_object(Bucket=location.bucket, Key=location.key, IfMatch=etag, **ranged)
                _write_stream(response["Body"], out, on_chunk)
                break
            except _BROKEN_STREAM as err:
                if attempt == attempts:
                    raise EndpointUnreachable(
                        f"{location}: download broke at byte {written} of {size} {attempts} times ({err})"
                    ) from err
                time.sleep(min(0.2 * 2**attempt, 5.0))
        out.flush()
        os.fsync(out.fileno())

    if written != size:
        raise IntegrityError(f"{location}: got {written} bytes, metadata says {size}")
    digest = hasher.hexdigest()
    if digest != expected_sha256:
        raise IntegrityError(f"{location}: sha256 mismatch: got {digest}, metadata says {expected_sha256}")


def upload(s3: Any, location: ObjectLocation, source: Path, endpoint: str | None = None) -> None:
    """Upload a file (multipart when large), creating the bucket if it does not exist."""
    with s3_errors(location, endpoint):
        try:
            s3.head_bucket(Bucket=location.bucket)
        except ClientError as err:
            if str(err.response.get("Error", {}).get("Code")) not in _NOT_FOUND:
                raise
            s3.create_bucket(Bucket=location.bucket)
        s3.upload_file(str(source), location.bucket, location.key)


def sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            hasher.update(chunk)
    return hasher.hexdigest()
