"""`nexus sync` end to end against a real S3 endpoint over HTTP (moto's server), as a subprocess.

Every failure has its exit code and a one-line message, and leaves the repository exactly as it was.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nexusml.command import demo
from nexusml.command.s3local import LocalS3
from nexusml.core import metadata
from nexusml.core.metadata import ModelMetadata
from nexusml.testing import artifacts
from nexusml.testing.artifacts import put, snapshot, with_artifact
from nexusml.testing.models import TEST_BUCKET, PublishedModel, publish, sync_into
from nexusml.testing.servers import start_local_s3, start_triton, triton_infer

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).parents[3] / "scripts" / "sync_model.py"


def run_sync(
    env: dict[str, str], meta: ModelMetadata | dict[str, Any], workdir: Path, **options: Any
) -> subprocess.CompletedProcess[str]:
    """The harness's `run_sync` through the documented entry point, `scripts/sync_model.py`."""
    return artifacts.run_sync(env, meta, workdir, command=(sys.executable, str(SCRIPT)), **options)


@pytest.fixture
def repo_env(s3_env: dict[str, str], demo_model: PublishedModel, tmp_path: Path) -> dict[str, str]:
    """A repository already holding the demo model's version 1."""
    env = {**s3_env, "MODEL_REPOSITORY": str(tmp_path / "model_repository")}
    sync_into(demo_model.meta, env, tmp_path / "model_repository")
    return env


@pytest.fixture(scope="module")
def auth_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    """A second S3 endpoint that checks credentials (and knows none)."""
    server = start_local_s3(tmp_path_factory.mktemp("auth") / "moto.log", INITIAL_NO_AUTH_ACTION_COUNT="0")
    yield server
    server.stop()


FAILURES = [
    pytest.param(failure.prepare, failure.exit_code, failure.message, id=failure.id)
    for failure in artifacts.SYNC_FAILURES
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
    result = run_sync(repo_env, meta, tmp_path, max_file_bytes=artifacts.FULL_DISK_BYTES)
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
        answer = triton_infer(server, "wide_two_heads", rows)
        expected = demo.reference_outputs(spec, rows.tolist())
        for i, want in enumerate(expected):
            np.testing.assert_allclose(answer.as_numpy(f"OUTPUT__{i}"), want, rtol=1e-5, atol=1e-5)
    finally:
        assert server.stop() == 0
