"""Fixtures that start real servers on free loopback ports, shared by every test package.

Chain: `local_s3` (moto's S3 server) -> `s3_env` / `s3_client` -> `demo_model` (the demo MLP published
there, with its metadata) -> `demo_repository` (synced) -> `triton` (the bundled tritonserver on it).
Session-scoped: each server starts once per run and is stopped at the end; nothing is left behind.
The pieces are the shared harness's (`nexusml.testing`), which benchmarks and the reliability bed use too.
"""

from __future__ import annotations

import dataclasses
import importlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nexusml.command.s3local import LocalS3
from nexusml.core.process import STOP_SIGNALS, ManagedProcess
from nexusml.testing.models import DEMO_SPEC, TEST_BUCKET, PublishedModel, publish, sync_into
from nexusml.testing.servers import s3_client as make_s3_client
from nexusml.testing.servers import s3_environment, start_local_s3, start_triton
from nexusml.triton.server import TritonServer

# Modules that declare settings classes.
SETTINGS_MODULES = (
    "nexusml.core.settings",
    "nexusml.sync.settings",
    "nexusml.triton.settings",
    "nexusml.updates.watch",
    "nexusml.command.stack",
    "proxy.settings",
)


def settings_classes() -> list[type]:
    """Every `*Settings` dataclass declared in SETTINGS_MODULES (what docs/settings.md and deployments document)."""
    found = []
    for module_name in SETTINGS_MODULES:
        module = importlib.import_module(module_name)
        found += [
            obj
            for name, obj in vars(module).items()
            if name.endswith("Settings") and dataclasses.is_dataclass(obj) and obj.__module__ == module_name
        ]
    return found


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[object]:
    """A test not marked `integration` may start no server process: `make test-fast` runs just those tests and
    promises a loop under a minute. Such a test runs (fixtures included) with `ManagedProcess.start` refused."""
    if item.get_closest_marker("integration") is not None:
        return (yield)

    def refuse(process: ManagedProcess) -> None:
        raise AssertionError(f"{item.nodeid} starts {process.name}: mark it `integration`")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ManagedProcess, "start", refuse)
        return (yield)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--containers",
        action="store_true",
        help="run tests/deploy/containers: build the images and start compose and the Helm pod in podman",
    )


@pytest.fixture(scope="session")
def local_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    """moto's S3 server; clients reach it with the credentials of `s3_env`, as a deployment would."""
    server = start_local_s3(tmp_path_factory.mktemp("s3") / "moto.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_env(local_s3: LocalS3) -> dict[str, str]:
    """An environment for child processes (and settings) that reaches the local S3."""
    return s3_environment(local_s3, TEST_BUCKET)


@pytest.fixture(scope="session")
def s3_client(s3_env: dict[str, str]) -> Any:
    return make_s3_client(s3_env)


@pytest.fixture(scope="session")
def demo_model(s3_client: Any, tmp_path_factory: pytest.TempPathFactory) -> PublishedModel:
    return publish(DEMO_SPEC, s3_client, tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="session")
def demo_repository(
    demo_model: PublishedModel, s3_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The demo model synced into a fresh repository (CPU, short batching delay)."""
    repository = tmp_path_factory.mktemp("repo") / "model_repository"
    return sync_into(
        demo_model.meta, s3_env, repository, NEXUS_META_PATH=str(demo_model.meta_path), BATCH_TIMEOUT_MS="2"
    )


@pytest.fixture(scope="session")
def triton(demo_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """The bundled tritonserver serving the demo model; its log is in the fixture's temp folder."""
    server = start_triton(demo_repository, tmp_path_factory.mktemp("triton"))
    yield server
    server.stop()


@pytest.fixture
def stop_signal_handlers() -> Iterator[None]:
    """For a test that stops in-process: a stopped process ignores SIGINT/SIGTERM until it exits, and the test
    runner must get its own handlers back."""
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)
