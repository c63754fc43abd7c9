"""Fixtures that start real servers on free loopback ports, shared by every test package.

Chain: `local_s3` (moto's S3 server) -> `s3_env` / `s3_client` -> `demo_model` (the demo MLP published
there, with its metadata) -> `demo_repository` (synced) -> `triton` (the bundled tritonserver on it).
Session-scoped: each server starts once per run and is stopped at the end; nothing is left behind.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nexusml import demo
from nexusml.core.metadata import ModelMetadata
from nexusml.core.settings import load
from nexusml.s3local import CREDENTIALS, LocalS3
from nexusml.sync import storage
from nexusml.sync.pipeline import sync
from nexusml.sync.settings import S3Settings, SyncSettings, TritonSettings
from nexusml.sync.triton import TritonServer

TEST_BUCKET = "nexus-test"
# A small hidden layer keeps uploads and Triton start-up quick; the shape contract is the demo's.
DEMO_SPEC = demo.DemoSpec(hidden=64, layers=2)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--containers",
        action="store_true",
        help="run tests/deploy/containers: build the images and start compose and the Helm pod in podman",
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_environment() -> dict[str, str]:
    """This process's environment without anything that could point boto3 at a real AWS account."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "MODEL_BUCKET"}


@pytest.fixture(scope="session")
def local_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    """moto's S3 server; this test process gets its (dummy) credentials, as a deployment would."""
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    with (
        LocalS3(free_port(), base_environment(), log_file=log) as server,
        pytest.MonkeyPatch.context() as patch,
    ):
        for name, value in CREDENTIALS.items():
            patch.setenv(name, value)
        yield server


@pytest.fixture(scope="session")
def s3_env(local_s3: LocalS3) -> dict[str, str]:
    """An environment for child processes (and settings) that reaches the local S3."""
    return {**base_environment(), **local_s3.client_environment(), "MODEL_BUCKET": TEST_BUCKET}


@pytest.fixture(scope="session")
def s3_client(s3_env: dict[str, str]) -> Any:
    client = storage.client(load(S3Settings, s3_env))
    client.create_bucket(Bucket=TEST_BUCKET)
    return client


@dataclass(frozen=True)
class PublishedModel:
    spec: demo.DemoSpec
    meta: ModelMetadata
    meta_path: Path


def publish(spec: demo.DemoSpec, s3_client: Any, directory: Path) -> PublishedModel:
    """Export `spec`, upload it to the test bucket, write its `.nexus_meta.json` in `directory`."""
    meta = demo.publish(spec, s3_client, TEST_BUCKET, directory / "export")
    meta_path = directory / ".nexus_meta.json"
    meta_path.write_text(meta.to_json())
    return PublishedModel(spec, meta, meta_path)


@pytest.fixture(scope="session")
def demo_model(s3_client: Any, tmp_path_factory: pytest.TempPathFactory) -> PublishedModel:
    return publish(DEMO_SPEC, s3_client, tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="session")
def demo_repository(
    demo_model: PublishedModel, s3_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The demo model synced into a fresh repository (CPU, short batching delay)."""
    repository = tmp_path_factory.mktemp("repo") / "model_repository"
    env = {
        **s3_env,
        "NEXUS_META_PATH": str(demo_model.meta_path),
        "MODEL_REPOSITORY": str(repository),
        "DEVICE": "cpu",
        "BATCH_TIMEOUT_MS": "2",
    }
    sync(demo_model.meta, load(SyncSettings, env))
    return repository


def start_triton(repository: Path, log_dir: Path, extra_args: tuple[str, ...] = (), **extra: str) -> TritonServer:
    env = {
        **base_environment(),
        "MODEL_REPOSITORY": str(repository),
        "TRITON_HTTP_PORT": str(free_port()),
        "TRITON_GRPC_PORT": str(free_port()),
        "TRITON_METRICS_PORT": str(free_port()),
        "TRITON_EXIT_TIMEOUT_S": "5",
        **extra,
    }
    server = TritonServer(load(TritonSettings, env), base_environment(), log_dir / "triton.log", extra_args)
    server.start()
    return server


@pytest.fixture(scope="session")
def triton(demo_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """The bundled tritonserver serving the demo model; its log is in the fixture's temp folder."""
    server = start_triton(demo_repository, tmp_path_factory.mktemp("triton"))
    yield server
    server.stop()
