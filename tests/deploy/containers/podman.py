"""Real containers on this machine: podman behind a Docker-compatible socket, for `make test-deploy`.

What podman 4.3 (Debian 12) needs here, measured on these machines:
- `containers.conf` beside this file (passed as CONTAINERS_CONF): runc, since crun fails on hybrid cgroups;
  cgroupfs; no default ulimits, since the sandbox forbids raising resource limits.
- No systemd: podman runs health checks from systemd timers, so they never run by themselves and compose's
  `condition: service_healthy` would wait forever. `HealthTicker` runs `podman healthcheck run` for this
  run's containers that have a check, every 2 s (a container's own interval is not honoured: faster is
  harmless).
- No registry: the base image is made here (debootstrap -> `localhost/nexus-test/debian:bookworm`, kept
  between runs), then Debian's Python 3.11 on top of it stands in for `python:3.11-slim-bookworm`. Builds
  mount the host's CA bundle (pip goes through a TLS-inspecting gateway) and pip's find-links folder (the
  CPU build of torch that the host installs), passed to the Dockerfile as pip's own build arguments.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
CONTAINERS_CONF = HERE / "containers.conf"
DOCKERFILE = ROOT / "docker" / "nexus.Dockerfile"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

DEBIAN_IMAGE = "localhost/nexus-test/debian:bookworm"
PYTHON_IMAGE = "localhost/nexus-test/python:3.11-bookworm"
S3_IMAGE = "localhost/nexus-test/s3:moto"
# The names compose and the chart use by default (podman stores them under localhost/).
NEXUS_IMAGE = "localhost/nexusml/dataplane:0.1.0"
DEMO_IMAGE = "localhost/nexusml/dataplane-demo:0.1.0"
TRITON_IMAGE = "localhost/nexusml/tritonserver-cpu:2.51.0"
# Every compose project of a run is named so (plus the process id).
COMPOSE_PROJECT_PREFIX = "nexus-deploy-test-"


@dataclass
class Timings:
    """Each step says what it does and how long it took; the session prints them all at the end."""

    steps: list[tuple[str, float]] = field(default_factory=list)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        print(f"\n==> {name} ...", flush=True)
        started = time.monotonic()
        try:
            yield
        finally:
            elapsed = time.monotonic() - started
            self.steps.append((name, elapsed))
            print(f"<== {name}: {elapsed:.1f} s", flush=True)

    def table(self) -> str:
        return "\n".join(f"{seconds:8.1f} s  {name}" for name, seconds in self.steps)


TIMINGS = Timings()


class Podman:
    """The `podman` command with this folder's containers.conf."""

    def __init__(self) -> None:
        self.env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} -> {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def exists(self, image: str) -> bool:
        return self("image", "exists", image, check=False).returncode == 0

    def exit_code(self, container: str) -> int:
        return int(self("inspect", container, "--format", "{{.State.ExitCode}}").stdout.strip())

    def wait_healthy(self, container: str, timeout_s: float = 60) -> None:
        """Until the container's health check (run by `HealthTicker`) says healthy."""
        deadline = time.monotonic() + timeout_s
        status = ""
        while time.monotonic() < deadline:
            status = self("inspect", container, "--format", "{{.State.Health.Status}}").stdout.strip()
            if status == "healthy":
                return
            time.sleep(1)
        raise AssertionError(f"{container}: {status or 'no health status'} after {timeout_s:.0f} s")

    def logs(self, container: str, lines: int = 40) -> str:
        result = self("logs", "--tail", str(lines), container, check=False)
        return (result.stdout + result.stderr).strip()

    def explain(self, name_filter: str) -> str:
        """State and last log lines of every container whose name contains `name_filter`."""
        listing = self("ps", "-a", "--filter", f"name={name_filter}", "--format", "{{.Names}}\t{{.Status}}")
        parts = [f"containers:\n{listing.stdout}"]
        for line in listing.stdout.splitlines():
            name, _, status = line.partition("\t")
            parts.append(f"--- last log lines of {name} ({status}):\n{self.logs(name)}")
        return "\n".join(parts)

    @contextlib.contextmanager
    def explaining(self, name_filter: str) -> Iterator[None]:
        """On any failure (Ctrl-C included), print `explain(name_filter)` before the error goes on."""
        try:
            yield
        except BaseException:
            print(self.explain(name_filter), flush=True)
            raise

    def size(self, image: str) -> int:
        return int(self("image", "inspect", image, "--format", "{{.Size}}").stdout.strip())


@functools.cache
def build_arguments() -> tuple[str, ...]:
    """Volumes and build arguments for pip inside builds on this machine (see the module docstring)."""
    args = ["--format", "docker"]  # OCI images drop HEALTHCHECK
    if HOST_CA_BUNDLE.is_file():
        args += ["--volume", f"{HOST_CA_BUNDLE}:/host-ca.crt:ro", "--build-arg", "PIP_CERT=/host-ca.crt"]
    found = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.find-links"], capture_output=True, text=True, check=False
    ).stdout.split()
    if found and Path(found[0]).is_dir():
        # The CPU torch the host installs lies there; the PyTorch index is not reachable from this machine.
        torch_version = importlib.metadata.version("torch").split("+")[0]
        args += ["--volume", f"{found[0]}:/wheels:ro", "--build-arg", "PIP_FIND_LINKS=/wheels"]
        args += ["--build-arg", f"TORCH_VERSION={torch_version}", "--build-arg", "TORCH_INDEX_URL="]
    return tuple(args)


