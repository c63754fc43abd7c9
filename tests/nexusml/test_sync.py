"""`nexus sync` end to end against a real S3 endpoint over HTTP (moto's server), as a subprocess.

Every failure has its exit code and a one-line message, and leaves the repository exactly as it was.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import resource
import signal
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nexusml import demo
from nexusml.core import metadata
from nexusml.core.metadata import ModelMetadata
from nexusml.core.settings import load
from nexusml.s3local import LocalS3
from nexusml.sync.pipeline import sync
from nexusml.sync.settings import SyncSettings
from tests.conftest import TEST_BUCKET, PublishedModel, base_environment, free_port, publish, start_triton
from tests.nexusml.test_serving import infer

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).parents[2] / "scripts" / "sync_model.py"


def run_sync(
    env: dict[str, str],
    meta: ModelMetadata | dict[str, Any],
    workdir: Path,
    preexec_fn: Callable[[], None] | None = None,
    **extra: str,
) -> subprocess.CompletedProcess[str]:
    """Write the metadata and run the documented entry point, `scripts/sync_model.py`."""
    data = meta if isinstance(meta, dict) else meta.to_dict()
    (workdir / ".nexus_meta.json").write_text(json.dumps(data))
    return subprocess.run(
        [sys.executable, str(SCRIPT)],
        env={**env, "NEXUS_META_PATH": str(workdir / ".nexus_meta.json"), "DEVICE": "cpu", **extra},
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=preexec_fn,
    )


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` (hidden ones included) with the hash of its content."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
        if "__pycache__" not in p.parts
    }


@pytest.fixture
def repo_env(s3_env: dict[str, str], demo_model: PublishedModel, tmp_path: Path) -> dict[str, str]:
    """A repository already holding the demo model's version 1."""
    env = {**s3_env, "MODEL_REPOSITORY": str(tmp_path / "model_repository")}
    sync(demo_model.meta, load(SyncSettings, {**env, "DEVICE": "cpu"}))
    return env


def put(s3_client: Any, key: str, data: bytes) -> tuple[str, str, int]:
    s3_client.put_object(Bucket=TEST_BUCKET, Key=key, Body=data)
    return f"s3://{TEST_BUCKET}/{key}", hashlib.sha256(data).hexdigest(), len(data)


