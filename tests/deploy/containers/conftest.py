"""Fixtures for the deployments started for real (`make test-deploy`): podman, the images, a Docker API.

Skipped unless pytest runs with `--containers` (`make test-deploy` passes it): they build images and start
containers for several minutes, so `make test` leaves them out. Each step prints what it does and how
long it took; the session ends with the table of steps and the images' sizes.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from nexusml.command import demo
from tests.deploy.containers.podman import (
    COMPOSE_PROJECT_PREFIX,
    DEMO_IMAGE,
    HERE,
    NEXUS_IMAGE,
    S3_IMAGE,
    TIMINGS,
    TRITON_IMAGE,
    Podman,
    build_images,
    docker_api,
    make_base_images,
)

IMAGES = (NEXUS_IMAGE, DEMO_IMAGE, TRITON_IMAGE, S3_IMAGE)
# The models each deployment serves from one directory of metadata (one file each), of three shapes: the
# README's demo first, then a wider and a narrower one, so a request routed to the wrong model fails on its
# shape rather than passing by chance.
MODELS = (
    demo.DemoSpec(),
    demo.DemoSpec(name="wide_mlp", width=8, outputs=3),
    demo.DemoSpec(name="narrow_mlp", width=2, outputs=1),
)


def publish_arguments(spec: demo.DemoSpec) -> list[str]:
    """`nexus publish-demo` options that publish `spec` (its shape and version; seed and layers are the demo's)."""
    return [
        "--name", spec.name, "--model-version", str(spec.version),
        "--width", str(spec.width), "--outputs", str(spec.outputs),
    ]  # fmt: skip


def row(spec: demo.DemoSpec) -> list[int]:
    """One input row of the model's width: [1, 2, 3, 4, 5] for the README's model (its curl example)."""
    return list(range(1, spec.width + 1))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip this folder's tests without `--containers`, before any of its session fixtures builds images."""
    if config.getoption("--containers"):
        return
    skip = pytest.mark.skip(reason="starts real containers: run `make test-deploy`")
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(skip)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def podman() -> Iterator[Podman]:
    """podman, checked, with SIGTERM turned into KeyboardInterrupt so that fixtures still clean up."""
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: `make test-deploy` installs it (podman, runc, debootstrap)")
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield Podman()
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def images(podman: Podman) -> tuple[str, ...]:
    """Every image the deployments start, built from this checkout on a base made on this machine."""
    make_base_images(podman)
    build_images(podman)
    return IMAGES


@pytest.fixture(scope="session")
def docker_host(podman: Podman, images: tuple[str, ...]) -> Iterator[str]:
    with docker_api(podman, COMPOSE_PROJECT_PREFIX) as url:
        yield url


# --- talking to a deployed proxy from the host --------------------------------------------------------
def http(url: str, body: dict[str, Any] | None = None, key: str = "") -> tuple[int, dict[str, str], Any]:
    """One call; `key` goes as `X-API-Key` when given."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"X-API-Key": key} if key else {})}
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"null")
    except OSError:
        return 0, {}, None


def wait_ready(url: str, timeout_s: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    status, body = 0, None
    while time.monotonic() < deadline:
        status, _, body = http(f"{url}/readyz")
        if status == 200:
            return body
        time.sleep(1)
    raise AssertionError(f"{url}/readyz never answered 200 in {timeout_s:.0f} s: last {status} {body}")


def assert_serves(url: str, spec: demo.DemoSpec, key: str = "", route: str = "") -> dict[str, str]:
    """One row to the model's route (`POST /models/{name}/predict` unless `route` says otherwise) -> the answer of
    that model run in-process, from version `spec`; the response's headers back, names in lower case."""
    status, headers, body = http(f"{url}{route or f'/models/{spec.name}/predict'}", {"input": row(spec)}, key)
    assert status == 200, (spec.name, status, body)
    headers = {name.lower(): value for name, value in headers.items()}
    assert headers["x-model-name"] == spec.name and headers["x-model-version"] == str(spec.version), headers
    expected = demo.reference_outputs(spec, [row(spec)])[0][0]
    np.testing.assert_allclose(body["output"], expected, rtol=1e-4, atol=1e-5)
    return headers


def wait_models(url: str, specs: tuple[demo.DemoSpec, ...], key: str = "", timeout_s: float = 120) -> None:
    """Until `GET /v1/models` lists exactly `specs`, each "ready" on its version with no problem, and no metadata
    file with a problem (a proxy worker refreshes what it knows of the models every few seconds, so right after a
    change one may still say the old state)."""
    expected = {s.name: ("ready", str(s.version), None) for s in specs}
    deadline = time.monotonic() + timeout_s
    while True:
        status, _, body = http(f"{url}/v1/models", key=key)
        assert status == 200, body
        found = {m["name"]: (m["state"], str(m["served_version"]), m["problem"]) for m in body["models"]}
        if (found, body["problems"]) == (expected, []) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert (found, body["problems"]) == (expected, []), f"GET /v1/models: {body}"


def assert_serves_all(url: str, specs: tuple[demo.DemoSpec, ...], key: str = "") -> None:
    """Every model listed ready and answering its own route with its own output."""
    wait_models(url, specs, key)
    for spec in specs:
        assert_serves(url, spec, key)


# A keys file of two teams, for the deployments' tenancy check: a call with a team's key is served, one without 401s.
TEAM_KEY = "team-a-test-key"
KEYS_FILE = {"tenants": {"team-a": {"keys": [TEAM_KEY], "weight": 3}, "team-b": {"keys": ["team-b-test-key"]}}}


def assert_tenants_enforced(url: str, spec: demo.DemoSpec) -> None:
    """With the keys file: a team's key is served; no key is 401 unauthorized; readiness stays open."""
    assert_serves(url, spec, TEAM_KEY)
    status, _, body = http(f"{url}/models/{spec.name}/predict", {"input": row(spec)})
    assert status == 401 and body["error"]["code"] == "unauthorized", (status, body)
    assert http(f"{url}/readyz")[0] == 200


# Asked inside a container (the pod's loopback APIs are not published): GET argv[1] with the headers given as JSON
# in argv[2]; prints the status code, then the body.
LOOPBACK_GET = """
import json, sys, urllib.error, urllib.request
request = urllib.request.Request(sys.argv[1], headers=json.loads(sys.argv[2]))
try:
    with urllib.request.urlopen(request, timeout=5) as answer:
        print(answer.status, answer.read().decode())
except urllib.error.HTTPError as err:
    print(err.code, err.read().decode())
"""
# The proxy opens its region when a worker starts and registers it with Triton: a bounded wait for that.
SHARED_MEMORY_WAIT_S = 60


def loopback_get(podman: Podman, container: str, url: str, headers: dict[str, str]) -> tuple[int, str]:
    """`url` asked from inside `container`: the status code and the body."""
    answer = podman("exec", container, "python3", "-c", LOOPBACK_GET, url, json.dumps(headers)).stdout
    status, _, body = answer.partition(" ")
    return int(status), body


def triton_shm_status(podman: Podman, triton: str, headers: dict[str, str]) -> tuple[int, str]:
    """Triton's list of registered system shared-memory regions (its ports are not published)."""
    return loopback_get(podman, triton, "http://127.0.0.1:8000/v2/systemsharedmemory/status", headers)


def assert_shared_memory(url: str, podman: Podman, triton: str, shm_key: str, key: str = "") -> None:
    """GET /v1/models says the proxy's tensors reach Triton through shared memory, Triton lists the proxy's region
    (so both see one /dev/shm), and Triton's shared-memory API answers only with the proxy's key."""
    deadline = time.monotonic() + SHARED_MEMORY_WAIT_S
    while True:
        status, _, body = http(f"{url}/v1/models", key=key)
        assert status == 200, body
        shared = body["shared_memory"]
        if shared["active"] is True or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert shared["active"] is True, f"the proxy sends tensors in the message: {shared}"
    status, regions = triton_shm_status(podman, triton, {"nexus-shm-key": shm_key})
    assert status == 200, regions
    assert [r for r in json.loads(regions) if "nexus-proxy-" in r["key"]], regions
    status, refused = triton_shm_status(podman, triton, {})
    assert status != 200, f"Triton's shared-memory API answered without its key: {refused}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TIMINGS.steps:
        return
    terminalreporter.section("deployment steps")
    terminalreporter.write_line(TIMINGS.table())
    podman = Podman()
    for image in IMAGES:
        if podman.exists(image):
            terminalreporter.write_line(f"{podman.size(image) / 1e6:8.0f} MB  {image}")