def make_base_images(podman: Podman) -> None:
    """The Debian base (once per machine: podman keeps it) and Python on top of it."""
    if not podman.exists(DEBIAN_IMAGE):
        with (
            TIMINGS.step("base image: debootstrap bookworm (minbase), podman import"),
            tempfile.TemporaryDirectory(prefix="nexus-debootstrap-") as rootfs,
        ):
            subprocess.run(
                ["debootstrap", "--variant=minbase", "bookworm", rootfs], check=True, capture_output=True, timeout=900
            )
            tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
            assert tar.stdout is not None
            try:
                imported = subprocess.run(["podman", "import", "-", DEBIAN_IMAGE], stdin=tar.stdout, env=podman.env)
            finally:
                tar.stdout.close()  # an import that stopped early leaves tar a broken pipe: it ends
                tarred = tar.wait(timeout=120)
            assert tarred == 0 and imported.returncode == 0, f"tar {tarred}, podman import {imported.returncode}"
    else:
        print(f"\n==> base image {DEBIAN_IMAGE}: present, kept from an earlier run", flush=True)
    with TIMINGS.step("base image: Debian's Python 3.11"):
        podman("build", *build_arguments(), "-f", str(HERE / "python.Containerfile"), "-t", PYTHON_IMAGE, str(HERE))


def build_images(podman: Podman) -> None:
    """The project's images from docker/nexus.Dockerfile on the local base, and the S3 stand-in."""
    on_base = [*build_arguments(), "--build-arg", f"BASE_IMAGE={PYTHON_IMAGE}"]
    for target, tag in (("runtime", NEXUS_IMAGE), ("demo", DEMO_IMAGE), ("triton-cpu", TRITON_IMAGE)):
        with TIMINGS.step(f"build {tag} (target {target})"):
            podman("build", *on_base, "-f", str(DOCKERFILE), "--target", target, "-t", tag, str(ROOT), timeout=1800)
    with TIMINGS.step(f"build {S3_IMAGE} (moto, stand-in for MinIO)"):
        podman("build", *on_base, "-f", str(HERE / "s3.Containerfile"), "-t", S3_IMAGE, str(HERE))


class HealthTicker(threading.Thread):
    """Runs the health checks that systemd's timers would run (see the module docstring).

    Only for containers whose name contains `name_filter`: other containers on the machine are not ours.
    """

    def __init__(self, podman: Podman, name_filter: str, interval_s: float = 2.0) -> None:
        super().__init__(name="health-ticker", daemon=True)
        self.podman = podman
        self.name_filter = name_filter
        self.interval_s = interval_s
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            listed = self.podman(
                "ps", "--filter", f"name={self.name_filter}", "--format", "{{.ID}} {{.Status}}", check=False
            ).stdout
            for line in listed.splitlines():
                if "(starting)" in line or "(healthy)" in line or "(unhealthy)" in line:
                    self.podman("healthcheck", "run", line.split()[0], check=False, timeout=60)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=30)


@contextlib.contextmanager
def docker_api(podman: Podman, name_filter: str) -> Iterator[str]:
    """`podman system service` on a private socket: DOCKER_HOST for the Compose binary.

    Health checks run for the containers whose name contains `name_filter` (see `HealthTicker`).
    """
    with tempfile.TemporaryDirectory(prefix="nexus-podman-") as folder:
        socket = Path(folder) / "podman.sock"
        log = (Path(folder) / "service.log").open("w")
        service = subprocess.Popen(
            ["podman", "system", "service", "--time=0", f"unix://{socket}"],
            env=podman.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        ticker = HealthTicker(podman, name_filter)
        try:
            deadline = time.monotonic() + 30
            while not socket.exists():
                assert service.poll() is None and time.monotonic() < deadline, "podman system service did not start"
                time.sleep(0.1)
            ticker.start()
            yield f"unix://{socket}"
        finally:
            ticker.stop()
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(timeout=30)
            except subprocess.TimeoutExpired:
                service.kill()
            log.close()