def tar_of(build: Callable[[tarfile.TarFile], None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        build(tar)
    return buffer.getvalue()


def add_file(tar: tarfile.TarFile, name: str, data: bytes = b"x") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def add_symlink(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    tar.addfile(info)


def with_artifact(meta: ModelMetadata, **changes: Any) -> ModelMetadata:
    return dataclasses.replace(meta, version=2, artifact=dataclasses.replace(meta.artifact, **changes))


def archive_meta(meta: ModelMetadata, s3_client: Any, key: str, data: bytes) -> ModelMetadata:
    uri, sha, size = put(s3_client, key, data)
    return with_artifact(meta, uri=uri, sha256=sha, size=size, packaging="tar")


@pytest.fixture(scope="module")
def auth_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    """A second S3 endpoint that checks credentials (and knows none)."""
    env = {**base_environment(), "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    with LocalS3(free_port(), env, log_file=tmp_path_factory.mktemp("auth") / "moto.log") as server:
        yield server


def _limit_file_size() -> None:
    """A failing write, as on a full disk: files may not grow past 64 KiB (EFBIG instead of SIGXFSZ)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))


FAILURES = [
    pytest.param(
        lambda m, s3, env: ({**m.to_dict(), "version": 0}, {}),
        3,
        "$.version",
        id="invalid-metadata",
    ),
    pytest.param(
        lambda m, s3, env: (with_artifact(m, uri=f"s3://{TEST_BUCKET}/no/such/key.pt"), {}),
        4,
        "not found",
        id="missing-object",
    ),
    pytest.param(
        lambda m, s3, env: (with_artifact(m, uri="s3://no-such-bucket-here/model.pt"), {}),
        4,
        "not found",
        id="missing-bucket",
    ),
    pytest.param(
        lambda m, s3, env: (with_artifact(m, uri="demo/model.pt"), {"MODEL_BUCKET": ""}),
        3,
        "MODEL_BUCKET",
        id="bare-key-without-bucket",
    ),
    pytest.param(
        lambda m, s3, env: (with_artifact(m), {"AWS_ENDPOINT_URL": env["auth_endpoint"]}),
        5,
        "access denied",
        id="access-denied",
    ),
    pytest.param(
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
        id="unreachable",
    ),
    pytest.param(
        lambda m, s3, env: (with_artifact(m, sha256="0" * 64), {}),
        7,
        "sha256 mismatch",
        id="checksum-mismatch",
    ),
    pytest.param(
        lambda m, s3, env: (with_artifact(m, size=m.artifact.size + 1), {}),
        7,
        "size mismatch",
        id="size-mismatch",
    ),
    pytest.param(
        lambda m, s3, env: (archive_meta(m, s3, "bad/dotdot.tgz", tar_of(lambda t: add_file(t, "../evil"))), {}),
        8,
        "escape",
        id="archive-dot-dot",
    ),
    pytest.param(
        lambda m, s3, env: (archive_meta(m, s3, "bad/abs.tgz", tar_of(lambda t: add_file(t, "/tmp/evil"))), {}),
        8,
        "escape",
        id="archive-absolute",
    ),
    pytest.param(
        lambda m, s3, env: (
            archive_meta(m, s3, "bad/link.tgz", tar_of(lambda t: add_symlink(t, "model.pt", "/etc/passwd"))),
            {},
        ),
        8,
        "symlink",
        id="archive-symlink",
    ),
    pytest.param(
        lambda m, s3, env: (
            archive_meta(m, s3, "bad/bomb.tgz", tar_of(lambda t: add_file(t, "model.pt", b"\0" * (4 << 20)))),
            {"MAX_ARTIFACT_BYTES": str(1 << 20)},
        ),
        8,
        "MAX_ARTIFACT_BYTES",
        id="archive-over-cap",
    ),
    pytest.param(
        lambda m, s3, env: (
            archive_meta(m, s3, "bad/nomodel.tgz", tar_of(lambda t: add_file(t, "weights.bin"))),
            {},
        ),
        7,
        "no model.pt",
        id="archive-without-model",
    ),
]


@pytest.mark.parametrize(("prepare", "exit_code", "message"), FAILURES)
def test_failure_exit_codes_leave_repository_untouched(
    prepare: Callable,
    exit_code: int,
    message: str,
    repo_env: dict[str, str],
    demo_model: PublishedModel,
    s3_client: Any,
    auth_s3: LocalS3,
    tmp_path: Path,
) -> None:
    repository = Path(repo_env["MODEL_REPOSITORY"])
    before = snapshot(repository)
    meta, extra = prepare(demo_model.meta, s3_client, {"auth_endpoint": auth_s3.endpoint_url})
    result = run_sync(repo_env, meta, tmp_path, **extra)
    assert result.returncode == exit_code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("nexus sync: error: ")
    assert message in lines[-1]
    assert "Traceback" not in result.stderr
    assert snapshot(repository) == before


def test_full_disk_is_a_disk_error(
    repo_env: dict[str, str], s3_client: Any, demo_model: PublishedModel, tmp_path: Path
) -> None:
    repository = Path(repo_env["MODEL_REPOSITORY"])
    before = snapshot(repository)
    uri, sha, size = put(s3_client, "big/model.pt", b"\1" * (256 << 10))
    meta = with_artifact(demo_model.meta, uri=uri, sha256=sha, size=size)
    result = run_sync(repo_env, meta, tmp_path, preexec_fn=_limit_file_size)
    assert result.returncode == 9, result.stderr
    assert "File too large" in result.stderr.splitlines()[-1]
    assert snapshot(repository) == before


def test_resync_downloads_nothing(s3_env: dict[str, str], s3_client: Any, tmp_path: Path) -> None:
    published = publish(dataclasses.replace(demo.DemoSpec(hidden=16, layers=1), name="idempotent"), s3_client, tmp_path)
    env = {**s3_env, "MODEL_REPOSITORY": str(tmp_path / "repo")}
    first = run_sync(env, published.meta, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "downloaded and verified" in first.stdout
    before = snapshot(tmp_path / "repo")
    location = published.meta.artifact.uri.removeprefix(f"s3://{TEST_BUCKET}/")
    s3_client.delete_object(Bucket=TEST_BUCKET, Key=location)  # a second download would now fail
    second = run_sync(env, published.meta, tmp_path)
    assert second.returncode == 0, second.stderr
    assert "already present and verified" in second.stdout
    assert snapshot(tmp_path / "repo") == before


def test_second_version_lands_atomically(s3_env: dict[str, str], s3_client: Any, tmp_path: Path) -> None:
    spec = demo.DemoSpec(name="versioned", hidden=256, layers=2)
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    v1 = publish(spec, s3_client, tmp_path / "v1")
    v2 = publish(dataclasses.replace(spec, version=2, seed=1), s3_client, tmp_path / "v2")
    repository = tmp_path / "repo"
    env = {**s3_env, "MODEL_REPOSITORY": str(repository)}
    assert run_sync(env, v1.meta, tmp_path).returncode == 0

    seen: list[set[str]] = []
    done = threading.Event()

    def watch() -> None:
        target = repository / "versioned" / "2"
        while not done.is_set():
            if target.exists():
                seen.append({p.name for p in target.iterdir()})

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = run_sync(env, v2.meta, tmp_path)
    finally:
        done.set()
        watcher.join()
    assert result.returncode == 0, result.stderr
    complete = {".nexus_meta.json", "model.pt", "model.py"}
    assert seen, "the watcher never saw version 2"
    assert all(files == complete for files in seen), "a reader saw a partial version"
    assert sorted(p.name for p in (repository / "versioned").iterdir()) == ["1", "2", "config.pbtxt"]
    assert "versions: 2" in (repository / "versioned" / "config.pbtxt").read_text()

    pruned = run_sync(env, v2.meta, tmp_path, KEEP_VERSIONS="1")
    assert pruned.returncode == 0
    assert "pruned versions [1]" in pruned.stdout
    assert sorted(p.name for p in (repository / "versioned").iterdir()) == ["2", "config.pbtxt"]


def test_another_model_works_without_code_changes(s3_env: dict[str, str], s3_client: Any, tmp_path: Path) -> None:
    """Other name, 8 inputs, two output tensors of 3, torch.export format, packed in a tar."""
    spec = demo.DemoSpec(
        name="wide_two_heads", width=8, outputs=3, heads=2, hidden=32, layers=1, format="torch_export", packaging="tar"
    )
    published = publish(spec, s3_client, tmp_path)
    repository = tmp_path / "repo"
    result = run_sync({**s3_env, "MODEL_REPOSITORY": str(repository)}, published.meta, tmp_path)
    assert result.returncode == 0, result.stderr
    assert metadata.load(tmp_path / ".nexus_meta.json").inputs[0].shape == (8,)

    server = start_triton(repository, tmp_path)
    try:
        rows = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)
        answer = infer(server, "wide_two_heads", rows)
        expected = demo.reference_outputs(spec, rows.tolist())
        for i, want in enumerate(expected):
            np.testing.assert_allclose(answer.as_numpy(f"OUTPUT__{i}"), want, rtol=1e-5, atol=1e-5)
    finally:
        assert server.stop() == 0
