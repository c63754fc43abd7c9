"""Broken artifacts and metadata for the sync's failure paths, and the exit each must end in.

`SYNC_FAILURES` is one table read twice: by `tests/nexusml/sync/test_pipeline.py` (each case's exit code and
message, the repository untouched) and by the reliability bed's sync-fault scenario (the same cases timed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexusml.core.metadata import ModelMetadata
from nexusml.core.process import guarded
from nexusml.testing.environment import free_port
from nexusml.testing.models import TEST_BUCKET

# The sync as a child process, the way the deployments run it.
SYNC_COMMAND = (sys.executable, "-m", "nexusml", "sync")


def run_sync(
    env: dict[str, str],
    meta: ModelMetadata | dict[str, Any],
    workdir: Path,
    max_file_bytes: int | None = None,
    command: tuple[str, ...] = SYNC_COMMAND,
    **extra: str,
) -> subprocess.CompletedProcess[str]:
    """Write the metadata into `workdir` and run the sync on it (CPU); its output is captured.

    `max_file_bytes` caps the sync's file sizes as a full disk would (through `nexusml.core.exec_guard`)."""
    data = meta if isinstance(meta, dict) else meta.to_dict()
    (workdir / ".nexus_meta.json").write_text(json.dumps(data))
    return subprocess.run(
        list(command) if max_file_bytes is None else guarded(list(command), max_file_bytes),
        env={**env, "NEXUS_META_PATH": str(workdir / ".nexus_meta.json"), "DEVICE": "cpu", **extra},
        capture_output=True,
        text=True,
        timeout=120,
    )


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` (hidden ones included) with the hash of its content."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
        if "__pycache__" not in p.parts
    }


def put(s3_client: Any, key: str, data: bytes, bucket: str = TEST_BUCKET) -> tuple[str, str, int]:
    """Upload `data`; returns the uri, sha256 and size the metadata needs."""
    s3_client.put_object(Bucket=bucket, Key=key, Body=data)
    return f"s3://{bucket}/{key}", hashlib.sha256(data).hexdigest(), len(data)


def tar_of(build: Callable[[tarfile.TarFile], None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        build(tar)
    return buffer.getvalue()


def add_file(tar: tarfile.TarFile, name: str, data: bytes = b"x") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def model_and(*extra: str) -> Callable[[tarfile.TarFile], None]:
    """A tar builder: the model file at the root, and `extra` files beside it (which a tar may not hold)."""

    def build(tar: tarfile.TarFile) -> None:
        add_file(tar, "model.pt")
        for name in extra:
            add_file(tar, name)

    return build


def add_symlink(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    tar.addfile(info)


def with_artifact(meta: ModelMetadata, **changes: Any) -> ModelMetadata:
    """Version 2 of `meta` with its artifact changed."""
    return dataclasses.replace(meta, version=2, artifact=dataclasses.replace(meta.artifact, **changes))


def archive_meta(meta: ModelMetadata, s3_client: Any, key: str, data: bytes) -> ModelMetadata:
    uri, sha, size = put(s3_client, key, data)
    return with_artifact(meta, uri=uri, sha256=sha, size=size, packaging="tar")


# A failing write, as on a full disk: files may not grow past 64 KiB (EFBIG instead of SIGXFSZ); see `run_sync`.
FULL_DISK_BYTES = 64 << 10


# prepare(meta, s3_client, {"auth_endpoint": url}) -> (the metadata to sync, extra settings)
Prepare = Callable[[ModelMetadata, Any, dict[str, str]], tuple[ModelMetadata | dict[str, Any], dict[str, str]]]


@dataclass(frozen=True)
class SyncFailure:
    """One way a sync must fail: its exit code, and a phrase its one-line message contains."""

    id: str
    prepare: Prepare
    exit_code: int
    message: str


SYNC_FAILURES = [
    SyncFailure("invalid-metadata", lambda m, s3, env: ({**m.to_dict(), "version": 0}, {}), 3, "$.version"),
    SyncFailure(
        "missing-object",
        lambda m, s3, env: (with_artifact(m, uri=f"s3://{TEST_BUCKET}/no/such/key.pt"), {}),
        4,
        "not found",
    ),
    SyncFailure(
        "missing-bucket",
        lambda m, s3, env: (with_artifact(m, uri="s3://no-such-bucket-here/model.pt"), {}),
        4,
        "not found",
    ),
    SyncFailure(
        "bare-key-without-bucket",
        lambda m, s3, env: (with_artifact(m, uri="demo/model.pt"), {"MODEL_BUCKET": ""}),
        3,
        "MODEL_BUCKET",
    ),
    SyncFailure(
        "access-denied",
        lambda m, s3, env: (with_artifact(m), {"AWS_ENDPOINT_URL": env["auth_endpoint"]}),
        5,
        "access denied",
    ),
    SyncFailure(
        "unreachable",
        lambda m, s3, env: (
            with_artifact(m),
            {
                "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
                "S3_MAX_ATTEMPTS": "2",
                "S3_CONNECT_TIMEOUT_S": "0.5",
            },
        ),
        6,
        "cannot reach",
    ),
    SyncFailure("checksum-mismatch", lambda m, s3, env: (with_artifact(m, sha256="0" * 64), {}), 7, "sha256 mismatch"),
    SyncFailure(
        "size-mismatch", lambda m, s3, env: (with_artifact(m, size=m.artifact.size + 1), {}), 7, "size mismatch"
    ),
    SyncFailure(
        "archive-dot-dot",
        lambda m, s3, env: (archive_meta(m, s3, "bad/dotdot.tgz", tar_of(lambda t: add_file(t, "../evil"))), {}),
        8,
        "escape",
    ),
    SyncFailure(
        "archive-absolute",
        lambda m, s3, env: (archive_meta(m, s3, "bad/abs.tgz", tar_of(lambda t: add_file(t, "/tmp/evil"))), {}),
        8,
        "escape",
    ),
    SyncFailure(
        "archive-symlink",
        lambda m, s3, env: (
            archive_meta(m, s3, "bad/link.tgz", tar_of(lambda t: add_symlink(t, "model.pt", "/etc/passwd"))),
            {},
        ),
        8,
        "symlink",
    ),
    SyncFailure(
        "archive-over-cap",
        lambda m, s3, env: (
            archive_meta(m, s3, "bad/bomb.tgz", tar_of(lambda t: add_file(t, "model.pt", b"\0" * (4 << 20)))),
            {"MAX_ARTIFACT_BYTES": str(1 << 20)},
        ),
        8,
        "MAX_ARTIFACT_BYTES",
    ),
    SyncFailure(
        "archive-without-model",
        lambda m, s3, env: (archive_meta(m, s3, "bad/nomodel.tgz", tar_of(lambda t: None)), {}),
        7,
        "no model.pt",
    ),
    SyncFailure(
        "archive-python-beside-model",
        lambda m, s3, env: (archive_meta(m, s3, "bad/init.tgz", tar_of(model_and("__init__.py"))), {}),
        8,
        "'__init__.py' is not allowed",
    ),
    SyncFailure(
        "archive-extra-data-file",
        lambda m, s3, env: (archive_meta(m, s3, "bad/extra.tgz", tar_of(model_and("weights.bin"))), {}),
        8,
        "'weights.bin' is not allowed",
    ),
    SyncFailure(
        "archive-model-in-a-folder",
        lambda m, s3, env: (archive_meta(m, s3, "bad/nested.tgz", tar_of(lambda t: add_file(t, "model/model.pt"))), {}),
        8,
        "'model/model.pt' is not allowed",
    ),
]
